"""Triplet samplers: a positive and a negative for every anchor, from a similarity matrix.

The four strategies of Maheshwari et al., "Scene Graph Embeddings Using Relative Similarity
Supervision" (AAAI 2021, Sec. "Triplet sampling"). ``S`` is the ``N x N`` supervision similarity of
the images (e.g. :func:`sgg_jax.projects.sg_embed.similarity.caption_similarity`), ``A`` an anchor; ``P`` and ``N``
are drawn among the **other** images (never ``A`` itself) and are always distinct (``N >= 3``):

* **Random** (:func:`random_triplets`): uniform over the ordered pairs ``(P, N)`` with
  ``s_AP > s_AN`` (strictly). A row where all other similarities are equal has no such pair; it falls
  back to a uniform pair of distinct images (``ordered`` is False there).
* **Extreme** (:func:`extreme_triplets`): deterministic, ``P = argmax_{X != A} s_AX`` and
  ``N = argmin_{X != A, X != P} s_AX``; ties go to the lowest image index. ``rng`` is not used.
* **Probability** (:func:`probability_triplets`): ``Pr(P = X) ∝ s_AX`` and ``Pr(N = X) ∝ 1 - s_AX``,
  a formula for cosine-like similarities in ``[-1, 1]`` (caption similarities with
  ``normalise_captions=True``, the default of :mod:`sgg_jax.projects.sg_embed.similarity`). A similarity outside
  ``[-1, 1]`` (beyond the rounding tolerance :data:`RANGE_TOLERANCE`) raises
  :class:`~sgg_jax.errors.DataError`: un-normalised inner products (a few units) were formerly
  clipped to 1, which set every weight to 0 or 1 and made this sampler a uniform draw of two images
  (and Reject a Random sampler). A negative similarity reads as "no similarity", as in the Ranking
  loss target (:func:`sgg_jax.projects.sg_embed.losses.ranking_targets`): the weights are
  ``w_X = max(s_AX, 0)`` for ``P`` and ``u_X = 1 - max(s_AX, 0)`` for ``N``, so an image with
  ``s_AX <= 0`` is never the positive and is a negative of the largest weight, 1. ``P`` is drawn
  first, then ``N`` among the images other than ``A`` and ``P`` (so
  ``Pr(P, N) = w_P / sum_{X != A} w_X * u_N / sum_{X != A, P} u_X``). When all weights of a draw are
  0 (every ``s_AX <= 0`` for ``P``, or every ``s_AX = 1`` for ``N``) that draw is uniform.
* **Reject** (:func:`reject_triplets`): Probability sampling, but a draw with ``s_AP < s_AN`` is
  rejected and redrawn, at most ``max_retries`` times (ties ``s_AP == s_AN`` are accepted). An
  anchor still rejected after ``1 + max_retries`` draws keeps its last draw with ``P`` and ``N``
  **swapped**, which is correctly ordered (``s_AP > s_AN``). So Reject never returns ``s_AP < s_AN``;
  the accepted draws follow Probability sampling conditioned on ``s_AP >= s_AN``, the rare fallbacks
  (probability ``(1 - alpha)^(1 + max_retries)`` per anchor, ``alpha`` its acceptance rate) the
  swapped distribution. Same ``[-1, 1]`` requirement as Probability.

Random and Extreme read only the order of the similarities: any real values. Only the values the
samplers read are checked (the anchors' rows without the anchor itself: the diagonal never matters);
:func:`check_similarity_range` checks a whole matrix up front (``train_embedding`` calls it).

Every sampler returns a :class:`TripletSample` of image indices, vectorised over the anchors (one
``[A, N - 1]`` gather of the anchors' rows; the full matrix is never copied). Randomness comes only
from the numpy ``Generator`` passed in: same seed, same triplets.

Feeding the losses of :mod:`sgg_jax.projects.sg_embed.losses` (``f`` the L2-normalised embeddings [N, D])::

  t = reject_triplets(S, anchors, rng)
  ranking_loss(f[anchors], f[t.positive], f[t.negative], S[anchors, t.positive], S[anchors, t.negative])
  triplet_loss(f[anchors], f[t.positive], f[t.negative])
  info_nce_loss(f[anchors], f[t.positive], f[t.negative][:, None])   # K = 1 negative

The Ranking loss reads the similarity values, so a misordered triplet (``s_AP < s_AN``, possible with
Probability sampling) is still correct supervision (target below 0.5). Triplet and InfoNCE use binary
labels: ``P`` is *the* positive and ``N`` *the* negative whatever their similarities, so a misordered
triplet pushes the wrong way; that is what Reject sampling avoids. ``mask=t.ordered`` drops triplets
that are not strictly ordered. For InfoNCE with ``K`` negatives, stack the negatives of ``K``
independent draws (``f[np.stack([t_k.negative for t_k in draws], 1)]``, keeping the positive of one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from sgg_jax.errors import ConfigError, DataError, check_int

DEFAULT_MAX_RETRIES = 10
# Samplers whose formula reads similarity values as cosines in [-1, 1] (module docstring).
BOUNDED_SAMPLERS = ("probability", "reject")
SIMILARITY_RANGE = (-1.0, 1.0)
# Values up to this far outside [-1, 1] are float rounding of cosines (clipped, not rejected).
RANGE_TOLERANCE = 1e-5


class TripletSample(NamedTuple):
    """Sampled triplets, one per anchor.

    Attributes:
      positive: int32[A] image index of ``P`` (never the anchor).
      negative: int32[A] image index of ``N`` (never the anchor, never ``P``).
      ordered: bool[A] ``s_AP > s_AN`` (strictly).
    """

    positive: np.ndarray
    negative: np.ndarray
    ordered: np.ndarray


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            "rng", f"expected a numpy Generator (np.random.default_rng(seed)), got {type(rng)}"
        )
    return rng


def _anchor_rows(similarity: Any, anchors: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates inputs; returns (anchors int64[A], others int64[A, N-1], values float64[A, N-1]).

    ``others[a]`` lists every image but ``anchors[a]`` in increasing order and ``values[a, j]`` is
    ``S[anchors[a], others[a, j]]``.
    """
    similarity = similarity if isinstance(similarity, np.ndarray) else np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ConfigError("similarity", f"expected a square [N, N] matrix, got {similarity.shape}")
    if not (
        np.issubdtype(similarity.dtype, np.floating) or np.issubdtype(similarity.dtype, np.integer)
    ):
        raise ConfigError("similarity", f"expected a real numeric array, got {similarity.dtype}")
    num_images = similarity.shape[0]
    if num_images < 3:
        raise ConfigError(
            "similarity",
            f"needs at least 3 images (an anchor and two distinct others), got {num_images}",
        )
    anchors = np.asarray(anchors)
    if anchors.ndim != 1 or not (anchors.size == 0 or np.issubdtype(anchors.dtype, np.integer)):
        raise ConfigError(
            "anchors", f"expected a 1-D integer array, got {anchors.dtype} {anchors.shape}"
        )
    anchors = anchors.astype(np.int64)
    if anchors.size and (anchors.min() < 0 or anchors.max() >= num_images):
        raise ConfigError(
            "anchors",
            f"indices must lie in [0, {num_images}), got {anchors.min()}..{anchors.max()}",
        )
    positions = np.arange(num_images - 1)[None, :]
    others = positions + (positions >= anchors[:, None])
    values = np.asarray(similarity[anchors], np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError("contains NaN or infinite values", field="similarity", record_kind="array")
    values = np.take_along_axis(values, others, axis=1)
    return anchors, others, values


def _range_error(method: str, low: float, high: float) -> DataError:
    return DataError(
        f"the {method} sampler needs similarities in [-1, 1] (Pr(P) ∝ s, Pr(N) ∝ 1 - s), got values "
        f"in [{low:.6g}, {high:.6g}]: use normalised caption similarities (normalise_captions=True) "
        "or rescale the matrix",
        field="similarity",
        record_kind="array",
    )


def _in_range(low: float, high: float) -> bool:
    return (
        low >= SIMILARITY_RANGE[0] - RANGE_TOLERANCE
        and high <= SIMILARITY_RANGE[1] + RANGE_TOLERANCE
    )


def _bounded_values(values: np.ndarray, method: str) -> np.ndarray:
    """``values`` clipped to [-1, 1]; DataError when one lies beyond the rounding tolerance."""
    if values.size and not _in_range(float(values.min()), float(values.max())):
        raise _range_error(method, float(values.min()), float(values.max()))
    return np.clip(values, *SIMILARITY_RANGE)


def check_similarity_range(similarity: Any, method: str, *, rows_per_chunk: int = 1024) -> None:
    """Raises when sampler ``method`` cannot read ``similarity`` (before any triplet is drawn).

    The samplers of :data:`BOUNDED_SAMPLERS` need every off-diagonal value in ``[-1, 1]`` (up to
    :data:`RANGE_TOLERANCE`); the others take any real values.

    Args:
      similarity: float[N, N] supervision similarity (read in chunks of ``rows_per_chunk`` rows, so
        a large matrix is never copied whole).
      method: sampler name.

    Raises:
      ConfigError: ``similarity`` is not square.
      DataError: a value outside ``[-1, 1]`` for a bounded sampler (names the range found).
    """
    if method not in BOUNDED_SAMPLERS:
        return
    matrix = similarity if isinstance(similarity, np.ndarray) else np.asarray(similarity)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError("similarity", f"expected a square [N, N] matrix, got {matrix.shape}")
    check_int("rows_per_chunk", rows_per_chunk, minimum=1)
    if matrix.shape[0] < 2 or _in_range(float(np.min(matrix)), float(np.max(matrix))):
        return
    # Something is out of range: look again without the diagonal (never read by a sampler).
    low, high = np.inf, -np.inf
    for start in range(0, matrix.shape[0], rows_per_chunk):
        block = np.array(matrix[start : start + rows_per_chunk], np.float64)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = np.nan
        low, high = min(low, float(np.nanmin(block))), max(high, float(np.nanmax(block)))
    if not _in_range(low, high):
        raise _range_error(method, low, high)


def _result(
    others: np.ndarray, values: np.ndarray, positive_pos: np.ndarray, negative_pos: np.ndarray
) -> TripletSample:
    rows = np.arange(others.shape[0])
    return TripletSample(
        positive=others[rows, positive_pos].astype(np.int32),
        negative=others[rows, negative_pos].astype(np.int32),
        ordered=values[rows, positive_pos] > values[rows, negative_pos],
    )


def _empty() -> TripletSample:
    return TripletSample(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool))


def random_triplets(similarity: Any, anchors: Any, rng: np.random.Generator) -> TripletSample:
    """Random sampling: ``(P, N)`` uniform over the pairs of other images with ``s_AP > s_AN``.

    Args:
      similarity: float[N, N] supervision similarity, ``N >= 3``.
      anchors: int[A] anchor image indices.
      rng: numpy Generator.

    Returns:
      :class:`TripletSample`; ``ordered`` is False only for anchors whose other similarities are all
      equal (a uniform pair of distinct images then).
    """
    rng = _check_rng(rng)
    anchors, others, values = _anchor_rows(similarity, anchors)
    if anchors.size == 0:
        return _empty()
    num_rows, num_others = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    # below[k]: how many others are strictly less similar than the k-th least similar one, i.e. the
    # number of valid negatives when it is the positive.
    starts_group = np.ones_like(sorted_values, bool)
    starts_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    below = np.maximum.accumulate(np.where(starts_group, np.arange(num_others), 0), axis=1)
    cumulative = np.cumsum(below, axis=1)
    total = cumulative[:, -1]
    positive_sorted = np.zeros(num_rows, np.int64)
    negative_sorted = np.zeros(num_rows, np.int64)
    has_pairs = total > 0
    if np.any(has_pairs):
        # One integer per anchor, uniform over its `total` ordered pairs, decoded to (P, N).
        pair = rng.integers(0, total[has_pairs])
        rows_cumulative = cumulative[has_pairs]
        positive_k = np.sum(rows_cumulative <= pair[:, None], axis=1)
        rows = np.arange(positive_k.size)
        pairs_before = rows_cumulative[rows, positive_k] - below[has_pairs][rows, positive_k]
        positive_sorted[has_pairs] = positive_k
        negative_sorted[has_pairs] = pair - pairs_before
    tied = ~has_pairs
    if np.any(tied):
        count = int(tied.sum())
        first = rng.integers(0, num_others, count)
        second = rng.integers(0, num_others - 1, count)
        positive_sorted[tied] = first
        negative_sorted[tied] = second + (second >= first)
    rows = np.arange(num_rows)
    return _result(others, values, order[rows, positive_sorted], order[rows, negative_sorted])


def extreme_triplets(
    similarity: Any, anchors: Any, rng: np.random.Generator | None = None
) -> TripletSample:
    """Extreme sampling: the most similar other image is ``P``, the least similar (``!= P``) is ``N``.

    Args:
      similarity: float[N, N] supervision similarity, ``N >= 3``.
      anchors: int[A] anchor image indices.
      rng: ignored (same signature as the random samplers).

    Returns:
      :class:`TripletSample`; ties are broken by the lowest image index.
    """
    del rng
    anchors, others, values = _anchor_rows(similarity, anchors)
    if anchors.size == 0:
        return _empty()
    rows = np.arange(values.shape[0])
    positive_pos = np.argmax(values, axis=1)
    without_positive = values.copy()
    without_positive[rows, positive_pos] = np.inf
    negative_pos = np.argmin(without_positive, axis=1)
    return _result(others, values, positive_pos, negative_pos)


def _categorical(rng: np.random.Generator, weights: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """One draw per row, ``Pr(j) ∝ weights[j]`` over ``allowed`` (uniform over it when all are 0)."""
    weights = np.where(allowed, weights, 0.0)
    no_weight = weights.sum(axis=1) <= 0
    weights[no_weight] = allowed[no_weight]
    cumulative = np.cumsum(weights, axis=1)
    point = rng.random(weights.shape[0]) * cumulative[:, -1]
    chosen = np.sum(cumulative <= point[:, None], axis=1)
    # Rounding can put `point` on the total: fall back to the last entry with a positive weight.
    last_positive = weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
    return np.minimum(chosen, last_positive)


def _probability_positions(
    rng: np.random.Generator, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Pr(P = X) ∝ max(s_AX, 0), Pr(N = X) ∝ 1 - max(s_AX, 0), values already in [-1, 1].
    clipped = np.clip(values, 0.0, 1.0)
    everything = np.ones(values.shape, bool)
    positive_pos = _categorical(rng, clipped, everything)
    not_positive = everything.copy()
    not_positive[np.arange(values.shape[0]), positive_pos] = False
    negative_pos = _categorical(rng, 1.0 - clipped, not_positive)
    return positive_pos, negative_pos


def probability_triplets(similarity: Any, anchors: Any, rng: np.random.Generator) -> TripletSample:
    """Probability sampling: ``Pr(P) ∝ s_AP``, then ``Pr(N) ∝ 1 - s_AN`` among the rest (module docstring).

    Args:
      similarity: float[N, N] supervision similarity in ``[-1, 1]``, ``N >= 3`` (negative values
        read as 0).
      anchors: int[A] anchor image indices.
      rng: numpy Generator.

    Returns:
      :class:`TripletSample` (``ordered`` may be False: misordered draws are kept).

    Raises:
      DataError: a similarity the sampler reads lies outside ``[-1, 1]``.
    """
    rng = _check_rng(rng)
    anchors, others, values = _anchor_rows(similarity, anchors)
    if anchors.size == 0:
        return _empty()
    positive_pos, negative_pos = _probability_positions(rng, _bounded_values(values, "probability"))
    return _result(others, values, positive_pos, negative_pos)


def reject_triplets(
    similarity: Any,
    anchors: Any,
    rng: np.random.Generator,
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> TripletSample:
    """Reject sampling: Probability sampling, redrawing triplets with ``s_AP < s_AN`` (module docstring).

    Args:
      similarity: float[N, N] supervision similarity in ``[-1, 1]``, ``N >= 3``.
      anchors: int[A] anchor image indices.
      rng: numpy Generator.
      max_retries: redraws per anchor after the first draw (>= 0); an anchor still rejected then gets
        its last draw with ``P`` and ``N`` swapped.

    Returns:
      :class:`TripletSample` with ``s_AP >= s_AN`` for every anchor.

    Raises:
      DataError: a similarity the sampler reads lies outside ``[-1, 1]``.
    """
    rng = _check_rng(rng)
    check_int("max_retries", max_retries, minimum=0)
    anchors, others, values = _anchor_rows(similarity, anchors)
    if anchors.size == 0:
        return _empty()
    bounded = _bounded_values(values, "reject")
    rows = np.arange(values.shape[0])
    positive_pos, negative_pos = _probability_positions(rng, bounded)
    rejected = values[rows, positive_pos] < values[rows, negative_pos]
    for _ in range(max_retries):
        if not np.any(rejected):
            break
        redraw = np.flatnonzero(rejected)
        new_positive, new_negative = _probability_positions(rng, bounded[redraw])
        positive_pos[redraw] = new_positive
        negative_pos[redraw] = new_negative
        rejected[redraw] = values[redraw, new_positive] < values[redraw, new_negative]
    # Fallback: swapping a rejected draw (s_AP < s_AN) gives a correctly ordered triplet.
    positive_pos, negative_pos = (
        np.where(rejected, negative_pos, positive_pos),
        np.where(rejected, positive_pos, negative_pos),
    )
    return _result(others, values, positive_pos, negative_pos)


Sampler = Callable[..., TripletSample]

SAMPLERS: dict[str, Sampler] = {
    "random": random_triplets,
    "extreme": extreme_triplets,
    "probability": probability_triplets,
    "reject": reject_triplets,
}


def sample_triplets(
    method: str, similarity: Any, anchors: Any, rng: np.random.Generator, **options: Any
) -> TripletSample:
    """Dispatches to the sampler named ``method`` (``random``, ``extreme``, ``probability``, ``reject``).

    Args:
      method: sampler name (keys of :data:`SAMPLERS`).
      similarity: float[N, N] supervision similarity.
      anchors: int[A] anchor image indices.
      rng: numpy Generator.
      **options: sampler options (``max_retries`` for ``reject``).

    Returns:
      :class:`TripletSample`.

    Raises:
      ConfigError: unknown ``method`` or an option the sampler does not take.
    """
    if method not in SAMPLERS:
        raise ConfigError("method", f"must be one of {sorted(SAMPLERS)}, got {method!r}")
    if options and method != "reject":
        raise ConfigError(method, f"takes no options, got {sorted(options)}")
    unknown = set(options) - {"max_retries"}
    if unknown:
        raise ConfigError(method, f"unknown options {sorted(unknown)}")
    return SAMPLERS[method](similarity, anchors, rng, **options)
