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
* :func:`cce`, :func:`focal`, :func:`scorer_bce`, :func:`cce_scorer_total`,
  :func:`cce_scorer_losses` — Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by
  Learning to Contrast and Score" (ACCV 2020, Sec. 3): the contrasting cross-entropy against
  the hardest negative predicate, the focal loss it is compared with, and the Scorer's binary
  cross-entropy; ``L = L_other + λ1·L_CCE + λ2·L_BCE``, checked against the official code
  (``stevehuanghe/scene_graph``, ``train_rels.py`` / ``config.py``): there CCE *replaces* the
  relation cross-entropy and is averaged over all relations, background included (the
  ``"official"`` variant); keeping the CE is the ``"paper"`` variant. :class:`CCEScorerLossConfig`
  / :func:`make_cce_scorer_loss` build that total for a MotifNet or PE-Net base model (one row of
  the paper's ablation: +CCE, +Scorer, focal (×100, as the official code) instead of CE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgg_jax.errors import (
    ConfigError,
    check_bool,
    check_choice,
    check_non_negative,
    is_finite_number,
)
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
    input batch."""
    return aux.get("targets", batch) if isinstance(aux, Mapping) else batch


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
      config: a :class:`sgg_jax.models.penet.PENetConfig` (``task`` decides the object CE,
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


# ----------------------------------------------------------------------------------------------
# CCE + Scorer (Huang et al., ACCV 2020)
# ----------------------------------------------------------------------------------------------
#
# "Official code" below = github.com/stevehuanghe/scene_graph at commit f53affa (Oct 2020), files
# train_rels.py and config.py. The helpers those lines call (lib/utils.py get_neg_labels,
# lib/focal_loss.py FocalLoss, lib/ranker.py) were never published: the repository's
# .gitignore:17 ignores lib/, so what they do is stated here as an inference, not a citation.

CCE_VARIANTS = ("official", "paper")
CCE_BACKGROUND_MODES = ("skip", "include")
CCE_NEGATIVE_POOLS = ("foreground", "any")


def hardest_negative(
    logits: jax.Array, labels: jax.Array, negatives: str = "foreground"
) -> jax.Array:
    """ŷ: the most probable class other than the true class (and other than background).

    Official code: ``train_rels.py:240`` takes ŷ from ``get_neg_labels(result.rel_dists, gt_rels)``
    (imported at ``train_rels.py:32`` from ``lib/utils.py``, which is not published). Its two
    plausible readings are both offered:

    * ``"foreground"`` (default): ``argmax_{j ∉ {0, y}} z_j``; background is never a negative.
    * ``"any"``: ``argmax_{j ≠ y} z_j``; background can be a foreground row's hardest negative.

    A **background row** (``y = 0``) gets the same ŷ under both: the most probable foreground
    predicate ``argmax_{j >= 1} z_j``. Ties go to the lowest index (``jnp.argmax``, as
    ``torch.argmax`` documents); the CCE *value* does not depend on the tie-break (the chosen logit
    is the maximum either way), only which tied column receives the gradient.

    Args:
      logits: f32[..., C] with column 0 = background.
      labels: int[...] true classes in ``[0, C)``.
      negatives: ``"foreground"`` or ``"any"`` (above).

    Returns:
      int32[...] ŷ; 0 where no class is left (``"foreground"``, C = 2 and y = 1).
    """
    check_choice("cce_negatives", negatives, list(CCE_NEGATIVE_POOLS))
    logits = jnp.asarray(logits, jnp.float32)
    classes = jnp.arange(logits.shape[-1])
    candidates = classes != jnp.asarray(labels, jnp.int32)[..., None]
    if negatives == "foreground":
        candidates = candidates & (classes != 0)
    return jnp.argmax(jnp.where(candidates, logits, -jnp.inf), axis=-1).astype(jnp.int32)


def cce(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    margin: float = 0.0,
    *,
    background: str = "skip",
    negatives: str = "foreground",
) -> jax.Array:
    """Contrasting cross-entropy (Huang et al., ACCV 2020), mean over counted relations.

    Per relation ``L_CCE = max(CE(p, y) − CE(p, ŷ) + α, 0) = max(log p_ŷ − log p_y + α, 0)`` with
    ``ŷ`` the hardest negative (:func:`hardest_negative`). The official code computes the two
    cross-entropies and subtracts them (``train_rels.py:242-243``, ``F.cross_entropy(...,
    reduce=False)`` twice, ``+ conf.m1``), takes ``F.relu`` and the plain ``.mean()`` over the
    rows (``train_rels.py:244``). The log-softmax normaliser cancels, so here the term is
    ``z_ŷ − z_y + α`` on the logits (equal, and overflow-free). The selection of ``ŷ`` is an
    argmax (no gradient); the gradient reaches the true logit (−) and the hardest-negative logit
    (+).

    Background-labelled pairs (``y = 0``):

    * ``"include"``: counted, with ŷ = the most probable foreground predicate. This is the
      official code: its ``.mean()`` runs over every sampled relation row, background rows
      included (``gt_rels = result.rel_labels[:, -1]``, ``train_rels.py:215``; the Scorer's
      target ``gt_rels > 0`` at ``train_rels.py:219`` shows those rows hold background pairs).
    * ``"skip"``: not counted (the default here, and the ``"paper"`` variant of
      :class:`CCEScorerLossConfig`, where the relation CE still trains background).

    Args:
      logits: f32[..., C] relation logits, column 0 = background (C = P + 1).
      labels: int[...] classes in ``[0, C)`` (0 = background).
      mask: bool[...] entries that count (real pairs).
      margin: α >= 0 (official ``-m1``, default 0: ``config.py:254``).
      background: ``"skip"`` or ``"include"`` (above).
      negatives: ``"foreground"`` or ``"any"`` (:func:`hardest_negative`).

    Returns:
      f32[] the mean of the per-relation terms over the counted relations (masked, foreground
      unless ``"include"``, and with a negative class to contrast); 0 when none counts.

    Raises:
      ConfigError: for a negative or non-finite ``margin``, or an unknown ``background`` or
        ``negatives``.
    """
    margin = check_non_negative("margin", margin)
    check_choice("background", background, list(CCE_BACKGROUND_MODES))
    logits = jnp.asarray(logits, jnp.float32)
    mask = jnp.asarray(mask, bool)
    labels = jnp.where(mask, jnp.asarray(labels, jnp.int32), 0)
    hardest = hardest_negative(logits, labels, negatives)  # ŷ
    positive_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    negative_logit = jnp.take_along_axis(logits, hardest[..., None], axis=-1)[..., 0]
    per_relation = jnp.maximum(negative_logit - positive_logit + margin, 0.0)
    # No negative to contrast when ŷ fell back to an excluded class ("foreground", C = 2, y = 1).
    has_negative = hardest != labels
    if negatives == "foreground":
        has_negative = has_negative & (hardest != 0)
    counted = mask & has_negative
    if background == "skip":
        counted = counted & (labels != 0)
    return masked_mean(per_relation, counted)


def focal(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    gamma: float = 4.0,
    weight: jax.Array | None = None,
) -> jax.Array:
    """Focal loss ``−w_y (1 − p_y)^γ log p_y`` (Lin et al., 2017), mean over the masked entries.

    The official baseline (``-loss focal``) is ``conf.lambda1 * focal_loss(rel_dists, gt_rels)``
    (``train_rels.py:247-248``) with ``FocalLoss(gamma=conf.gamma)`` (``train_rels.py:58``; γ
    defaults to 2, ``config.py:256``; λ1 to 100, ``config.py:248``). The weight λ1 is applied by
    :func:`make_cce_scorer_loss` (``lambda_focal``). ``lib/focal_loss.py`` is not published, so
    its reduction is taken to be the mean (as every other loss of that file).

    Args:
      logits: f32[..., C].
      labels: int[...] classes in ``[0, C)``.
      mask: bool[...] entries that count.
      gamma: focusing parameter γ >= 0; γ = 0 gives :func:`cross_entropy` (times ``w_y``).
      weight: optional f32[C] class weights ``w`` (default 1). The sum is divided by the mask
        count, not by the sum of the weights (unlike PyTorch's weighted ``mean``).

    Returns:
      f32[] (0 when the mask is empty).

    Raises:
      ConfigError: for a negative or non-finite ``gamma`` or a ``weight`` of the wrong shape.
    """
    gamma = check_non_negative("gamma", gamma)
    logits = jnp.asarray(logits, jnp.float32)
    num_classes = logits.shape[-1]
    mask = jnp.asarray(mask, bool)
    labels = jnp.where(mask, jnp.asarray(labels, jnp.int32), 0)
    log_probabilities = jax.nn.log_softmax(logits, axis=-1)
    log_p = jnp.take_along_axis(log_probabilities, labels[..., None], axis=-1)[..., 0]
    per_entry = -log_p
    if gamma > 0:
        # 1 − p_y = −expm1(log p_y), accurate when p_y is near 1; the floor keeps the gradient of
        # x^γ finite for γ < 1 (the floored branch gets no gradient).
        one_minus_p = jnp.maximum(-jnp.expm1(log_p), 1e-12)
        per_entry = jnp.power(one_minus_p, gamma) * per_entry
    if weight is not None:
        weight = jnp.asarray(weight, jnp.float32)
        if weight.shape != (num_classes,):
            raise ConfigError("weight", f"must have shape ({num_classes},), got {weight.shape}")
        per_entry = weight[labels] * per_entry
    return masked_mean(per_entry, mask)


def scorer_targets(labels: jax.Array) -> jax.Array:
    """The Scorer's targets ``q``: 1 for annotated (foreground) pairs, 0 for background.

    Official code: ``mask = (gt_rels.view(-1) > 0).float()`` (``train_rels.py:219``).

    Args:
      labels: int[...] pair labels (0 = background).

    Returns:
      f32[...].
    """
    return (jnp.asarray(labels) > 0).astype(jnp.float32)


def scorer_bce(score_logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """The Scorer's binary cross-entropy (Huang et al., Sec. 3.4), mean over the masked entries.

    ``−q log σ(s) − (1 − q) log(1 − σ(s))`` computed from the logit ``s`` with log-sigmoids
    (``optax.sigmoid_binary_cross_entropy``), so large ``|s|`` neither overflows nor gives log 0.
    Official code (``-use_rank``, default ``-rloss bce``, ``config.py:264``): ``F.sigmoid`` of the
    ranks, then ``F.binary_cross_entropy`` with its mean over every relation row, times λ2
    (``train_rels.py:217-223``). The ``mse`` / ``margin`` alternatives of ``train_rels.py:224-235``
    are not reproduced.

    Args:
      score_logits: f32[...] score logits ``s`` (the score is ``σ(s)``).
      targets: f32[...] ``q`` in [0, 1]; :func:`scorer_targets` of the pair labels.
      mask: bool[...] entries that count.

    Returns:
      f32[] (0 when the mask is empty).
    """
    per_entry = optax.sigmoid_binary_cross_entropy(
        jnp.asarray(score_logits, jnp.float32), jnp.asarray(targets, jnp.float32)
    )
    return masked_mean(per_entry, mask)


def cce_scorer_total(
    cce_loss: jax.Array,
    bce_loss: jax.Array,
    other_loss: jax.Array | float = 0.0,
    *,
    lambda_cce: float = 100.0,
    lambda_bce: float = 1.0,
) -> jax.Array:
    """``L = L_other + λ1·L_CCE + λ2·L_BCE`` (Huang et al., ACCV 2020).

    In the official code ``L_other`` holds no relation cross-entropy when CCE is on (CCE replaces
    it, ``train_rels.py:239-252``); in the ``"paper"`` variant it does.

    Args:
      cce_loss: f32[] L_CCE (:func:`cce`).
      bce_loss: f32[] L_BCE (:func:`scorer_bce`).
      other_loss: f32[] the model's other losses (e.g. the object cross-entropy).
      lambda_cce: λ1 >= 0 (official default 100, ``config.py:248``).
      lambda_bce: λ2 >= 0 (official default 1, ``config.py:249``).

    Returns:
      f32[] the total.

    Raises:
      ConfigError: naming ``lambda_cce`` or ``lambda_bce`` when negative or not finite.
    """
    lambda_cce = check_non_negative("lambda_cce", lambda_cce)
    lambda_bce = check_non_negative("lambda_bce", lambda_bce)
    return other_loss + lambda_cce * cce_loss + lambda_bce * bce_loss


def _variant_background(variant: str, background: str | None) -> str:
    """The CCE background mode of a variant: official ``"include"``, paper ``"skip"`` by default."""
    check_choice("cce_variant", variant, list(CCE_VARIANTS))
    if background is None:
        return "include" if variant == "official" else "skip"
    check_choice("background", background, list(CCE_BACKGROUND_MODES))
    if variant == "official" and background == "skip":
        raise ConfigError(
            "background",
            "'skip' is a 'paper'-variant option: the official CCE averages over every relation, "
            "background included (train_rels.py:242-244)",
        )
    return background


def cce_scorer_losses(
    relation_logits: jax.Array,
    score_logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    variant: str = "official",
    lambda_cce: float = 100.0,
    lambda_bce: float = 1.0,
    margin: float = 0.0,
    background: str | None = None,
    negatives: str = "foreground",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The relation losses of one pair batch: CCE (± the relation CE) and the Scorer's BCE.

    * ``variant="official"``: ``λ1·L_CCE + λ2·L_BCE``, CCE over all relations (background
      included), no relation CE (``train_rels.py:239-244``).
    * ``variant="paper"``: ``L_CE + λ1·L_CCE + λ2·L_BCE``, CCE over the foreground relations
      unless ``background="include"``.

    Args:
      relation_logits: f32[B, R, C] relation logits (column 0 = background).
      score_logits: f32[B, R] the Scorer's logits.
      labels: int[B, R] pair labels (0 = background).
      mask: bool[B, R] real pairs.
      variant: ``"official"`` or ``"paper"`` (above).
      lambda_cce, lambda_bce: see :func:`cce_scorer_total`.
      margin, negatives: see :func:`cce`.
      background: see :func:`cce`; None = the variant's (official ``"include"``, paper
        ``"skip"``); ``"skip"`` with the official variant raises.

    Returns:
      ``(loss f32[], terms)`` with the unweighted ``cce`` and ``scorer_bce`` (and
      ``relation_ce`` in the paper variant).
    """
    background = _variant_background(variant, background)
    terms = {}
    if variant == "paper":
        terms["relation_ce"] = cross_entropy(relation_logits, labels, mask)
    terms["cce"] = cce(
        relation_logits, labels, mask, margin, background=background, negatives=negatives
    )
    terms["scorer_bce"] = scorer_bce(score_logits, scorer_targets(labels), mask)
    loss = cce_scorer_total(
        terms["cce"],
        terms["scorer_bce"],
        terms.get("relation_ce", 0.0),
        lambda_cce=lambda_cce,
        lambda_bce=lambda_bce,
    )
    return loss, terms


# ----------------------------------------------------------------------------------------------
# Loss builder of the CCE + Scorer experiment (MotifNet or PE-Net base models)
# ----------------------------------------------------------------------------------------------

CCE_SCORER_BASES = ("motifs", "penet")


@dataclasses.dataclass(frozen=True)
class CCEScorerLossConfig:
    """Which terms :func:`make_cce_scorer_loss` adds; invalid values raise :class:`ConfigError`.

    ``L_other`` is the base model's own loss: MotifNet's relation CE (+ object CE in SGCls,
    Scene-Graph-Benchmark's ``RelationLossComputation``) or PE-Net's :func:`penet_losses` (whose
    ``relation_ce`` is L_e_sim). On top of it, with the official code's weights (``config.py:248``
    λ1 = 100, ``config.py:249`` λ2 = 1, ``config.py:254`` α = 0):

    * ``use_cce`` with ``cce_variant="official"`` (default): CCE **replaces** the relation
      cross-entropy: ``L = L_other − relation_ce + λ1·L_CCE``, L_CCE averaged over all relations,
      background included (``train_rels.py:239-246``: ``-loss cce`` computes
      ``lambda1 * relu(CE(y) − CE(ŷ) + m1).mean()`` *instead of* ``F.cross_entropy``).
    * ``use_cce`` with ``cce_variant="paper"``: ``L = L_other + λ1·L_CCE``, the relation CE kept
      and background pairs skipped by CCE (unless ``background="include"``).
    * ``use_scorer``: ``+ λ2·L_BCE`` (``train_rels.py:217-223``).
    * ``use_focal``: the relation cross-entropy is replaced by ``lambda_focal·`` :func:`focal`
      (``train_rels.py:247-248``: the official focal baseline is multiplied by the same
      ``conf.lambda1``, 100 by default). The object CE and PE-Net's other terms stay.

    Attributes:
      base: ``"motifs"`` or ``"penet"``.
      use_cce: add CCE (:func:`cce` on ``outputs["relation_logits"]``).
      use_scorer: add ``λ2·L_BCE`` (:func:`scorer_bce` on ``outputs["scorer_logits"]``, targets
        :func:`scorer_targets` (1 = annotated pair, 0 = background), masked by ``pair_mask``).
      use_focal: focal loss instead of the relation cross-entropy. With the official variant it
        cannot be combined with ``use_cce`` (the official code trains one relation loss).
      cce_variant: ``"official"`` or ``"paper"`` (above).
      lambda_cce: λ1 >= 0 (official 100).
      lambda_bce: λ2 >= 0 (official 1).
      lambda_focal: weight >= 0 of the focal loss (official 100: the same λ1).
      margin: α >= 0 of CCE (official 0).
      background: CCE on background pairs, ``"skip"`` or ``"include"`` (see :func:`cce`); None
        (default) = the variant's: official ``"include"`` (``"skip"`` raises), paper ``"skip"``.
        Resolved in ``__post_init__``.
      cce_negatives: the hardest-negative pool, ``"foreground"`` or ``"any"``
        (:func:`hardest_negative`; the official rule is unpublished).
      gamma: γ >= 0 of the focal loss (4 here, the value the brief fixed for the baseline; the
        official default is 2, ``config.py:256``).
      class_weights: optional float[C] focal class weights ``w`` (column 0 = background), finite
        and >= 0.
    """

    base: str = "motifs"
    use_cce: bool = False
    use_scorer: bool = False
    use_focal: bool = False
    cce_variant: str = "official"
    lambda_cce: float = 100.0
    lambda_bce: float = 1.0
    lambda_focal: float = 100.0
    margin: float = 0.0
    background: str | None = None
    cce_negatives: str = "foreground"
    gamma: float = 4.0
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        check_choice("base", self.base, CCE_SCORER_BASES)
        for option in ("use_cce", "use_scorer", "use_focal"):
            object.__setattr__(self, option, check_bool(option, getattr(self, option)))
        for option in ("lambda_cce", "lambda_bce", "lambda_focal", "margin", "gamma"):
            object.__setattr__(self, option, check_non_negative(option, getattr(self, option)))
        check_choice("cce_negatives", self.cce_negatives, list(CCE_NEGATIVE_POOLS))
        object.__setattr__(
            self, "background", _variant_background(self.cce_variant, self.background)
        )
        if self.cce_variant == "official" and self.use_cce and self.use_focal:
            raise ConfigError(
                "use_focal",
                "cannot be combined with use_cce in the official variant: the official code "
                "trains one relation loss, ce, cce or focal (train_rels.py:239-250)",
            )
        if self.class_weights is not None:
            weights = np.asarray(self.class_weights, np.float64)
            if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ConfigError("class_weights", "must be a 1-d sequence of finite numbers >= 0")
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights))


def make_cce_scorer_loss(
    config: CCEScorerLossConfig,
    model_config: Any,
    *,
    gamma1: float = 1.0,
    gamma2: float = 7.0,
    num_negatives: int | None = None,
) -> LossFn:
    """The loss of one row of the CCE + Scorer ablation, as ``loss_fn(outputs, aux, batch)``.

    Args:
      config: the terms (:class:`CCEScorerLossConfig`).
      model_config: the base model's config (``MotifsConfig`` or ``PENetConfig``): ``task``
        decides the object CE, ``num_relation_classes`` the size of ``class_weights``.
      gamma1, gamma2, num_negatives: PE-Net's margins and k1 (:func:`penet_losses`); k1 defaults
        to ``min(10, num_predicates)`` (the official 10, clipped for small vocabularies).

    Returns:
      ``loss_fn(outputs, aux, batch) -> (loss, terms)`` with the unweighted terms by name:
      ``relation_ce`` (absent with the official CCE) or ``relation_focal``, ``object_ce``
      (SGCls), PE-Net's ``relation_euclidean`` / ``prototype_similarity`` /
      ``prototype_distance``, ``cce`` and ``scorer_bce`` when on. ``loss = Σ other terms +
      lambda_focal·relation_focal + λ1·cce + λ2·scorer_bce``.

    Raises:
      ConfigError: at build time for a bad option (``class_weights`` of the wrong size, PE-Net's
        options); at trace time when the model's outputs do not match (``object_logits`` for the
        task, ``scorer_logits`` with ``use_scorer``).
    """
    if not isinstance(config, CCEScorerLossConfig):
        raise ConfigError("config", f"must be a CCEScorerLossConfig, got {type(config).__name__}")
    num_classes = model_config.num_relation_classes
    weight = None
    if config.class_weights is not None:
        if len(config.class_weights) != num_classes:
            raise ConfigError(
                "class_weights",
                f"must have {num_classes} entries (C = num_predicates + 1), "
                f"got {len(config.class_weights)}",
            )
        weight = np.asarray(config.class_weights, np.float32)
    with_objects = model_config.task in ("sgcls", "sgdet")
    penet_loss = None
    if config.base == "penet":
        if num_negatives is None:
            num_negatives = min(10, model_config.num_predicates)
        penet_loss = make_penet_loss(
            model_config, gamma1=gamma1, gamma2=gamma2, num_negatives=num_negatives
        )
    # Term weights; every other term (object CE, PE-Net's) has weight 1, as the official codes.
    term_weights = {
        "relation_focal": config.lambda_focal,
        "cce": config.lambda_cce,
        "scorer_bce": config.lambda_bce,
    }
    replaces_relation_ce = config.use_focal or (config.use_cce and config.cce_variant == "official")

    def loss_fn(outputs, aux, batch):
        batch = targets_of(aux, batch)
        if with_objects != ("object_logits" in outputs):
            raise ConfigError(
                "task",
                f"the loss was built for {model_config.task!r} but the model outputs "
                f"{'no ' if with_objects else ''}object_logits",
            )
        if config.use_scorer and "scorer_logits" not in outputs:
            raise ConfigError("use_scorer", "the model has no Scorer (outputs['scorer_logits'])")
        pair_mask = jnp.asarray(batch.pair_mask, bool)
        pair_labels = jnp.asarray(batch.pair_labels, jnp.int32)
        relation_logits = outputs["relation_logits"]
        if penet_loss is not None:
            _, terms = penet_loss(outputs, aux, batch)
            terms = dict(terms)
        else:
            terms = {"relation_ce": cross_entropy(relation_logits, pair_labels, pair_mask)}
            if with_objects:
                terms["object_ce"] = cross_entropy(
                    outputs["object_logits"], batch.labels, jnp.asarray(batch.object_mask, bool)
                )
        if replaces_relation_ce:
            del terms["relation_ce"]
        if config.use_focal:
            terms["relation_focal"] = focal(
                relation_logits, pair_labels, pair_mask, config.gamma, weight
            )
        if config.use_cce:
            terms["cce"] = cce(
                relation_logits,
                pair_labels,
                pair_mask,
                config.margin,
                background=config.background,
                negatives=config.cce_negatives,
            )
        if config.use_scorer:
            terms["scorer_bce"] = scorer_bce(
                outputs["scorer_logits"], scorer_targets(pair_labels), pair_mask
            )
        loss = sum(term_weights.get(name, 1.0) * value for name, value in terms.items())
        return loss, terms

    return loss_fn
