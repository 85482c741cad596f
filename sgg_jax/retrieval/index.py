"""Nearest-neighbour search over the relation memory bank: one interface, two backends, sharded merge.

RA-SGG (retrieval-augmented scene graph generation, Sec. 3.2) looks up, for every relation embedding,
its k most similar entries in a memory bank of training relations and excludes the query's own entry.
This module provides that search:

* :class:`Index`: the interface. ``build(keys, ids)``, ``search(queries, k, exclude_ids)``, ``size``,
  ``dim``, ``save(path)`` and ``Index.load(path)``. Similarity is cosine: keys and queries are
  L2-normalised inside (a zero vector stays zero and scores 0 against everything), and the score is the
  dot product of the normalised vectors, returned sorted in descending order.
* :class:`ExactIndex`: exact search with a ``jnp`` matmul and ``jax.lax.top_k``, chunked over the bank
  and over the queries so memory stays bounded. It is the ground truth the approximate backend is
  tested against.
* Build memory: the bank is validated without a copy and L2-normalised chunk by chunk
  (``CHUNK_BYTES`` at a time) into one float32 array: ``ExactIndex`` writes the chunks straight into
  its device array, ``ScannIndex`` hands ScaNN one normalised copy (none with
  ``build(keys, copy=False)``, which normalises the caller's float32 keys in place, or with
  ``ScannIndex(spill_dir=...)``, which writes them to a memory-mapped file). The rows are
  bit-identical to :func:`l2_normalize` of the whole bank.
* :class:`ScannIndex`: approximate search with ScaNN (tree partitioning + anisotropic asymmetric
  hashing + exact re-ordering), with parameters derived from the bank size.
* :class:`ShardedIndex` and :func:`merge_topk`: each shard (e.g. one per process) holds a disjoint id
  range; a search queries every shard and merges the per-shard top-k into the global top-k.

Conventions shared by every backend:

* Results are ``(ids int64[Q, k], scores float32[Q, k])``. When fewer than ``k`` entries can be returned
  (the bank is smaller than ``k``, or smaller than ``k + 1`` with self-exclusion, or the ScaNN leaves
  searched hold fewer than ``k`` points), the missing slots are padded with id ``-1`` and score ``-inf``.
* Equal scores are ordered by the lower id (for ScaNN: among the candidates it returns).
* ``exclude_ids[q]`` is the query's own id: the entry with that id is never returned. The search fetches
  ``k + 1`` neighbours and drops the self match, or the last extra when there is none.
* Saved indexes are folders holding ``manifest.json`` (``backend``, ``size``, ``dim``, ``parameters``),
  ``ids.npy`` and either ``keys.npy`` (exact) or ``searcher/`` (the serialised ScaNN searcher).
"""

from __future__ import annotations

import abc
import functools
import inspect
import json
import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.data.fileio import load_json, load_numpy, require
from sgg_jax.errors import ConfigError, DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PAD_ID = -1


# ---------------------------------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------------------------------


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero.

    Args:
      vectors: float[N, D].

    Returns:
      float32[N, D].
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


# Rows per step of the bank's validation and normalisation: about 64 MiB of float32 at once.
CHUNK_BYTES = 1 << 26


def bank_chunks(num_rows: int, dim: int) -> range:
    """Start rows of the chunks (about ``CHUNK_BYTES`` of float32 each) the bank is processed in."""
    return range(0, num_rows, max(1, CHUNK_BYTES // (4 * max(dim, 1))))


def _chunk_stop(start: int, num_rows: int, dim: int) -> int:
    return min(num_rows, start + max(1, CHUNK_BYTES // (4 * max(dim, 1))))


def normalised_rows(
    keys: np.ndarray, start: int, stop: int, order: np.ndarray | None = None, out=None
) -> np.ndarray:
    """Rows ``start:stop`` of ``keys`` (or of ``keys[order]``) as :func:`l2_normalize` gives them.

    The arithmetic is :func:`l2_normalize`'s (float32, per row), so normalising a bank chunk by
    chunk gives bit-identical rows to normalising it at once.

    Args:
      keys: float[M, D] bank (any real dtype; converted to float32 per chunk).
      start: first row.
      stop: end row (exclusive).
      order: optional int[M]; rows ``order[start:stop]`` are taken instead.
      out: optional float32[stop - start, D] destination (may be the rows of ``keys`` themselves).

    Returns:
      float32[stop - start, D], ``out`` when given.
    """
    part = keys[start:stop] if order is None else keys[order[start:stop]]
    part = np.asarray(part, dtype=np.float32)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    return np.divide(part, np.maximum(norms, np.float32(1e-12)), out=out)


def normalise_bank(keys: np.ndarray, in_place: bool = False) -> np.ndarray:
    """The L2-normalised bank in ONE float32 array, written chunk by chunk.

    Args:
      keys: float[M, D] validated bank.
      in_place: overwrite ``keys`` (it must be a writeable C-contiguous float32 array); otherwise
        a new float32[M, D] array is filled. Peak memory beyond ``keys`` is the result plus one
        chunk (``CHUNK_BYTES``), not the several full-size temporaries of ``l2_normalize``.

    Returns:
      float32[M, D] unit-norm rows (zero rows stay zero), ``keys`` itself when ``in_place``.
    """
    num_rows, dim = keys.shape
    out = keys if in_place else np.empty((num_rows, dim), np.float32)
    for start in bank_chunks(num_rows, dim):
        stop = _chunk_stop(start, num_rows, dim)
        normalised_rows(keys, start, stop, out=out[start:stop])
    return out


def can_normalise_in_place(keys: np.ndarray) -> bool:
    """Whether ``keys`` can be overwritten by :func:`normalise_bank` (float32, C order, writeable)."""
    return (
        isinstance(keys, np.ndarray)
        and keys.dtype == np.float32
        and keys.flags.c_contiguous
        and keys.flags.writeable
    )


def all_finite(values: np.ndarray) -> bool:
    """Whether every value of the 2-D array is finite, checked chunk by chunk (no full-size mask)."""
    num_rows, dim = values.shape
    return all(
        np.isfinite(values[start : _chunk_stop(start, num_rows, dim)]).all()
        for start in bank_chunks(num_rows, dim)
    )


def _check_matrix(name: str, values: Any, dim: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ConfigError(name, f"expected a 2-D array [N, D], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ConfigError(name, f"expected a numeric array, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise ConfigError("dim", f"{name} have dimension {array.shape[1]} but the index has {dim}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise DataError("contains NaN or infinite values", field=name, record_kind="array")
    return array


def _check_bank(values: Any) -> np.ndarray:
    """The bank validated without a copy (``np.asarray``; finiteness checked chunk by chunk).

    Values are checked as float32, as they will be indexed: a float64 value beyond float32's range
    counts as infinite.
    """
    array = np.asarray(values)
    if array.ndim != 2:
        raise ConfigError("keys", f"expected a 2-D array [N, D], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ConfigError("keys", f"expected a numeric array, got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ConfigError("keys", f"bank must be non-empty, got shape {array.shape}")
    num_rows, dim = array.shape
    for start in bank_chunks(num_rows, dim):
        part = np.asarray(array[start : _chunk_stop(start, num_rows, dim)], dtype=np.float32)
        if not np.isfinite(part).all():
            raise DataError("contains NaN or infinite values", field="keys", record_kind="array")
    return array


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError("k", f"must be a positive integer, got {k!r}")
    return int(k)


def _pad_results(ids: np.ndarray, scores: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads ``[Q, n]`` results with ``-1`` / ``-inf`` columns up to ``[Q, width]``."""
    missing = width - ids.shape[1]
    if missing <= 0:
        return ids[:, :width], scores[:, :width]
    ids = np.concatenate([ids, np.full((ids.shape[0], missing), PAD_ID, np.int64)], axis=1)
    scores = np.concatenate(
        [scores, np.full((scores.shape[0], missing), -np.inf, np.float32)], axis=1
    )
    return ids, scores


def _sort_results(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by descending score, then ascending id; padding (``-inf``) last."""
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _drop_excluded(
    ids: np.ndarray, scores: np.ndarray, exclude_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Removes each row's excluded id from ``k + 1`` results and keeps ``k`` (the last extra if absent).

    Args:
      ids: int64[Q, k + 1], sorted best first.
      scores: float32[Q, k + 1].
      exclude_ids: int64[Q], the id each row must not return.
      k: number of results to keep.

    Returns:
      ``(ids int64[Q, k], scores float32[Q, k])``.
    """
    excluded = ids == exclude_ids[:, None]
    # A stable argsort of the boolean mask moves excluded entries to the end, keeping the order of the
    # rest; anything excluded that still falls within the first k becomes padding.
    order = np.argsort(excluded, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k]
    dropped = np.take_along_axis(excluded, order, axis=1)[:, :k]
    return np.where(dropped, PAD_ID, ids), np.where(dropped, -np.inf, scores).astype(np.float32)


def merge_topk(
    ids_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merges per-shard top-k results into the global top-k.

    Entries are ordered by descending score, equal scores by lower id; padding entries (id ``-1``,
    score ``-inf``) sort last, and the result is padded the same way when all shards together hold
    fewer than ``k`` entries.

    Args:
      ids_list: one int64[Q, k_s] array per shard.
      scores_list: one float32[Q, k_s] array per shard, matching ``ids_list``.
      k: number of results to keep.

    Returns:
      ``(ids int64[Q, k], scores float32[Q, k])``.

    Raises:
      ConfigError: ``k`` is not a positive integer, or the lists are empty or disagree in length or
        number of queries.
    """
    k = _check_k(k)
    if len(ids_list) != len(scores_list) or not ids_list:
        raise ConfigError(
            "shards", "ids_list and scores_list must be non-empty and of equal length"
        )
    num_queries = {np.shape(ids)[0] for ids in ids_list} | {np.shape(s)[0] for s in scores_list}
    if len(num_queries) != 1:
        raise ConfigError("shards", f"shards returned different numbers of queries: {num_queries}")
    ids = np.concatenate([np.asarray(ids, np.int64) for ids in ids_list], axis=1)
    scores = np.concatenate([np.asarray(s, np.float32) for s in scores_list], axis=1)
    ids, scores = _sort_results(ids, scores)
    return _pad_results(ids, scores, k)


# ---------------------------------------------------------------------------------------------------
# The interface.
# ---------------------------------------------------------------------------------------------------


class Index(abc.ABC):
    """Cosine-similarity top-k search over a bank of ``M`` keys of dimension ``D``.

    Subclasses implement ``_build``, ``_search``, ``parameters``, ``_save`` and ``_restore``; this class
    does validation, normalisation, self-exclusion, padding and the folder format.
    """

    backend: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Index]]] = {}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.backend:
            Index._registry[cls.backend] = cls

    def __init__(self):
        self._ids: np.ndarray | None = None
        self._dim: int | None = None

    # -- public API ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of entries in the bank (0 before ``build``)."""
        return 0 if self._ids is None else int(self._ids.shape[0])

    @property
    def dim(self) -> int | None:
        """Key dimension ``D`` (``None`` before ``build``)."""
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """int64[M]: the ids of the bank entries, in the order the backend stores them."""
        self._require_built()
        return self._ids

    @property
    @abc.abstractmethod
    def parameters(self) -> dict[str, Any]:
        """The backend's parameters, as written to the manifest."""

    def build(self, keys: np.ndarray, ids: np.ndarray | None = None, copy: bool = True) -> Index:
        """Indexes ``keys`` (replacing any previous bank).

        Memory: ``keys`` is validated without a copy and L2-normalised chunk by chunk into one
        float32 array (the backend's layout where it has one), so the build holds at most one
        normalised copy of the bank next to the caller's array, plus the backend's own structures
        (ScaNN: see :class:`ScannIndex`).

        Args:
          keys: float32[M, D] bank vectors; L2-normalised here (any real dtype is read as float32).
          ids: int64[M] unique ids of the keys; defaults to ``arange(M)``.
          copy: with ``False`` and a writeable C-contiguous float32 ``keys``, the keys are
            normalised in place (``keys`` then holds the unit-norm rows) instead of into a new
            array: the build adds no copy of the bank of its own. Other inputs are copied as usual.

        Returns:
          ``self``, for chaining.

        Raises:
          ConfigError: ``keys`` is not a non-empty 2-D array, or ``ids`` has the wrong shape or
            repeats an id (named option ``ids``), or an id is negative.
          DataError: ``keys`` contains NaN or infinite values.
        """
        keys = _check_bank(keys)
        if ids is None:
            ids = np.arange(keys.shape[0], dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (keys.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(
                "ids",
                f"expected integer ids of shape ({keys.shape[0]},), got {ids.dtype}{ids.shape}",
            )
        ids = ids.astype(np.int64)
        if ids.min() < 0:
            raise ConfigError("ids", "ids must be non-negative (-1 marks padding in results)")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ConfigError("ids", "ids must be unique")
        self._dim = int(keys.shape[1])
        self._ids = ids
        self._build(keys, in_place=not copy and can_normalise_in_place(keys))
        return self

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` keys most cosine-similar to each query.

        Args:
          queries: float32[Q, D]; L2-normalised here.
          k: number of neighbours per query.
          exclude_ids: optional int64[Q]; the entry with id ``exclude_ids[q]`` is never returned for
            query ``q`` (the query's own bank entry). Use ``-1`` for queries with no own entry.

        Returns:
          ``(ids int64[Q, k], scores float32[Q, k])``, sorted by descending cosine similarity (ties
          by lower id), padded with ``-1`` / ``-inf`` when fewer than ``k`` entries can be returned.

        Raises:
          ConfigError: ``k`` is not a positive integer (``k``), the query dimension differs from the
            index (``dim``), ``exclude_ids`` has the wrong shape (``exclude_ids``), or the index is
            not built (``keys``).
        """
        self._require_built()
        k = _check_k(k)
        queries = _check_matrix("queries", queries, dim=self._dim)
        if exclude_ids is not None:
            exclude_ids = np.asarray(exclude_ids)
            if exclude_ids.shape != (queries.shape[0],) or not np.issubdtype(
                exclude_ids.dtype, np.integer
            ):
                raise ConfigError(
                    "exclude_ids",
                    f"expected integer ids of shape ({queries.shape[0]},), "
                    f"got {exclude_ids.dtype}{exclude_ids.shape}",
                )
            exclude_ids = exclude_ids.astype(np.int64)
        fetch = k if exclude_ids is None else k + 1
        if queries.shape[0] == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        ids, scores = self._search(l2_normalize(queries), min(fetch, self.size))
        ids, scores = _sort_results(ids.astype(np.int64), scores.astype(np.float32))
        ids, scores = _pad_results(ids, scores, fetch)
        if exclude_ids is not None:
            ids, scores = _drop_excluded(ids, scores, exclude_ids, k)
        return ids, scores

    def save(self, path: str | os.PathLike) -> None:
        """Writes the index to the folder ``path`` (created if needed).

        Args:
          path: target folder; receives ``manifest.json``, ``ids.npy`` and the backend's files.
        """
        self._require_built()
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        np.save(os.path.join(path, "ids.npy"), self._ids)
        self._save(path)
        manifest = {
            "format_version": FORMAT_VERSION,
            "backend": self.backend,
            "size": self.size,
            "dim": self._dim,
            "parameters": self.parameters,
        }
        with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Reads an index written by :meth:`save`; ``Index.load`` picks the backend from the manifest.

        Args:
          path: folder written by :meth:`save`.

        Returns:
          The loaded index, ready to search.

        Raises:
          DataError: the manifest or an array is missing or malformed.
          ConfigError: the manifest names a backend other than ``cls``'s (option ``backend``).
        """
        path = os.fspath(path)
        manifest_path = os.path.join(path, MANIFEST)
        manifest = load_json(manifest_path)
        backend = require(manifest, "backend", manifest_path)
        if not isinstance(backend, str) or backend not in Index._registry:
            raise DataError(f"unknown backend {backend!r}", path=manifest_path, field="backend")
        target = Index._registry[backend]
        if cls is not Index and target is not cls:
            raise ConfigError("backend", f"{path} holds a {backend!r} index, not {cls.backend!r}")
        size, dim = (require(manifest, name, manifest_path) for name in ("size", "dim"))
        for name, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(
                    f"expected a positive integer, got {value!r}", path=manifest_path, field=name
                )
        parameters = require(manifest, "parameters", manifest_path)
        if not isinstance(parameters, dict):
            raise DataError(
                f"expected a JSON object, got {type(parameters).__name__}",
                path=manifest_path,
                field="parameters",
            )
        try:
            index = target(**parameters)
        except (TypeError, ConfigError) as exc:
            raise DataError(str(exc), path=manifest_path, field="parameters") from None
        ids_path = os.path.join(path, "ids.npy")
        if not os.path.isfile(ids_path):
            raise DataError("cannot be read: file not found", path=ids_path)
        ids = load_numpy(ids_path, ".npy", prefix="cannot be read")
        if ids.shape != (size,):
            raise DataError(f"expected shape ({size},), got {ids.shape}", path=ids_path)
        if not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"expected integer ids, got dtype {ids.dtype}", path=ids_path)
        if ids.min() < 0 or np.unique(ids).shape[0] != size:
            raise DataError("ids must be non-negative and unique", path=ids_path)
        index._ids = ids.astype(np.int64)
        index._dim = dim
        index._restore(path)
        return index

    # -- backend hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _build(self, keys: np.ndarray, in_place: bool) -> None:
        """Indexes the validated bank ``keys`` (ids ``self._ids``), L2-normalising it itself.

        ``normalise_bank`` / ``normalised_rows`` give the rows; ``in_place``: ``keys`` may be
        overwritten with them (the caller passed ``copy=False``).
        """

    @abc.abstractmethod
    def _search(self, normalised_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (``k <= size``) as ``(ids int64[Q, k'], scores float32[Q, k'])``, ``k' <= k``."""

    @abc.abstractmethod
    def _save(self, path: str) -> None:
        """Writes the backend's files into the folder ``path``."""

    @abc.abstractmethod
    def _restore(self, path: str) -> None:
        """Reads the backend's files from the folder ``path`` (``_ids`` and ``_dim`` are set)."""

    def _require_built(self) -> None:
        if self._ids is None:
            raise ConfigError("keys", f"{type(self).__name__} is empty: call build() first")


# ---------------------------------------------------------------------------------------------------
# Exact backend.
# ---------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, donate_argnums=0)
def _put_chunk(chunks: jax.Array, rows: jax.Array, index: jax.Array) -> jax.Array:
    """``chunks`` with chunk ``index`` replaced by ``rows`` (``chunks`` is donated: updated in place)."""
    return jax.lax.dynamic_update_index_in_dim(chunks, rows, index, 0)


@functools.partial(jax.jit, static_argnames=("k",))
def _exact_topk_chunked(
    queries: jax.Array, key_chunks: jax.Array, valid_chunks: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Running top-k over the bank, one chunk at a time (scores of one chunk live at once).

    Args:
      queries: float32[Qc, D] unit-norm queries.
      key_chunks: float32[C, chunk, D] bank split into chunks (zero rows pad the last one).
      valid_chunks: bool[C, chunk], False on padding rows.
      k: number of neighbours, ``k <= number of valid rows``.

    Returns:
      ``(scores float32[Qc, k], positions int32[Qc, k])``; positions index the flattened bank.
    """
    num_queries = queries.shape[0]
    chunk = key_chunks.shape[1]
    chunk_k = min(k, chunk)

    def step(carry, inputs):
        best_scores, best_positions = carry
        keys, valid, chunk_index = inputs
        scores = jnp.dot(queries, keys.T, precision=jax.lax.Precision.HIGHEST)
        scores = jnp.where(valid[None, :], scores, -jnp.inf)
        chunk_scores, chunk_positions = jax.lax.top_k(scores, chunk_k)
        chunk_positions = chunk_positions + chunk_index * chunk
        # Running entries come first: on equal scores top_k keeps the earlier (lower-position) one.
        merged_scores = jnp.concatenate([best_scores, chunk_scores], axis=1)
        merged_positions = jnp.concatenate([best_positions, chunk_positions], axis=1)
        best_scores, order = jax.lax.top_k(merged_scores, k)
        best_positions = jnp.take_along_axis(merged_positions, order, axis=1)
        return (best_scores, best_positions), None

    init = (
        jnp.full((num_queries, k), -jnp.inf, jnp.float32),
        jnp.full((num_queries, k), jnp.iinfo(jnp.int32).max, jnp.int32),
    )
    chunk_indices = jnp.arange(key_chunks.shape[0], dtype=jnp.int32)
    (scores, positions), _ = jax.lax.scan(step, init, (key_chunks, valid_chunks, chunk_indices))
    return scores, positions


class ExactIndex(Index):
    """Exact cosine top-k: ``jnp`` matmul + ``jax.lax.top_k``, chunked over bank and queries.

    The bank is held on device split into chunks of ``chunk_size`` rows; one jitted ``lax.scan`` walks
    the chunks keeping a running top-k, so at most ``query_chunk_size x chunk_size`` scores exist at
    once. Queries are processed ``query_chunk_size`` at a time (padded to a power of two up to that
    size, so repeated searches reuse the compiled function). The bank is stored sorted by id, which
    makes ties resolve to the lower id exactly.

    The build allocates the device bank once and normalises the keys into it chunk by chunk (in id
    order), so it holds no host copy of the bank: its peak is the device bank plus one chunk (on
    CPU about 1x the bank, ``benchmarks/bench_retrieval.py --build_memory``). ``save`` writes the
    keys from the device chunk by chunk.

    Args:
      chunk_size: bank rows scored per step.
      query_chunk_size: queries scored per call.
    """

    backend = "exact"

    def __init__(self, chunk_size: int = 4096, query_chunk_size: int = 1024):
        super().__init__()
        for name, value in (("chunk_size", chunk_size), ("query_chunk_size", query_chunk_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        self.chunk_size = int(chunk_size)
        self.query_chunk_size = int(query_chunk_size)
        self._key_chunks: jax.Array | None = None
        self._valid_chunks: jax.Array | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size, "query_chunk_size": self.query_chunk_size}

    def _build(self, keys: np.ndarray, in_place: bool) -> None:
        order = None
        if np.any(self._ids[1:] <= self._ids[:-1]):  # not sorted: store the bank sorted by id
            order = np.argsort(self._ids, kind="stable")
            self._ids = self._ids[order]
        self._set_keys(keys, order=order, normalise=True)

    def _set_keys(
        self, keys: np.ndarray, order: np.ndarray | None = None, normalise: bool = False
    ) -> None:
        """Fills the device bank chunk by chunk (normalising each chunk when ``normalise``).

        The device array ``[num_chunks, chunk, D]`` is allocated once (zero rows pad the last
        chunk) and each chunk is written into it in place (a donated update), so the build holds
        the device bank plus one chunk: no normalised, re-ordered or padded host copy of the bank.
        """
        size, dim = keys.shape
        chunk = min(self.chunk_size, size)
        num_chunks = -(-size // chunk)
        device = jnp.zeros((num_chunks, chunk, dim), jnp.float32)
        for index in range(num_chunks):
            start, stop = index * chunk, min(size, (index + 1) * chunk)
            if normalise:
                rows = normalised_rows(keys, start, stop, order)
            else:
                rows = np.asarray(keys[start:stop] if order is None else keys[order[start:stop]])
                rows = rows.astype(np.float32, copy=False)
            if stop - start < chunk:
                rows = np.concatenate([rows, np.zeros((chunk - (stop - start), dim), np.float32)])
            device = _put_chunk(device, rows, np.int32(index))
        valid = np.arange(num_chunks * chunk) < size
        self._key_chunks = device
        self._valid_chunks = jnp.asarray(valid.reshape(num_chunks, chunk))

    def _search(self, normalised_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        num_queries = normalised_queries.shape[0]
        block = min(self.query_chunk_size, 1 << max(0, (num_queries - 1).bit_length()))
        all_scores, all_positions = [], []
        for start in range(0, num_queries, block):
            part = normalised_queries[start : start + block]
            padded = np.zeros((block, part.shape[1]), np.float32)
            padded[: part.shape[0]] = part
            scores, positions = _exact_topk_chunked(
                jnp.asarray(padded), self._key_chunks, self._valid_chunks, k=k
            )
            all_scores.append(np.asarray(scores)[: part.shape[0]])
            all_positions.append(np.asarray(positions)[: part.shape[0]])
        positions = np.concatenate(all_positions, axis=0)
        return self._ids[positions], np.concatenate(all_scores, axis=0)

    def _save(self, path: str) -> None:
        # Written chunk by chunk from the device bank (id order, padding dropped): no host copy.
        size, dim = self.size, self._dim
        with open(os.path.join(path, "keys.npy"), "wb") as handle:
            header = {
                "descr": np.dtype(np.float32).str,
                "fortran_order": False,
                "shape": (size, dim),
            }
            np.lib.format.write_array_header_1_0(handle, header)
            for index in range(self._key_chunks.shape[0]):
                rows = np.asarray(self._key_chunks[index])
                rows[: max(0, size - index * rows.shape[0])].tofile(handle)

    def _restore(self, path: str) -> None:
        keys_path = os.path.join(path, "keys.npy")
        if not os.path.isfile(keys_path):
            raise DataError("cannot be read: file not found", path=keys_path)
        keys = load_numpy(keys_path, ".npy", prefix="cannot be read")
        if keys.shape != (self.size, self._dim):
            raise DataError(
                f"expected shape ({self.size}, {self._dim}), got {keys.shape}", path=keys_path
            )
        self._set_keys(keys)


# ---------------------------------------------------------------------------------------------------
# ScaNN backend.
# ---------------------------------------------------------------------------------------------------


class ScannIndex(Index):
    """Approximate cosine top-k with ScaNN (``dot_product`` on L2-normalised vectors).

    Parameters left as ``None`` are derived from the bank size ``M`` at build time:

    * Banks with ``M < brute_force_threshold`` (default 2,000) are searched by brute force inside
      ScaNN (``score_brute_force``): exact, and faster than training a tree for so few points.
    * Otherwise a tree with ``num_leaves = clip(round(sqrt(M)), 1, 2000)`` leaves (about ``sqrt(M)``
      points per leaf, the ScaNN rule of thumb), of which
      ``num_leaves_to_search = clip(ceil(leaves_fraction * num_leaves), 1, num_leaves)`` are searched
      per query (``leaves_fraction`` default 0.05, i.e. 5 %), trained on
      ``training_sample_size = min(M, 100000)`` points.
    * Asymmetric hashing scores candidates with ``dimensions_per_block = 2`` (16 centres per 2-D
      block) and ``anisotropic_quantization_threshold = 0.2`` (the value ScaNN recommends for unit
      vectors: it weights the quantisation error parallel to the vector, which is what changes inner
      products).
    * The best ``reorder_factor * k`` hashed candidates (default 20) are re-scored exactly with the
      float32 keys, so the returned scores are true cosine similarities.

    Ties are ordered by the lower id among the candidates ScaNN returns.

    **Memory.** The wrapper hands ScaNN one float32 copy of the normalised keys and drops it once
    ScaNN has built (``build(keys, copy=False)``: the caller's keys normalised in place instead;
    ``spill_dir``: the normalised keys written chunk by chunk to a temporary ``.npy`` there and
    memory-mapped, page cache rather than process memory; removed after the build). ScaNN itself,
    measured on 1.4.2 (``bench_retrieval.py --build_memory``), copies the keys (kept for the exact
    re-ordering), holds a second transient copy while it builds the tree, and copies its tree and
    hashing training samples (``training_sample_size`` rows each): about
    ``2 + 2 * training_sample_size / M`` times the bank at its peak, 1.1x once built.

    **Determinism.** With ``deterministic=True`` (default) the same keys give the same index and the
    same neighbours in every process. ScaNN's tree training is not reproducible as ScaNN configures
    it by default, measured on ScaNN 1.4.2 (a bank of 26,806 keys with many exact duplicates, as
    relation embeddings of identical geometry have; ``tests/retrieval/test_index.py``): its k-means
    partitioner starts from ``RANDOM_INITIALIZATION``, whose draw varies from process to process even
    with ``partitioning.clustering_seed`` set, and multi-threaded training reduces in a
    thread-dependent order. The deterministic configuration starts k-means from k-means++
    (``DEFAULT_KMEANS_PLUS_PLUS``, seeded by the config's fixed ``clustering_seed``), trains on one
    thread, and keeps the asymmetric-hashing codebook's fixed seeds (``clustering_seed`` /
    ``sampling_seed`` = 1). Its cost is the build only (about 0.9 s instead of 0.6 s for 26,806 x 64
    keys on 2 cores, ``benchmarks/RESULTS.md``); searches are per-query and thread-independent
    (``search_batched_parallel`` returns what ``search_batched`` returns). ``deterministic=False``
    restores ScaNN's random initialisation and ``num_threads`` training threads.

    Args:
      num_leaves: tree leaves; ``None`` derives it from ``M``.
      num_leaves_to_search: leaves visited per query; ``None`` derives it.
      leaves_fraction: fraction of leaves searched when ``num_leaves_to_search`` is ``None``.
      dimensions_per_block: asymmetric-hashing block size.
      anisotropic_quantization_threshold: asymmetric-hashing anisotropic threshold.
      reorder_factor: candidates re-scored exactly, as a multiple of the requested neighbours.
      brute_force_threshold: banks smaller than this are searched by brute force.
      training_sample_size: points used to train the tree and the hashing; ``None``: ``min(M, 1e5)``.
      num_threads: ScaNN training threads (0: ScaNN's default); only with ``deterministic=False``
        (a deterministic build trains on one thread).
      deterministic: reproducible builds (see above).
      parallel_search: search batches of at least ``PARALLEL_MIN_QUERIES`` queries with ScaNN's
        multi-threaded ``search_batched_parallel`` (identical results; about 2x the throughput of
        the single-threaded call on 2 cores, see benchmarks/RESULTS.md).
      spill_dir: folder for the build's temporary memory-mapped normalised keys (see Memory);
        ``None``: in memory. Not a parameter of the index (not saved).
    """

    backend = "scann"
    PARALLEL_MIN_QUERIES = 256

    def __init__(
        self,
        num_leaves: int | None = None,
        num_leaves_to_search: int | None = None,
        leaves_fraction: float = 0.05,
        dimensions_per_block: int = 2,
        anisotropic_quantization_threshold: float = 0.2,
        reorder_factor: int = 20,
        brute_force_threshold: int = 2000,
        training_sample_size: int | None = None,
        num_threads: int = 0,
        parallel_search: bool = True,
        deterministic: bool = True,
        spill_dir: str | None = None,
    ):
        super().__init__()
        positive = {
            "num_leaves": num_leaves,
            "num_leaves_to_search": num_leaves_to_search,
            "dimensions_per_block": dimensions_per_block,
            "reorder_factor": reorder_factor,
            "training_sample_size": training_sample_size,
        }
        for name, value in positive.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            ):
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if not 0.0 < float(leaves_fraction) <= 1.0:
            raise ConfigError("leaves_fraction", f"must be in (0, 1], got {leaves_fraction!r}")
        if not 0.0 <= float(anisotropic_quantization_threshold) < 1.0:
            raise ConfigError(
                "anisotropic_quantization_threshold",
                f"must be in [0, 1), got {anisotropic_quantization_threshold!r}",
            )
        if int(brute_force_threshold) < 0:
            raise ConfigError(
                "brute_force_threshold", f"must be >= 0, got {brute_force_threshold!r}"
            )
        if int(num_threads) < 0:
            raise ConfigError("num_threads", f"must be >= 0, got {num_threads!r}")
        self.num_leaves = num_leaves
        self.num_leaves_to_search = num_leaves_to_search
        self.leaves_fraction = float(leaves_fraction)
        self.dimensions_per_block = int(dimensions_per_block)
        self.anisotropic_quantization_threshold = float(anisotropic_quantization_threshold)
        self.reorder_factor = int(reorder_factor)
        self.brute_force_threshold = int(brute_force_threshold)
        self.training_sample_size = training_sample_size
        self.num_threads = int(num_threads)
        self.parallel_search = bool(parallel_search)
        self.deterministic = bool(deterministic)
        self.spill_dir = None if spill_dir is None else os.fspath(spill_dir)
        self._searcher: Any = None
        self._brute_force: bool = False

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "num_leaves": self.num_leaves,
            "num_leaves_to_search": self.num_leaves_to_search,
            "leaves_fraction": self.leaves_fraction,
            "dimensions_per_block": self.dimensions_per_block,
            "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
            "reorder_factor": self.reorder_factor,
            "brute_force_threshold": self.brute_force_threshold,
            "training_sample_size": self.training_sample_size,
            "num_threads": self.num_threads,
            "parallel_search": self.parallel_search,
            "deterministic": self.deterministic,
        }

    def derived_parameters(self, size: int) -> dict[str, Any]:
        """The ScaNN configuration used for a bank of ``size`` entries.

        Args:
          size: bank size ``M``.

        Returns:
          ``{"brute_force": bool, "num_leaves", "num_leaves_to_search", "training_sample_size"}``
          (the last three ``None`` for brute force).
        """
        if size < self.brute_force_threshold:
            return {
                "brute_force": True,
                "num_leaves": None,
                "num_leaves_to_search": None,
                "training_sample_size": None,
            }
        num_leaves = self.num_leaves or int(np.clip(round(math.sqrt(size)), 1, 2000))
        num_leaves = min(num_leaves, size)
        to_search = self.num_leaves_to_search or math.ceil(self.leaves_fraction * num_leaves)
        return {
            "brute_force": False,
            "num_leaves": num_leaves,
            "num_leaves_to_search": int(np.clip(to_search, 1, num_leaves)),
            "training_sample_size": min(size, self.training_sample_size or 100_000),
        }

    def _build(self, keys: np.ndarray, in_place: bool) -> None:
        import scann  # Imported lazily: only this backend needs it.

        size = keys.shape[0]
        derived = self.derived_parameters(size)
        spill_path = None
        if self.spill_dir is not None:
            normalised, spill_path = self._spill(keys)
        else:
            normalised = normalise_bank(keys, in_place=in_place)
        try:
            builder = scann.scann_ops_pybind.builder(normalised, 10, "dot_product")
            if derived["brute_force"]:
                builder = builder.score_brute_force()
            else:
                sample = derived["training_sample_size"]
                builder = (
                    builder.tree(
                        num_leaves=derived["num_leaves"],
                        num_leaves_to_search=derived["num_leaves_to_search"],
                        training_sample_size=sample,
                        random_init=not self.deterministic,  # k-means++ when deterministic
                    )
                    .score_ah(
                        self.dimensions_per_block,
                        anisotropic_quantization_threshold=self.anisotropic_quantization_threshold,
                        training_sample_size=sample,
                    )
                    .reorder(self.reorder_factor * 10)
                )
            if self.deterministic:
                builder = builder.set_n_training_threads(1)
            elif self.num_threads:
                builder = builder.set_n_training_threads(self.num_threads)
            self._searcher = builder.build()
            # The builder references the normalised keys; ScaNN keeps its own copy, so ours goes.
            del builder, normalised
        finally:
            if spill_path is not None:
                os.remove(spill_path)
        self._brute_force = derived["brute_force"]

    def _spill(self, keys: np.ndarray) -> tuple[np.ndarray, str]:
        """The normalised keys written chunk by chunk to a ``.npy`` under ``spill_dir``, memory-mapped.

        Plain writes put the rows in the page cache, not in this process's memory; ScaNN then reads
        them through a read-only map (clean file pages the kernel can drop under memory pressure).
        """
        import tempfile

        os.makedirs(self.spill_dir, exist_ok=True)
        num_rows, dim = keys.shape
        handle = tempfile.NamedTemporaryFile(
            dir=self.spill_dir, prefix="scann_keys_", suffix=".npy", delete=False
        )
        try:
            with handle:
                header = {"descr": np.dtype(np.float32).str, "fortran_order": False}
                np.lib.format.write_array_header_1_0(handle, {**header, "shape": (num_rows, dim)})
                for start in bank_chunks(num_rows, dim):
                    normalised_rows(keys, start, _chunk_stop(start, num_rows, dim)).tofile(handle)
            return np.load(handle.name, mmap_mode="r"), handle.name
        except BaseException:
            os.remove(handle.name)
            raise

    def _search(self, normalised_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        search = self._searcher.search_batched
        if self.parallel_search and normalised_queries.shape[0] >= self.PARALLEL_MIN_QUERIES:
            search = self._searcher.search_batched_parallel
        if self._brute_force:
            positions, scores = search(normalised_queries, final_num_neighbors=k)
        else:
            positions, scores = search(
                normalised_queries,
                final_num_neighbors=k,
                pre_reorder_num_neighbors=max(k, self.reorder_factor * k),
            )
        positions = np.asarray(positions, np.int64)
        scores = np.asarray(scores, np.float32)
        # ScaNN may return fewer than k results for a row (the searched leaves hold fewer points); it
        # fills the unused slots with position 0 and score NaN.
        missing = (positions < 0) | (positions >= self.size) | ~np.isfinite(scores)
        ids = np.where(missing, PAD_ID, self._ids[np.clip(positions, 0, self.size - 1)])
        return ids, np.where(missing, -np.inf, scores).astype(np.float32)

    def _save(self, path: str) -> None:
        searcher_dir = os.path.join(path, "searcher")
        os.makedirs(searcher_dir, exist_ok=True)
        self._searcher.serialize(searcher_dir, relative_path=True)
        with open(os.path.join(path, "scann_mode.json"), "w", encoding="utf-8") as handle:
            json.dump({"brute_force": self._brute_force}, handle)

    def _restore(self, path: str) -> None:
        import scann

        searcher_dir = os.path.join(path, "searcher")
        if not os.path.isdir(searcher_dir):
            raise DataError("missing serialised ScaNN searcher", path=searcher_dir)
        self._brute_force = bool(
            require(load_json(os.path.join(path, "scann_mode.json")), "brute_force", path)
        )
        self._searcher = scann.scann_ops_pybind.load_searcher(searcher_dir)


# ---------------------------------------------------------------------------------------------------
# Factory and sharding.
# ---------------------------------------------------------------------------------------------------


def make_index(backend: str, **options: Any) -> Index:
    """An empty index of the named backend.

    Args:
      backend: ``"scann"`` or ``"exact"``.
      **options: constructor arguments of :class:`ScannIndex` or :class:`ExactIndex`.

    Returns:
      The index; call ``build`` next.

    Raises:
      ConfigError: unknown backend (option ``backend``) or unknown option (named).
    """
    if backend not in Index._registry:
        raise ConfigError(
            "backend", f"unknown backend {backend!r}; expected one of {sorted(Index._registry)}"
        )
    cls = Index._registry[backend]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for name in options:
        if name not in accepted:
            raise ConfigError(
                name, f"not an option of the {backend!r} backend ({sorted(accepted)})"
            )
    return cls(**options)


class ShardedIndex:
    """Searches several built indexes holding disjoint id ranges and merges their top-k.

    Each shard stands for the part of the memory bank one process holds. A search asks every shard for
    its top-k (each applies ``exclude_ids`` itself) and merges them with :func:`merge_topk`, so with
    exact shards the result equals one exact index over the union of the banks.

    Args:
      shards: built indexes with the same ``dim`` and pairwise disjoint ids.

    Raises:
      ConfigError: no shards, an unbuilt shard, mixed dimensions, or overlapping ids (option
        ``shards``).
    """

    def __init__(self, shards: Sequence[Index]):
        if not shards:
            raise ConfigError("shards", "need at least one shard")
        for shard in shards:
            if shard.size == 0:
                raise ConfigError("shards", f"{type(shard).__name__} shard is not built")
        dims = {shard.dim for shard in shards}
        if len(dims) != 1:
            raise ConfigError("shards", f"shards have different dimensions {sorted(dims)}")
        all_ids = np.concatenate([shard.ids for shard in shards])
        if np.unique(all_ids).shape[0] != all_ids.shape[0]:
            raise ConfigError("shards", "shards must hold disjoint ids")
        self.shards = list(shards)

    @property
    def size(self) -> int:
        """Total entries over all shards."""
        return sum(shard.size for shard in self.shards)

    @property
    def dim(self) -> int:
        """Key dimension ``D``."""
        return self.shards[0].dim

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k over all shards; same contract as :meth:`Index.search`.

        Args:
          queries: float32[Q, D].
          k: neighbours per query.
          exclude_ids: optional int64[Q] ids never returned for their query.

        Returns:
          ``(ids int64[Q, k], scores float32[Q, k])``.
        """
        results = [shard.search(queries, k, exclude_ids) for shard in self.shards]
        return merge_topk([ids for ids, _ in results], [scores for _, scores in results], k)
