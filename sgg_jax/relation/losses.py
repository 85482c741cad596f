"""Losses as pure functions of ``(outputs, aux, batch)``; every reduction is masked.

Padding never changes a loss: per-pair terms are averaged over ``batch.pair_mask``, per-object terms
over ``batch.object_mask`` (masked-out entries are replaced by 0 before the sum, so even inf/NaN in
padding cannot leak), and each mean is divided by the mask count of the whole batch, as PyTorch's
``mean`` over the concatenated pairs of a batch in Scene-Graph-Benchmark.

* :func:`cross_entropy`, :func:`soft_cross_entropy` — (soft-target) cross-entropy.
* :func:`penet_losses` — PE-Net (Zheng et al., CVPR 2023, Sec. 3): ``L = L_e_sim + L_e_euc +
  L_r_sim + L_r_euc`` (+ object cross-entropy in SGCls), checked against the official code
  (``VL-Group/PENET``, ``PrototypeEmbeddingNetwork.forward``):

  - ``relation_ce`` (L_e_sim): cross-entropy of the cosine logits over foreground and sampled
    background pairs.
  - ``relation_euclidean`` (L_e_euc): ``max(0, g⁺ − g⁻ + γ1)`` with ``g⁺ = ‖r − c_gt‖²`` and ``g⁻``
    the mean of the ``k1 = 10`` smallest ``‖r − c_j‖²`` over ``j ≠ gt``. Computed on the
    *projected, unnormalised* ``r`` and ``c`` (after the projection head), over all sampled pairs
    (background pairs use the background prototype as their ``c_gt``), gradients to both sides.
  - ``prototype_similarity`` (L_r_sim): ``‖S‖_{2,1} / C²`` with ``S = C_n sg(C_n)ᵀ`` and ``C_n``
    the L2-normalised projected prototypes (all C, background included): the L2 norm of each row
    of ``S``, summed (L1) over rows. ``sg`` = stop-gradient, as the official ``detach``. The code
    divides by the fixed 51² of VG150; here C² of the vocabulary at hand.
  - ``prototype_distance`` (L_r_euc): ``mean_i max(0, γ2 − d⁻_i)`` with ``d⁻_i = min_{j≠i}
    ‖c_i − sg(c_j)‖²`` on the projected, unnormalised prototypes (the code sorts row i of the
    distance matrix and sums its two smallest entries, the zero self-distance and the nearest
    other prototype: ``k2 = 1``).
  - ``object_ce`` (SGCls only): cross-entropy of the object classifier over real objects.

  The official code adds every term with weight 1; ``weights`` can change that.
* :func:`make_penet_loss` — that loss as ``loss_fn(outputs, aux, batch)`` for a model config; with
  ``multi_prototype=True`` RA-SGG's phase-2 variant, :func:`ra_sgg_losses` /
  :func:`multi_prototype_euclidean_loss` (PE-Net's relation terms against soft multi-prototype
  targets; for one-hot targets they equal :func:`penet_losses`, so they live next to it).

The CCE + Scorer losses, built on these, are in :mod:`sgg_jax.projects.cce_scorer.losses`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.errors import ConfigError, is_finite_number
from sgg_jax.masked import masked_mean
from sgg_jax.structures import SceneGraphBatch

PENET_TERMS = (
    "relation_ce",
    "relation_euclidean",
    "prototype_similarity",
    "prototype_distance",
    "object_ce",
)

LossFn = Callable[
    [dict[str, jax.Array], dict[str, jax.Array], SceneGraphBatch],
    tuple[jax.Array, dict[str, jax.Array]],
]


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the masked entries.

    Args:
      logits: f32[..., C].
      labels: int[...] classes in ``[0, C)``.
      mask: bool[...] entries that count.

    Returns:
      f32[] ``mean_{mask} −log softmax(logits)[label]`` (0 when the mask is empty).
    """
    log_probabilities = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    labels = jnp.where(jnp.asarray(mask, bool), jnp.asarray(labels, jnp.int32), 0)
    picked = jnp.take_along_axis(log_probabilities, labels[..., None], axis=-1)[..., 0]
    return masked_mean(-picked, mask)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy against target distributions over the masked entries.

    Args:
      logits: f32[..., C].
      targets: f32[..., C] a distribution per entry (rows sum to 1 where ``mask``).
      mask: bool[...] entries that count.

    Returns:
      f32[] ``mean_{mask} −Σ_c targets_c log softmax(logits)_c``.
    """
    log_probabilities = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    row_mask = jnp.asarray(mask, bool)[..., None]
    per_entry = -jnp.sum(jnp.where(row_mask, targets * log_probabilities, 0.0), axis=-1)
    return masked_mean(per_entry, mask)


def squared_distances(vectors: jax.Array, references: jax.Array) -> jax.Array:
    """``‖vectors_i − references_j‖²`` for every pair, as ``‖v‖² + ‖r‖² − 2 v·r`` (clipped at 0).

    Args:
      vectors: f32[..., D].
      references: f32[C, D].

    Returns:
      f32[..., C].
    """
    vector_norms = jnp.sum(jnp.square(vectors), axis=-1, keepdims=True)
    reference_norms = jnp.sum(jnp.square(references), axis=-1)
    products = jnp.einsum("...d,cd->...c", vectors, references)
    return jnp.maximum(vector_norms + reference_norms - 2.0 * products, 0.0)


def prototype_euclidean_loss(
    relation_projection: jax.Array,
    prototype_projection: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    gamma1: float = 1.0,
    num_negatives: int = 10,
) -> jax.Array:
    """L_e_euc: the ground-truth prototype nearer than the nearest negatives by a margin.

    Args:
      relation_projection: f32[B, P, D] projected relation vectors ``r``.
      prototype_projection: f32[C, D] projected prototypes ``c``.
      labels: int[B, P] class per pair (0 = background).
      mask: bool[B, P] pairs that count.
      gamma1: margin γ1.
      num_negatives: k1, how many nearest negative prototypes make ``g⁻``.

    Returns:
      f32[] ``mean_{mask} max(0, g⁺ − g⁻ + γ1)``.
    """
    num_classes = prototype_projection.shape[0]
    if not 1 <= num_negatives <= num_classes - 1:
        raise ConfigError(
            "num_negatives", f"must lie in [1, {num_classes - 1}] (C − 1), got {num_negatives}"
        )
    distances = squared_distances(relation_projection, prototype_projection)  # g_i
    labels = jnp.where(jnp.asarray(mask, bool), jnp.asarray(labels, jnp.int32), 0)
    is_positive = jax.nn.one_hot(labels, num_classes, dtype=bool)
    positive = jnp.sum(jnp.where(is_positive, distances, 0.0), axis=-1)  # g⁺
    negatives = jnp.where(is_positive, jnp.inf, distances)
    nearest_negatives = -jax.lax.top_k(-negatives, num_negatives)[0]
    negative = jnp.mean(nearest_negatives, axis=-1)  # g⁻
    return masked_mean(jnp.maximum(positive - negative + gamma1, 0.0), mask)


def prototype_similarity_loss(prototype_projection: jax.Array) -> jax.Array:
    """L_r_sim = ‖S‖_{2,1} / C², ``S = C_n sg(C_n)ᵀ`` on the L2-normalised prototypes.

    Args:
      prototype_projection: f32[C, D].

    Returns:
      f32[] the sum over rows of the L2 norm of each row of S, divided by C².
    """
    norms = jnp.linalg.norm(prototype_projection, axis=-1, keepdims=True)
    normalized = prototype_projection / jnp.maximum(norms, 1e-12)
    similarity = normalized @ jax.lax.stop_gradient(normalized).T
    row_norms = jnp.sqrt(jnp.sum(jnp.square(similarity), axis=-1))
    num_classes = prototype_projection.shape[0]
    return jnp.sum(row_norms) / (num_classes * num_classes)


def prototype_distance_loss(prototype_projection: jax.Array, *, gamma2: float = 7.0) -> jax.Array:
    """L_r_euc: every prototype at least γ2 (squared distance) from its nearest neighbour.

    Args:
      prototype_projection: f32[C, D].
      gamma2: margin γ2.

    Returns:
      f32[] ``mean_i max(0, γ2 − min_{j≠i} ‖c_i − sg(c_j)‖²)``.
    """
    num_classes = prototype_projection.shape[0]
    differences = prototype_projection[:, None, :] - jax.lax.stop_gradient(
        prototype_projection[None, :, :]
    )
    distances = jnp.sum(jnp.square(differences), axis=-1)
    distances = jnp.where(jnp.eye(num_classes, dtype=bool), jnp.inf, distances)
    nearest = jnp.min(distances, axis=-1)  # d⁻
    return jnp.mean(jnp.maximum(gamma2 - nearest, 0.0))


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    resolved = dict.fromkeys(PENET_TERMS, 1.0)
    for name, value in (weights or {}).items():
        if name not in resolved:
            raise ConfigError("weights", f"unknown term {name!r}; expected some of {PENET_TERMS}")
        if not is_finite_number(value):
            raise ConfigError(
                "weights", f"weight of {name!r} must be a finite number, got {value!r}"
            )
        resolved[name] = float(value)
    return resolved


def _with_shared_terms(
    relation_terms: dict[str, jax.Array],
    outputs: Mapping[str, jax.Array],
    prototype_projection: jax.Array,
    batch: SceneGraphBatch,
    gamma2: float,
    resolved: Mapping[str, float],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Adds the prototype regularisers (and the object CE in SGCls) and the weighted total."""
    terms = {
        **relation_terms,
        "prototype_similarity": prototype_similarity_loss(prototype_projection),
        "prototype_distance": prototype_distance_loss(prototype_projection, gamma2=gamma2),
    }
    if "object_logits" in outputs:
        terms["object_ce"] = cross_entropy(
            outputs["object_logits"], batch.labels, jnp.asarray(batch.object_mask, bool)
        )
    loss = sum(resolved[name] * value for name, value in terms.items())
    return loss, terms


def penet_losses(
    outputs: Mapping[str, jax.Array],
    aux: Mapping[str, jax.Array],
    batch: SceneGraphBatch,
    *,
    gamma1: float = 1.0,
    gamma2: float = 7.0,
    num_negatives: int = 10,
    weights: Mapping[str, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PE-Net's training loss (module docstring); object CE when ``outputs`` has object logits.

    Args:
      outputs: ``relation_logits`` f32[B, P, C] and, in SGCls, ``object_logits`` f32[B, N, K+1].
      aux: ``relation_projection`` f32[B, P, D] and ``prototype_projection`` f32[C, D].
      batch: ``pair_labels``, ``pair_mask``, and ``labels`` / ``object_mask`` for the object CE.
      gamma1: margin of L_e_euc.
      gamma2: margin of L_r_euc.
      num_negatives: k1 of L_e_euc.
      weights: term name -> weight (default 1 each, as the official code); see ``PENET_TERMS``.

    Returns:
      ``(loss f32[], terms)`` with the unweighted terms by name.
    """
    resolved = _check_weights(weights)
    pair_mask = jnp.asarray(batch.pair_mask, bool)
    pair_labels = jnp.asarray(batch.pair_labels, jnp.int32)
    prototype_projection = aux["prototype_projection"]
    terms = {
        "relation_ce": cross_entropy(outputs["relation_logits"], pair_labels, pair_mask),
        "relation_euclidean": prototype_euclidean_loss(
            aux["relation_projection"],
            prototype_projection,
            pair_labels,
            pair_mask,
            gamma1=gamma1,
            num_negatives=num_negatives,
        ),
    }
    return _with_shared_terms(terms, outputs, prototype_projection, batch, gamma2, resolved)


def targets_of(aux: Mapping[str, Any], batch: SceneGraphBatch) -> SceneGraphBatch:
    """The batch a relation loss reads: in SGDet the model's batch over the detections
    (``aux["targets"]``: assigned object labels, sampled pairs and their predicates), else the
    input batch.

    In SGDet the input batch's ``soft_targets`` (RA-SGG phase 2) are carried over to the
    detection batch; they must have been built over the detection batch's pairs, i.e. be
    f32[B, P_train, C] with P_train its pair budget (the retrieval augmenter computes them from the
    training forward pass with the update's dropout key, so the sampled pairs are the same).

    Raises:
      ConfigError: SGDet ``soft_targets`` whose [B, P] is not the detection batch's.
    """
    if not isinstance(aux, Mapping) or "targets" not in aux:
        return batch
    targets = aux["targets"]
    soft = getattr(batch, "soft_targets", None)
    if soft is None:
        return targets
    expected = tuple(np.shape(targets.pair_labels))
    if tuple(np.shape(soft)[:-1]) != expected:
        raise ConfigError(
            "soft_targets",
            f"have pairs of shape {tuple(np.shape(soft)[:-1])} but the SGDet detection batch "
            f"has {expected}: build them over the detection batch's sampled pairs",
        )
    return targets.replace(soft_targets=soft)


def make_penet_loss(
    config: Any,
    *,
    gamma1: float = 1.0,
    gamma2: float = 7.0,
    num_negatives: int = 10,
    weights: Mapping[str, float] | None = None,
    multi_prototype: bool = False,
) -> LossFn:
    """The PE-Net loss of a model config, as ``loss_fn(outputs, aux, batch)``.

    Args:
      config: a :class:`sgg_jax.relation.penet.PENetConfig` (``task`` decides the object CE,
        ``num_predicates`` bounds ``num_negatives``).
      gamma1, gamma2, num_negatives, weights: see :func:`penet_losses`.
      multi_prototype: RA-SGG phase 2, :func:`ra_sgg_losses` (relation terms against
        ``batch.soft_targets``) instead of :func:`penet_losses`.

    Returns:
      ``loss_fn(outputs, aux, batch) -> (loss, terms)``.

    Raises:
      ConfigError: for a bad margin, ``num_negatives`` or weight.
    """
    for option, value in (("gamma1", gamma1), ("gamma2", gamma2)):
        if not is_finite_number(value):
            raise ConfigError(option, f"must be a finite number, got {value!r}")
    if (
        isinstance(num_negatives, bool)
        or not isinstance(num_negatives, int | np.integer)
        or not 1 <= num_negatives <= config.num_predicates
    ):
        raise ConfigError(
            "num_negatives",
            f"must be an integer in [1, num_predicates={config.num_predicates}], "
            f"got {num_negatives!r}",
        )
    _check_weights(weights)
    num_negatives = int(num_negatives)
    with_objects = config.task in ("sgcls", "sgdet")

    def loss_fn(outputs, aux, batch):
        batch = targets_of(aux, batch)
        if with_objects != ("object_logits" in outputs):
            raise ConfigError(
                "task",
                f"the loss was built for {config.task!r} but the model outputs "
                f"{'no ' if with_objects else ''}object_logits",
            )
        losses = ra_sgg_losses if multi_prototype else penet_losses
        return losses(
            outputs,
            aux,
            batch,
            gamma1=gamma1,
            gamma2=gamma2,
            num_negatives=num_negatives,
            weights=weights,
        )

    return loss_fn


# ----------------------------------------------------------------------------------------------
# RA-SGG phase 2: multi-prototype targets
# ----------------------------------------------------------------------------------------------


def multi_prototype_euclidean_loss(
    relation_projection: jax.Array,
    prototype_projection: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    gamma1: float = 1.0,
    num_negatives: int = 10,
) -> jax.Array:
    """L_e_euc pulled toward several prototypes: the target-weighted mix of per-class hinges' cores.

    RA-SGG trains a relation whose label was augmented toward both prototypes. With
    ``targets = λ·onehot(gt) + (1−λ)·onehot(aug)`` the per-pair loss is
    ``max(0, Σ_c t_c (g_c − g⁻_c) + γ1)``, where ``g_c = ‖r − c_c‖²`` and ``g⁻_c`` is the mean of the
    ``k1`` smallest ``g_j`` over ``j ≠ c`` — the official RA-SGG code's
    ``λ (g⁺ − g⁻) + (1−λ)(g⁺_mix − g⁻_mix) + γ1`` inside one hinge, where each ``g⁻`` excludes only its
    own class. For one-hot targets it equals :func:`prototype_euclidean_loss`.

    Args:
      relation_projection: f32[B, P, D] projected relation vectors ``r``.
      prototype_projection: f32[C, D] projected prototypes ``c``.
      targets: f32[B, P, C] target distribution per pair.
      mask: bool[B, P] pairs that count.
      gamma1: margin γ1.
      num_negatives: k1.

    Returns:
      f32[] masked mean of the per-pair hinge.
    """
    num_classes = prototype_projection.shape[0]
    if not 1 <= num_negatives <= num_classes - 1:
        raise ConfigError(
            "num_negatives", f"must lie in [1, {num_classes - 1}] (C − 1), got {num_negatives}"
        )
    distances = squared_distances(relation_projection, prototype_projection)  # g_c
    # The k1 + 1 smallest distances v_0 <= ... <= v_k1. g⁻_c drops class c when it is among the first
    # k1 (d_c <= v_{k1-1}): the k1 smallest of the others are then v_0..v_k1 without d_c. On a tie at
    # v_{k1-1} both readings give the same value, so the comparison is exact.
    smallest = -jax.lax.top_k(-distances, num_negatives + 1)[0]
    first_k = jnp.sum(smallest[..., :num_negatives], axis=-1, keepdims=True)
    extra = smallest[..., num_negatives:]
    in_first_k = distances <= smallest[..., num_negatives - 1 : num_negatives]
    negative = jnp.where(in_first_k, first_k + extra - distances, first_k) / num_negatives  # g⁻_c
    targets = jnp.where(jnp.asarray(mask, bool)[..., None], jnp.asarray(targets, jnp.float32), 0.0)
    core = jnp.sum(targets * (distances - negative), axis=-1)
    return masked_mean(jnp.maximum(core + gamma1, 0.0), mask)


def ra_sgg_losses(
    outputs: Mapping[str, jax.Array],
    aux: Mapping[str, jax.Array],
    batch: SceneGraphBatch,
    *,
    gamma1: float = 1.0,
    gamma2: float = 7.0,
    num_negatives: int = 10,
    weights: Mapping[str, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RA-SGG phase 2: PE-Net's loss with the relation terms against ``batch.soft_targets``.

    ``relation_ce`` becomes the soft-target cross-entropy and ``relation_euclidean`` the
    :func:`multi_prototype_euclidean_loss`; the prototype regularisers and the object CE are PE-Net's.
    Without ``soft_targets`` the batch's hard labels are used (one-hot targets), which gives exactly
    :func:`penet_losses`.

    Args:
      outputs, aux, batch, gamma1, gamma2, num_negatives, weights: as :func:`penet_losses`;
        ``batch.soft_targets`` f32[B, P, C] (rows summing to 1 on real pairs).

    Returns:
      ``(loss f32[], terms)``.
    """
    resolved = _check_weights(weights)
    pair_mask = jnp.asarray(batch.pair_mask, bool)
    prototype_projection = aux["prototype_projection"]
    num_classes = prototype_projection.shape[0]
    if batch.soft_targets is None:
        targets = jax.nn.one_hot(batch.pair_labels, num_classes, dtype=jnp.float32)
    else:
        targets = jnp.asarray(batch.soft_targets, jnp.float32)
        if targets.shape[-1] != num_classes:
            raise ConfigError(
                "soft_targets", f"have {targets.shape[-1]} classes, the model {num_classes}"
            )
    terms = {
        "relation_ce": soft_cross_entropy(outputs["relation_logits"], targets, pair_mask),
        "relation_euclidean": multi_prototype_euclidean_loss(
            aux["relation_projection"],
            prototype_projection,
            targets,
            pair_mask,
            gamma1=gamma1,
            num_negatives=num_negatives,
        ),
    }
    return _with_shared_terms(terms, outputs, prototype_projection, batch, gamma2, resolved)
