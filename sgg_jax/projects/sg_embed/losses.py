"""Losses on scene-graph embeddings supervised by relative similarity (Maheshwari et al., AAAI 2021).

Maheshwari, Chaudhry and Vinay, "Scene Graph Embeddings Using Relative Similarity Supervision"
(Sec. "Loss functions"). Every loss works on triplets (anchor ``A``, positive ``P``, negative ``N``) of
graph embeddings ``f``: float32[B, D] rows, **L2-normalised by the caller** (the model's output
layer), so ``f_A . f_X`` is the cosine similarity of the model. The functions never re-normalise.

* :func:`ranking_loss` — the paper's Ranking loss. The model's probability that ``A`` is closer to
  ``P`` than to ``N`` is ``P_hat = sigmoid((f_A . f_P - f_A . f_N) / nu)``; the target comes from the
  supervision similarities, ``P = s_AP / (s_AP + s_AN)`` (:func:`ranking_targets`); the loss is the
  binary cross-entropy ``-P log P_hat - (1 - P) log(1 - P_hat)``, evaluated from the logit
  ``z = (f_A . f_P - f_A . f_N) / nu`` as ``softplus(z) - P z`` (exact and stable for any ``z``).
  Its minimum over ``z`` is the entropy of ``P`` (not 0) unless ``P`` is 0 or 1. ``nu = 1``.
* :func:`triplet_loss` — ``max(f_A . f_N - f_A . f_P + m, 0)``, ``m = 0.5``.
* :func:`info_nce_loss` — InfoNCE with temperature ``lambda = 1``: one positive and ``K >= 1``
  negatives per anchor, ``-log(exp(f_A . f_P / lambda) / (exp(f_A . f_P / lambda)
  + sum_k exp(f_A . f_Nk / lambda)))``.

Triplet and InfoNCE use binary labels (``P`` is "similar", ``N`` "dissimilar") and ignore the
similarity values; the Ranking loss uses the values. :mod:`sgg_jax.projects.sg_embed.triplet_samplers` describes
how sampled triplets feed each loss.

Documented choices:

* **Target of the Ranking loss.** ``P = s_AP / (s_AP + s_AN)`` is a probability only for non-negative
  similarities (the caption similarities are mean cosines of averaged word vectors, in ``[-1, 1]``
  and in practice mostly positive; :mod:`sgg_jax.projects.sg_embed.similarity`). Negative similarities are
  **clipped at 0** first, i.e. read as "no similarity": ``s_AP > 0 >= s_AN`` gives ``P = 1``.
  When ``s_AP + s_AN == 0`` after clipping (both similarities are 0 or negative) nothing prefers
  either side and the target is ``0.5``. The target is a constant of the loss (``stop_gradient``).
* **Reduction.** Every loss is the mean of its per-triplet terms over the valid triplets (``mask``,
  all valid when omitted), 0 when none is valid (:func:`sgg_jax.masked.masked_mean`). Inputs of
  masked-out triplets are replaced by zeros before any arithmetic, so NaN / inf in padding changes
  neither the loss nor its gradients.
* **InfoNCE negatives.** ``negatives`` is float32[B, K, D] (or [B, D] for ``K = 1``) with an optional
  ``negative_mask`` bool[B, K] for a varying number of negatives; masked-out negatives leave the
  denominator. An anchor without any valid negative has nothing to contrast with (its term would be
  exactly 0) and is excluded from the mean, like a masked-out triplet.
* **Hyper-parameters** are static Python numbers: ``nu > 0``, ``margin >= 0``, ``temperature > 0``,
  all finite; anything else raises :class:`~sgg_jax.errors.ConfigError` naming the option. Shape
  mismatches raise ``ConfigError`` naming the argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgg_jax.errors import ConfigError, is_finite_number
from sgg_jax.masked import masked_mean

DEFAULT_NU = 1.0
DEFAULT_MARGIN = 0.5
DEFAULT_TEMPERATURE = 1.0


def _check_positive(option: str, value: object) -> float:
    if not is_finite_number(value) or value <= 0:
        raise ConfigError(option, f"must be a finite number > 0, got {value!r}")
    return float(value)


def _triplet_inputs(
    anchor: jax.Array, positive: jax.Array, negative: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array]:
    """Checks shapes, casts to float32, zeroes masked-out rows; returns (anchor, positive, negative, mask)."""
    anchor = jnp.asarray(anchor, jnp.float32)
    positive = jnp.asarray(positive, jnp.float32)
    if anchor.ndim < 2:
        raise ConfigError("anchor", f"expected float[B, D] embeddings, got shape {anchor.shape}")
    if positive.shape != anchor.shape:
        raise ConfigError(
            "positive", f"expected the anchor's shape {anchor.shape}, got {positive.shape}"
        )
    batch_shape = anchor.shape[:-1]
    if mask is None:
        mask = jnp.ones(batch_shape, bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != batch_shape:
        raise ConfigError("mask", f"expected shape {batch_shape}, got {mask.shape}")
    anchor = jnp.where(mask[..., None], anchor, 0.0)
    positive = jnp.where(mask[..., None], positive, 0.0)
    if negative is not None:
        negative = jnp.asarray(negative, jnp.float32)
        if negative.shape != anchor.shape:
            raise ConfigError(
                "negative", f"expected the anchor's shape {anchor.shape}, got {negative.shape}"
            )
        negative = jnp.where(mask[..., None], negative, 0.0)
    return anchor, positive, negative, mask


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(x * y, axis=-1)


def ranking_targets(similarity_positive: jax.Array, similarity_negative: jax.Array) -> jax.Array:
    """The Ranking loss target ``P = s_AP / (s_AP + s_AN)`` (negatives clipped at 0; 0.5 when 0 / 0).

    Args:
      similarity_positive: float[B] supervision similarities ``s_AP``.
      similarity_negative: float[B] supervision similarities ``s_AN``.

    Returns:
      float32[B] targets in ``[0, 1]`` (module docstring for the clipping and the 0 / 0 case).
    """
    s_ap = jnp.maximum(jnp.asarray(similarity_positive, jnp.float32), 0.0)
    s_an = jnp.maximum(jnp.asarray(similarity_negative, jnp.float32), 0.0)
    total = s_ap + s_an
    has_total = total > 0
    return jnp.where(has_total, s_ap / jnp.where(has_total, total, 1.0), 0.5)


def ranking_loss(
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    similarity_positive: jax.Array,
    similarity_negative: jax.Array,
    mask: jax.Array | None = None,
    *,
    nu: float = DEFAULT_NU,
) -> jax.Array:
    """The Ranking loss of Maheshwari et al.: BCE of ``sigmoid(Δ / nu)`` against ``s_AP / (s_AP + s_AN)``.

    Args:
      anchor: float[B, D] L2-normalised anchor embeddings ``f_A``.
      positive: float[B, D] embeddings ``f_P``.
      negative: float[B, D] embeddings ``f_N``.
      similarity_positive: float[B] supervision similarity ``s_AP`` (e.g. caption similarity).
      similarity_negative: float[B] supervision similarity ``s_AN``.
      mask: bool[B] valid triplets (all when None).
      nu: temperature ``nu`` of the sigmoid, finite and > 0.

    Returns:
      f32[] mean over valid triplets of ``softplus(z) - P z`` with
      ``z = (f_A . f_P - f_A . f_N) / nu`` and ``P`` from :func:`ranking_targets` (0 when none is valid).

    Raises:
      ConfigError: ``nu`` is not a finite number > 0, or shapes do not match.
    """
    nu = _check_positive("nu", nu)
    anchor, positive, negative, mask = _triplet_inputs(anchor, positive, negative, mask)
    s_ap = jnp.asarray(similarity_positive, jnp.float32)
    s_an = jnp.asarray(similarity_negative, jnp.float32)
    for name, values in (("similarity_positive", s_ap), ("similarity_negative", s_an)):
        if values.shape != mask.shape:
            raise ConfigError(name, f"expected shape {mask.shape}, got {values.shape}")
    # P = s_AP / (s_AP + s_AN): the target probability that A is more similar to P than to N.
    target = jax.lax.stop_gradient(
        ranking_targets(jnp.where(mask, s_ap, 0.0), jnp.where(mask, s_an, 0.0))
    )
    # P_hat = sigmoid(z); BCE(P, P_hat) = P softplus(-z) + (1 - P) softplus(z) = softplus(z) - P z.
    logit = (_dot(anchor, positive) - _dot(anchor, negative)) / nu
    return masked_mean(jax.nn.softplus(logit) - target * logit, mask)


def triplet_loss(
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    mask: jax.Array | None = None,
    *,
    margin: float = DEFAULT_MARGIN,
) -> jax.Array:
    """Triplet loss on cosine similarities: ``max(f_A . f_N - f_A . f_P + m, 0)``.

    Args:
      anchor: float[B, D] L2-normalised anchor embeddings ``f_A``.
      positive: float[B, D] embeddings of the similar image ``f_P``.
      negative: float[B, D] embeddings of the dissimilar image ``f_N``.
      mask: bool[B] valid triplets (all when None).
      margin: ``m``, finite and >= 0.

    Returns:
      f32[] mean hinge over valid triplets (0 when none is valid).

    Raises:
      ConfigError: ``margin`` is not a finite number >= 0, or shapes do not match.
    """
    if not is_finite_number(margin) or margin < 0:
        raise ConfigError("margin", f"must be a finite number >= 0, got {margin!r}")
    anchor, positive, negative, mask = _triplet_inputs(anchor, positive, negative, mask)
    hinge = jnp.maximum(_dot(anchor, negative) - _dot(anchor, positive) + float(margin), 0.0)
    return masked_mean(hinge, mask)


def info_nce_loss(
    anchor: jax.Array,
    positive: jax.Array,
    negatives: jax.Array,
    mask: jax.Array | None = None,
    negative_mask: jax.Array | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
) -> jax.Array:
    """InfoNCE: cross-entropy of picking the positive among {positive, negatives} by ``f_A . f_X / lambda``.

    For anchor ``A`` with one positive ``P`` and negatives ``N_1 .. N_K`` (those with
    ``negative_mask``)::

      loss_A = -log( exp(f_A.f_P / lambda) / (exp(f_A.f_P / lambda) + sum_k exp(f_A.f_Nk / lambda)) )

    Args:
      anchor: float[B, D] L2-normalised anchor embeddings ``f_A``.
      positive: float[B, D] embeddings of the positive ``f_P``.
      negatives: float[B, K, D] embeddings of the negatives, or float[B, D] for one negative.
      mask: bool[B] valid anchors (all when None).
      negative_mask: bool[B, K] valid negatives (all when None); anchors without any valid negative
        are excluded from the mean.
      temperature: ``lambda``, finite and > 0.

    Returns:
      f32[] mean over valid anchors (0 when none is valid).

    Raises:
      ConfigError: ``temperature`` is not a finite number > 0, or shapes do not match.
    """
    temperature = _check_positive("temperature", temperature)
    anchor, positive, _, mask = _triplet_inputs(anchor, positive, None, mask)
    negatives = jnp.asarray(negatives, jnp.float32)
    if negatives.shape == anchor.shape:
        negatives = negatives[..., None, :]
    if negatives.ndim != anchor.ndim + 1 or (
        negatives.shape[:-2] + negatives.shape[-1:] != anchor.shape
    ):
        raise ConfigError(
            "negatives",
            f"expected shape {anchor.shape[:-1]} + (K, {anchor.shape[-1]}) or the anchor's shape, "
            f"got {negatives.shape}",
        )
    num_negatives = negatives.shape[-2]
    if num_negatives < 1:
        raise ConfigError("negatives", "needs at least one negative per anchor (K >= 1)")
    if negative_mask is None:
        negative_mask = jnp.ones(negatives.shape[:-1], bool)
    negative_mask = jnp.asarray(negative_mask, bool)
    if negative_mask.shape != negatives.shape[:-1]:
        raise ConfigError(
            "negative_mask", f"expected shape {negatives.shape[:-1]}, got {negative_mask.shape}"
        )
    negative_mask = negative_mask & mask[..., None]
    negatives = jnp.where(negative_mask[..., None], negatives, 0.0)
    positive_logit = _dot(anchor, positive) / temperature
    negative_logits = jnp.einsum("...d,...kd->...k", anchor, negatives) / temperature
    negative_logits = jnp.where(negative_mask, negative_logits, -jnp.inf)
    logits = jnp.concatenate([positive_logit[..., None], negative_logits], axis=-1)
    # -log softmax(logits)[positive]; masked negatives are -inf and leave the denominator.
    loss = jax.nn.logsumexp(logits, axis=-1) - positive_logit
    return masked_mean(loss, mask & jnp.any(negative_mask, axis=-1))
