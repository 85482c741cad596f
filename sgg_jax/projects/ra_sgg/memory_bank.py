"""The RA-SGG relation memory bank: one entry per ground-truth training relation.

Key: the relation embedding ``r`` of the model (PE-Net's ``aux["relation_embedding"]``, before the
projection head) of the entry's ``(subject, object)`` pair. Value: ``(subject class, object class,
predicate)``. Unlike the official code, which keeps at most about 100 instances per triplet, the bank
holds **every** ground-truth relation of the training split (RA-SGG Sec. 3.2: the memory bank is the
training set).

Entries follow the data pipeline's view of an image: objects beyond ``max_objects`` are dropped with
the relations touching them (:func:`sgg_jax.data.pipeline.truncate_objects`), self-relations are
skipped (the pipeline never samples ``i == j``) and a triplet repeated in one image is kept once.
Entry ids are ``0..M-1`` in (image, relation row) order; :meth:`MemoryBank.entry_ids` maps a batch
pair ``(image_index, subject, object, predicate)`` back to its entry, which is how a query excludes
itself from its own neighbours.

The official RA-SGG bank (``--bank=official``) is smaller: ``max_per_triplet`` keeps at most that many
entries per (subject class, object class, predicate) triplet (``RASGG.MEMORY_SIZE``, 8 in the official
scripts, whose bank file ``featurebank/{mode}_bg_processed_fb_train_{MEMORY_SIZE}.npy`` is loaded at
``roi_relation_predictors.py``:463 of ``KanghoonYoon/torch-rasgg`` at e8be01b). The script that wrote
that file is not public; our reading of it: foreground relations only, embedded once by the phase-1
model in eval mode, and for a triplet with more than ``max_per_triplet`` relations a uniform random
sample of them (seeded, ``cap_seed``), kept in training order (:func:`cap_per_triplet`).

Building the keys runs the model batched and jitted on the mesh (``embed_fn``); only the search runs
on the host (:mod:`sgg_jax.retrieval.index`). From pixels (``feature_source="roi"``) the bank's
batches get their images from ``batch_transform`` (the experiment's image transform over the
training split) before the model sees them.

In SGDet the relations are pairs of detections: :class:`DetectionMemoryBank` holds the detection
pairs of each training image that match a ground-truth relation (its docstring cites the official
code).

**Several processes** (:mod:`sgg_jax.distributed`, ``process_count() > 1``): the bank is sharded by
process. Shard ``s`` of ``S`` holds a contiguous range of entry ids made of whole images
(:func:`shard_bounds`: about ``M / S`` entries each; an image's pairs, embedded together, never
straddle two shards). Entry ids stay the single-process ids, and every process keeps the entries'
metadata (``entries``, six int64 per entry), so :meth:`MemoryBank.entry_ids` and
:meth:`MemoryBank.predicates_of` work unchanged everywhere; the keys and the index of a process
hold its shard only (``keys`` float32[M / S, D], rows ``local_ids``): a process's memory for the
bank is about ``1 / S`` of the single-process one. :meth:`MemoryBank.refresh` embeds the shards in
lockstep (every process runs the same number of jitted embedding batches, padded with empty ones,
and keeps its own rows of the outputs) and each process builds an index over its shard (ScaNN by
default, its parameters derived from the shard's size). :meth:`MemoryBank.search` is a collective
(every process calls it, as often as the others, with its own queries, possibly none): the queries
of every process are all-gathered (``Q x D`` float32 plus the excluded id, ``Q`` the total over
processes), each process searches its shard for all of them, the per-shard top-``k`` are
all-gathered (``S x Q x k`` ids and scores: ``k`` candidates per query per shard, never the bank)
and merged with :func:`~sgg_jax.retrieval.index.merge_topk` (equal scores: lower id); each process
keeps its own queries' rows. A query's own entry lives in one shard, which drops it; the others
cannot return it. Per search each process receives ``Q x (4 D + 16)`` bytes of queries and
``S x Q x k x 12`` bytes of candidates, against ``M x D x 4`` bytes for gathering the bank.

Scores with the ``exact`` backend: the index only selects; the selected entries' scores are
recomputed pair by pair (:func:`exact_scores`), because a float32 matrix product rounds one (query,
key) pair differently in banks of different sizes, which would order equal keys differently in a
shard and in the whole bank. So the result equals the single-process bank's (same ids, same
scores), ties included (tested with 2 processes x 2 devices against 1 x 4,
``tests/projects/ra_sgg/test_sharded_bank.py``); it could differ only where two different keys
score within a float32 rounding of each other at the k-th place.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sgg_jax import distributed
from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.retrieval.index import PAD_ID, Index, all_finite, make_index, merge_topk
from sgg_jax.structures import SceneGraph, SceneGraphBatch

EmbedFn = Callable[[SceneGraphBatch], np.ndarray]


@dataclasses.dataclass(frozen=True)
class BankEntries:
    """Host arrays describing the M entries (all int64[M]).

    Attributes:
      image_index: index of the image in the training source.
      subject, object: object indices within the image (after truncation).
      predicate: 1-based predicate.
      subject_class, object_class: 1-based object classes.
    """

    image_index: np.ndarray
    subject: np.ndarray
    object: np.ndarray
    predicate: np.ndarray
    subject_class: np.ndarray
    object_class: np.ndarray

    @property
    def size(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def triplets(self) -> np.ndarray:
        """int64[M, 3] ``(subject class, object class, predicate)``: the values of the bank."""
        return np.stack([self.subject_class, self.object_class, self.predicate], axis=1)


def enumerate_relations(graphs: Sequence[SceneGraph], max_objects: int) -> BankEntries:
    """The unique ground-truth relations of ``graphs`` as the pipeline sees them.

    Args:
      graphs: the training split.
      max_objects: the pipeline's object budget.

    Returns:
      :class:`BankEntries` in (image, relation row) order.
    """
    columns: dict[str, list[np.ndarray]] = {name: [] for name in _ENTRY_FIELDS}
    for image_index, graph in enumerate(graphs):
        graph, _ = pipeline.truncate_objects(graph, max_objects)
        relations = graph.relations[graph.relations[:, 0] != graph.relations[:, 1]]
        if relations.shape[0] == 0:
            continue
        _, first = np.unique(relations, axis=0, return_index=True)
        relations = relations[np.sort(first)].astype(np.int64)
        labels = graph.labels.astype(np.int64)
        columns["image_index"].append(np.full(relations.shape[0], image_index, np.int64))
        columns["subject"].append(relations[:, 0])
        columns["object"].append(relations[:, 1])
        columns["predicate"].append(relations[:, 2])
        columns["subject_class"].append(labels[relations[:, 0]])
        columns["object_class"].append(labels[relations[:, 1]])
    return BankEntries(
        **{
            name: np.concatenate(parts) if parts else np.zeros(0, np.int64)
            for name, parts in columns.items()
        }
    )


_ENTRY_FIELDS = ("image_index", "subject", "object", "predicate", "subject_class", "object_class")


def cap_per_triplet(entries: BankEntries, max_per_triplet: int, seed: int) -> BankEntries:
    """At most ``max_per_triplet`` entries per (subject class, object class, predicate) triplet.

    Args:
      entries: the bank's entries in (image, relation row) order.
      max_per_triplet: the cap (>= 1).
      seed: seed of the uniform choice among a triplet's entries.

    Returns:
      The kept entries, still in (image, relation row) order.
    """
    keep = _cap_mask(entries, max_per_triplet, seed)
    return BankEntries(**{name: getattr(entries, name)[keep] for name in _ENTRY_FIELDS})


def _cap_mask(entries: BankEntries, max_per_triplet: int, seed: int) -> np.ndarray:
    """bool[M]: the entries :func:`cap_per_triplet` keeps."""
    check_int("max_per_triplet", max_per_triplet, minimum=1)
    if entries.size == 0:
        return np.zeros(0, bool)
    _, triplet = np.unique(entries.triplets, axis=0, return_inverse=True)
    triplet = triplet.reshape(-1)
    rng = np.random.default_rng(seed)
    # A random rank per entry; within each triplet keep the max_per_triplet smallest ranks.
    rank_key = rng.permutation(entries.size)
    order = np.lexsort((rank_key, triplet))
    sorted_triplet = triplet[order]
    starts = np.searchsorted(sorted_triplet, sorted_triplet, side="left")
    position = np.arange(entries.size) - starts
    keep = np.zeros(entries.size, bool)
    keep[order[position < max_per_triplet]] = True
    return keep


def _padding_like(batch: SceneGraphBatch) -> SceneGraphBatch:
    """``batch`` with every array zeroed and ``image_index`` -1: padding images only."""
    fields = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if value is not None:
            value = np.zeros_like(np.asarray(value))
        fields[field.name] = value
    fields["image_index"] = np.full_like(np.asarray(batch.image_index), -1)
    return dataclasses.replace(batch, **fields)


def shard_bounds(image_index: np.ndarray, num_shards: int) -> np.ndarray:
    """Entry boundaries of ``num_shards`` contiguous shards made of whole images.

    Shard ``s`` holds entries ``bounds[s] .. bounds[s + 1] - 1``: it starts at the image boundary
    nearest to entry ``round(s * M / num_shards)`` (the lower one on a tie), so shards hold about
    ``M / num_shards`` entries each and never split an image (a shard may be empty when one image
    holds more entries than a shard's share).

    Args:
      image_index: int64[M] image of each entry, non-decreasing (the bank's order).
      num_shards: S >= 1.

    Returns:
      int64[S + 1], ``bounds[0] = 0``, ``bounds[S] = M``, non-decreasing.
    """
    check_int("num_shards", num_shards, minimum=1)
    image_index = np.asarray(image_index, np.int64)
    size = image_index.shape[0]
    # Image boundaries: the first entry of every image, and the end.
    edges = np.flatnonzero(np.r_[True, np.diff(image_index) != 0, True])
    edges[-1] = size
    targets = (np.arange(num_shards + 1) * size + num_shards // 2) // num_shards
    above = np.clip(np.searchsorted(edges, targets, side="left"), 0, edges.size - 1)
    below = np.clip(above - 1, 0, None)
    nearer_below = (targets - edges[below]) <= (edges[above] - targets)
    bounds = np.where(nearer_below, edges[below], edges[above]).astype(np.int64)
    bounds[0], bounds[-1] = 0, size
    return np.maximum.accumulate(bounds)


def _pack_rows(*columns: np.ndarray) -> np.ndarray:
    """uint8[N, bytes]: the rows of ``columns`` (each [N, ...]) side by side as raw bytes."""
    parts = []
    for column in columns:
        column = np.ascontiguousarray(column)
        width = int(np.prod(column.shape[1:], dtype=np.int64)) * column.dtype.itemsize
        parts.append(column.view(np.uint8).reshape(column.shape[0], width))
    return np.concatenate(parts, axis=1)


def _unpack_rows(packed: np.ndarray, *layouts: tuple[np.dtype, tuple[int, ...]]) -> list:
    """The columns :func:`_pack_rows` packed, given each one's ``(dtype, row shape)``."""
    columns, start = [], 0
    for dtype, shape in layouts:
        dtype = np.dtype(dtype)
        width = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        part = np.ascontiguousarray(packed[:, start : start + width])
        columns.append(part.view(dtype).reshape(packed.shape[0], *shape))
        start += width
    return columns


def exact_scores(
    queries: np.ndarray, keys: np.ndarray, local_ids: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cosine scores of search results, recomputed the same way wherever they come from.

    An index scores a (query, key) pair inside a float32 matrix product whose rounding depends on
    the product's shape: the same pair can score one ulp apart in a bank of another size, e.g. a
    process's shard and the whole bank, which would reorder equal keys between shards. Here each
    pair is scored on its own (elementwise products summed along the contiguous last axis, divided
    by the two norms computed the same way), so a score depends only on the two vectors: equal keys
    score equally in every shard and ties fall to the lower id, as in one bank. The rows are then
    sorted again (descending score, then id; padding last). Used with the ``exact`` backend.

    Args:
      queries: float32[Q, D].
      keys: float32[M_s, D], the keys of ``local_ids``.
      local_ids: int64[M_s], sorted.
      ids: int64[Q, n] results among ``local_ids`` (-1: padding).

    Returns:
      ``(ids int64[Q, n], scores float32[Q, n])``.
    """
    ids = np.asarray(ids, np.int64)
    scores = np.full(ids.shape, -np.inf, np.float32)
    valid = ids >= 0
    if not valid.any():
        return ids, scores
    positions = np.searchsorted(local_ids, np.where(valid, ids, local_ids[0]))
    width = max(1, ids.shape[1] * keys.shape[1])
    block = max(1, (1 << 21) // width)  # about 8 MiB of candidate keys at once
    for start in range(0, ids.shape[0], block):
        query = np.asarray(queries[start : start + block], np.float32)
        query_norm = np.sqrt((query * query).sum(-1))
        key = np.asarray(keys, np.float32)[positions[start : start + block]]
        key_norm = np.sqrt((key * key).sum(-1))
        dot = (key * query[:, None, :]).sum(-1)
        norms = np.maximum(query_norm, np.float32(1e-12))[:, None] * np.maximum(
            key_norm, np.float32(1e-12)
        )
        exact = (dot / norms).astype(np.float32)
        scores[start : start + block] = np.where(valid[start : start + block], exact, -np.inf)
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def sharded_search(
    local_search: Callable[[np.ndarray, int, np.ndarray | None], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    exclude_ids: np.ndarray | None,
    dim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` over the shards of every process (a collective: every process calls it).

    Every process passes its own queries and the search of its own shard. Gathered: the queries
    (``Q x dim`` float32 with their excluded ids, ``Q`` summed over processes), then each shard's
    top-``k`` of all of them (``k`` ids and scores per query per shard, ``S x Q x k`` in all);
    merged by :func:`merge_shard_results`.

    Args:
      local_search: ``local_search(queries, k, exclude_ids) -> (ids int64[Q, k], scores
        float32[Q, k])`` over this process's shard (:meth:`MemoryBank.local_search`).
      queries: float32[Q_p, dim], this process's queries.
      k: neighbours per query.
      exclude_ids: optional int64[Q_p] (-1: none); the same presence in every process.
      dim: the key dimension (the queries' row shape must agree across processes).

    Returns:
      ``(ids int64[Q_p, k], scores float32[Q_p, k])`` for this process's queries.
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ConfigError("queries", f"expected float32[Q, {dim}], got shape {queries.shape}")
    count = queries.shape[0]
    exclude = np.full(count, PAD_ID, np.int64) if exclude_ids is None else exclude_ids
    exclude = np.asarray(exclude, np.int64).reshape(count)
    owner = np.full(count, distributed.process_index(), np.int64)
    gathered = distributed.allgather_rows(_pack_rows(owner, exclude, queries))
    owner, exclude, queries = _unpack_rows(
        gathered, (np.int64, ()), (np.int64, ()), (np.float32, (dim,))
    )
    ids, scores = local_search(queries, k, None if exclude_ids is None else exclude)
    candidates = distributed.allgather_rows(_pack_rows(ids, scores))
    ids, scores = merge_shard_results(
        *_unpack_rows(candidates, (np.int64, (k,)), (np.float32, (k,))),
        num_shards=distributed.process_count(),
        k=k,
    )
    mine = owner == distributed.process_index()
    return ids[mine], scores[mine]


def merge_shard_results(
    ids: np.ndarray, scores: np.ndarray, *, num_shards: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The global top-``k`` from every shard's top-``k`` of the same ``Q`` queries.

    Args:
      ids: int64[num_shards * Q, k_s], shard ``s``'s results in rows ``s * Q .. (s + 1) * Q - 1``
        (the all-gather of the shards' results, in process order).
      scores: float32[num_shards * Q, k_s], matching ``ids``.
      num_shards: S.
      k: results per query.

    Returns:
      ``(ids int64[Q, k], scores float32[Q, k])`` (:func:`~sgg_jax.retrieval.index.merge_topk`).
    """
    if ids.shape[0] % num_shards:
        raise ConfigError("num_shards", f"{ids.shape[0]} rows do not split over {num_shards}")
    rows = ids.shape[0] // num_shards
    return merge_topk(
        [ids[s * rows : (s + 1) * rows] for s in range(num_shards)],
        [scores[s * rows : (s + 1) * rows] for s in range(num_shards)],
        k,
    )


def refresh_due(config: Any, bank: MemoryBank, refreshed_at: int | None, step: int) -> bool:
    """Whether update ``step`` (1-based) re-embeds the bank first (host path and in-step alike).

    The official bank is built once before phase 2 and never refreshed; the full bank is built
    before the first update and then every ``config.bank_refresh_steps`` updates (0 = never).
    ``refreshed_at`` is the update count at the last refresh (None = never built).

    Raises:
      ConfigError: ``bank`` when the official bank has not been built.
    """
    if config.bank == "official":
        if not bank.last_refresh:
            raise ConfigError("bank", "the official bank must be built before phase 2")
        return False
    if refreshed_at is None:
        return True
    every = config.bank_refresh_steps
    return every > 0 and (step - 1) % every == 0 and step - 1 != refreshed_at


class MemoryBank:
    """Relation embeddings of every ground-truth training relation, searchable by cosine similarity.

    Args:
      graphs: the training split (the same source, in the same order, as the training loader).
      max_objects: the training pipeline's object budget.
      num_predicates: P; predicates lie in ``[1, P]``.
      backend: ``"scann"`` or ``"exact"`` (see :mod:`sgg_jax.retrieval.index`).
      index_options: constructor options of the backend.
      batch_size: images per embedding batch (a multiple of the device count).
      pair_budget: pairs per embedding row; an image with more unique annotated pairs uses
        several rows.
      object_features: optional per-image float32[N_i, D] features (the
        ``precomputed`` feature source), aligned with ``graphs``.
      max_per_triplet: keep at most this many entries per triplet (the official bank's
        ``MEMORY_SIZE``); None keeps every relation.
      cap_seed: seed of the choice under ``max_per_triplet``.
      batch_transform: optional ``transform(None, 0, batch) -> (batch, metrics)`` applied to each
        embedding batch before the model sees it, e.g. the pixels of the ``roi`` feature source
        (:class:`~sgg_jax.data.images.ImageBatchTransform` over ``graphs``: the batches'
        ``image_index`` indexes ``graphs``, as the training loader's does).
      num_shards, shard_index: this bank holds shard ``shard_index`` of ``num_shards``
        (:func:`shard_bounds`); default: one shard per process, this process's
        (:mod:`sgg_jax.distributed`). :meth:`search` with several shards needs one per process.

    Attributes:
      entries: every entry's metadata (all shards), ids ``0..M-1``.
      local_ids: int64[M_s], this shard's entry ids (``arange(M)`` with one shard).
      keys: float32[M_s, D] after :meth:`refresh`: the keys of ``local_ids``.
      index: the index over this shard (None when the shard is empty).

    Raises:
      DataError: the training split holds no relation.
      ConfigError: a bad budget or backend.
    """

    def __init__(
        self,
        graphs: Sequence[SceneGraph],
        *,
        max_objects: int,
        num_predicates: int,
        backend: str = "scann",
        index_options: dict[str, Any] | None = None,
        batch_size: int = 8,
        pair_budget: int = 64,
        object_features: Sequence[np.ndarray] | None = None,
        max_per_triplet: int | None = None,
        cap_seed: int = 0,
        batch_transform: Callable | None = None,
        num_shards: int | None = None,
        shard_index: int | None = None,
    ):
        check_int("max_objects", max_objects, minimum=1)
        check_int("num_predicates", num_predicates, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        check_int("pair_budget", pair_budget, minimum=1)
        make_index(backend, **(index_options or {}))  # validates backend and options early
        self.graphs = graphs
        self.max_objects = int(max_objects)
        self.num_predicates = int(num_predicates)
        self.backend = backend
        self.index_options = dict(index_options or {})
        self.batch_size = int(batch_size)
        self.pair_budget = int(pair_budget)
        self.object_features = object_features
        self.batch_transform = batch_transform
        self.entries = enumerate_relations(graphs, self.max_objects)
        self.num_relations = self.entries.size
        if max_per_triplet is not None:
            self.entries = cap_per_triplet(self.entries, max_per_triplet, cap_seed)
        if self.entries.size == 0:
            raise DataError("the training split has no relation to put in the memory bank")
        bad = (self.entries.predicate < 1) | (self.entries.predicate > self.num_predicates)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"predicate {int(self.entries.predicate[first])} outside [1, {num_predicates}]",
                record=graphs[int(self.entries.image_index[first])].image_id,
                field="relations",
            )
        self._codes = self._encode(
            self.entries.image_index,
            self.entries.subject,
            self.entries.object,
            self.entries.predicate,
        )
        self._code_order = np.argsort(self._codes, kind="stable")
        self._set_shard(num_shards, shard_index)
        bounds = shard_bounds(self.entries.image_index, self.num_shards)
        self.local_ids = np.arange(bounds[self.shard_index], bounds[self.shard_index + 1])
        self.keys: np.ndarray | None = None
        self.index: Index | None = None
        self.last_refresh: dict[str, float] = {}
        self._batches: list | None = None

    def _set_shard(self, num_shards: int | None, shard_index: int | None) -> None:
        self.num_shards = distributed.process_count() if num_shards is None else num_shards
        self.shard_index = distributed.process_index() if shard_index is None else shard_index
        check_int("num_shards", self.num_shards, minimum=1)
        check_int("shard_index", self.shard_index, minimum=0)
        if self.shard_index >= self.num_shards:
            raise ConfigError(
                "shard_index", f"shard {self.shard_index} of {self.num_shards} does not exist"
            )

    def _model_input(self, batch: SceneGraphBatch) -> SceneGraphBatch:
        """``batch`` as the model reads it (``batch_transform`` applied, e.g. its pixels)."""
        if self.batch_transform is None:
            return batch
        return self.batch_transform(None, 0, batch)[0]

    @property
    def size(self) -> int:
        """Number of entries M."""
        return self.entries.size

    # -- identity of entries ------------------------------------------------------------------------

    def _encode(self, image_index, subject, obj, predicate) -> np.ndarray:
        image_index = np.asarray(image_index, np.int64)
        code = image_index * self.max_objects + np.asarray(subject, np.int64)
        code = code * self.max_objects + np.asarray(obj, np.int64)
        return code * (self.num_predicates + 1) + np.asarray(predicate, np.int64)

    def entry_ids(self, image_index, subject, obj, predicate) -> np.ndarray:
        """The entry of each ``(image_index, subject, object, predicate)``; -1 where there is none.

        Args:
          image_index, subject, obj, predicate: int arrays of one shape.

        Returns:
          int64 array of that shape.
        """
        codes = self._encode(image_index, subject, obj, predicate)
        sorted_codes = self._codes[self._code_order]
        position = np.clip(np.searchsorted(sorted_codes, codes), 0, self.size - 1)
        found = sorted_codes[position] == codes
        return np.where(found, self._code_order[position], PAD_ID).astype(np.int64)

    def predicates_of(self, ids: np.ndarray) -> np.ndarray:
        """Predicates of entries ``ids`` (int64, any shape); -1 where the id is -1 (padding)."""
        ids = np.asarray(ids, np.int64)
        return np.where(ids >= 0, self.entries.predicate[np.clip(ids, 0, None)], -1)

    # -- building -----------------------------------------------------------------------------------

    def embedding_batches(
        self,
    ) -> list[tuple[SceneGraphBatch, np.ndarray, np.ndarray, np.ndarray]]:
        """The batches whose pairs are this shard's unique annotated pairs.

        Returns:
          ``[(batch, ids, rows, slots)]``: the key of entry ``ids`` is ``r[rows, slots]`` with
          ``r`` the batch's relation embeddings; every id of ``local_ids`` appears in exactly one
          batch.
        """
        entries = self.entries
        examples: list[dict[str, np.ndarray]] = []
        entry_example = np.full(self.size, -1, np.int64)
        entry_slot = np.zeros(self.size, np.int64)
        starts = np.searchsorted(entries.image_index, np.arange(len(self.graphs) + 1))
        for image_index in np.unique(entries.image_index[self.local_ids]):
            begin, end = int(starts[image_index]), int(starts[image_index + 1])
            graph, dropped = pipeline.truncate_objects(self.graphs[image_index], self.max_objects)
            pair_keys = entries.subject[begin:end] * self.max_objects + entries.object[begin:end]
            unique_keys, inverse = np.unique(pair_keys, return_inverse=True)
            features = None
            if self.object_features is not None:
                features = np.asarray(self.object_features[image_index], np.float32)
            for chunk_start in range(0, unique_keys.shape[0], self.pair_budget):
                chunk = unique_keys[chunk_start : chunk_start + self.pair_budget]
                pairs = np.stack([chunk // self.max_objects, chunk % self.max_objects], axis=1)
                sampled = pipeline.SampledPairs(
                    pairs=pairs.astype(np.int32),
                    labels=np.zeros(chunk.shape[0], np.int32),
                    soft_targets=None,
                    num_truncated_pairs=0,
                    num_foreground=0,
                )
                in_chunk = (inverse >= chunk_start) & (inverse < chunk_start + chunk.shape[0])
                entry_example[begin:end][in_chunk] = len(examples)
                entry_slot[begin:end][in_chunk] = inverse[in_chunk] - chunk_start
                examples.append(
                    pipeline.pad_graph(
                        graph,
                        sampled,
                        max_objects=self.max_objects,
                        max_pairs=self.pair_budget,
                        image_index=int(image_index),
                        num_truncated_objects=dropped,
                        object_features=features,
                    )
                )
        batches = []
        for start in range(0, len(examples), self.batch_size):
            batch = pipeline.collate(examples[start : start + self.batch_size], self.batch_size)
            in_batch = (entry_example >= start) & (entry_example < start + self.batch_size)
            ids = np.flatnonzero(in_batch)
            batches.append((batch, ids, entry_example[ids] - start, entry_slot[ids]))
        return batches

    def _padding_batch(self) -> SceneGraphBatch:
        """A batch of padding images (``graph_mask`` False, ``image_index`` -1)."""
        feature_dim = None
        if self.object_features is not None:
            feature_dim = int(np.shape(self.object_features[0])[-1])
        example = pipeline.padding_example(
            max_objects=self.max_objects,
            max_pairs=self.pair_budget,
            object_feature_dim=feature_dim,
        )
        return pipeline.collate([example], self.batch_size)

    def refresh(self, embed_fn: EmbedFn) -> dict[str, float]:
        """Recomputes this shard's keys with ``embed_fn`` and rebuilds its index.

        With several processes every process runs ``embed_fn`` the same number of times (the
        most batches any shard has; a shard with fewer feeds padding batches), as a jitted
        function over the global mesh requires, and keeps the rows of its own batches.

        Args:
          embed_fn: ``embed_fn(host_batch) -> float32[B, P, H]`` relation embeddings of this
            process's rows (e.g. :func:`make_embed_fn` bound to the current variables); the batch
            is ``batch_transform``'s output when one is given.

        Returns:
          ``{"bank/size", "bank/embed_seconds", "bank/index_seconds"}`` (the size of all shards).
        """
        start = time.perf_counter()
        keys = None
        written = 0
        if self._batches is None:
            self._batches = self.embedding_batches()
        rounds = len(self._batches)
        if self.num_shards > 1:
            rounds = int(distributed.allgather_rows(np.array([rounds], np.int64)).max())
        first = int(self.local_ids[0]) if self.local_ids.size else 0
        for step in range(rounds):
            if step < len(self._batches):
                batch, ids, rows, slots = self._batches[step]
            else:
                batch, ids = self._padding_batch(), np.zeros(0, np.int64)
                rows = slots = ids
            embeddings = np.asarray(embed_fn(self._model_input(batch)), np.float32)
            if keys is None:
                keys = np.zeros((self.local_ids.size, embeddings.shape[-1]), np.float32)
            keys[ids - first] = embeddings[rows, slots]
            written += ids.shape[0]
        if written != self.local_ids.size:  # an internal invariant of embedding_batches
            raise RuntimeError(f"memory bank wrote {written} of {self.local_ids.size} keys")
        embedded = time.perf_counter()
        if not all_finite(keys):  # chunk by chunk: no bank-sized mask
            raise FloatingPointError("memory bank: the model produced non-finite embeddings")
        self.keys = keys
        self.index = None
        if self.local_ids.size:
            index = make_index(self.backend, **self.index_options)
            self.index = index.build(keys, self.local_ids)
        built = time.perf_counter()
        self.last_refresh = {
            "bank/size": float(self.size),
            "bank/embed_seconds": embedded - start,
            "bank/index_seconds": built - embedded,
        }
        return dict(self.last_refresh)

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` entries per query (see :meth:`sgg_jax.retrieval.index.Index.search`).

        With the ``exact`` backend the index selects the entries and :func:`exact_scores`
        recomputes their scores pair by pair, so equal keys score equally in any shard.

        With several shards (one per process) this is a collective that every process calls with
        its own queries, the same number of times (module docstring, :func:`sharded_search`).
        """
        if self.keys is None:
            raise ConfigError("memory_bank", "the bank is empty: call refresh() first")
        if self.num_shards == 1:
            if self.index is None:
                raise ConfigError("memory_bank", "the bank is empty: call refresh() first")
            return self.local_search(queries, k, exclude_ids)
        if self.num_shards != distributed.process_count():
            raise ConfigError(
                "num_shards",
                f"searching {self.num_shards} shards needs as many processes, "
                f"not {distributed.process_count()}",
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("k", f"must be a positive integer, got {k!r}")
        return sharded_search(self.local_search, queries, int(k), exclude_ids, self.keys.shape[1])

    def local_search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of this shard only (no collective): the index's results (with the ``exact``
        backend, scores by :func:`exact_scores`); padding (-1 / -inf) for an empty shard."""
        if self.index is None:
            queries = np.asarray(queries)
            return (
                np.full((queries.shape[0], k), PAD_ID, np.int64),
                np.full((queries.shape[0], k), -np.inf, np.float32),
            )
        ids, scores = self.index.search(queries, k, exclude_ids)
        if self.backend != "exact":
            return ids, scores
        return exact_scores(queries, self.keys, self.local_ids, ids)


class DetectionMemoryBank(MemoryBank):
    """The SGDet memory bank: ground-truth-matched pairs of the detector's detections.

    In SGDet the relation model never sees a ground-truth box: its relations are pairs of
    detections. The bank's entries are, for each training image, the foreground pairs of the
    detection batch (:func:`sgg_jax.relation.sgdet.detection_batch` rules: a detection matches a
    ground-truth object with the same assigned label and IoU > ``fg_iou_thresh``; a pair is
    foreground when its two detections match a ground-truth relation's subject and object), embedded
    by the model in eval mode. Key: the pair's relation embedding; value: (subject class, object
    class, predicate) of the matched ground-truth relation (the detections' assigned labels are the
    matched objects' classes). Entry identity is ``(image_index, subject detection, object
    detection, predicate)``, so a training query (a pair of the same detections) excludes itself.

    The official code builds its bank with ``tools/relation_memory_extractor.py`` (eval mode,
    ``TYPE=ra_extract``): the relation head then samples with ``gtbox_relsample``
    (``relation_head.py``:63-64 of ``KanghoonYoon/torch-rasgg`` at e8be01b), which asserts ground-truth
    boxes (``sampling.py``:49), and the predictor stores the foreground pairs' embeddings by triplet
    (``roi_relation_predictors.py``:236-260). Its SGDet bank file
    (``featurebank/sgdet_bg_processed_fb_train_8.npy``, loaded at ``roi_relation_predictors.py``:463)
    cannot be made by the public code; ours extends its reading to detections: the foreground
    detection pairs above, eval mode, the official cap per triplet with ``max_per_triplet``.

    Entries are recomputed at every :meth:`refresh` (they depend on the detector's detections,
    which change when the detector is trained). An image contributes at most ``pair_budget`` pairs
    (its first foreground pairs in subject-major order of the detections).

    Args:
      batches: host batches of the training split with every annotated relation as a foreground
        pair (the evaluation pipeline over the training split); ``image_index`` indexes the
        training graphs.
      num_detections: the detector's detections per image (D).
      num_predicates: P.
      backend, index_options: as :class:`MemoryBank`.
      batch_transform: the pixels of each batch (``transform(None, 0, batch)``).
      max_per_triplet, cap_seed: the official cap per triplet (None: every matched pair).
    """

    def __init__(
        self,
        batches: Sequence[SceneGraphBatch],
        *,
        num_detections: int,
        num_predicates: int,
        backend: str = "scann",
        index_options: dict[str, Any] | None = None,
        batch_transform: Callable | None = None,
        max_per_triplet: int | None = None,
        cap_seed: int = 0,
    ):
        check_int("num_detections", num_detections, minimum=2)
        check_int("num_predicates", num_predicates, minimum=1)
        make_index(backend, **(index_options or {}))
        if max_per_triplet is not None:
            check_int("max_per_triplet", max_per_triplet, minimum=1)
        self.input_batches = list(batches)
        self.max_objects = int(num_detections)  # the radix of entry codes: detection indices
        self.num_predicates = int(num_predicates)
        self.backend = backend
        self.index_options = dict(index_options or {})
        self.batch_transform = batch_transform
        self.max_per_triplet = max_per_triplet
        self.cap_seed = int(cap_seed)
        self.entries = BankEntries(**{name: np.zeros(0, np.int64) for name in _ENTRY_FIELDS})
        self.num_relations = 0
        self._codes = np.zeros(0, np.int64)
        self._code_order = np.zeros(0, np.int64)
        self._set_shard(None, None)
        self.local_ids = np.zeros(0, np.int64)
        self.keys = None
        self.index = None
        self.last_refresh = {}

    def embedding_batches(self):
        raise NotImplementedError("the SGDet bank's pairs are the model's detections: refresh()")

    def refresh(self, embed_fn: Callable[[SceneGraphBatch], Mapping[str, np.ndarray]]):
        """Runs the model over every training image and rebuilds entries, keys and index.

        Args:
          embed_fn: ``embed_fn(host_batch) -> {"embedding" f32[B, K, H], "subject", "object",
            "subject_class", "object_class", "predicate" int[B, K], "mask" bool[B, K]}``: the
            matched foreground detection pairs of each image
            (:func:`sgg_jax.projects.ra_sgg.ra_sgg.make_detection_bank_fn`).

        Returns:
          ``{"bank/size", "bank/embed_seconds", "bank/index_seconds"}``.

        An image without any matched pair contributes nothing; a training split without any
        leaves the bank empty (``size`` 0, no index).

        With several processes each process embeds its own ``batches`` (its part of the training
        split; all run the same number of embedding batches, padded with empty ones) and keeps
        the keys of its pairs as its shard; the entries' metadata (six int64 per entry, not the
        keys) is all-gathered so that ids, ``entry_ids`` and ``predicates_of`` are global. Ids
        number the entries in process order, then batch, image and pair order (the
        single-process ids when process ``k``'s batches are the ``k``-th block of the
        single-process ones); the per-triplet cap is drawn over all of them.
        """
        start = time.perf_counter()
        columns: dict[str, list[np.ndarray]] = {name: [] for name in _ENTRY_FIELDS}
        keys = []
        rounds = len(self.input_batches)
        if self.num_shards > 1:
            rounds = int(distributed.allgather_rows(np.array([rounds], np.int64)).max())
            if rounds and not self.input_batches:
                raise DataError(
                    f"process {self.shard_index} has no training batch for the memory bank"
                )
        for step in range(rounds):
            if step < len(self.input_batches):
                batch = self.input_batches[step]
            else:  # lockstep with the processes that have more batches: an empty batch
                batch = _padding_like(self.input_batches[0])
            found = embed_fn(self._model_input(batch))
            mask = np.asarray(found["mask"], bool) & np.asarray(batch.graph_mask, bool)[:, None]
            rows, slots = np.nonzero(mask)
            image_index = np.asarray(batch.image_index, np.int64)[rows]
            columns["image_index"].append(image_index)
            for name in _ENTRY_FIELDS[1:]:
                columns[name].append(np.asarray(found[name], np.int64)[rows, slots])
            keys.append(np.asarray(found["embedding"], np.float32)[rows, slots])
        entries = BankEntries(
            **{
                name: np.concatenate(parts) if parts else np.zeros(0, np.int64)
                for name, parts in columns.items()
            }
        )
        keys = np.concatenate(keys) if keys else np.zeros((0, 1), np.float32)
        # Every process's entries (metadata only), in process order; the keys stay local.
        owner = np.full(entries.size, self.shard_index, np.int64)
        table = np.stack([owner, *(getattr(entries, name) for name in _ENTRY_FIELDS)], axis=1)
        if self.num_shards > 1:
            table = distributed.allgather_rows(table)
        owner = table[:, 0]
        entries = BankEntries(**{name: table[:, i + 1] for i, name in enumerate(_ENTRY_FIELDS)})
        self.num_relations = entries.size
        keep = np.ones(entries.size, bool)
        if self.max_per_triplet is not None:
            keep = _cap_mask(entries, self.max_per_triplet, self.cap_seed)
            entries = BankEntries(**{name: getattr(entries, name)[keep] for name in _ENTRY_FIELDS})
        keys = keys[keep[owner == self.shard_index]]
        self.local_ids = np.flatnonzero(owner[keep] == self.shard_index).astype(np.int64)
        embedded = time.perf_counter()
        if not all_finite(keys):  # chunk by chunk: no bank-sized mask
            raise FloatingPointError("memory bank: the model produced non-finite embeddings")
        self.entries = entries
        self._codes = self._encode(
            entries.image_index, entries.subject, entries.object, entries.predicate
        )
        self._code_order = np.argsort(self._codes, kind="stable")
        self.keys = keys
        # No match at all (e.g. an untrained detector): an empty bank, no index; the augmenter
        # then leaves the batch's one-hot targets as they are.
        self.index = None
        if self.local_ids.size:
            index = make_index(self.backend, **self.index_options)
            self.index = index.build(keys, self.local_ids)
        built = time.perf_counter()
        self.last_refresh = {
            "bank/size": float(self.size),
            "bank/embed_seconds": embedded - start,
            "bank/index_seconds": built - embedded,
        }
        return dict(self.last_refresh)

    def entry_ids(self, image_index, subject, obj, predicate) -> np.ndarray:
        if self.size == 0:
            return np.full(np.shape(image_index), PAD_ID, np.int64)
        return super().entry_ids(image_index, subject, obj, predicate)
