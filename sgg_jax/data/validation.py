"""Validation shared by every reader: raw arrays of one image -> a checked :class:`SceneGraph`.

Two kinds of problems are distinguished.

* Structural errors always raise :class:`~sgg_jax.errors.DataError` (file, image id, field): wrong
  shapes, NaN/inf coordinates, a non-positive image size, object labels or predicates outside the
  vocabulary, relation indices outside the image's boxes.
* Annotation quirks that occur in the real released files — a box with ``x2 < x1`` (or ``y2 < y1``),
  a box outside the image by more than 1 pixel, a self-relation (subject == object). With
  ``strict=True`` they raise too. With ``strict=False`` (the default) boxes are repaired (corners
  ordered, then clipped to the image extent ``[0, W] x [0, H]``; boxes within the 1-pixel tolerance are
  left exactly as annotated), and self-relations are kept as annotated ground truth (the test split's
  recall denominators then match published evaluations; the training pipeline never samples a self
  pair) unless ``drop_self_relations=True``. Every repair is counted in a :class:`ReadReport`.

For reference, the GQA-200 test split holds 1 inverted box, 149 boxes more than 1 px outside their
image and 207 self-relations.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from sgg_jax.errors import DataError
from sgg_jax.structures import SceneGraph

BOX_TOLERANCE_PX = 1.0


@dataclasses.dataclass
class ReadReport:
    """What a reader read and what it repaired or dropped (all counts)."""

    images: int = 0
    boxes: int = 0
    relations: int = 0
    repaired_boxes: int = 0
    self_relations: int = 0
    dropped_self_relations: int = 0
    dropped_duplicate_relations: int = 0
    dropped_images_without_relations: int = 0
    dropped_images_without_boxes: int = 0
    zero_area_boxes: int = 0
    zero_area_images: list[str] = dataclasses.field(default_factory=list)

    def add_graph(self, graph: SceneGraph) -> None:
        self.images += 1
        self.boxes += graph.num_objects
        self.relations += graph.num_relations

    def log(self, path: str) -> None:
        """Logs one warning line when anything was repaired or dropped."""
        changed = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("images", "boxes", "relations", "zero_area_images") and v
        }
        if self.zero_area_images:
            shown = ", ".join(self.zero_area_images[:10])
            more = len(self.zero_area_images) - 10
            changed["zero_area_boxes"] = (
                f"{self.zero_area_boxes} (images {shown}{f' and {more} more' if more > 0 else ''})"
            )
        if changed:
            details = ", ".join(f"{k}={v}" for k, v in changed.items())
            logging.warning("%s: read %d images; %s", path, self.images, details)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool | np.bool_) and isinstance(
        value, int | float | np.integer | np.floating
    )


def _numeric(value, dtype, path, image_id, field, ndim) -> np.ndarray:
    """``value`` as an array of ``dtype``; raises a DataError for a bool, string or other non-number
    entry instead of converting it (numpy turns ``True`` into 1 and ``"5"`` into 5)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise DataError(
                f"not numeric (dtype {value.dtype})", path=path, record=image_id, field=field
            )
    else:
        items = [value]
        for _ in range(ndim):
            if not all(isinstance(item, list | tuple) for item in items):
                break  # a shape error: the conversion below reports it
            items = [entry for item in items for entry in item]
        else:
            for item in items:
                if not _is_number(item):
                    raise DataError(
                        f"not a number: {item!r}"[:200], path=path, record=image_id, field=field
                    )
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DataError(
            f"not numeric ({type(exc).__name__})", path=path, record=image_id, field=field
        ) from None


def build_graph(
    *,
    path: str,
    image_id: str,
    width,
    height,
    boxes,
    labels,
    relations,
    num_classes: int,
    num_predicates: int,
    strict: bool = False,
    drop_self_relations: bool = False,
    report: ReadReport | None = None,
    image_path: str | None = None,
    captions: tuple[str, ...] = (),
    field_names: dict[str, str] | None = None,
) -> SceneGraph:
    """Checks raw arrays of one image and returns its :class:`SceneGraph`.

    Args:
      path: file the record came from (for error messages).
      image_id: image id (for error messages).
      width, height: image size in pixels.
      boxes: [N, 4] xyxy pixels.
      labels: [N] 1-based object classes.
      relations: [R, 3] ``(subject_idx, object_idx, predicate)``; predicate 1-based.
      num_classes, num_predicates: vocabulary sizes, background excluded.
      strict: raise on annotation quirks instead of repairing them (see module docstring).
      drop_self_relations: drop relations whose subject is its object.
      report: counts of what was read and repaired, updated in place.
      image_path, captions: passed through.
      field_names: maps our field names (``boxes``, ``labels``, ``relations``, ``predicates``,
        ``width``, ``height``) to the names used in the file, for error messages.

    Returns:
      The validated (and, unless ``strict``, repaired) scene graph.

    Raises:
      DataError: naming ``path``, ``image_id`` and the field.
    """
    names = {
        "boxes": "boxes",
        "labels": "labels",
        "relations": "relations",
        "predicates": "relations",
        "width": "width",
        "height": "height",
    }
    names.update(field_names or {})

    def fail(field: str, message: str) -> DataError:
        return DataError(message, path=path, record=image_id, field=names[field])

    for field, value in (("width", width), ("height", height)):
        if not _is_number(value):
            raise fail(field, f"not a number: {value!r}"[:200])
        if not np.isfinite(value) or value <= 0 or value != int(value):
            raise fail(field, f"must be a positive integer, got {value!r}")
    width, height = int(width), int(height)

    boxes = _numeric(boxes, np.float64, path, image_id, names["boxes"], 2)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise fail("boxes", f"expected shape [N, 4], got {list(boxes.shape)}")
    labels = _numeric(labels, np.float64, path, image_id, names["labels"], 1).reshape(-1)
    relations = _numeric(relations, np.float64, path, image_id, names["relations"], 2)
    if relations.size == 0:
        relations = relations.reshape(0, 3)
    if relations.ndim != 2 or relations.shape[1] != 3:
        raise fail("relations", f"expected shape [R, 3], got {list(relations.shape)}")

    num_boxes = boxes.shape[0]
    if labels.shape[0] != num_boxes:
        raise fail("labels", f"{labels.shape[0]} labels for {num_boxes} boxes")
    if not np.all(np.isfinite(boxes)):
        row = int(np.argwhere(~np.isfinite(boxes))[0, 0])
        raise fail("boxes", f"box {row} has a NaN/inf coordinate: {boxes[row].tolist()}")
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
        raise fail("labels", "labels must be integers")
    bad = np.flatnonzero((labels < 1) | (labels > num_classes))
    if bad.size:
        raise fail(
            "labels",
            f"object {int(bad[0])} has label {labels[bad[0]]:g} outside the vocabulary 1..{num_classes}",
        )
    if not np.all(np.isfinite(relations)) or np.any(relations != np.round(relations)):
        raise fail("relations", "relation entries must be integers")
    bad = np.flatnonzero((relations[:, :2] < 0).any(1) | (relations[:, :2] >= num_boxes).any(1))
    if bad.size:
        raise fail(
            "relations",
            f"relation {int(bad[0])} {relations[bad[0]].astype(np.int64).tolist()} indexes an "
            f"object outside 0..{num_boxes - 1}",
        )
    bad = np.flatnonzero((relations[:, 2] < 1) | (relations[:, 2] > num_predicates))
    if bad.size:
        raise fail(
            "predicates",
            f"relation {int(bad[0])} has predicate {relations[bad[0], 2]:g} outside the "
            f"vocabulary 1..{num_predicates}",
        )

    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    outside = (
        (boxes[:, 0] < -BOX_TOLERANCE_PX)
        | (boxes[:, 1] < -BOX_TOLERANCE_PX)
        | (boxes[:, 2] > width + BOX_TOLERANCE_PX)
        | (boxes[:, 3] > height + BOX_TOLERANCE_PX)
    )
    is_self = relations[:, 0] == relations[:, 1]
    if strict:
        if inverted.any():
            row = int(np.flatnonzero(inverted)[0])
            raise fail("boxes", f"box {row} {boxes[row].tolist()} has x2 < x1 or y2 < y1")
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise fail(
                "boxes",
                f"box {row} {boxes[row].tolist()} lies outside the {width}x{height} image by more "
                f"than {BOX_TOLERANCE_PX:g} px",
            )
        if is_self.any():
            row = int(np.flatnonzero(is_self)[0])
            raise fail(
                "relations",
                f"relation {row} {relations[row].astype(np.int64).tolist()} relates an object to itself",
            )
    repair = inverted | outside
    if repair.any():
        fixed = boxes[repair]
        fixed = np.concatenate(
            [np.minimum(fixed[:, :2], fixed[:, 2:]), np.maximum(fixed[:, :2], fixed[:, 2:])], axis=1
        )
        fixed[:, [0, 2]] = np.clip(fixed[:, [0, 2]], 0, width)
        fixed[:, [1, 3]] = np.clip(fixed[:, [1, 3]], 0, height)
        boxes = boxes.copy()
        boxes[repair] = fixed
    zero_area = repair & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if report is not None:
        report.repaired_boxes += int(repair.sum())
        if zero_area.any():
            report.zero_area_boxes += int(zero_area.sum())
            report.zero_area_images.append(str(image_id))
        report.self_relations += int(is_self.sum())
    if drop_self_relations and is_self.any():
        relations = relations[~is_self]
        if report is not None:
            report.dropped_self_relations += int(is_self.sum())

    graph = SceneGraph(
        image_id=str(image_id),
        width=width,
        height=height,
        boxes=boxes.astype(np.float32),
        labels=labels.astype(np.int32),
        relations=relations.astype(np.int32),
        image_path=image_path,
        captions=tuple(captions),
    )
    if report is not None:
        report.add_graph(graph)
    return graph


def dedup_relations(relations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keeps one relation per (subject, object) pair, chosen uniformly at random.

    This is Scene-Graph-Benchmark's ``filter_duplicate_rels`` (training only): among the predicates
    annotated on one ordered pair, one is sampled. Output pairs keep their first-occurrence order.

    Args:
      relations: int32[R, 3].
      rng: numpy generator.

    Returns:
      int32[R', 3] with unique (subject, object) pairs.
    """
    if relations.shape[0] == 0:
        return relations
    pairs = relations[:, 0].astype(np.int64) * (int(relations[:, :2].max()) + 1) + relations[:, 1]
    unique_pairs, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    if unique_pairs.shape[0] == relations.shape[0]:
        return relations
    keep = np.empty(unique_pairs.shape[0], np.int64)
    for group in range(unique_pairs.shape[0]):
        members = np.flatnonzero(inverse == group)
        keep[group] = (
            members[rng.integers(members.shape[0])] if members.shape[0] > 1 else members[0]
        )
    keep = keep[np.argsort(first)]
    return relations[keep]
