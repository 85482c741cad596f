"""Evaluation of scene-graph embeddings: rank correlations and retrieval with incomplete queries.

Implements the two evaluations of Maheshwari et al., "Scene Graph Embeddings Using Relative Similarity
Supervision" (AAAI 2021):

* **Rank correlations** (the paper's ranking-quality evaluation): the model similarity of images ``X`` and
  ``Y`` is the cosine ``f_X . f_Y`` of the L2-normalised embeddings; it is compared with a target
  similarity ``s_XY`` (e.g. from captions) by Kendall's tau-b, Spearman's rho and Pearson's r,

  - *row-wise*: for every image, over the other ``N - 1`` images (the diagonal is left out), then
    averaged over the images where the coefficient is defined (see :func:`rank_correlations`);
  - *all pairs*: over the ``N (N - 1) / 2`` unordered pairs ``i < j`` (upper triangle).

  :func:`kendall_tau_b`, :func:`spearman_rho` and :func:`pearson_r` are numpy implementations batched
  over leading axes. Kendall's tau-b counts discordant pairs as inversions with a bit-level
  counting scheme (one stable sort per bit of the rank range): ``O(n log^2 n)`` time and ``O(n)``
  memory per row, so rows of a few thousand values and all-pairs vectors of a few million values
  are both practical. :func:`random_embedding_baseline` gives the chance level.

* **Retrieval with incomplete queries** (the paper's noisy-query retrieval): the query for
  test image ``i`` is its scene graph with ``M`` random relations removed (:func:`remove_edges`);
  it should retrieve gallery image ``i`` (its own, unmodified graph). :func:`retrieval_metrics`
  reports MRR, R@k and the recall curve with ranks taken from a :mod:`sgg_jax.retrieval.index`
  search over the whole gallery; :func:`noise_sweep` runs it for ``M = 1 .. 20`` and
  :func:`plot_noise_sweep` draws MRR / R@1 / R@5 against ``M``.

Documented choices:

* Zero embeddings follow :func:`sgg_jax.retrieval.index.l2_normalize`: they stay zero and have cosine
  0 with everything.
* A correlation of a constant vector is undefined (NaN), as in scipy; row-wise averages skip such rows
  and ``*_row_defined`` says how many rows were averaged.
* Ranks are *pessimistic on ties* by default: the target counts as last among the gallery entries
  with the same score (``rank = #{gallery j : score_j >= score_target}``), so a degenerate query
  (e.g. the zero embedding of an empty graph) gets rank ``G``, not a rank that depends on the gallery
  order. ``ties="index"`` uses the index's own order instead (equal scores by lower gallery position).
* Removing all relations leaves a graph with **no objects and no relations** (only the image-level
  fields): the query is the image node alone (objects that had no relation in the input are dropped
  too, unless ``keep_unrelated_objects``). Embedding functions passed to :func:`noise_sweep` must
  accept such graphs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.retrieval.index import make_index
from sgg_jax.structures import SceneGraph

DEFAULT_KS = (1, 5, 10, 20, 50, 100)
CORRELATIONS = ("kendall", "spearman", "pearson")
TIES = ("pessimistic", "index")


# ---------------------------------------------------------------------------------------------------
# Input checks.
# ---------------------------------------------------------------------------------------------------


def _check_matrix(name: str, values: Any) -> np.ndarray:
    """float64[N, D] from a finite numeric 2-D array; ConfigError on shape / dtype, DataError on NaN."""
    array = np.asarray(values)
    if array.ndim != 2:
        raise ConfigError(name, f"expected a 2-D array, got shape {array.shape}")
    if not (
        np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)
    ):
        raise ConfigError(name, f"expected a real numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise DataError("contains NaN or infinite values", field=name, record_kind="array")
    return array


def _check_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim == 0:
        raise ConfigError("y", f"x and y must have one shape [..., n], got {x.shape} and {y.shape}")
    if x.shape[-1] < 2:
        raise ConfigError("x", f"need at least 2 values along the last axis, got {x.shape[-1]}")
    for name, values in (("x", x), ("y", y)):
        if not np.all(np.isfinite(values)):
            raise DataError("contains NaN or infinite values", field=name, record_kind="array")
    return x, y


# ---------------------------------------------------------------------------------------------------
# Correlation coefficients (batched over leading axes, computed along the last axis).
# ---------------------------------------------------------------------------------------------------


def _tie_pairs(sorted_values: np.ndarray) -> np.ndarray:
    """int64[B]: number of tied pairs ``sum_t t (t - 1) / 2`` in each row of a row-sorted [B, n]."""
    num_rows, n = sorted_values.shape
    starts = np.ones((num_rows, n), bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    # Position of each element within its run of equal values: it is tied with that many before it.
    index = np.broadcast_to(np.arange(n), (num_rows, n))
    run_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return (index - run_start).sum(axis=1, dtype=np.int64)


def _dense_ranks(values: np.ndarray) -> np.ndarray:
    """int64[B, n]: 0-based dense ranks of each row (equal values share a rank, no gaps)."""
    order = np.argsort(values, axis=1, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=1)
    new_value = np.zeros(values.shape, np.int64)
    new_value[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ranks = np.empty(values.shape, np.int64)
    np.put_along_axis(ranks, order, np.cumsum(new_value, axis=1), axis=1)
    return ranks


def _count_inversions(ranks: np.ndarray) -> np.ndarray:
    """int64[B]: pairs ``p < q`` with ``ranks[p] > ranks[q]`` (strict) in each row of int[B, n].

    A pair is an inversion exactly when, at the highest bit where the two ranks differ, the earlier
    one has a 1 and the later one a 0 (their higher bits being equal). For every bit, elements are
    grouped by (row, higher bits) with a stable sort that keeps their order, and each element with a 0
    at that bit counts the 1s before it in its group. Time ``O(n log n)`` per bit, ``log2(max rank)``
    bits; memory ``O(B n)``.
    """
    num_rows, n = ranks.shape
    ranks = ranks.astype(np.int64)
    num_bits = max(1, int(ranks.max(initial=0)).bit_length())
    row = np.repeat(np.arange(num_rows, dtype=np.int64), n)
    flat = ranks.reshape(-1)
    inversions = np.zeros(num_rows, np.int64)
    for bit in range(num_bits):
        prefix = flat >> (bit + 1)
        groups_per_row = (int(flat.max(initial=0)) >> (bit + 1)) + 1
        order = np.argsort(row * groups_per_row + prefix, kind="stable")
        group = (row * groups_per_row + prefix)[order]
        ones = ((flat[order] >> bit) & 1).astype(np.int64)
        ones_before = np.cumsum(ones) - ones  # 1s before each element, over the whole array
        starts = np.ones(group.shape[0], bool)
        starts[1:] = group[1:] != group[:-1]
        group_offset = np.maximum.accumulate(np.where(starts, ones_before, 0))
        # Groups never cross rows and sorted order is row-major, so each row is a contiguous block.
        counts = np.where(ones == 0, ones_before - group_offset, 0)
        inversions += counts.reshape(num_rows, n).sum(axis=1)
    return inversions


def kendall_tau_b(x: Any, y: Any) -> np.ndarray:
    """Kendall's tau-b (tie-corrected) along the last axis, batched over leading axes.

    ``tau_b = (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` with ``n_0 = n(n-1)/2`` pairs, ``n_1`` /
    ``n_2`` the pairs tied in ``x`` / ``y``; equals ``scipy.stats.kendalltau(x, y, variant="b")``.
    Discordant pairs are counted as inversions (see :func:`_count_inversions`): ``O(n log^2 n)`` time
    per row.

    Args:
      x: float[..., n].
      y: float[..., n], same shape.

    Returns:
      float64[...]; NaN where ``x`` or ``y`` is constant.

    Raises:
      ConfigError: shapes differ or ``n < 2``.
      DataError: NaN or infinite values.
    """
    x, y = _check_pair(x, y)
    batch_shape, n = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, n)
    y = y.reshape(-1, n)
    # Sort by x, then y: within a run of equal x the y are ascending, so no x-tie is an inversion.
    order = np.lexsort((y, x), axis=1)
    x_sorted = np.take_along_axis(x, order, axis=1)
    y_in_x_order = np.take_along_axis(y, order, axis=1)
    discordant = _count_inversions(np.take_along_axis(_dense_ranks(y), order, axis=1))
    total = n * (n - 1) // 2
    x_ties = _tie_pairs(x_sorted)
    y_ties = _tie_pairs(np.sort(y, axis=1))
    # Pairs tied in both: runs of equal (x, y) in the lexsorted order.
    joint_start = np.ones(x.shape, bool)
    joint_start[:, 1:] = (x_sorted[:, 1:] != x_sorted[:, :-1]) | (
        y_in_x_order[:, 1:] != y_in_x_order[:, :-1]
    )
    joint_id = np.cumsum(joint_start, axis=1)  # ascending run ids: _tie_pairs counts the runs
    both_ties = _tie_pairs(joint_id)
    concordant_minus_discordant = total - x_ties - y_ties + both_ties - 2 * discordant
    denominator = np.sqrt((total - x_ties).astype(np.float64) * (total - y_ties).astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(denominator > 0, concordant_minus_discordant / denominator, np.nan)
    return np.clip(tau, -1.0, 1.0).reshape(batch_shape)


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing the mean of their positions (scipy "average").

    Args:
      values: float[..., n].

    Returns:
      float64[..., n].
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    flat = values.reshape(-1, n)
    order = np.argsort(flat, axis=1, kind="stable")
    sorted_values = np.take_along_axis(flat, order, axis=1)
    index = np.broadcast_to(np.arange(n), flat.shape)
    starts = np.ones(flat.shape, bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends = np.ones(flat.shape, bool)
    ends[:, :-1] = starts[:, 1:]
    run_first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    run_last = np.flip(
        np.minimum.accumulate(np.flip(np.where(ends, index, n - 1), axis=1), axis=1), axis=1
    )
    ranks = np.empty(flat.shape, np.float64)
    np.put_along_axis(ranks, order, (run_first + run_last) / 2.0 + 1.0, axis=1)
    return ranks.reshape(values.shape)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    numerator = (x * y).sum(axis=-1)
    denominator = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(denominator > 0, numerator / denominator, np.nan)
    return np.clip(r, -1.0, 1.0)


def pearson_r(x: Any, y: Any) -> np.ndarray:
    """Pearson's r along the last axis, batched over leading axes (``O(n)`` per row).

    Args:
      x: float[..., n].
      y: float[..., n], same shape.

    Returns:
      float64[...]; NaN where ``x`` or ``y`` is constant.
    """
    x, y = _check_pair(x, y)
    return _pearson(x, y)


def spearman_rho(x: Any, y: Any) -> np.ndarray:
    """Spearman's rho (Pearson's r of average ranks) along the last axis, ``O(n log n)`` per row.

    Args:
      x: float[..., n].
      y: float[..., n], same shape.

    Returns:
      float64[...]; NaN where ``x`` or ``y`` is constant.
    """
    x, y = _check_pair(x, y)
    return _pearson(average_ranks(x), average_ranks(y))


_CORRELATION_FNS = {"kendall": kendall_tau_b, "spearman": spearman_rho, "pearson": pearson_r}


# ---------------------------------------------------------------------------------------------------
# Rank correlations of model similarities with a target similarity.
# ---------------------------------------------------------------------------------------------------


def cosine_similarity_matrix(embeddings: Any) -> np.ndarray:
    """``f_X . f_Y`` of the L2-normalised embeddings (zero rows stay zero), in float64.

    Args:
      embeddings: float[N, D].

    Returns:
      float64[N, N].
    """
    embeddings = _check_matrix("embeddings", embeddings)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    return unit @ unit.T


def _check_similarity(similarity: Any, num: int) -> np.ndarray:
    similarity = _check_matrix("similarity", similarity)
    if similarity.shape != (num, num):
        raise ConfigError(
            "similarity",
            f"expected a square [{num}, {num}] matrix (one row per embedding), "
            f"got {similarity.shape}",
        )
    return similarity


def _correlations_of(model: np.ndarray, target: np.ndarray) -> dict[str, float | int]:
    num = model.shape[0]
    off_diagonal = ~np.eye(num, dtype=bool)
    model_rows = model[off_diagonal].reshape(num, num - 1)
    target_rows = target[off_diagonal].reshape(num, num - 1)
    upper = np.triu_indices(num, k=1)
    results: dict[str, float | int] = {}
    for name, fn in _CORRELATION_FNS.items():
        per_row = fn(model_rows, target_rows)
        defined = np.isfinite(per_row)
        results[f"{name}_row"] = float(per_row[defined].mean()) if defined.any() else math.nan
        results[f"{name}_row_defined"] = int(defined.sum())
        results[f"{name}_all"] = float(fn(model[upper], target[upper]))
    results["num_images"] = num
    return results


def rank_correlations(embeddings: Any, similarity: Any) -> dict[str, float | int]:
    """Kendall tau-b, Spearman rho and Pearson r between model and target similarities.

    The model similarity is the cosine of the embeddings (:func:`cosine_similarity_matrix`).

    * ``<name>_row``: for every image ``i``, the correlation of ``model[i, j]`` and ``similarity[i, j]``
      over ``j != i``, averaged over the images where it is defined (rows where either side is
      constant give NaN and are skipped; ``<name>_row_defined`` counts the averaged rows, and the
      average is NaN when there are none).
    * ``<name>_all``: the correlation over all pairs ``i < j`` (upper triangle; an asymmetric
      ``similarity`` is read there only).

    Cost: ``O(N^2 log^2 N)`` time for the row-wise Kendall (``N`` rows of ``N - 1``) and for the
    all-pairs one (``N^2 / 2`` values); Spearman / Pearson ``O(N^2 log N)``; memory ``O(N^2)``
    (N = 1000: about 2 s on one CPU core).

    Args:
      embeddings: float[N, D] one embedding per image, ``N >= 3``.
      similarity: float[N, N] target similarity ``s_XY`` (diagonal ignored).

    Returns:
      ``{"kendall_row", "spearman_row", "pearson_row", "kendall_all", "spearman_all", "pearson_all"}``
      (floats in [-1, 1] or NaN), the three ``*_row_defined`` counts and ``"num_images"``.

    Raises:
      ConfigError: ``embeddings`` is not 2-D or has fewer than 3 rows, ``similarity`` is not
        ``[N, N]`` (the option named).
      DataError: NaN or infinite values (the field named).
    """
    embeddings = _check_matrix("embeddings", embeddings)
    num = embeddings.shape[0]
    if num < 3:
        raise ConfigError("embeddings", f"need at least 3 images, got {num}")
    similarity = _check_similarity(similarity, num)
    return _correlations_of(cosine_similarity_matrix(embeddings), similarity)


def random_embedding_baseline(
    num: int, dim: int, similarity: Any, seed: int = 0, repeats: int = 10
) -> dict[str, float]:
    """Chance level of :func:`rank_correlations`: embeddings drawn i.i.d. from ``N(0, 1)``.

    Args:
      num: number of images ``N`` (must match ``similarity``).
      dim: embedding dimension ``D``.
      similarity: float[N, N] target similarity.
      seed: seed of the numpy ``Generator``; same seed, same result.
      repeats: number of random draws averaged.

    Returns:
      The keys of :func:`rank_correlations` (``*_row``, ``*_all``) averaged over the draws, each also
      as ``<key>_std`` (standard deviation over the draws), and ``"repeats"``.

    Raises:
      ConfigError: ``num`` / ``dim`` / ``repeats`` not positive integers (``num >= 3``), ``num`` not
        matching ``similarity``.
      DataError: ``similarity`` has NaN or infinite values.
    """
    check_int("num", num, minimum=3)
    check_int("dim", dim, minimum=1)
    check_int("repeats", repeats, minimum=1)
    check_int("seed", seed, minimum=0)
    similarity = _check_matrix("similarity", similarity)
    if similarity.shape[0] != num:
        raise ConfigError("num", f"is {num} but similarity has shape {similarity.shape}")
    similarity = _check_similarity(similarity, num)
    rng = np.random.default_rng(seed)
    draws = [
        _correlations_of(cosine_similarity_matrix(rng.standard_normal((num, dim))), similarity)
        for _ in range(repeats)
    ]
    results: dict[str, float] = {}
    for name in CORRELATIONS:
        for scope in ("row", "all"):
            key = f"{name}_{scope}"
            values = np.array([draw[key] for draw in draws], np.float64)
            results[key] = float(np.mean(values))
            results[f"{key}_std"] = float(np.std(values))
    results["repeats"] = repeats
    return results


# ---------------------------------------------------------------------------------------------------
# Incomplete queries.
# ---------------------------------------------------------------------------------------------------


def remove_edges(
    graph: SceneGraph,
    num_edges: int,
    rng: np.random.Generator | int | None,
    keep_unrelated_objects: bool = False,
) -> SceneGraph:
    """The graph with ``num_edges`` random relations removed and the objects left isolated dropped.

    ``min(num_edges, R)`` relation rows are drawn uniformly without replacement and removed (a
    duplicate relation on one pair is a separate row). Then every object that is in no remaining
    relation is dropped (by default also objects that had no relation to begin with, so the query is
    exactly the graph of its relations), the remaining objects keep their order, and the remaining
    relations keep their order with subject / object indices re-indexed. Image-level fields
    (``image_id``, size, ``image_path``, ``captions``) are kept. The input graph is not modified.

    When all relations are removed (``num_edges >= R``) the result has **0 objects and 0 relations**:
    the query is only the image node, and the embedding model must handle it (e.g. return its
    image-node / bias embedding, or a zero vector, which ranks the target pessimistically last among
    ties in :func:`retrieval_metrics`).

    Args:
      graph: the scene graph.
      num_edges: number ``M >= 0`` of relations to remove.
      rng: numpy ``Generator`` (advanced in place) or a seed.
      keep_unrelated_objects: keep objects that had no relation in ``graph`` (they are never
        "left isolated" by a removal); only objects that lose their last relation are dropped.

    Returns:
      The reduced :class:`SceneGraph`.

    Raises:
      ConfigError: ``num_edges`` is not an integer ``>= 0``.
      DataError: a relation indexes an object that does not exist (field ``relations``).
    """
    check_int("num_edges", num_edges, minimum=0)
    rng = np.random.default_rng(rng)
    relations = graph.relations
    num_objects = graph.num_objects
    if relations.shape[0] and (relations[:, :2].min() < 0 or relations[:, :2].max() >= num_objects):
        raise DataError(
            f"object index out of range [0, {num_objects})",
            record=graph.image_id,
            field="relations",
        )
    num_removed = min(int(num_edges), relations.shape[0])
    keep_relation = np.ones(relations.shape[0], bool)
    keep_relation[rng.choice(relations.shape[0], size=num_removed, replace=False)] = False
    remaining = relations[keep_relation]
    keep_object = np.zeros(num_objects, bool)
    keep_object[remaining[:, :2].reshape(-1)] = True
    if keep_unrelated_objects:
        related = np.zeros(num_objects, bool)
        related[relations[:, :2].reshape(-1)] = True
        keep_object |= ~related
    new_index = np.full(num_objects, -1, np.int64)
    new_index[keep_object] = np.arange(int(keep_object.sum()))
    new_relations = np.stack(
        [new_index[remaining[:, 0]], new_index[remaining[:, 1]], remaining[:, 2]], axis=1
    ).astype(np.int32)
    return graph.replace(
        boxes=graph.boxes[keep_object].copy(),
        labels=graph.labels[keep_object].copy(),
        relations=new_relations.reshape(-1, 3),
    )


# ---------------------------------------------------------------------------------------------------
# Retrieval metrics.
# ---------------------------------------------------------------------------------------------------


def _check_ks(ks: Any) -> tuple[int, ...]:
    ks = tuple(ks) if isinstance(ks, Iterable) else (ks,)
    if not ks:
        raise ConfigError("ks", "need at least one k")
    for k in ks:
        check_int("ks", k, minimum=1)
    return tuple(sorted({int(k) for k in ks}))


def _build_gallery_index(gallery: np.ndarray, backend: str, index_options: Mapping | None):
    return make_index(backend, **dict(index_options or {})).build(
        gallery.astype(np.float32), np.arange(gallery.shape[0], dtype=np.int64)
    )


def _ranks_from_index(
    index, queries: np.ndarray, target_index: np.ndarray, cutoff: int, ties: str
) -> np.ndarray:
    """float64[Q] 1-based ranks of each query's target (``inf`` beyond ``cutoff`` or not returned)."""
    gallery_size = index.size
    # One extra result past the cut-off tells whether the target ties with something beyond it.
    fetch = min(cutoff + 1, gallery_size)
    ids, scores = index.search(queries.astype(np.float32), fetch)
    is_target = ids == target_index[:, None]
    found = is_target.any(axis=1)
    position = np.argmax(is_target, axis=1)
    if ties == "index":
        ranks = position.astype(np.float64) + 1.0
    else:
        target_score = np.take_along_axis(scores, position[:, None], axis=1)
        ranks = (scores >= target_score).sum(axis=1).astype(np.float64)
    return np.where(found & (ranks <= cutoff), ranks, np.inf)


def _metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"MRR": float(np.mean(1.0 / ranks))}
    for k in ks:
        metrics[f"R@{k}"] = float(np.mean(ranks <= k))
    metrics["recall_curve"] = [float(np.mean(ranks <= k)) for k in range(1, max(ks) + 1)]
    metrics["num_queries"] = int(ranks.shape[0])
    return metrics


def _check_retrieval_options(
    ks: Any, backend: str, cutoff: int | None, ties: str, gallery_size: int
) -> tuple[tuple[int, ...], int]:
    ks = _check_ks(ks)
    if ties not in TIES:
        raise ConfigError("ties", f"expected one of {TIES}, got {ties!r}")
    if not isinstance(backend, str):
        raise ConfigError("backend", f"expected a backend name, got {backend!r}")
    if cutoff is None:
        return ks, gallery_size
    check_int("cutoff", cutoff, minimum=1)
    if cutoff < gallery_size and max(ks) > cutoff:
        raise ConfigError(
            "ks", f"R@{max(ks)} is unknown with cutoff={cutoff} below the gallery size"
        )
    return ks, min(int(cutoff), gallery_size)


def retrieval_ranks(
    query_embeddings: Any,
    gallery_embeddings: Any,
    target_index: Any,
    backend: str = "exact",
    cutoff: int | None = None,
    ties: str = "pessimistic",
    index_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """1-based rank of each query's target in a cosine search over the gallery.

    Args:
      query_embeddings: float[Q, D].
      gallery_embeddings: float[G, D].
      target_index: int[Q], the gallery position each query should retrieve.
      backend: :func:`sgg_jax.retrieval.index.make_index` backend, ``"exact"`` or ``"scann"``.
      cutoff: ranks are exact up to ``cutoff`` and ``inf`` beyond (the search fetches
        ``min(cutoff + 1, G)`` neighbours); ``None``: the whole gallery, every rank exact.
      ties: ``"pessimistic"``: the target is last among equal scores; ``"index"``: the index's order
        (equal scores by lower gallery position).
      index_options: constructor options of the backend (e.g. ScaNN parameters).

    Returns:
      float64[Q] ranks in ``[1, G]`` or ``inf``.

    Raises:
      ConfigError: bad shapes, ``target_index`` out of ``[0, G)``, or bad options (the option named).
      DataError: NaN or infinite embeddings.
    """
    queries, gallery, targets = _check_retrieval_inputs(
        query_embeddings, gallery_embeddings, target_index
    )
    _, cutoff = _check_retrieval_options((1,), backend, cutoff, ties, gallery.shape[0])
    index = _build_gallery_index(gallery, backend, index_options)
    return _ranks_from_index(index, queries, targets, cutoff, ties)


def _check_retrieval_inputs(
    query_embeddings: Any, gallery_embeddings: Any, target_index: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    queries = _check_matrix("query_embeddings", query_embeddings)
    gallery = _check_matrix("gallery_embeddings", gallery_embeddings)
    if gallery.shape[0] == 0 or gallery.shape[1] == 0:
        raise ConfigError("gallery_embeddings", f"gallery must be non-empty, got {gallery.shape}")
    if queries.shape[1] != gallery.shape[1]:
        raise ConfigError(
            "query_embeddings",
            f"dimension {queries.shape[1]} differs from the gallery's {gallery.shape[1]}",
        )
    targets = np.asarray(target_index)
    if targets.shape != (queries.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
        raise ConfigError(
            "target_index",
            f"expected integer positions of shape ({queries.shape[0]},), "
            f"got {targets.dtype}{targets.shape}",
        )
    targets = targets.astype(np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= gallery.shape[0]):
        raise ConfigError("target_index", f"positions must lie in [0, {gallery.shape[0]})")
    return queries, gallery, targets


def retrieval_metrics(
    query_embeddings: Any,
    gallery_embeddings: Any,
    target_index: Any,
    ks: Sequence[int] = DEFAULT_KS,
    backend: str = "exact",
    cutoff: int | None = None,
    ties: str = "pessimistic",
    index_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """MRR and R@k of retrieving each query's target from the gallery (cosine similarity).

    Ranks come from :func:`retrieval_ranks` (exact over the whole gallery by default; see there for
    ``cutoff`` and ``ties``). ``MRR = mean(1 / rank)`` with ``1 / inf = 0``; ``R@k = mean(rank <= k)``.

    Args:
      query_embeddings: float[Q, D], e.g. embeddings of the incomplete query graphs.
      gallery_embeddings: float[G, D], e.g. embeddings of the unmodified graphs.
      target_index: int[Q]; for the incomplete-query protocol ``arange(Q)`` (query ``i`` should find
        gallery image ``i``).
      ks: the cut-offs reported as ``R@k``; with a ``cutoff`` below ``G`` each ``k <= cutoff``.
      backend: ``"exact"`` or ``"scann"``.
      cutoff: ``None`` (exact ranks over the whole gallery) or the largest exact rank.
      ties: ``"pessimistic"`` (default) or ``"index"``.
      index_options: constructor options of the backend.

    Returns:
      ``{"MRR": float, "R@k": float for k in ks, "recall_curve": [R@1, R@2, ..., R@max(ks)],
      "num_queries": Q}``, fractions in [0, 1].

    Raises:
      ConfigError: bad shapes or options (the option named).
      DataError: NaN or infinite embeddings.
    """
    queries, gallery, targets = _check_retrieval_inputs(
        query_embeddings, gallery_embeddings, target_index
    )
    if queries.shape[0] == 0:
        raise ConfigError("query_embeddings", "need at least one query")
    ks, cutoff = _check_retrieval_options(ks, backend, cutoff, ties, gallery.shape[0])
    index = _build_gallery_index(gallery, backend, index_options)
    return _metrics_from_ranks(_ranks_from_index(index, queries, targets, cutoff, ties), ks)


def _embed(embed_fn: Callable, graphs: list[SceneGraph], dim: int | None) -> np.ndarray:
    embeddings = np.asarray(embed_fn(graphs))
    if embeddings.ndim != 2 or embeddings.shape[0] != len(graphs):
        raise ConfigError(
            "embed_fn", f"must return [{len(graphs)}, D] embeddings, got shape {embeddings.shape}"
        )
    if dim is not None and embeddings.shape[1] != dim:
        raise ConfigError("embed_fn", f"returned dimension {embeddings.shape[1]}, earlier {dim}")
    return _check_matrix("embed_fn", embeddings)


def noise_sweep(
    embed_fn: Callable[[list[SceneGraph]], Any],
    graphs: Sequence[SceneGraph],
    Ms: Iterable[int] = range(1, 21),  # the paper's name
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    backend: str = "exact",
    cutoff: int | None = None,
    ties: str = "pessimistic",
    keep_unrelated_objects: bool = False,
    index_options: Mapping[str, Any] | None = None,
) -> dict[int, dict[str, Any]]:
    """Retrieval with incomplete queries for each number ``M`` of removed relations.

    The gallery is ``embed_fn(graphs)`` (embedded and indexed once). For each ``M`` the query of image
    ``i`` is ``remove_edges(graphs[i], M, rng)`` and its target is gallery image ``i``. The generator
    for ``M`` is ``numpy.random.default_rng([seed, M])`` and draws the graphs in order, so the queries
    of one ``M`` do not depend on the other entries of ``Ms``.

    Args:
      embed_fn: ``list[SceneGraph] -> float[len, D]``; must accept graphs with no objects (all
        relations removed).
      graphs: the test scene graphs (the gallery).
      Ms: numbers of removed relations (``M = 0`` keeps all relations but still drops objects without
        relations unless ``keep_unrelated_objects``).
      seed: non-negative seed.
      ks, backend, cutoff, ties, index_options: as in :func:`retrieval_metrics`.
      keep_unrelated_objects: as in :func:`remove_edges`.

    Returns:
      ``{M: metrics}`` in the order of ``Ms``; ``metrics`` is :func:`retrieval_metrics`'s dict plus
      ``"num_empty_queries"`` (queries left with no objects) and ``"mean_removed"`` (relations
      actually removed per query, ``min(M, R_i)`` on average).

    Raises:
      ConfigError: no graphs, a bad ``M`` (option ``Ms``), bad options, or ``embed_fn`` returning
        the wrong shape (option ``embed_fn``).
    """
    graphs = list(graphs)
    if not graphs:
        raise ConfigError("graphs", "need at least one graph")
    Ms = list(Ms)
    if not Ms:
        raise ConfigError("Ms", "need at least one M")
    for num_edges in Ms:
        check_int("Ms", num_edges, minimum=0)
    check_int("seed", seed, minimum=0)
    ks, cutoff = _check_retrieval_options(ks, backend, cutoff, ties, len(graphs))
    gallery = _embed(embed_fn, graphs, None)
    index = _build_gallery_index(gallery, backend, index_options)
    targets = np.arange(len(graphs), dtype=np.int64)
    results: dict[int, dict[str, Any]] = {}
    for num_edges in Ms:
        rng = np.random.default_rng([seed, int(num_edges)])
        queries = [remove_edges(g, num_edges, rng, keep_unrelated_objects) for g in graphs]
        ranks = _ranks_from_index(
            index, _embed(embed_fn, queries, gallery.shape[1]), targets, cutoff, ties
        )
        metrics = _metrics_from_ranks(ranks, ks)
        metrics["num_empty_queries"] = sum(q.num_objects == 0 for q in queries)
        metrics["mean_removed"] = float(
            np.mean(
                [g.num_relations - q.num_relations for g, q in zip(graphs, queries, strict=True)]
            )
        )
        results[int(num_edges)] = metrics
    return results


def plot_noise_sweep(
    results: Mapping[int, Mapping[str, Any]],
    path: str | os.PathLike,
    metrics: Sequence[str] = ("MRR", "R@1", "R@5"),
    title: str | None = None,
) -> str:
    """Writes a PNG of retrieval metrics against the number of removed relations ``M``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).

    Args:
      results: :func:`noise_sweep` output ``{M: metrics}``.
      path: PNG file to write (parent folders are created).
      metrics: the metric names drawn, one line each (those absent from ``results`` are skipped).
      title: optional title.

    Returns:
      The path written, as a string.

    Raises:
      ConfigError: empty ``results`` or none of ``metrics`` present (option ``results``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ConfigError("results", "no noise-sweep results to plot")
    ms = sorted(results)
    present = [name for name in metrics if all(name in results[m] for m in ms)]
    if not present:
        raise ConfigError("results", f"none of the metrics {list(metrics)} is in every entry")
    figure = Figure(figsize=(5.0, 3.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, marker in zip(present, "osd^vx*+", strict=False):
        axes.plot(ms, [results[m][name] for m in ms], marker=marker, label=name)
    axes.set_xlabel("M (relations removed from the query)")
    axes.set_ylabel("fraction")
    axes.set_ylim(0.0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, format="png")
    return path
