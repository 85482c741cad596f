"""Losses of the CCE + Scorer project as pure functions; every reduction is masked (as
:mod:`sgg_jax.relation.losses`, whose cross-entropy and PE-Net loss they build on).

:func:`cce`, :func:`focal`, :func:`scorer_bce`, :func:`cce_scorer_total`,
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
)
from sgg_jax.masked import masked_mean
from sgg_jax.relation.losses import LossFn, cross_entropy, make_penet_loss, targets_of

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
