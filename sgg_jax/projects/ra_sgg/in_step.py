"""RA-SGG phase 2 with the retrieval inside the jitted train step (``--retrieval=in_step``).

The host path (:class:`~sgg_jax.projects.ra_sgg.ra_sgg.RetrievalAugmenter`, ``--retrieval=host``)
runs a second forward to embed the batch's relations, searches the memory bank on the host and
writes soft targets into the batch. With ``--retrieval=in_step`` the bank's keys live on the devices
and one jit does everything:

1. the training forward pass gives the relation embeddings ``r`` (``aux["relation_embedding"]``);
   the queries are ``stop_gradient(r)`` (no gradient flows through the retrieval), so no second
   forward runs;
2. exact cosine top-(K+1) of the relations that use it (the paper variant's foreground relations, the
   official variant's real pairs) in one block of the next power of two, or ``query_chunk`` at a time
   (:func:`chunked_search`), per device over the device's rows of the bank (keys sharded over the
   ``"data"`` mesh axis along the rows, ``NamedSharding(mesh, P("data", None))``, padded to a
   multiple of the device count; padded rows are masked out), all-gathered and merged into the
   global top-(K+1) (:func:`sharded_topk`); equal scores are ordered by the lower entry id, as
   :mod:`sgg_jax.retrieval.index`;
3. self-exclusion, as the host path: the paper variant drops the query's own entry (its id, found by
   the host from the batch's labels, :meth:`MemoryBank.entry_ids`, travels with the batch), else the
   last extra; the official variant drops the first hit whatever it is (``ret_idx[1:K+1]``);
4. the neighbours' predicates, the label-inconsistency selection, the augmentation and the
   multi-prototype soft targets in ``jnp`` (:func:`paper_rule`, :func:`official_rule`), then the loss.

With several processes the bank is sharded by process
(:class:`~sgg_jax.projects.ra_sgg.memory_bank.MemoryBank`): each process puts its shard on its own
devices (:func:`device_bank`), so the device rows stay in entry-id order and the merge keeps the
lower-id tie rule; the step's batch is the global one, so the selections and draws are those of one
process with the same global batch (checked with 2 processes x 2 devices against ``ExactIndex``).
The host's memory bank still builds its ``--retrieval_backend`` index at each refresh, unused here.

What the host still does, per batch: look up the own entry ids of the batch's foreground pairs from
their labels (a sorted search, no device data) and, when a refresh is due (when the host path would
refresh), re-embed the bank with :meth:`MemoryBank.refresh` and put the new keys on the mesh
(:func:`device_bank`). Nothing computed on the devices returns to the host within a step.

Differences from the host path (by construction, not by accident):

* Randomness: ``jax.random`` with a key folded from the update's step key (``fold_in(step_key,
  0xA5)``), not ``numpy.random.default_rng((seed, 0xA5, step))``: the sampled predicates and λ are
  drawn from the same distributions but are not the same draws.
* The paper variant's queries are the training forward's embeddings (train mode, the update's
  dropout) instead of the host path's eval-mode second forward; the official variant's queries are
  the same as the host path's (the host path also embeds with the training forward and the update's
  dropout key).
* The search is exact (the host path's ``--retrieval_backend`` is not used).
* Label inconsistency ``d ≥ τ`` is decided exactly: with ``n`` valid neighbours and histogram ``h``,
  ``n² d² = (n − h_gt)² + Σ_{p≠gt} h_p²`` is an integer, compared with ``(τ n)²``. The host path
  computes ``d`` in float64, so where ``d = τ`` holds exactly its rounding decides; everywhere else
  the selections are the same (tested).
* The selection statistics are training metrics ``loss/ra/*`` of the step (not ``ra/*`` of the
  transform).

Supported: PredCls and SGCls, both variants (``paper`` with the ``full`` or ``official`` bank,
``official`` with either bank), every weighting, ``select``, ``tail_only``, both λ modes. Not
supported (a ConfigError naming the flag before training): SGDet (detection banks: the entries
change with the detector and the queries are pairs sampled inside the model), and the paper
variant's ``relabel_background``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgg_jax.errors import ConfigError
from sgg_jax.projects.ra_sgg import augment as augment_lib
from sgg_jax.projects.ra_sgg.memory_bank import MemoryBank, refresh_due, shard_bounds
from sgg_jax.projects.ra_sgg.tail_sets import rarest_predicates
from sgg_jax.retrieval.index import PAD_ID, l2_normalize
from sgg_jax.structures import SceneGraphBatch

RETRIEVALS = ("host", "in_step")
DATA_AXIS = "data"
_KEY_SALT = 0xA5


@flax.struct.dataclass
class RetrievalBatch(SceneGraphBatch):
    """A training batch with the memory bank on the devices (``--retrieval=in_step``).

    Attributes:
      bank_keys: f32[R, H] unit-norm keys, rows sharded over ``"data"`` (zero rows pad).
      bank_ids: int32[R] entry id of each row; -1 on padding rows.
      bank_predicates: int32[R] predicate of each row; -1 on padding rows.
      own_entry: int32[B, P] the bank entry of each foreground pair (-1: none or not foreground).
    """

    bank_keys: jax.Array | None = None
    bank_ids: jax.Array | None = None
    bank_predicates: jax.Array | None = None
    own_entry: jax.Array | None = None


def check_supported(config: Any, *, detection: bool) -> None:
    """Raises ConfigError naming the flag when ``--retrieval=in_step`` cannot run ``config``.

    Args:
      config: a :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig`.
      detection: SGDet.
    """
    if detection:
        raise ConfigError(
            "retrieval",
            "in_step supports predcls and sgcls; sgdet's detection bank needs --retrieval=host",
        )
    if config.variant == "paper" and config.relabel_background:
        raise ConfigError(
            "relabel_background",
            "is not supported with --retrieval=in_step and --variant=paper (use --retrieval=host)",
        )


# ---------------------------------------------------------------------------------------------------
# The bank on the devices and the search.
# ---------------------------------------------------------------------------------------------------


def device_bank(
    keys: np.ndarray,
    predicates: np.ndarray,
    mesh: Any,
    *,
    local_ids: np.ndarray | None = None,
    shard_sizes: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Puts the bank on the mesh: rows split over ``"data"``, padded to a multiple of the devices.

    One process, or every process holding every key (``shard_sizes`` None): row ``i`` is entry
    ``i``. A bank sharded by process (:class:`~sgg_jax.projects.ra_sgg.memory_bank.MemoryBank`
    with several processes: process ``p`` holds the contiguous ids of shard ``p``): each process
    puts its shard on its own devices, padded to the largest shard's size (``shard_sizes``), so the
    rows stay in id order across devices and no key crosses processes.

    Args:
      keys: float[M_p, H] this process's keys (L2-normalised here, as
        :class:`sgg_jax.retrieval.index.Index`).
      predicates: int[M] the predicate of every entry id (all shards).
      mesh: the device mesh.
      local_ids: int[M_p] the entry ids of ``keys`` (default ``arange(M_p)``).
      shard_sizes: every process's number of keys, in process order (None: not sharded).

    Returns:
      ``(keys f32[R, H], ids int32[R], predicates int32[R])`` with ``NamedSharding(mesh, P("data",
      None))`` / ``P("data")``; padding rows are zero with id and predicate -1.
    """
    keys = l2_normalize(keys)
    size, dim = keys.shape
    local_ids = np.arange(size) if local_ids is None else np.asarray(local_ids, np.int64)
    predicates = np.asarray(predicates, np.int64)
    if shard_sizes is None:
        devices = mesh.shape[DATA_AXIS]
        rows = -(-size // devices) * devices
    else:
        devices = len(mesh.local_devices)
        largest = max(int(n) for n in shard_sizes)
        rows = max(1, -(-largest // devices)) * devices
    host_keys = np.zeros((rows, dim), np.float32)
    host_keys[:size] = keys
    host_ids = np.full(rows, PAD_ID, np.int32)
    host_ids[:size] = local_ids
    host_predicates = np.full(rows, -1, np.int32)
    host_predicates[:size] = predicates[local_ids]
    key_sharding = NamedSharding(mesh, P(DATA_AXIS, None))
    row_sharding = NamedSharding(mesh, P(DATA_AXIS))
    if shard_sizes is None:
        return tuple(
            jax.make_array_from_callback(array.shape, sharding, lambda i, a=array: a[i])
            for array, sharding in (
                (host_keys, key_sharding),
                (host_ids, row_sharding),
                (host_predicates, row_sharding),
            )
        )
    total = rows * len(shard_sizes)
    return (
        jax.make_array_from_process_local_data(key_sharding, host_keys, (total, dim)),
        jax.make_array_from_process_local_data(row_sharding, host_ids, (total,)),
        jax.make_array_from_process_local_data(row_sharding, host_predicates, (total,)),
    )


def _normalize(vectors: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / jnp.maximum(norms, jnp.float32(1e-12))


def sharded_topk(
    queries: jax.Array,
    keys: jax.Array,
    entry_ids: jax.Array,
    predicates: jax.Array,
    k: int,
    mesh: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Exact cosine top-``k`` over a bank whose rows are split over the ``"data"`` mesh axis.

    Each device scores all queries against its rows, keeps its top-``k`` (ties: lower row first), the
    candidates of every device are all-gathered (in device order, which is id order) and merged by a
    second ``top_k``; equal scores thus come out by the lower entry id, as
    :mod:`sgg_jax.retrieval.index`.

    Args:
      queries: f32[Q, H] (normalised here).
      keys: f32[R, H] unit-norm keys (:func:`device_bank`), rows in increasing entry id.
      entry_ids: int32[R] the entry id of each row, -1 on padding rows (masked out).
      predicates: int32[R] the predicate of each row.
      k: neighbours per query.
      mesh: the mesh the bank is sharded over.

    Returns:
      ``(ids int32[Q, k], scores f32[Q, k], predicates int32[Q, k])``, best first; padded with id -1,
      score -inf and predicate -1 when the bank holds fewer than ``k`` entries. Replicated.
    """
    shards = mesh.shape[DATA_AXIS]
    rows = keys.shape[0] // shards
    local_k = min(k, rows)
    merged_k = min(k, local_k * shards)

    def local(query, key_rows, id_rows, predicate_rows):
        scores = jnp.dot(query, key_rows.T, precision=jax.lax.Precision.HIGHEST)
        scores = jnp.where(id_rows[None, :] >= 0, scores, -jnp.inf)
        top_scores, positions = jax.lax.top_k(scores, local_k)
        ids = id_rows[positions]
        top_predicates = predicate_rows[positions]
        gathered = [
            jax.lax.all_gather(x, DATA_AXIS, axis=1, tiled=True)
            for x in (top_scores, ids, top_predicates)
        ]
        best, order = jax.lax.top_k(gathered[0], merged_k)
        return (
            best,
            jnp.take_along_axis(gathered[1], order, axis=1),
            jnp.take_along_axis(gathered[2], order, axis=1),
        )

    scores, ids, neighbour_predicates = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS, None), P(DATA_AXIS), P(DATA_AXIS)),
        out_specs=(P(), P(), P()),
        check_vma=False,  # the merge runs on all-gathered candidates: the same on every device
    )(_normalize(jnp.asarray(queries, jnp.float32)), keys, entry_ids, predicates)
    missing = scores == -jnp.inf
    ids = jnp.where(missing, PAD_ID, ids)
    neighbour_predicates = jnp.where(missing, -1, neighbour_predicates)
    if merged_k < k:
        width = k - merged_k
        ids = jnp.pad(ids, ((0, 0), (0, width)), constant_values=PAD_ID)
        scores = jnp.pad(scores, ((0, 0), (0, width)), constant_values=-jnp.inf)
        neighbour_predicates = jnp.pad(
            neighbour_predicates, ((0, 0), (0, width)), constant_values=-1
        )
    return ids, scores, neighbour_predicates


def chunked_search(
    queries: jax.Array,
    active: jax.Array,
    keys: jax.Array,
    entry_ids: jax.Array,
    predicates: jax.Array,
    k: int,
    mesh: Any,
    chunk: int = 256,
    smallest: int = 8,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`sharded_topk` of the ``active`` queries only.

    The active queries are moved to the front (in order). Up to ``chunk`` of them are searched at
    once, in a block of the next power of two (``smallest``, 2·``smallest``, ..., ``chunk``) picked at
    run time by ``lax.switch``; more are searched ``chunk`` at a time by a ``lax.while_loop`` that
    stops after the last one. A batch thus reads the bank once per ``chunk`` and pays for its real
    relations (rounded up to a power of two), not for its padded slots; shapes stay static.

    Args:
      queries: f32[Q, H].
      active: bool[Q] the queries whose results are used.
      keys, entry_ids, predicates, k, mesh: as :func:`sharded_topk`.
      chunk: most queries per search (bounds the f32[chunk, M / devices] scores).
      smallest: the smallest block searched.

    Returns:
      ``(ids, scores, predicates)`` [Q, k] as :func:`sharded_topk` on the active rows; the rows of
      inactive queries are unspecified.
    """
    num_queries = queries.shape[0]
    chunk = max(1, min(chunk, num_queries))
    padded = -(-num_queries // chunk) * chunk
    order = jnp.argsort(~active, stable=True)  # active queries first, in order
    order = jnp.pad(order, (0, padded - num_queries))
    compact = queries[order]
    num_active = active.sum()
    empty = (
        jnp.full((padded, k), PAD_ID, jnp.int32),
        jnp.full((padded, k), -jnp.inf, jnp.float32),
        jnp.full((padded, k), -1, jnp.int32),
    )

    def write(buffers, start, part):
        results = sharded_topk(part, keys, entry_ids, predicates, k, mesh)
        return tuple(
            jax.lax.dynamic_update_slice_in_dim(buffer, result, start, 0)
            for buffer, result in zip(buffers, results, strict=True)
        )

    sizes = []
    size = max(1, min(smallest, chunk))
    while size < chunk:
        sizes.append(size)
        size *= 2
    sizes.append(chunk)

    def one_block(buffers):
        # the smallest block holding every active query
        branch = jnp.searchsorted(jnp.asarray(sizes), num_active, side="left")
        branches = [functools.partial(lambda b, n: write(b, 0, compact[:n]), n=n) for n in sizes]
        return jax.lax.switch(jnp.minimum(branch, len(sizes) - 1), branches, buffers)

    def blocks(buffers):
        def body(carry):
            index, *buffers = carry
            start = index * chunk
            part = jax.lax.dynamic_slice_in_dim(compact, start, chunk)
            return (index + 1, *write(tuple(buffers), start, part))

        _, *buffers = jax.lax.while_loop(
            lambda carry: carry[0] * chunk < num_active, body, (jnp.int32(0), *buffers)
        )
        return tuple(buffers)

    ids, scores, found = jax.lax.cond(num_active <= chunk, one_block, blocks, empty)
    inverse = jnp.argsort(order[:num_queries])
    return ids[inverse], scores[inverse], found[inverse]


def drop_excluded(ids, scores, predicates, exclude_ids, k):
    """``k`` of ``k + 1`` results without each row's own id (else without the last extra).

    Args:
      ids, scores, predicates: [Q, k + 1] sorted best first.
      exclude_ids: int[Q] the id each row must not return (-1: none).
      k: results kept.

    Returns:
      ``(ids, scores, predicates)`` [Q, k], as :func:`sgg_jax.retrieval.index` drops them.
    """
    excluded = (ids == exclude_ids[:, None]) & (exclude_ids[:, None] >= 0)
    order = jnp.argsort(excluded.astype(jnp.int32), axis=1, stable=True)[:, :k]
    return tuple(jnp.take_along_axis(x, order, axis=1) for x in (ids, scores, predicates))


# ---------------------------------------------------------------------------------------------------
# Selection, sampling and soft targets in jnp.
# ---------------------------------------------------------------------------------------------------


def _histogram(neighbours: jax.Array, num_classes: int) -> jax.Array:
    """f32[..., C] count of valid neighbours per predicate (-1 = missing counts nowhere)."""
    return jax.nn.one_hot(neighbours, num_classes, dtype=jnp.float32).sum(-2)


def _sample(key: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One class per row by the inverse CDF; ``(class int32[...], has_mass bool[...])``."""
    cdf = jnp.cumsum(weights, axis=-1)
    total = cdf[..., -1]
    uniforms = jax.random.uniform(key, total.shape) * total
    return jnp.argmax(cdf > uniforms[..., None], axis=-1).astype(jnp.int32), total > 0


def _normalise_rows(unnormalised: jax.Array) -> jax.Array:
    total = unnormalised.sum(-1, keepdims=True)
    return jnp.where(total > 0, unnormalised / jnp.where(total > 0, total, 1.0), 0.0)


def paper_rule(
    gt: jax.Array,
    neighbours: jax.Array,
    foreground: jax.Array,
    key: jax.Array,
    tables: Mapping[str, np.ndarray],
    *,
    tau: float,
    weighting: str,
    tail_only: bool,
    select: bool,
) -> dict[str, jax.Array]:
    """The paper's selection and sampling (:func:`sgg_jax.projects.ra_sgg.augment.augment`) in jnp.

    Args:
      gt: int[...] predicates (rows that are not ``foreground`` are ignored).
      neighbours: int[..., K] retrieved predicates (-1 = missing).
      foreground: bool[...] the relations to augment.
      key: PRNG key of the draws.
      tables: :func:`rule_tables`.
      tau, weighting, tail_only, select: as :func:`augment`.

    Returns:
      ``{"selected" bool[...], "augmented" int32[...], "weights" f32[..., C]}`` (zero rows and
      ``augmented = gt`` outside ``foreground``).
    """
    num_classes = tables["inverse_propensity"].shape[0]
    histogram = _histogram(neighbours, num_classes)
    gt = jnp.asarray(gt, jnp.int32)
    count = histogram.sum(-1)
    gt_count = jnp.take_along_axis(histogram, gt[..., None], axis=-1)[..., 0]
    # n² d² = (n − h_gt)² + Σ_{p≠gt} h_p², exact in float32 for any K < 4096.
    scaled = (count - gt_count) ** 2 + (histogram**2).sum(-1) - gt_count**2
    tau32 = jnp.float32(tau)
    selected = jnp.where(count > 0, scaled >= (tau32 * count) ** 2, jnp.float32(0.0) >= tau32)
    if not select:
        selected = jnp.ones_like(selected)
    selected = selected & foreground
    classes = jnp.arange(num_classes)
    support = (histogram > 0) & (classes != gt[..., None]) & (classes > 0)
    if tail_only:
        clipped = jnp.asarray(tables["clipped_counts"])
        support &= clipped < clipped[gt][..., None]
    support &= selected[..., None]
    if weighting == "inverse_propensity":
        logits = jnp.where(support, histogram * jnp.asarray(tables["inverse_propensity"]), -jnp.inf)
        logits = jnp.where(support.any(-1, keepdims=True), logits, 0.0)
        logits = logits - logits.max(-1, keepdims=True)
        unnormalised = jnp.where(support, jnp.exp(logits), 0.0)
    elif weighting == "class_balanced":
        unnormalised = jnp.where(support, histogram * jnp.asarray(tables["class_balanced"]), 0.0)
    else:
        unnormalised = jnp.where(support, histogram, 0.0)
    weights = _normalise_rows(unnormalised)
    sampled, has_mass = _sample(key, weights)
    return {"selected": selected, "augmented": jnp.where(has_mass, sampled, gt), "weights": weights}


def official_rule(
    labels: jax.Array,
    neighbours: jax.Array,
    real: jax.Array,
    key: jax.Array,
    tables: Mapping[str, np.ndarray],
    *,
    threshold: float,
    select: bool,
    weighting: str,
) -> dict[str, jax.Array]:
    """The official rule (:func:`sgg_jax.projects.ra_sgg.augment.official_augment`) in jnp.

    Args:
      labels: int[B, P] predicate of every pair (0 = background).
      neighbours: int[B, P, K] retrieved predicates (-1 = missing), the first hit already dropped.
      real: bool[B, P] the pairs of the batch (image by image, in pair order).
      key: PRNG key of the draws.
      tables: :func:`rule_tables`.
      threshold, select, weighting: as :func:`official_augment`.

    Returns:
      ``{"selected" bool[B, P] (mask_change), "augmented" int32[B, P], "weights" f32[B, P, C]}``.
    """
    num_classes = tables["official_weights"].shape[0]
    num_neighbours = neighbours.shape[-1]
    labels = jnp.asarray(labels, jnp.int32)
    matches = (neighbours == labels[..., None]).sum(-1)
    confidence = matches.astype(jnp.float32) / jnp.float32(max(num_neighbours, 1))
    tail = jnp.asarray(tables["tail_mask"])
    has_tail = jnp.where(neighbours >= 0, tail[jnp.clip(neighbours, 0, None)], False).any(-1)
    foreground = (labels != 0) & real
    if select:
        change_fg = (confidence < jnp.float32(threshold)) & has_tail & foreground
    else:
        change_fg = foreground
    candidates = has_tail & ~foreground & real
    change_bg = candidates & (jnp.cumsum(candidates.astype(jnp.int32), axis=-1) == 1)
    change = change_fg | change_bg
    histogram = _histogram(neighbours, num_classes) / jnp.float32(max(num_neighbours, 1))
    scale = jnp.asarray(
        tables["official_weights"] if weighting == "class_balanced" else np.ones(num_classes)
    )
    weights = _normalise_rows(jnp.where(change[..., None], histogram * scale, 0.0))
    sampled, has_mass = _sample(key, weights)
    augmented = jnp.where(has_mass, sampled, jnp.where(foreground, labels, 0))
    return {"selected": change, "augmented": augmented, "weights": weights}


def rule_tables(
    predicate_counts: np.ndarray, config: Any, tail: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-predicate constants of the rules (float32 / bool numpy arrays).

    Args:
      predicate_counts: int[P+1] training counts.
      config: the :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig`.
      tail: the tail predicate ids.
    """
    counts = np.asarray(predicate_counts, np.float64)
    tail_mask = np.zeros(counts.shape[0], bool)
    tail_mask[np.asarray(tail, np.int64)] = True
    return {
        "inverse_propensity": augment_lib.inverse_propensity(
            counts, normalize=config.normalize_propensity
        ).astype(np.float32),
        "class_balanced": augment_lib.class_balanced_weights(counts, config.beta).astype(
            np.float32
        ),
        "official_weights": augment_lib.official_predicate_weights(counts, config.beta).astype(
            np.float32
        ),
        "clipped_counts": np.maximum(counts, 1.0).astype(np.float32),
        "tail_mask": tail_mask,
    }


def in_step_targets(
    embeddings: jax.Array,
    batch: RetrievalBatch,
    key: jax.Array,
    config: Any,
    tables: Mapping[str, np.ndarray],
    mesh: Any,
    *,
    foreground_slots: int | None = None,
    query_chunk: int = 256,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Soft targets f32[B, P, C] of a batch from the training forward's embeddings (in jit).

    Args:
      embeddings: f32[B, P, H] ``aux["relation_embedding"]`` (gradients are stopped here).
      batch: the batch with the bank (:class:`RetrievalBatch`).
      key: PRNG key of the step's draws.
      config: the :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig`.
      tables: :func:`rule_tables`.
      mesh: the mesh the bank is sharded over.
      foreground_slots: paper variant: foreground pairs occupy the first this many slots, only
        they are searched (None: every slot).
      query_chunk: queries per search (:func:`chunked_search`): only the foreground relations
        (paper) or the real pairs (official) are searched, this many at a time.

    Returns:
      ``(soft_targets, stats)``; stats ``ra/selected_fraction``, ``ra/augmented_fraction`` (of the
      batch's foreground relations) and ``ra/background_relabelled``.
    """
    embeddings = jax.lax.stop_gradient(jnp.asarray(embeddings, jnp.float32))
    num_classes = tables["inverse_propensity"].shape[0]
    labels = jnp.asarray(batch.pair_labels, jnp.int32)
    real = jnp.asarray(batch.pair_mask, bool) & jnp.asarray(batch.graph_mask, bool)[:, None]
    num_images, num_pairs, dim = embeddings.shape
    k = config.num_neighbours
    select_key, lambda_key = jax.random.split(key)
    official = config.variant == "official"
    slots = num_pairs if official or foreground_slots is None else min(foreground_slots, num_pairs)
    slot_labels, slot_real = labels[:, :slots], real[:, :slots]
    active = slot_real if official else slot_real & (slot_labels > 0)
    ids, scores, neighbours = chunked_search(
        embeddings[:, :slots].reshape(-1, dim),
        active.reshape(-1),
        batch.bank_keys,
        batch.bank_ids,
        batch.bank_predicates,
        k + 1,
        mesh,
        chunk=query_chunk,
    )
    if official:  # ret_idx[1:K+1]: the first hit is dropped, whatever it is
        neighbours = neighbours[:, 1:]
    else:
        own = jnp.asarray(batch.own_entry, jnp.int32)[:, :slots].reshape(-1)
        _, _, neighbours = drop_excluded(ids, scores, neighbours, own, k)
    neighbours = neighbours.reshape(num_images, slots, k)
    if official:
        result = official_rule(
            slot_labels,
            neighbours,
            slot_real,
            select_key,
            tables,
            threshold=config.threshold,
            select=config.select,
            weighting=config.weighting,
        )
    else:
        result = paper_rule(
            slot_labels,
            neighbours,
            slot_real & (slot_labels > 0),
            select_key,
            tables,
            tau=config.tau,
            weighting=config.weighting,
            tail_only=config.tail_only,
            select=config.select,
        )
    augmented = jnp.where(slot_real, result["augmented"], 0)
    if config.lambda_mode == "fixed":
        lam = jnp.full(augmented.shape, config.lambda_value, jnp.float32)
    else:
        lam = jax.random.beta(
            lambda_key, config.lambda_alpha, config.lambda_beta, augmented.shape, jnp.float32
        )
    slot_targets = lam[..., None] * jax.nn.one_hot(slot_labels, num_classes) + (
        1.0 - lam[..., None]
    ) * jax.nn.one_hot(augmented, num_classes)
    slot_targets = jnp.where(slot_real[..., None], slot_targets, 0.0)
    targets = jnp.where(real[..., None], jax.nn.one_hot(labels, num_classes), 0.0)
    targets = targets.at[:, :slots].set(slot_targets)
    foreground = slot_real & (slot_labels > 0)
    num_foreground = jnp.maximum(foreground.sum(), 1).astype(jnp.float32)
    stats = {
        "ra/selected_fraction": (result["selected"] & foreground).sum() / num_foreground,
        "ra/augmented_fraction": (foreground & (augmented != slot_labels)).sum() / num_foreground,
        "ra/background_relabelled": (slot_real & ~foreground & (augmented > 0))
        .sum()
        .astype(jnp.float32),
    }
    return targets, stats


def make_in_step_loss(
    loss_fn: Callable,
    config: Any,
    predicate_counts: np.ndarray,
    tail: np.ndarray,
    mesh: Any,
    *,
    foreground_slots: int | None = None,
    query_chunk: int = 256,
) -> Callable:
    """The phase-2 loss with the retrieval inside: ``loss(outputs, aux, batch, step_key)``.

    Args:
      loss_fn: the multi-prototype loss ``(outputs, aux, batch) -> (loss, terms)`` that reads
        ``batch.soft_targets`` (``make_penet_loss(..., multi_prototype=True)``).
      config: the :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig`.
      predicate_counts: int[P+1] training counts.
      tail: the tail predicate ids.
      mesh: the device mesh.
      foreground_slots, query_chunk: see :func:`in_step_targets`.

    Returns:
      A loss with ``wants_step_key = True`` (:func:`sgg_jax.train.loop.model_loss` passes it the
      update's dropout key, from which the draws' key is folded); its terms add ``ra/*``.
    """
    tables = rule_tables(predicate_counts, config, tail)

    def in_step_loss(outputs, aux, batch, step_key):
        if not isinstance(batch, RetrievalBatch) or batch.bank_keys is None:
            raise ConfigError("retrieval", "in_step needs the batches of InStepRetrieval")
        key = jax.random.fold_in(step_key, _KEY_SALT)
        targets, stats = in_step_targets(
            aux["relation_embedding"],
            batch,
            key,
            config,
            tables,
            mesh,
            foreground_slots=foreground_slots,
            query_chunk=query_chunk,
        )
        loss, terms = loss_fn(outputs, aux, batch.replace(soft_targets=targets))
        return loss, {**terms, **stats}

    in_step_loss.wants_step_key = True
    return in_step_loss


class InStepRetrieval:
    """The batch transform of ``--retrieval=in_step``: the bank on the mesh, own ids per batch.

    Refreshes the bank when the host path would (:class:`RetrievalAugmenter`'s rule: at the first
    update, then every ``bank_refresh_steps``; never for ``bank="official"``, built by the caller),
    re-embedding it with :meth:`MemoryBank.refresh` and putting the keys on the mesh
    (:func:`device_bank`); then returns each batch as a :class:`RetrievalBatch` holding the bank
    arrays (already on the mesh: :func:`sgg_jax.train.mesh.shard_batch` passes them through) and
    the own entry id of each foreground pair.

    Args:
      bank: the memory bank over the loader's training split.
      embed: ``embed(variables, host_batch) -> f32[B, P, H]`` (eval mode, the bank's keys).
      config: the :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig`.
      mesh: the device mesh.
      detection: SGDet (refused: ConfigError).
    """

    wants_dropout_key = False

    def __init__(
        self,
        bank: MemoryBank,
        embed: Callable[[Mapping[str, Any], SceneGraphBatch], np.ndarray],
        config: Any,
        mesh: Any,
        *,
        detection: bool = False,
    ):
        check_supported(config, detection=detection)
        self.bank = bank
        self.embed = embed
        self.config = config
        self.mesh = mesh
        self.device: tuple[jax.Array, jax.Array, jax.Array] | None = None
        self._refreshed_at: int | None = None

    def _refresh_due(self, step: int) -> bool:
        return refresh_due(self.config, self.bank, self._refreshed_at, step)

    def __call__(
        self, variables: Mapping[str, Any], step: int, batch: SceneGraphBatch
    ) -> tuple[RetrievalBatch, dict[str, float]]:
        """``batch`` with the bank and own entry ids for update ``step`` (1-based)."""
        metrics: dict[str, float] = {}
        if self._refresh_due(step):
            metrics.update(self.bank.refresh(lambda b: self.embed(variables, b)))
            self._refreshed_at = step - 1
            self.device = None
        if self.device is None:
            start = time.perf_counter()
            self.device = device_bank(
                self.bank.keys, self.bank.entries.predicate, self.mesh, **_shard_layout(self.bank)
            )
            metrics["bank/device_put_seconds"] = time.perf_counter() - start
        labels = np.asarray(batch.pair_labels)
        foreground = np.asarray(batch.pair_mask) & (labels > 0)
        foreground &= np.asarray(batch.graph_mask)[:, None]
        own = np.full(labels.shape, PAD_ID, np.int32)
        if self.config.variant == "paper":
            rows, columns = np.nonzero(foreground)
            pairs = np.asarray(batch.pairs)[rows, columns]
            own[rows, columns] = self.bank.entry_ids(
                np.asarray(batch.image_index)[rows], pairs[:, 0], pairs[:, 1], labels[rows, columns]
            )
        fields = {name: getattr(batch, name) for name in batch.__dataclass_fields__}
        fields["soft_targets"] = None
        return (
            RetrievalBatch(
                **fields,
                bank_keys=self.device[0],
                bank_ids=self.device[1],
                bank_predicates=self.device[2],
                own_entry=own,
            ),
            metrics,
        )


def _shard_layout(bank: MemoryBank) -> dict[str, Any]:
    """:func:`device_bank`'s ``local_ids`` / ``shard_sizes`` of a bank (sharded by process or not)."""
    local_ids = getattr(bank, "local_ids", None)
    num_shards = getattr(bank, "num_shards", 1)
    if num_shards == 1:
        return {"local_ids": local_ids}
    if num_shards != jax.process_count() or bank.shard_index != jax.process_index():
        raise ConfigError(
            "retrieval", "in_step needs the memory bank sharded one shard per process, or whole"
        )
    bounds = shard_bounds(bank.entries.image_index, num_shards)
    return {"local_ids": local_ids, "shard_sizes": np.diff(bounds).tolist()}


def tail_of(config: Any, predicate_counts: np.ndarray, num_predicates: int) -> np.ndarray:
    """The tail ids the host path uses (``config.tail_ids``, else the rarest ``tail_fraction``)."""
    if config.tail_ids is not None:
        return augment_lib.check_tail_ids(config.tail_ids, num_predicates)
    return rarest_predicates(predicate_counts, config.tail_fraction)
