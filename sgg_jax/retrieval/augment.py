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

Predicate counts of zero are clipped to 1 so that every propensity is positive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError, DataError, is_finite_number

WEIGHTINGS = ("inverse_propensity", "class_balanced", "uniform")
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
