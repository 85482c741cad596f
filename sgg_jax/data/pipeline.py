"""Static-shape input pipeline: random-access scene graphs -> padded, masked ``SceneGraphBatch``.

The stages, in order::

    source[i] (-> decode) -> seeded per-epoch shuffle -> per-process shard -> truncate objects
    -> (dedup relations) -> pair sampling -> pad to budgets -> collate -> SceneGraphBatch (numpy)

The caller moves each batch to the devices (e.g. ``jax.device_put`` or
``jax.make_array_from_process_local_data`` with a ``NamedSharding`` on the ``"data"`` axis).

**Pair sampling** follows Scene-Graph-Benchmark's ``gtbox_relsample`` (the relation sampler used
with ground-truth boxes in PredCls / SGCls training):

* Training (``train=True``): the foreground candidates are the distinct annotated ordered pairs
  (self pairs excluded). When one pair carries several predicates, its label is one of them drawn
  uniformly at random (SGB's relation matrix keeps a single predicate per pair). At most ``max_fg``
  foreground pairs are drawn at random without replacement; background pairs are drawn at random
  without replacement from all ordered pairs ``i != j`` that carry no annotation, up to
  ``max_pairs - num_foreground``. Foreground pairs come first in the output. The random generator of
  an image is ``numpy.random.default_rng((seed, epoch, image_index))``, so an image's pairs do not
  depend on the batch it lands in, on the batch size, or on the number of processes.
* Evaluation (``train=False``): every ordered pair ``(i, j)``, ``i != j``, in row-major order (all
  ``j`` of ``i = 0`` first). A pair's label is its first annotated predicate in the order of the
  image's relation rows (0 = background). If ``N (N - 1) > max_pairs`` the first ``max_pairs`` pairs
  are kept and the rest are counted in ``num_truncated_pairs``.

With ``multi_label_targets`` the batch also holds ``soft_targets[B, P, C]``: for an annotated pair
the normalised histogram of all its annotated predicates (duplicates kept), for a background pair
``onehot(0)``, and zeros in padding.

**Truncation.** An image with more than ``max_objects`` objects keeps its first ``max_objects``
objects (reader order, so the result does not depend on a random draw); relations touching a dropped
object are dropped. The count is stored per image in ``num_truncated_objects``, and the first
occurrence in a process is logged as a warning; likewise ``num_truncated_pairs``. Nothing is dropped
silently.

**Why grain's ``MapDataset``.** The pipeline is a chain of ``grain.MapDataset`` transformations
(``range -> repeat -> map_with_index -> batch``), not a ``grain.DataLoader`` with an
``IndexSampler``. Reasons:

* Element ``k`` of the chain is a pure function of ``k`` (random access), so the whole stream is
  deterministic, can restart at any step without replaying the data
  (``SceneGraphLoader.iter_from``), and reading threads never change the order.
* ``IndexSampler`` shards the record range into contiguous pieces before shuffling and lets an epoch
  end in a partial batch that crosses into the next epoch. Here instead each epoch is one global
  permutation of the source (grain's lazy index shuffle, ``MapDataset.range(n).shuffle``, which
  reseeds itself for every epoch), cut into *global* batches of ``batch_size * shard_count`` images;
  process ``k`` takes the ``k``-th contiguous block of ``batch_size`` images of every global batch.
  Concatenating the processes' batches in process order therefore reproduces the single-process
  batch of size ``batch_size * shard_count`` exactly, and every process yields the same number of
  batches per epoch (so no process waits in a collective for a batch that never comes).
* An epoch always ends on a batch boundary: with ``drop_remainder=True`` the images of the last
  incomplete global batch are skipped (a different set every epoch when shuffling); with
  ``drop_remainder=False`` the last global batch is filled with padding images (``graph_mask``
  False, ``image_index`` -1). Evaluation (``train=False, shuffle=False, drop_remainder=False``)
  therefore visits every image exactly once, in source order.

The grain shuffle seed is a 32-bit hash of ``seed`` (grain seeds epoch ``e`` with ``seed + e``; the
hash keeps neighbouring user seeds from sharing epochs). All processes must use the same ``seed``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grain
import jax
import numpy as np

from sgg_jax.data.validation import dedup_relations as _dedup_relations
from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.masked import masked_mean  # noqa: F401  (re-exported: pipeline.masked_mean)
from sgg_jax.structures import SceneGraph, SceneGraphBatch

_LOG = logging.getLogger(__name__)
_WARNED: set[str] = set()  # kinds of truncation already logged in this process

# Scene-Graph-Benchmark: ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE (1024) * POSITIVE_FRACTION (0.25).
SGB_MAX_FOREGROUND = 256


def _warn_once(kind: str, message: str, *args: Any) -> None:
    if kind not in _WARNED:
        _WARNED.add(kind)
        _LOG.warning(message + " (counted per image in the batch; further cases not logged)", *args)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Budgets and options of the input pipeline.

    Attributes:
      batch_size: images per batch *per process* (B).
      max_objects: object budget per image (N); larger images are truncated (counted).
      max_pairs: pair budget per image (P).
      max_fg: most foreground pairs sampled per image in training (SGB: 1024 * 0.25 = 256). Only
        checked and used when ``train``.
      train: SGB ``gtbox_relsample`` pair sampling if True, all ordered pairs if False.
      shuffle: reshuffle the source every epoch.
      seed: seed of the shuffle and of the per-image pair sampling; the same on every process.
      num_epochs: number of passes over the source; None = repeat forever.
      drop_remainder: skip the images of the last incomplete global batch of an epoch (True) or pad
        that batch with padding images (False, ``graph_mask`` False).
      dedup_relations: in training, keep one predicate per annotated pair, drawn at random, before
        sampling (SGB ``filter_duplicate_rels``). Pair labels are drawn the same way either way; the
        option only decides whether the duplicates survive, so it must be False with
        ``multi_label_targets``. Never applied when ``train`` is False.
      multi_label_targets: also emit ``soft_targets[B, P, num_predicates + 1]``.
      num_predicates: number of predicates, background excluded; required for
        ``multi_label_targets``, and when given every predicate is checked against it.
      shard_index, shard_count: this process's data shard; None = ``jax.process_index()`` /
        ``jax.process_count()``.
      read_threads: grain reading threads per process (0 = read in the consuming thread).
      prefetch_batches: batches grain prepares ahead of the consumer.
    """

    batch_size: int
    max_objects: int
    max_pairs: int
    max_fg: int = SGB_MAX_FOREGROUND
    train: bool = True
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    drop_remainder: bool = True
    dedup_relations: bool = True
    multi_label_targets: bool = False
    num_predicates: int | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    read_threads: int = 2
    prefetch_batches: int = 2

    def __post_init__(self):
        for name in ("batch_size", "max_objects", "max_pairs"):
            check_int(name, getattr(self, name), minimum=1)
        if self.train:
            check_int("max_fg", self.max_fg, minimum=1)
            if self.max_fg > self.max_pairs:
                raise ConfigError(
                    "max_fg", f"{self.max_fg} foreground pairs exceed max_pairs={self.max_pairs}"
                )
        if not isinstance(self.seed, int | np.integer) or not 0 <= int(self.seed) < 2**63:
            raise ConfigError("seed", f"must be a non-negative integer, got {self.seed!r}")
        if self.num_epochs is not None:
            check_int("num_epochs", self.num_epochs, minimum=1)
        if self.num_predicates is not None:
            check_int("num_predicates", self.num_predicates, minimum=1)
        if self.multi_label_targets:
            if self.num_predicates is None:
                raise ConfigError(
                    "num_predicates", "is required when multi_label_targets=True (soft targets)"
                )
            if self.train and self.dedup_relations:
                raise ConfigError(
                    "dedup_relations",
                    "must be False with multi_label_targets=True: the soft targets are the "
                    "histogram of the duplicate predicates on a pair",
                )
        if self.shard_count is not None:
            check_int("shard_count", self.shard_count, minimum=1)
        if self.shard_index is not None:
            upper = self.shard_count if self.shard_count is not None else None
            if (
                isinstance(self.shard_index, bool)
                or not isinstance(self.shard_index, int | np.integer)
                or self.shard_index < 0
                or (upper is not None and self.shard_index >= upper)
            ):
                raise ConfigError(
                    "shard_index",
                    f"must be in [0, {upper if upper is not None else 'shard_count'}), "
                    f"got {self.shard_index!r}",
                )
        for name in ("read_threads", "prefetch_batches"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 0:
                raise ConfigError(name, f"must be a non-negative integer, got {value!r}")

    @classmethod
    def evaluation(
        cls, batch_size: int, max_objects: int, max_pairs: int, **options: Any
    ) -> PipelineConfig:
        """A config that visits every image once, in source order, with all ordered pairs."""
        options = {
            "train": False,
            "shuffle": False,
            "num_epochs": 1,
            "drop_remainder": False,
            **options,
        }
        return cls(batch_size=batch_size, max_objects=max_objects, max_pairs=max_pairs, **options)

    @property
    def num_soft_target_classes(self) -> int | None:
        """C = num_predicates + 1 when soft targets are emitted, else None."""
        return self.num_predicates + 1 if self.multi_label_targets else None

    def resolved_shards(self) -> tuple[int, int]:
        """Returns ``(shard_index, shard_count)``, defaulting to this JAX process."""
        count = self.shard_count if self.shard_count is not None else jax.process_count()
        index = self.shard_index if self.shard_index is not None else jax.process_index()
        if not 0 <= index < count:
            raise ConfigError("shard_index", f"must be in [0, {count}), got {index}")
        return int(index), int(count)


# ----------------------------------------------------------------------------------------------
# Per-image processing
# ----------------------------------------------------------------------------------------------


class SampledPairs(NamedTuple):
    """The candidate pairs of one image.

    Attributes:
      pairs: int32[Q, 2] ordered ``(subject_idx, object_idx)``, never ``i == j``.
      labels: int32[Q] predicate per pair, 0 = background.
      soft_targets: float32[Q, C] target distribution per pair, or None.
      num_truncated_pairs: candidate pairs dropped for the ``max_pairs`` budget (evaluation only;
        training samples by design and reports 0).
      num_foreground: training: the first ``num_foreground`` rows are the annotated pairs;
        evaluation: the number of rows with a non-zero label.
    """

    pairs: np.ndarray
    labels: np.ndarray
    soft_targets: np.ndarray | None
    num_truncated_pairs: int
    num_foreground: int


def check_graph(graph: SceneGraph, num_predicates: int | None = None) -> None:
    """Checks what pair sampling relies on: relation indices in range, predicates 1-based.

    Args:
      graph: one image's scene graph.
      num_predicates: when given, predicates must be in ``1..num_predicates``.

    Raises:
      DataError: naming the image and the ``relations`` field.
    """
    relations = graph.relations
    if relations.shape[0] == 0:
        return
    bad = np.flatnonzero(((relations[:, :2] < 0) | (relations[:, :2] >= graph.num_objects)).any(1))
    if bad.size:
        raise DataError(
            f"relation {int(bad[0])} {relations[bad[0]].tolist()} indexes an object outside "
            f"0..{graph.num_objects - 1}",
            record=graph.image_id,
            field="relations",
        )
    upper = np.iinfo(np.int32).max if num_predicates is None else num_predicates
    bad = np.flatnonzero((relations[:, 2] < 1) | (relations[:, 2] > upper))
    if bad.size:
        vocabulary = "1.." + ("" if num_predicates is None else str(num_predicates))
        predicate = int(relations[bad[0], 2])
        raise DataError(
            f"relation {int(bad[0])} has predicate {predicate} outside {vocabulary}",
            record=graph.image_id,
            field="relations",
        )


def truncate_objects(graph: SceneGraph, max_objects: int) -> tuple[SceneGraph, int]:
    """Keeps the first ``max_objects`` objects and the relations among them.

    Args:
      graph: one image's scene graph with N objects.
      max_objects: object budget.

    Returns:
      ``(graph, num_dropped_objects)``; the graph itself when ``N <= max_objects``.
    """
    num_dropped = graph.num_objects - max_objects
    if num_dropped <= 0:
        return graph, 0
    keep = (graph.relations[:, :2] < max_objects).all(axis=1)
    truncated = graph.replace(
        boxes=graph.boxes[:max_objects],
        labels=graph.labels[:max_objects],
        relations=graph.relations[keep],
    )
    return truncated, int(num_dropped)


def _predicate_histograms(
    pair_keys: np.ndarray, relation_keys: np.ndarray, predicates: np.ndarray, num_classes: int
) -> np.ndarray:
    """float32[Q, C]: normalised predicate histogram per pair; onehot(0) for unannotated pairs."""
    histograms = np.zeros((pair_keys.shape[0], num_classes), np.float32)
    if pair_keys.shape[0] and relation_keys.shape[0]:
        sorter = np.argsort(pair_keys, kind="stable")
        position = np.searchsorted(pair_keys, relation_keys, sorter=sorter)
        position = np.minimum(position, pair_keys.shape[0] - 1)
        rows = sorter[position]
        hit = pair_keys[rows] == relation_keys
        np.add.at(histograms, (rows[hit], predicates[hit]), 1.0)
    totals = histograms.sum(axis=1, keepdims=True)
    histograms[totals[:, 0] == 0, 0] = 1.0
    return histograms / np.maximum(totals, 1.0)


def sample_pairs(
    graph: SceneGraph,
    *,
    train: bool,
    max_pairs: int,
    max_fg: int = SGB_MAX_FOREGROUND,
    rng: np.random.Generator | None = None,
    num_predicates: int | None = None,
) -> SampledPairs:
    """Chooses the candidate pairs of one image and their labels (see the module docstring).

    Args:
      graph: one image's scene graph (objects already within budget).
      train: SGB ``gtbox_relsample`` sampling (True) or all ordered pairs (False).
      max_pairs: pair budget P.
      max_fg: foreground budget in training.
      rng: random generator; required when ``train``.
      num_predicates: when given, also return soft targets with ``num_predicates + 1`` classes.

    Returns:
      :class:`SampledPairs` with Q <= ``max_pairs`` rows.
    """
    if train and rng is None:
        raise ValueError("sample_pairs(train=True) needs an rng")
    check_graph(graph, num_predicates)
    num_objects = graph.num_objects
    relations = graph.relations[graph.relations[:, 0] != graph.relations[:, 1]]
    relation_keys = relations[:, 0].astype(np.int64) * num_objects + relations[:, 1]
    num_candidates = num_objects * (num_objects - 1)

    if train:
        # A random order of the relation rows: the first row of each pair is a uniform draw among
        # the pair's predicates.
        order = rng.permutation(relations.shape[0])
        annotated_keys, first = np.unique(relation_keys[order], return_index=True)
        annotated_labels = relations[order[first], 2]
        num_fg = min(annotated_keys.shape[0], max_fg, max_pairs)
        chosen = rng.choice(annotated_keys.shape[0], size=num_fg, replace=False)
        fg_keys, fg_labels = annotated_keys[chosen], annotated_labels[chosen]
        all_keys = np.arange(num_objects * num_objects, dtype=np.int64)
        all_keys = all_keys[all_keys // max(num_objects, 1) != all_keys % max(num_objects, 1)]
        background_keys = np.setdiff1d(all_keys, annotated_keys, assume_unique=True)
        num_bg = min(max_pairs - num_fg, background_keys.shape[0])
        bg_keys = background_keys[rng.choice(background_keys.shape[0], size=num_bg, replace=False)]
        keys = np.concatenate([fg_keys, bg_keys])
        labels = np.concatenate([fg_labels, np.zeros(num_bg, np.int64)])
        num_truncated = 0
    else:
        annotated_keys, first = np.unique(relation_keys, return_index=True)
        annotated_labels = relations[first, 2]
        num_kept = min(num_candidates, max_pairs)
        rank = np.arange(num_kept, dtype=np.int64)
        subject = rank // max(num_objects - 1, 1)
        column = rank % max(num_objects - 1, 1)
        obj = column + (column >= subject)  # skip the diagonal
        keys = subject * num_objects + obj
        labels = np.zeros(num_kept, np.int64)
        if annotated_keys.shape[0]:
            position = np.minimum(
                np.searchsorted(annotated_keys, keys), annotated_keys.shape[0] - 1
            )
            hit = annotated_keys[position] == keys
            labels[hit] = annotated_labels[position[hit]]
        num_truncated = num_candidates - num_kept
        num_fg = int((labels > 0).sum())

    pairs = np.stack([keys // max(num_objects, 1), keys % max(num_objects, 1)], axis=1)
    soft_targets = None
    if num_predicates is not None:
        soft_targets = _predicate_histograms(
            keys, relation_keys, relations[:, 2].astype(np.int64), num_predicates + 1
        )
    return SampledPairs(
        pairs=pairs.astype(np.int32).reshape(-1, 2),
        labels=labels.astype(np.int32),
        soft_targets=soft_targets,
        num_truncated_pairs=int(num_truncated),
        num_foreground=int(num_fg),
    )


def pad_graph(
    graph: SceneGraph,
    sampled: SampledPairs,
    *,
    max_objects: int,
    max_pairs: int,
    image_index: int,
    num_truncated_objects: int = 0,
    object_features: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pads one image to the budgets.

    Args:
      graph: scene graph with N <= ``max_objects`` objects.
      sampled: its pairs, Q <= ``max_pairs``.
      max_objects, max_pairs: budgets N, P.
      image_index: index of the image in its source.
      num_truncated_objects: objects dropped before sampling.
      object_features: optional float32[N, D] features of the graph's objects.

    Returns:
      One example: the fields of :class:`SceneGraphBatch` without the batch axis (``boxes[N, 4]``,
      ``labels[N]``, ``object_mask[N]``, ``pairs[P, 2]``, ``pair_labels[P]``, ``pair_mask[P]``,
      ``image_size[2]`` (height, width), scalar ``graph_mask``, ``image_index``,
      ``num_truncated_objects``, ``num_truncated_pairs``, ``soft_targets[P, C]`` when sampled and
      ``object_features[N, D]`` when given).
    """
    num_objects, num_pairs = graph.num_objects, sampled.pairs.shape[0]
    if num_objects > max_objects:
        raise ValueError(
            f"image {graph.image_id}: {num_objects} objects > max_objects={max_objects}"
        )
    if num_pairs > max_pairs:
        raise ValueError(f"image {graph.image_id}: {num_pairs} pairs > max_pairs={max_pairs}")
    num_classes = None if sampled.soft_targets is None else sampled.soft_targets.shape[1]
    feature_dim = None if object_features is None else object_features.shape[1]
    example = padding_example(
        max_objects=max_objects,
        max_pairs=max_pairs,
        num_classes=num_classes,
        object_feature_dim=feature_dim,
    )
    example["boxes"][:num_objects] = graph.boxes
    example["labels"][:num_objects] = graph.labels
    example["object_mask"][:num_objects] = True
    example["pairs"][:num_pairs] = sampled.pairs
    example["pair_labels"][:num_pairs] = sampled.labels
    example["pair_mask"][:num_pairs] = True
    example["image_size"][:] = (graph.height, graph.width)
    example["graph_mask"][...] = True
    example["image_index"][...] = image_index
    example["num_truncated_objects"][...] = num_truncated_objects
    example["num_truncated_pairs"][...] = sampled.num_truncated_pairs
    if num_classes is not None:
        example["soft_targets"][:num_pairs] = sampled.soft_targets
    if object_features is not None:
        example["object_features"][:num_objects] = object_features[:num_objects]
    return example


def padding_example(
    *,
    max_objects: int,
    max_pairs: int,
    num_classes: int | None = None,
    object_feature_dim: int | None = None,
) -> dict[str, np.ndarray]:
    """A padding image: all masks False, ``image_index`` -1, every other field 0.

    Args:
      max_objects, max_pairs: budgets N, P.
      num_classes: C of ``soft_targets[P, C]``; None = no soft targets.
      object_feature_dim: D of ``object_features[N, D]``; None = no object features.

    Returns:
      An example with the same keys and shapes as :func:`pad_graph`'s.
    """
    example = {
        "boxes": np.zeros((max_objects, 4), np.float32),
        "labels": np.zeros((max_objects,), np.int32),
        "object_mask": np.zeros((max_objects,), bool),
        "pairs": np.zeros((max_pairs, 2), np.int32),
        "pair_labels": np.zeros((max_pairs,), np.int32),
        "pair_mask": np.zeros((max_pairs,), bool),
        "image_size": np.zeros((2,), np.int32),
        "graph_mask": np.zeros((), bool),
        "image_index": np.full((), -1, np.int32),
        "num_truncated_objects": np.zeros((), np.int32),
        "num_truncated_pairs": np.zeros((), np.int32),
    }
    if num_classes is not None:
        example["soft_targets"] = np.zeros((max_pairs, num_classes), np.float32)
    if object_feature_dim is not None:
        example["object_features"] = np.zeros((max_objects, object_feature_dim), np.float32)
    return example


def prepare_example(
    graph: SceneGraph,
    *,
    image_index: int,
    epoch: int,
    config: PipelineConfig,
    object_features: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Truncates, samples pairs for and pads one image, as the loader does.

    Args:
      graph: one image's scene graph.
      image_index: its index in the source (part of the sampling seed).
      epoch: the epoch (part of the sampling seed).
      config: pipeline configuration.
      object_features: optional float32[N, D], one row per object of ``graph``.

    Returns:
      One padded example (see :func:`pad_graph`).
    """
    check_graph(graph, config.num_predicates)
    if object_features is not None:
        object_features = np.asarray(object_features, np.float32)
        if object_features.ndim != 2 or object_features.shape[0] != graph.num_objects:
            raise DataError(
                f"expected [{graph.num_objects}, D] (one row per object), got "
                f"{list(object_features.shape)}",
                record=graph.image_id,
                field="object_features",
            )
    graph, num_truncated_objects = truncate_objects(graph, config.max_objects)
    if num_truncated_objects:
        _warn_once(
            "objects",
            "image %s has %d objects; keeping the first max_objects=%d",
            graph.image_id,
            graph.num_objects + num_truncated_objects,
            config.max_objects,
        )
    rng = np.random.default_rng((int(config.seed), int(epoch), int(image_index)))
    if config.train and config.dedup_relations:
        graph = graph.replace(relations=_dedup_relations(graph.relations, rng))
    sampled = sample_pairs(
        graph,
        train=config.train,
        max_pairs=config.max_pairs,
        max_fg=config.max_fg,
        rng=rng,
        num_predicates=config.num_predicates if config.multi_label_targets else None,
    )
    if sampled.num_truncated_pairs:
        _warn_once(
            "pairs",
            "image %s has %d ordered pairs; keeping the first max_pairs=%d",
            graph.image_id,
            sampled.pairs.shape[0] + sampled.num_truncated_pairs,
            config.max_pairs,
        )
    return pad_graph(
        graph,
        sampled,
        max_objects=config.max_objects,
        max_pairs=config.max_pairs,
        image_index=image_index,
        num_truncated_objects=num_truncated_objects,
        object_features=object_features,
    )


def collate(
    examples: Sequence[dict[str, np.ndarray]], batch_size: int | None = None
) -> SceneGraphBatch:
    """Stacks padded examples into a batch, appending padding images up to ``batch_size``.

    Args:
      examples: outputs of :func:`pad_graph` / :func:`padding_example`, all with the same budgets.
      batch_size: B >= len(examples); None = len(examples).

    Returns:
      :class:`SceneGraphBatch` of numpy arrays (``images`` None; ``soft_targets`` when the examples
      have them).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    batch_size = len(examples) if batch_size is None else batch_size
    if batch_size < len(examples):
        raise ValueError(f"{len(examples)} examples do not fit a batch of {batch_size}")
    examples = list(examples)
    template = examples[0]
    for _ in range(batch_size - len(examples)):
        padding = {key: np.zeros_like(value) for key, value in template.items()}
        padding["image_index"][...] = -1
        examples.append(padding)
    fields = {key: np.stack([example[key] for example in examples]) for key in template}
    return SceneGraphBatch(**fields)


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------


def _shuffle_seed(seed: int) -> int:
    return int(np.random.SeedSequence((int(seed), 0x5EED)).generate_state(1)[0])


class SceneGraphLoader:
    """Deterministic, sharded, padded batches of a random-access scene-graph source.

    Iterating yields ``num_epochs * num_batches_per_epoch`` :class:`SceneGraphBatch` (forever when
    ``num_epochs`` is None), each with exactly ``config.batch_size`` images.

    Attributes:
      config: the pipeline configuration.
      shard_index, shard_count: this process's shard.
      num_records: images in the source.
      num_batches_per_epoch: batches per epoch, the same on every process.
      dataset: the ``grain.MapDataset`` of batches; ``dataset[step]`` is the batch of a step.
    """

    def __init__(
        self,
        source: Sequence[Any],
        config: PipelineConfig,
        decode: Callable[[Any], SceneGraph] | None = None,
        object_features: Sequence[np.ndarray] | None = None,
    ):
        self.config = config
        self.shard_index, self.shard_count = config.resolved_shards()
        self.num_records = len(source)
        self._object_features = object_features
        self._object_feature_dim = None
        if object_features is not None:
            if len(object_features) != self.num_records:
                raise ConfigError(
                    "object_features",
                    f"{len(object_features)} feature arrays for {self.num_records} images",
                )
            self._object_feature_dim = int(np.shape(object_features[0])[1])
        if self.num_records == 0:
            raise DataError("the data source is empty")
        global_batch = config.batch_size * self.shard_count
        if config.drop_remainder:
            self.num_batches_per_epoch = self.num_records // global_batch
            if self.num_batches_per_epoch == 0:
                raise ConfigError(
                    "batch_size",
                    f"{config.batch_size} x {self.shard_count} processes exceeds the "
                    f"{self.num_records} images of the source with drop_remainder=True",
                )
        else:
            self.num_batches_per_epoch = -(-self.num_records // global_batch)
        self._global_batch = global_batch
        self._slots_per_epoch = self.num_batches_per_epoch * config.batch_size

        records = grain.MapDataset.source(source)
        if decode is not None:
            records = records.map(decode)
        self._records = records
        order = grain.MapDataset.range(self.num_records)
        if config.shuffle:
            order = order.shuffle(seed=_shuffle_seed(config.seed))
        self._order = order

        slots = grain.MapDataset.range(self._slots_per_epoch).repeat(config.num_epochs)
        self.dataset = slots.map_with_index(self._load_slot).batch(
            config.batch_size, drop_remainder=True, batch_fn=collate
        )

    @property
    def num_batches(self) -> int | None:
        """Total number of batches, None when repeating forever."""
        if self.config.num_epochs is None:
            return None
        return self.config.num_epochs * self.num_batches_per_epoch

    def source_index(self, epoch: int, position: int) -> int:
        """Index in the source of the image at ``position`` of ``epoch``'s global order."""
        return int(self._order[epoch * self.num_records + position])

    def _load_slot(self, stream_index: int, slot: int) -> dict[str, np.ndarray]:
        epoch = stream_index // self._slots_per_epoch
        batch_in_epoch, row = divmod(int(slot), self.config.batch_size)
        position = (
            batch_in_epoch * self._global_batch + self.shard_index * self.config.batch_size + row
        )
        if position >= self.num_records:
            return padding_example(
                max_objects=self.config.max_objects,
                max_pairs=self.config.max_pairs,
                num_classes=self.config.num_soft_target_classes,
                object_feature_dim=self._object_feature_dim,
            )
        image_index = self.source_index(epoch, position)
        graph = self._records[image_index]
        if not isinstance(graph, SceneGraph):
            raise DataError(
                f"decoded to {type(graph).__name__}, expected SceneGraph",
                record=f"#{image_index}",
            )
        features = None
        if self._object_features is not None:
            features = self._object_features[image_index]
            if np.shape(features)[1:] != (self._object_feature_dim,):
                raise DataError(
                    f"feature dimension {list(np.shape(features))} differs from the first "
                    f"image's {self._object_feature_dim}",
                    record=graph.image_id,
                    field="object_features",
                )
        return prepare_example(
            graph,
            image_index=image_index,
            epoch=epoch,
            config=self.config,
            object_features=features,
        )

    def iter_from(self, step: int = 0) -> Iterator[SceneGraphBatch]:
        """Iterates the batches from global step ``step`` on (e.g. after restoring a checkpoint)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        read_options = grain.ReadOptions(
            num_threads=self.config.read_threads, prefetch_buffer_size=self.config.prefetch_batches
        )
        return iter(self.dataset[step:].to_iter_dataset(read_options))

    def __iter__(self) -> Iterator[SceneGraphBatch]:
        return self.iter_from(0)


def make_loader(
    source: Sequence[Any],
    config: PipelineConfig,
    decode: Callable[[Any], SceneGraph] | None = None,
    object_features: Sequence[np.ndarray] | None = None,
) -> SceneGraphLoader:
    """Builds the input pipeline of ``source``.

    Args:
      source: anything with ``__len__`` and ``__getitem__`` (a list of SceneGraph, a TFDS
        ``as_data_source`` split, an ``ArrayRecordDataSource``).
      config: budgets and options.
      decode: applied to each record to get its SceneGraph; None = records are SceneGraphs.
      object_features: optional precomputed features, ``object_features[i]`` float32[N_i, D] for
        the objects of ``source[i]`` (see :mod:`sgg_jax.data.feature_store`); batches then carry
        ``object_features[B, N, D]``.

    Returns:
      A :class:`SceneGraphLoader`; iterate it for :class:`SceneGraphBatch` of numpy arrays with
      B = ``config.batch_size``, N = ``config.max_objects``, P = ``config.max_pairs``.
    """
    return SceneGraphLoader(source, config, decode, object_features)
