"""The data contract: scene graphs on the host, padded batches on the device.

* :class:`SceneGraph` — one image's ground truth (host, numpy), the output of every reader.
* :class:`Vocab` — class and predicate names (index 0 = ``__background__``) and train-split counts.
* :class:`Prediction` — one image's model output in the form the evaluator reads (host, numpy).
* :class:`SceneGraphBatch` — a static-shape, padded, masked batch (device pytree) built by
  :mod:`sgg_jax.data.pipeline`.

Conventions: boxes are ``xyxy`` in pixels of the original image; object labels are 1-based (0 is the
background class); relations are rows ``(subject_idx, object_idx, predicate)`` with 0-based object
indices and a 1-based predicate. Several relations on one (subject, object) pair are kept: they are
multi-label ground truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import flax.struct
import jax
import numpy as np

BACKGROUND = "__background__"


def _as_array(value: Any, dtype: Any, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value, dtype=dtype)
    if array.size == 0:
        array = array.reshape((0, *shape_tail))
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        want = "[N" + "".join(f",{d}" for d in shape_tail) + "]"
        raise ValueError(f"SceneGraph field '{name}' must have shape {want}, got {array.shape}")
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class SceneGraph:
    """Ground-truth scene graph of one image (host side).

    Attributes:
      image_id: dataset image id (for VG / GQA the Visual Genome id, as a string).
      width, height: image size in pixels.
      boxes: float32[N, 4] ``x1, y1, x2, y2`` in pixels.
      labels: int32[N] object classes, 1-based.
      relations: int32[R, 3] rows ``(subject_idx, object_idx, predicate)``; predicate 1-based.
      image_path: optional path of the image file.
      captions: optional captions of the image.
    """

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    relations: np.ndarray
    image_path: str | None = None
    captions: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "image_id", str(self.image_id))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "boxes", _as_array(self.boxes, np.float32, (4,), "boxes"))
        object.__setattr__(self, "labels", _as_array(self.labels, np.int32, (), "labels"))
        object.__setattr__(
            self, "relations", _as_array(self.relations, np.int32, (3,), "relations")
        )
        object.__setattr__(self, "captions", tuple(str(c) for c in self.captions))
        if self.labels.shape[0] != self.boxes.shape[0]:
            raise ValueError(
                f"SceneGraph {self.image_id}: {self.boxes.shape[0]} boxes but "
                f"{self.labels.shape[0]} labels"
            )

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_relations(self) -> int:
        return int(self.relations.shape[0])

    def replace(self, **changes: Any) -> SceneGraph:
        return dataclasses.replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SceneGraph):
            return NotImplemented
        return (
            self.image_id == other.image_id
            and self.width == other.width
            and self.height == other.height
            and np.array_equal(self.boxes, other.boxes)
            and np.array_equal(self.labels, other.labels)
            and np.array_equal(self.relations, other.relations)
            and self.image_path == other.image_path
            and self.captions == other.captions
        )

    __hash__ = None  # mutable-content arrays: not hashable

    def __repr__(self) -> str:
        return (
            f"SceneGraph(image_id={self.image_id!r}, {self.width}x{self.height}, "
            f"objects={self.num_objects}, relations={self.num_relations})"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Vocab:
    """Object and predicate vocabularies with train-split frequencies.

    Attributes:
      object_names: tuple of C+1 names, index 0 = ``__background__``.
      predicate_names: tuple of P+1 names, index 0 = ``__background__``.
      object_counts: int64[C+1] train-split object counts (index 0 unused, 0).
      predicate_counts: int64[P+1] train-split relation counts per predicate (index 0 unused, 0).
    """

    object_names: tuple[str, ...]
    predicate_names: tuple[str, ...]
    object_counts: np.ndarray | None = None
    predicate_counts: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "object_names", tuple(self.object_names))
        object.__setattr__(self, "predicate_names", tuple(self.predicate_names))
        for names, field in (
            (self.object_names, "object_names"),
            (self.predicate_names, "predicate_names"),
        ):
            if not names or names[0] != BACKGROUND:
                raise ValueError(f"Vocab field '{field}' must start with '{BACKGROUND}'")
        for field, names in (
            ("object_counts", self.object_names),
            ("predicate_counts", self.predicate_names),
        ):
            counts = getattr(self, field)
            if counts is None:
                counts = np.zeros(len(names), np.int64)
            counts = np.asarray(counts, np.int64)
            if counts.shape != (len(names),):
                raise ValueError(
                    f"Vocab field '{field}' must have shape ({len(names)},), got {counts.shape}"
                )
            object.__setattr__(self, field, counts)

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.object_names) - 1

    @property
    def num_predicates(self) -> int:
        """Number of predicates, background excluded."""
        return len(self.predicate_names) - 1

    def with_counts_from(self, graphs: Iterable[SceneGraph]) -> Vocab:
        """Returns a copy whose counts are recomputed from ``graphs`` (e.g. a train split)."""
        object_counts = np.zeros(len(self.object_names), np.int64)
        predicate_counts = np.zeros(len(self.predicate_names), np.int64)
        for graph in graphs:
            object_counts += np.bincount(graph.labels, minlength=len(self.object_names))[
                : len(self.object_names)
            ]
            predicate_counts += np.bincount(
                graph.relations[:, 2], minlength=len(self.predicate_names)
            )[: len(self.predicate_names)]
        return dataclasses.replace(
            self, object_counts=object_counts, predicate_counts=predicate_counts
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (
            self.object_names == other.object_names
            and self.predicate_names == other.predicate_names
            and np.array_equal(self.object_counts, other.object_counts)
            and np.array_equal(self.predicate_counts, other.predicate_counts)
        )

    __hash__ = None

    def __repr__(self) -> str:
        return f"Vocab(classes={self.num_classes}, predicates={self.num_predicates})"


@dataclasses.dataclass(frozen=True, eq=False)
class Prediction:
    """A model's scene graph for one image (host side), as the evaluator reads it.

    Attributes:
      boxes: float32[M, 4] xyxy pixels (the ground-truth boxes in PredCls / SGCls).
      labels: int32[M] predicted object classes (1-based).
      object_scores: float32[M] object confidences (1 in PredCls).
      pairs: int32[Q, 2] ordered ``(subject_idx, object_idx)`` pairs into ``boxes``.
      predicate_scores: float32[Q, P+1] predicate distribution per pair; column 0 = background.
    """

    boxes: np.ndarray
    labels: np.ndarray
    object_scores: np.ndarray
    pairs: np.ndarray
    predicate_scores: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "boxes", _as_array(self.boxes, np.float32, (4,), "boxes"))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int32).reshape(-1))
        object.__setattr__(
            self, "object_scores", np.asarray(self.object_scores, np.float32).reshape(-1)
        )
        object.__setattr__(self, "pairs", _as_array(self.pairs, np.int32, (2,), "pairs"))
        scores = np.asarray(self.predicate_scores, np.float32)
        if scores.ndim != 2:
            scores = scores.reshape(self.pairs.shape[0], -1)
        object.__setattr__(self, "predicate_scores", scores)

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.pairs.shape[0])


@flax.struct.dataclass
class SceneGraphBatch:
    """A padded, static-shape batch of scene graphs (device pytree).

    Shapes use B = batch size, N = ``max_objects``, P = ``max_pairs``, C = number of predicates + 1.
    Padding never changes a loss or a metric: every reduction is masked and divided by the mask count.

    Attributes:
      boxes: float32[B, N, 4] xyxy pixels; zeros where padded.
      labels: int32[B, N] object classes (0 where padded).
      object_mask: bool[B, N] real objects.
      pairs: int32[B, P, 2] ``(subject_idx, object_idx)``; padded pairs point at (0, 0).
      pair_labels: int32[B, P] predicate per pair, 0 = background (also 0 where padded).
      pair_mask: bool[B, P] real pairs (foreground and sampled background).
      image_size: int32[B, 2] ``(height, width)``.
      graph_mask: bool[B] real images (False for the padding images of a final partial batch).
      image_index: int32[B] index of the image in its data source (-1 where padded).
      num_truncated_objects: int32[B] objects dropped because the image was over ``max_objects``.
      num_truncated_pairs: int32[B] candidate pairs dropped because they were over ``max_pairs``.
      images: optional float32[B, H, W, 3].
      soft_targets: optional float32[B, P, C] multi-label target distribution per pair.
      object_features: optional float32[B, N, D] precomputed object features (e.g. detector RoI
        features saved to disk); zeros where padded.
    """

    boxes: jax.Array
    labels: jax.Array
    object_mask: jax.Array
    pairs: jax.Array
    pair_labels: jax.Array
    pair_mask: jax.Array
    image_size: jax.Array
    graph_mask: jax.Array
    image_index: jax.Array
    num_truncated_objects: jax.Array
    num_truncated_pairs: jax.Array
    images: jax.Array | None = None
    soft_targets: jax.Array | None = None
    object_features: jax.Array | None = None

    @property
    def batch_size(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def max_objects(self) -> int:
        return int(self.boxes.shape[1])

    @property
    def max_pairs(self) -> int:
        return int(self.pairs.shape[1])


def stack_batches(batches: Sequence[SceneGraphBatch]) -> SceneGraphBatch:
    """Concatenates batches along the batch axis (host or device arrays)."""
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *batches)
