"""RA-SGG retrieval-based label augmentation (host side, numpy, outside jit).

Implements the label side of "Retrieval-Augmented Scene Graph Generation via Multi-Prototype
Learning" (RA-SGG; official code ``KanghoonYoon/torch-rasgg``, ``ReTAGPENet.forward``): each
foreground relation retrieves K neighbours from the relation memory bank, and their predicates
decide whether, and to what, the relation gets a second (augmented) label.

* :func:`label_inconsistency` / :func:`select_candidates` — label-inconsistency selection:
  ``d = ‖onehot(gt) − mean_k onehot(p_k)‖₂`` over the predicate classes (valid neighbours only);
  ``d ≥ τ`` makes a multi-label candidate. The official code selects instead on the retrieval
  confidence ``mean_k 1[p_k = gt] < threshold`` and additionally needs a tail predicate among the
  neighbours; this module follows the paper.
* :func:`augment` — inverse-propensity sampling of the augmented predicate among the retrieved
  predicates other than the ground truth. ``weighting`` picks the weights:

  - ``"inverse_propensity"`` (paper): ``w = softmax(Σ_k s_{p_k} onehot(p_k))`` with the inverse
    propensity ``s_p = 1 / π_p``, ``π_p = n_p / Σ_q n_q`` the training frequency. The ``s_p`` are
    first normalised to sum to 1 over the predicates (``normalize_propensity=True``, default), so
    each neighbour adds at most 1 to a logit and the softmax stays graded instead of collapsing
    onto the rarest retrieved predicate (raw ``s_p`` of VG150 reach ~10⁴).
  - ``"class_balanced"`` (official code): ``w_p ∝ h_p · cb_p`` with ``h_p`` the number of
    neighbours with predicate p and ``cb_p = (1 − β) / (1 − β^{n_p})`` (β = 0.99999, the code's
    ``REWEIGHT_BETA``) — a product, not a softmax. The code also leaves the ground truth in the
    support, so it can re-draw the ground truth; here it is always excluded.
  - ``"uniform"`` (the ``--no_ipss`` ablation): ``w_p ∝ h_p``, the raw retrieved histogram.

  ``tail_only`` keeps only predicates rarer than the ground truth (``n_p < n_gt``); ``select=False``
  (``--no_selection``) augments every relation that has a retrieved predicate other than its gt.
  Relations whose (eligible) neighbours all carry the ground truth keep ``augmented = gt``.
* :func:`relabel_background` — the official code's background relabelling (see its docstring).
* :func:`multi_prototype_targets` / :func:`sample_lambda` — soft targets
  ``λ·onehot(gt) + (1 − λ)·onehot(aug)`` with ``λ ~ Beta(20, 5)`` per relation (official code,
  ``RASGG.MIXUP_ALPHA/BETA``) or a fixed λ.

* :func:`official_augment` — the official code's rule (``variant="official"``), over every pair
  of a batch, foreground and background, exactly as ``ReTAGPENet.forward`` states it (file:line
  citations in its docstring).

Predicate counts of zero are clipped to 1 so that every propensity is positive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError, DataError, is_finite_number

WEIGHTINGS = ("inverse_propensity", "class_balanced", "uniform")
VARIANTS = ("paper", "official")
BACKGROUND_RULES = ("any", "majority")


@dataclasses.dataclass(frozen=True)
class AugmentResult:
    """Outcome of :func:`augment` for Q relations.

    Attributes:
      augmented: int32[Q] augmented predicate (= gt where nothing was augmented).
      selected: bool[Q] relations selected as multi-label candidates.
      weights: float64[Q, P+1] sampling distribution per relation (zero rows where nothing was
        sampled).
    """

    augmented: np.ndarray
    selected: np.ndarray
    weights: np.ndarray

    @property
    def selected_fraction(self) -> float:
        """Fraction of relations selected as candidates (0 for Q = 0)."""
        return float(self.selected.mean()) if self.selected.size else 0.0

    @property
    def augmented_fraction(self) -> float:
        """Fraction of relations whose augmented predicate differs from the ground truth."""
        return float(np.mean(self.weights.sum(-1) > 0)) if self.selected.size else 0.0


def _check_neighbours(gt: Any, neighbour_predicates: Any, num_predicates: int):
    gt = np.asarray(gt, np.int64).reshape(-1)
    neighbours = np.asarray(neighbour_predicates, np.int64)
    if neighbours.ndim != 2 or neighbours.shape[0] != gt.shape[0]:
        raise DataError(
            f"must have shape [Q={gt.shape[0]}, K], got {neighbours.shape}",
            field="neighbour_predicates",
        )
    if np.any((gt < 1) | (gt > num_predicates)):
        raise DataError(f"predicates must lie in [1, {num_predicates}]", field="gt")
    if np.any((neighbours < -1) | (neighbours > num_predicates)):
        raise DataError(
            f"predicates must lie in [0, {num_predicates}] or be -1 (missing)",
            field="neighbour_predicates",
        )
    return gt, neighbours


def _histogram(neighbours: np.ndarray, num_classes: int) -> np.ndarray:
    """float64[Q, num_classes] count of valid neighbours per predicate."""
    valid = neighbours >= 0
    histogram = np.zeros((neighbours.shape[0], num_classes), np.float64)
    rows = np.broadcast_to(np.arange(neighbours.shape[0])[:, None], neighbours.shape)
    np.add.at(histogram, (rows[valid], neighbours[valid]), 1.0)
    return histogram


def label_inconsistency(gt: Any, neighbour_predicates: Any, num_predicates: int) -> np.ndarray:
    """Euclidean distance between the gt one-hot and the neighbours' mean one-hot.

    Args:
      gt: int[Q] ground-truth predicates (1-based).
      neighbour_predicates: int[Q, K] retrieved predicates; -1 marks a missing neighbour.
      num_predicates: P; one-hots have P + 1 entries (index 0 = background).

    Returns:
      float64[Q] ``‖onehot(gt) − mean_k onehot(p_k)‖₂`` over valid neighbours; 0 for a relation
      without any valid neighbour (no evidence of inconsistency).
    """
    gt, neighbours = _check_neighbours(gt, neighbour_predicates, num_predicates)
    histogram = _histogram(neighbours, num_predicates + 1)
    num_valid = histogram.sum(-1, keepdims=True)
    mean = histogram / np.maximum(num_valid, 1.0)
    onehot = np.eye(num_predicates + 1)[gt]
    distance = np.linalg.norm(onehot - mean, axis=-1)
    return np.where(num_valid[:, 0] > 0, distance, 0.0)


def select_candidates(distance: Any, tau: float) -> np.ndarray:
    """Multi-label candidates: ``d ≥ τ``.

    Args:
      distance: float[Q] from :func:`label_inconsistency`.
      tau: threshold τ (finite, ≥ 0).

    Returns:
      bool[Q].
    """
    if not is_finite_number(tau):
        raise ConfigError("tau", f"must be a finite number, got {tau!r}")
    if tau < 0:
        raise ConfigError("tau", f"must be >= 0, got {tau!r}")
    return np.asarray(distance, np.float64) >= tau


def class_balanced_weights(predicate_counts: Any, beta: float = 0.99999) -> np.ndarray:
    """Class-balanced weights ``(1 − β) / (1 − β^{n_p})`` (Cui et al.; official RA-SGG code).

    Args:
      predicate_counts: int[P+1] training counts (index 0 ignored; zero counts clipped to 1).
      beta: β in (0, 1).

    Returns:
      float64[P+1] with index 0 set to 0; the official code further divides by the median, which
      cancels when the weights are normalised into a sampling distribution.
    """
    if not is_finite_number(beta) or not 0 < beta < 1:
        raise ConfigError("beta", f"must lie in (0, 1), got {beta!r}")
    counts = np.maximum(_check_counts(predicate_counts), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))  # cb_p
    weights[0] = 0.0
    return weights


def inverse_propensity(predicate_counts: Any, *, normalize: bool = True) -> np.ndarray:
    """Inverse propensity ``s_p = 1 / π_p`` with ``π_p = n_p / Σ_q n_q`` over predicates 1..P.

    Args:
      predicate_counts: int[P+1] training counts (index 0 ignored; zero counts clipped to 1).
      normalize: rescale ``s`` to sum to 1 over predicates 1..P.

    Returns:
      float64[P+1] with index 0 set to 0.
    """
    counts = np.maximum(_check_counts(predicate_counts), 1.0)
    counts[0] = 0.0
    propensity = counts / counts.sum()  # π_p
    scores = np.zeros_like(counts)
    scores[1:] = 1.0 / propensity[1:]  # s_p
    if normalize:
        scores /= scores.sum()
    return scores


def _inverse_cdf_sample(weights: np.ndarray, rows: np.ndarray, rng: np.random.Generator):
    """One class per row in ``rows`` from ``weights`` (rows with positive mass), in row order."""
    cdf = np.cumsum(weights[rows], axis=-1)
    uniforms = rng.random(rows.shape[0]) * cdf[:, -1]
    return np.argmax(cdf > uniforms[:, None], axis=-1)


def _sampling_weights(
    histogram: np.ndarray,
    support: np.ndarray,
    predicate_counts: np.ndarray,
    weighting: str,
    beta: float,
    normalize_propensity: bool,
) -> np.ndarray:
    """Row-normalised weights over ``support`` (bool[Q, P+1]); zero rows where it is empty."""
    if weighting == "inverse_propensity":
        scores = inverse_propensity(predicate_counts, normalize=normalize_propensity)
        logits = np.where(support, histogram * scores[None, :], -np.inf)  # Σ_k s_{p_k} onehot(p_k)
        has_support = support.any(-1, keepdims=True)
        logits = np.where(has_support, logits, 0.0)
        logits = logits - logits.max(-1, keepdims=True)
        unnormalised = np.where(support, np.exp(logits), 0.0)
    elif weighting == "class_balanced":
        unnormalised = np.where(
            support, histogram * class_balanced_weights(predicate_counts, beta), 0.0
        )
    else:  # uniform
        unnormalised = np.where(support, histogram, 0.0)
    total = unnormalised.sum(-1, keepdims=True)
    return np.where(total > 0, unnormalised / np.where(total > 0, total, 1.0), 0.0)


def _check_counts(predicate_counts: Any, num_classes: int | None = None) -> np.ndarray:
    counts = np.asarray(predicate_counts, np.float64)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise DataError(
            f"must have shape [P+1] with P >= 1, got shape {counts.shape}",
            field="predicate_counts",
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise DataError("must be finite non-negative counts", field="predicate_counts")
    if num_classes is not None and counts.shape[0] != num_classes:
        raise DataError(
            f"must have {num_classes} entries, got {counts.shape[0]}", field="predicate_counts"
        )
    return counts


def _check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ConfigError("weighting", f"must be one of {WEIGHTINGS}, got {weighting!r}")


def augment(
    gt: Any,
    neighbour_predicates: Any,
    predicate_counts: Any,
    rng: np.random.Generator,
    *,
    tau: float = 0.5,
    weighting: str = "inverse_propensity",
    beta: float = 0.99999,
    tail_only: bool = False,
    select: bool = True,
    normalize_propensity: bool = True,
) -> AugmentResult:
    """Selects multi-label candidates and samples one augmented predicate for each.

    Args:
      gt: int[Q] ground-truth predicates of foreground relations (1-based).
      neighbour_predicates: int[Q, K] retrieved neighbours' predicates (-1 = missing).
      predicate_counts: int[P+1] training counts per predicate (index 0 ignored).
      rng: numpy Generator; one uniform is drawn per relation that gets sampled, in row order.
      tau: selection threshold τ on :func:`label_inconsistency`.
      weighting: ``"inverse_propensity"`` | ``"class_balanced"`` | ``"uniform"`` (module
        docstring).
      beta: β of ``"class_balanced"``.
      tail_only: only relabel toward predicates with fewer training samples than the gt.
      select: False augments every relation (``--no_selection``), ignoring τ.
      normalize_propensity: normalise the inverse propensities to sum 1 before the softmax.

    Returns:
      :class:`AugmentResult` with ``augmented`` int32[Q], ``selected`` bool[Q] and ``weights``
      float64[Q, P+1].
    """
    _check_weighting(weighting)
    counts = _check_counts(predicate_counts)
    num_predicates = counts.shape[0] - 1
    gt, neighbours = _check_neighbours(gt, neighbour_predicates, num_predicates)
    if weighting == "class_balanced":
        class_balanced_weights(counts, beta)  # validates beta
    distance = label_inconsistency(gt, neighbours, num_predicates)
    selected = select_candidates(distance, tau)  # validates tau even when select=False
    if not select:
        selected = np.ones(gt.shape[0], bool)

    histogram = _histogram(neighbours, num_predicates + 1)
    classes = np.arange(num_predicates + 1)
    support = (histogram > 0) & (classes[None, :] != gt[:, None]) & (classes[None, :] > 0)
    if tail_only:
        clipped = np.maximum(counts, 1.0)
        support &= clipped[None, :] < clipped[gt][:, None]
    support &= selected[:, None]
    weights = _sampling_weights(histogram, support, counts, weighting, beta, normalize_propensity)
    augmented = gt.astype(np.int32)
    rows = np.flatnonzero(weights.sum(-1) > 0)
    if rows.size:
        augmented[rows] = _inverse_cdf_sample(weights, rows, rng)
    return AugmentResult(augmented=augmented, selected=selected, weights=weights)


def _tail_mask(tail_predicates: Any, num_classes: int) -> np.ndarray:
    array = np.asarray(
        sorted(tail_predicates) if isinstance(tail_predicates, set | frozenset) else tail_predicates
    )
    if array.dtype == bool:
        if array.shape != (num_classes,):
            raise ConfigError(
                "tail_predicates", f"a mask must have shape ({num_classes},), got {array.shape}"
            )
        return array.copy()
    ids = array.astype(np.int64).reshape(-1)
    if np.any((ids < 1) | (ids >= num_classes)):
        raise ConfigError("tail_predicates", f"ids must lie in [1, {num_classes - 1}]")
    mask = np.zeros(num_classes, bool)
    mask[ids] = True
    return mask


def relabel_background(
    bg_neighbour_predicates: Any,
    image_ids: Iterable[Any],
    tail_predicates: Any,
    predicate_counts: Any,
    rng: np.random.Generator,
    *,
    rule: str = "any",
    weighting: str = "inverse_propensity",
    beta: float = 0.99999,
    normalize_propensity: bool = True,
) -> np.ndarray:
    """Relabels at most one background pair per image to a retrieved tail predicate.

    The official code (``ReTAGPENet.forward``, ``mask_bg_change``) marks a background pair when
    any of its retrieved neighbours has a tail predicate (``TAIL_IDS``), then keeps per image only
    the *first* marked pair in pair order (``torch.where(m_bg)[0][0]``; a random choice is
    commented out there), and draws its new label from ``h_p · cb_p`` over all retrieved
    predicates. Here:

    * ``rule="any"`` (official code): at least one valid neighbour is a tail predicate;
      ``rule="majority"``: more than half of the valid neighbours are tail predicates.
    * Per image (``image_ids``), the first eligible pair in input order is relabelled.
    * The new label is drawn among the retrieved *tail* predicates only (the code's support also
      holds head/body predicates), with the weights of :func:`augment` (``weighting``).

    Args:
      bg_neighbour_predicates: int[B_bg, K] retrieved predicates of background pairs (-1 =
        missing; 0 = a background neighbour, never a tail predicate).
      image_ids: B_bg image ids (any hashable), one per background pair.
      tail_predicates: set / sequence of tail predicate ids, or bool[P+1] mask.
      predicate_counts: int[P+1] training counts per predicate.
      rng: numpy Generator; one uniform per relabelled pair, in pair order.
      rule: ``"any"`` | ``"majority"``.
      weighting, beta, normalize_propensity: as in :func:`augment`.

    Returns:
      int32[B_bg] new predicate per pair, 0 where the pair stays background.
    """
    if rule not in BACKGROUND_RULES:
        raise ConfigError("rule", f"must be one of {BACKGROUND_RULES}, got {rule!r}")
    _check_weighting(weighting)
    counts = _check_counts(predicate_counts)
    num_classes = counts.shape[0]
    neighbours = np.asarray(bg_neighbour_predicates, np.int64)
    image_ids = list(image_ids)
    if neighbours.ndim != 2 or neighbours.shape[0] != len(image_ids):
        raise DataError(
            f"must have shape [B_bg={len(image_ids)}, K], got {neighbours.shape}",
            field="bg_neighbour_predicates",
        )
    if np.any((neighbours < -1) | (neighbours >= num_classes)):
        raise DataError(
            f"predicates must lie in [0, {num_classes - 1}] or be -1",
            field="bg_neighbour_predicates",
        )
    is_tail = _tail_mask(tail_predicates, num_classes)
    is_tail[0] = False
    histogram = _histogram(neighbours, num_classes)
    tail_votes = (histogram * is_tail[None, :]).sum(-1)
    if rule == "any":
        eligible = tail_votes > 0
    else:
        eligible = tail_votes > 0.5 * histogram.sum(-1)
    chosen = np.zeros(len(image_ids), bool)
    seen = set()
    for index in np.flatnonzero(eligible):
        if image_ids[index] not in seen:
            seen.add(image_ids[index])
            chosen[index] = True
    support = (histogram > 0) & is_tail[None, :] & chosen[:, None]
    weights = _sampling_weights(histogram, support, counts, weighting, beta, normalize_propensity)
    relabelled = np.zeros(len(image_ids), np.int32)
    rows = np.flatnonzero(chosen)
    if rows.size:
        relabelled[rows] = _inverse_cdf_sample(weights, rows, rng)
    return relabelled


def sample_lambda(
    rng: np.random.Generator, size: int, alpha: float = 20.0, beta: float = 5.0
) -> np.ndarray:
    """λ ~ Beta(α, β) per relation (official code: ``RASGG.MIXUP_ALPHA/BETA`` = 20, 5).

    Args:
      rng: numpy Generator.
      size: number of relations Q.
      alpha, beta: Beta parameters (> 0).

    Returns:
      float64[Q], mean α / (α + β) = 0.8 by default.
    """
    for option, value in (("alpha", alpha), ("beta", beta)):
        if not is_finite_number(value) or not value > 0:
            raise ConfigError(option, f"must be a positive number, got {value!r}")
    return rng.beta(alpha, beta, size=int(size))


def multi_prototype_targets(gt: Any, augmented: Any, num_classes: int, lam: Any) -> np.ndarray:
    """Soft targets ``λ·onehot(gt) + (1 − λ)·onehot(aug)``; rows with ``aug = gt`` are one-hot.

    Args:
      gt: int[Q] ground-truth classes in ``[0, num_classes)``.
      augmented: int[Q] augmented classes (= gt where not augmented).
      num_classes: C (= P + 1).
      lam: λ, a scalar or float[Q], each in [0, 1].

    Returns:
      float32[Q, C] rows summing to 1.
    """
    gt = np.asarray(gt, np.int64).reshape(-1)
    augmented = np.asarray(augmented, np.int64).reshape(-1)
    if augmented.shape != gt.shape:
        raise DataError(f"must have shape {gt.shape}, got {augmented.shape}", field="augmented")
    for name, values in (("gt", gt), ("augmented", augmented)):
        if np.any((values < 0) | (values >= num_classes)):
            raise DataError(f"classes must lie in [0, {num_classes})", field=name)
    lam = np.asarray(lam, np.float64)
    if lam.ndim > 1 or (lam.ndim == 1 and lam.shape != gt.shape):
        raise ConfigError("lam", f"must be a scalar or have shape {gt.shape}, got {lam.shape}")
    lam = np.broadcast_to(lam, gt.shape)
    if not np.all((lam >= 0) & (lam <= 1)):
        raise ConfigError("lam", "must lie in [0, 1]")
    eye = np.eye(num_classes)
    targets = lam[:, None] * eye[gt] + (1.0 - lam[:, None]) * eye[augmented]
    return targets.astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# The official code's rule (variant="official").
# ---------------------------------------------------------------------------------------------------


def official_predicate_weights(predicate_counts: Any, beta: float = 0.99999) -> np.ndarray:
    """The official ``freq_rwt``: class-balanced weights divided by their median over predicates.

    ``cb_p = (1 − β) / (1 − β^{n_p})``, ``freq_rwt = cb / median(cb[1:])`` and
    ``freq_rwt[0] = min(freq_rwt[1:])`` (``KanghoonYoon/torch-rasgg`` at e8be01b,
    ``maskrcnn_benchmark/modeling/roi_heads/relation_head/roi_relation_predictors.py``:469-473; the
    background count there is 20× the foreground total, line 439, and is overwritten by the
    minimum). ``torch.median`` of an
    even number of values returns the lower of the two middle ones; so does this function.

    Args:
      predicate_counts: int[P+1] training counts (index 0 ignored; zero counts clipped to 1).
      beta: β in (0, 1) (``REWEIGHT_BETA``, 0.99999 in every official script).

    Returns:
      float64[P+1].
    """
    cb = class_balanced_weights(predicate_counts, beta)
    foreground = np.sort(cb[1:])
    median = foreground[(foreground.shape[0] - 1) // 2]  # torch.median: the lower middle value
    weights = cb / median
    weights[0] = weights[1:].min()
    return weights


def check_tail_ids(tail_ids: Any, num_predicates: int | None = None) -> np.ndarray:
    """Validated tail predicate ids (option ``tail_ids``): non-empty, each in ``[1, P]``.

    Args:
      tail_ids: sequence of predicate ids.
      num_predicates: P, or None to check only ``>= 1``.

    Returns:
      int64 sorted unique ids.

    Raises:
      ConfigError: naming ``tail_ids``.
    """
    try:
        ids = np.asarray(list(tail_ids), np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError("tail_ids", f"must be integer predicate ids, got {tail_ids!r}") from None
    if ids.size == 0:
        raise ConfigError("tail_ids", "the tail set is empty")
    upper = "" if num_predicates is None else f", {num_predicates}"
    bad = ids[(ids < 1) | ((ids > num_predicates) if num_predicates is not None else False)]
    if bad.size:
        raise ConfigError(
            "tail_ids",
            f"id {int(bad[0])} is outside the predicate vocabulary [1{upper or ', P'}]",
        )
    return np.unique(ids)


def check_threshold(threshold: Any) -> float:
    """The official confidence threshold (option ``threshold``), a number in [0, 1]."""
    if not is_finite_number(threshold) or not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError("threshold", f"must lie in [0, 1], got {threshold!r}")
    return float(threshold)


def official_augment(
    labels: Any,
    neighbour_predicates: Any,
    image_ids: Iterable[Any],
    tail_ids: Any,
    predicate_counts: Any,
    rng: np.random.Generator,
    *,
    threshold: float = 0.3,
    beta: float = 0.99999,
    select: bool = True,
    weighting: str = "class_balanced",
) -> AugmentResult:
    """The official code's selection and sampling over every pair of a batch (variant "official").

    Re-states ``ReTAGPENet.forward`` (``KanghoonYoon/torch-rasgg`` at e8be01b,
    ``maskrcnn_benchmark/modeling/roi_heads/relation_head/roi_relation_predictors.py``):

    * line 683-684: ``confidence = #{k : p_k = label} / K`` (float32, K the number of retrieved
      neighbours, missing neighbours counting as mismatches).
    * line 686-688: a foreground relation changes when ``confidence < threshold`` **and** at least
      one neighbour's predicate is in ``tail_ids`` (``torch.isin(retrieved_value_pred,
      self.tail_ids)``); the others keep their label.
    * line 690-710: background pairs with a tail neighbour are candidates; in each image only the
      first one in pair order changes (``torch.where(m_bg)[0][0]``; the random choice of up to
      ``NUM_CORRECT_BG`` is commented out there).
    * line 716-720: the new label is drawn from ``h_p / K · freq_rwt_p`` normalised over the
      predicates, ``h_p`` the neighbour count of p (:func:`official_predicate_weights`), over
      *all* retrieved predicates: the ground truth stays in the support (a redraw keeps the label).
      Unchanged background pairs keep 0.

    ``select=False`` (the "w/o selection" ablation) changes every foreground relation;
    ``weighting="uniform"`` (the "w/o IPSS" ablation) samples from ``h_p`` alone. Neither exists in
    the official code; they are this library's ablations of the official rule.

    Args:
      labels: int[Q] predicate of every pair (0 = background), in the batch's pair order.
      neighbour_predicates: int[Q, K] retrieved predicates (-1 = missing). The official code
        ranks the bank and drops the first hit (``ret_idx[1:K+1]``, line 649); pass what remains.
      image_ids: Q image ids (hashable), one per pair.
      tail_ids: the dataset's tail predicate ids (:mod:`sgg_jax.projects.ra_sgg.tail_sets`).
      predicate_counts: int[P+1] training counts.
      rng: numpy Generator; one uniform per changed pair, in pair order.
      threshold: ``RASGG.THRESHOLD`` (0.3 in every official script).
      beta: ``REWEIGHT_BETA``.
      select: False changes every foreground relation (ablation).
      weighting: ``"class_balanced"`` (official) or ``"uniform"`` (ablation).

    Returns:
      :class:`AugmentResult`: ``augmented`` int32[Q] the mixup label (``mixup_labels``),
      ``selected`` bool[Q] the changed pairs (``mask_change``), ``weights`` float64[Q, P+1] the
      sampling distribution of each changed pair (zero rows elsewhere).
    """
    if weighting not in ("class_balanced", "uniform"):
        raise ConfigError(
            "weighting",
            f"the official rule samples 'class_balanced' or 'uniform', got {weighting!r}",
        )
    threshold = check_threshold(threshold)
    counts = _check_counts(predicate_counts)
    num_classes = counts.shape[0]
    labels = np.asarray(labels, np.int64).reshape(-1)
    neighbours = np.asarray(neighbour_predicates, np.int64)
    image_ids = list(image_ids)
    if neighbours.ndim != 2 or neighbours.shape[0] != labels.shape[0]:
        raise DataError(
            f"must have shape [Q={labels.shape[0]}, K], got {neighbours.shape}",
            field="neighbour_predicates",
        )
    if len(image_ids) != labels.shape[0]:
        raise DataError(
            f"must have {labels.shape[0]} entries, got {len(image_ids)}", field="image_ids"
        )
    if np.any((labels < 0) | (labels >= num_classes)):
        raise DataError(f"predicates must lie in [0, {num_classes - 1}]", field="labels")
    if np.any((neighbours < -1) | (neighbours >= num_classes)):
        raise DataError(
            f"predicates must lie in [0, {num_classes - 1}] or be -1 (missing)",
            field="neighbour_predicates",
        )
    tail = check_tail_ids(tail_ids, num_classes - 1)
    num_neighbours = neighbours.shape[1]
    matches = (neighbours == labels[:, None]).sum(-1)
    confidence = matches.astype(np.float32) / np.float32(max(num_neighbours, 1))
    has_tail = np.isin(neighbours, tail).any(-1)
    foreground = labels != 0
    if select:
        change_fg = (confidence < np.float32(threshold)) & has_tail & foreground
    else:
        change_fg = foreground.copy()
    change_bg = np.zeros_like(change_fg)
    seen = set()
    for index in np.flatnonzero(has_tail & ~foreground):
        if image_ids[index] not in seen:
            seen.add(image_ids[index])
            change_bg[index] = True
    change = change_fg | change_bg
    histogram = _histogram(neighbours, num_classes) / max(num_neighbours, 1)  # retrieved_dists
    if weighting == "class_balanced":
        scale = official_predicate_weights(counts, beta)
    else:
        scale = np.ones(num_classes)
    unnormalised = np.where(change[:, None], histogram * scale[None, :], 0.0)
    total = unnormalised.sum(-1, keepdims=True)
    weights = np.where(total > 0, unnormalised / np.where(total > 0, total, 1.0), 0.0)
    augmented = np.where(foreground, labels, 0).astype(np.int32)
    rows = np.flatnonzero(weights.sum(-1) > 0)
    if rows.size:
        augmented[rows] = _inverse_cdf_sample(weights, rows, rng)
    return AugmentResult(augmented=augmented, selected=change, weights=weights)
