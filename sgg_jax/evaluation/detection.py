"""Object detection metrics: PASCAL VOC box mAP (and optionally COCO-style mAP@[.5:.95]).

The detector of the SGDet pipeline is judged, as in Scene-Graph-Benchmark (Tang et al., CVPR 2020),
by its box mAP@0.5 on the scene graph test images. The numbers follow maskrcnn_benchmark's
``data/datasets/evaluation/voc/voc_eval.py`` (``calc_detection_voc_prec_rec`` /
``calc_detection_voc_ap``), itself a port of the PASCAL VOC devkit:

* Matching, per image and class: detections are visited by score, descending. Each detection's
  candidate is the ground-truth box of its class with the largest IoU (first such box on ties); if
  that IoU is ``>= iou_threshold`` and the box is not yet taken the detection is a true positive and
  takes it, otherwise (IoU too small, or the best box already taken: a duplicate) it is a false
  positive. A detection whose best box is taken does NOT fall back to another free box (that is
  COCO's rule, below).
* Per class, the detections of all images are sorted by score (descending); precision and recall
  are cumulated along that order; recall divides by the number of ground-truth boxes of the class.
* AP is the area under the precision envelope (all-point interpolation, VOC 2010+) or, with
  ``use_07_metric``, the mean of the envelope at the 11 recalls 0, 0.1, ..., 1 (VOC 2007).
* mAP is the mean over the classes that have at least one ground-truth box; a class with ground
  truth but no detection has AP 0; a class without ground truth has AP NaN and is left out.
  There is no "difficult" flag: every ground-truth box counts.

COCO style (:func:`coco_map`, or ``detection_map(..., coco=True)``), after pycocotools'
``COCOeval`` with area range "all" and no crowd boxes: per image and class, the top
``max_detections`` detections by score, each matched greedily to the *free* ground-truth box of
largest IoU ``>= t`` (ties: the last such box, as there); precision made monotone and read at the
101 recalls 0, 0.01, ..., 1; AP averaged over ``t`` in 0.50, 0.55, ..., 0.95 and over the classes
with ground truth.

Box convention: ``plus_one=True`` (default) is the inclusive-pixel IoU (width ``x2 - x1 + 1``) of
the VOC devkit and of Scene-Graph-Benchmark's evaluator (:func:`sgg_jax.boxes.pairwise_iou`).
maskrcnn_benchmark's ``voc_eval`` adds 1 to ``x2, y2`` and then calls ``boxlist_iou``, which adds 1
again (width ``x2 - x1 + 2``); for detector boxes tens of pixels wide the difference is far below
the AP resolution, and we keep the project's single +1 convention. maskrcnn_benchmark's COCO
evaluation hands pycocotools ``xywh`` boxes with ``w = x2 - x1 + 1``, i.e. the same +1 IoU.

Where this differs from voc_eval, on purpose: sorts are stable (ties in score keep image order,
then the detection order of the image; voc_eval reverses an unstable ``argsort``), scores and IoUs
are float64, and a dataset without any ground-truth box gives mAP 0.0 (voc_eval: NaN).

Vectorised: one IoU matrix per image (all classes at once, other classes masked out); the VOC
"first detection to reach a box wins" rule is a first-occurrence search over the sorted
detections, and the per-class cumulative sums run over one concatenated array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sgg_jax import boxes as box_ops
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import Prediction, SceneGraph

COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
_COCO_RECALLS = np.linspace(0.0, 1.0, 101)
_COCO_MAX_IOU = 1.0 - 1e-10  # COCOeval: iou = min(t, 1 - 1e-10)

__all__ = ["COCO_IOU_THRESHOLDS", "average_precision", "coco_map", "detection_map"]


# ---------------------------------------------------------------------------------------------------
# Input checks.
# ---------------------------------------------------------------------------------------------------


def _record(index: int, image_id: str) -> str:
    return f"{image_id} (index {index})"


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ConfigError("num_classes", f"expected an int, got {num_classes!r}")
    if num_classes < 1:
        raise ConfigError("num_classes", f"must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_threshold(option: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(option, f"expected a number in (0, 1], got {value!r}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(option, f"must be in (0, 1], got {value!r}")
    return value


def _unpack_detections(item, record: str):
    """(boxes, labels, scores) of one image's detections, as raw arrays."""
    if isinstance(item, Prediction):
        return item.boxes, item.labels, item.object_scores
    if isinstance(item, Mapping):
        missing = [key for key in ("boxes", "labels", "scores") if key not in item]
        if missing:
            raise DataError(
                f"expected keys 'boxes', 'labels', 'scores'; missing {missing}",
                record=record,
                field="detections",
            )
        return item["boxes"], item["labels"], item["scores"]
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3:
        return tuple(item)
    raise DataError(
        "expected (boxes[D, 4], labels[D], scores[D]), a mapping with those keys or a Prediction, "
        f"got {type(item).__name__}",
        record=record,
        field="detections",
    )


def _as_numeric(value, record: str, field: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("expected a numeric array", record=record, field=field) from None
    return array


def _image_detections(index: int, graph: SceneGraph, item, num_classes: int):
    """Validated float64 boxes [D, 4], int64 labels [D] and float64 scores [D] of one image."""
    record = _record(index, graph.image_id)
    raw_boxes, raw_labels, raw_scores = _unpack_detections(item, record)
    boxes = _as_numeric(raw_boxes, record, "detections.boxes")
    labels = _as_numeric(raw_labels, record, "detections.labels")
    scores = _as_numeric(raw_scores, record, "detections.scores")
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(
            f"expected shape [D, 4], got {list(boxes.shape)}",
            record=record,
            field="detections.boxes",
        )
    num = boxes.shape[0]
    for field, array in (("detections.labels", labels), ("detections.scores", scores)):
        if array.shape != (num,):
            raise DataError(
                f"expected shape [{num}] (one per box), got {list(array.shape)}",
                record=record,
                field=field,
            )
    for field, array in (("detections.boxes", boxes), ("detections.scores", scores)):
        if not np.isfinite(array).all():
            row = int(np.flatnonzero(~np.isfinite(array.reshape(num, -1)).all(axis=1))[0])
            raise DataError(
                f"non-finite value in detection {row}: {array[row].tolist()}",
                record=record,
                field=field,
            )
    bad = (labels != np.round(labels)) | (labels < 1) | (labels > num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"label {labels[row]:g} of detection {row} outside 1..{num_classes}",
            record=record,
            field="detections.labels",
        )
    return boxes, labels.astype(np.int64), scores


def _image_groundtruth(index: int, graph: SceneGraph, num_classes: int):
    record = _record(index, graph.image_id)
    boxes = graph.boxes.astype(np.float64)
    labels = graph.labels.astype(np.int64)
    if not np.isfinite(boxes).all():
        row = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        raise DataError(
            f"non-finite coordinates in box {row}: {boxes[row].tolist()}",
            record=record,
            field="boxes",
        )
    bad = (labels < 1) | (labels > num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"label {labels[row]} of object {row} outside 1..{num_classes}",
            record=record,
            field="labels",
        )
    return boxes, labels


def _validated(groundtruths, detections, num_classes):
    """Yields ``(gt_boxes, gt_labels, det_boxes, det_labels, det_scores)`` per image."""
    groundtruths = list(groundtruths)
    detections = list(detections)
    if len(groundtruths) != len(detections):
        raise DataError(
            f"{len(detections)} detection entries for {len(groundtruths)} ground-truth images",
            field="detections",
        )
    images = []
    for index, (graph, item) in enumerate(zip(groundtruths, detections, strict=True)):
        if not isinstance(graph, SceneGraph):
            raise DataError(
                f"expected a SceneGraph, got {type(graph).__name__}",
                record=f"index {index}",
                field="groundtruths",
            )
        gt = _image_groundtruth(index, graph, num_classes)
        images.append((*gt, *_image_detections(index, graph, item, num_classes)))
    return images


# ---------------------------------------------------------------------------------------------------
# Average precision from ranked matches.
# ---------------------------------------------------------------------------------------------------


def average_precision(
    true_positive: np.ndarray, num_groundtruth: int, use_07_metric: bool = False
) -> float:
    """VOC average precision of one class from its detections' match flags in rank order.

    Args:
      true_positive: bool[D], the class's detections sorted by score (descending): True where the
        detection matched a ground-truth box.
      num_groundtruth: number of ground-truth boxes of the class (> 0).
      use_07_metric: 11-point interpolation (VOC 2007) instead of the area under the envelope.

    Returns:
      AP in [0, 1] (voc_eval ``calc_detection_voc_ap``).
    """
    true_positive = np.asarray(true_positive, bool)
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = tp / float(num_groundtruth)
    precision = tp / np.maximum(tp + fp, 1)
    if use_07_metric:
        total = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):  # voc_eval's thresholds, float error and all
            reached = recall >= threshold
            total += precision[reached].max() if reached.any() else 0.0
        return float(total / 11.0)  # voc_eval adds p / 11 per point (1 + 2e-16 when perfect)
    precision_envelope = np.concatenate(([0.0], precision, [0.0]))
    recall_points = np.concatenate(([0.0], recall, [1.0]))
    precision_envelope = np.maximum.accumulate(precision_envelope[::-1])[::-1]
    changes = np.flatnonzero(recall_points[1:] != recall_points[:-1])
    return float(
        np.sum(
            (recall_points[changes + 1] - recall_points[changes]) * precision_envelope[changes + 1]
        )
    )


def _masked_class_iou(det_boxes, det_labels, gt_boxes, gt_labels, plus_one):
    """[D, G] IoU, -1 between boxes of different classes."""
    iou = box_ops.pairwise_iou(det_boxes, gt_boxes, plus_one=plus_one)
    return np.where(det_labels[:, None] == gt_labels[None, :], iou, -1.0)


def _voc_matches(images, iou_threshold, plus_one):
    """Concatenated (labels, scores, true_positive) of all detections, in ranking tie order."""
    all_labels, all_scores, all_tp = [], [], []
    for gt_boxes, gt_labels, det_boxes, det_labels, det_scores in images:
        order = np.argsort(-det_scores, kind="stable")
        det_boxes, det_labels, det_scores = det_boxes[order], det_labels[order], det_scores[order]
        true_positive = np.zeros(det_scores.shape[0], bool)
        if det_scores.size and gt_labels.size:
            iou = _masked_class_iou(det_boxes, det_labels, gt_boxes, gt_labels, plus_one)
            best_gt = iou.argmax(axis=1)  # first maximum, as np.argmax in voc_eval
            target = np.where(iou.max(axis=1) >= iou_threshold, best_gt, -1)
            # The first detection (in score order) reaching a box takes it; later ones are duplicates.
            reached = np.flatnonzero(target >= 0)
            _, first = np.unique(target[reached], return_index=True)
            true_positive[reached[first]] = True
        all_labels.append(det_labels)
        all_scores.append(det_scores)
        all_tp.append(true_positive)
    if not images:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
    return np.concatenate(all_labels), np.concatenate(all_scores), np.concatenate(all_tp)


def _gt_counts(images, num_classes) -> np.ndarray:
    counts = np.zeros(num_classes + 1, np.int64)
    for _, gt_labels, *_ in images:
        counts += np.bincount(gt_labels, minlength=num_classes + 1)
    return counts


def detection_map(
    groundtruths: Sequence[SceneGraph],
    detections: Sequence,
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    plus_one: bool = True,
    *,
    coco: bool = False,
    max_detections: int = 100,
) -> dict:
    """PASCAL VOC box mAP of a detector (maskrcnn_benchmark ``voc_eval``; see the module docstring).

    Args:
      groundtruths: ground-truth graphs (boxes xyxy pixels, labels 1..C).
      detections: per image, in the same order: ``(boxes float[D, 4], labels int[D], scores
        float[D])``, a mapping with keys ``boxes`` / ``labels`` / ``scores``, or a
        :class:`~sgg_jax.structures.Prediction` (its ``object_scores``). Labels are 1..C.
      num_classes: C, the number of foreground classes.
      iou_threshold: a detection matches a box with IoU ``>=`` this.
      use_07_metric: 11-point AP (VOC 2007) instead of the all-point area.
      plus_one: inclusive-pixel IoU (width ``x2 - x1 + 1``).
      coco: also compute :func:`coco_map`; its scalars are added as ``coco/mAP@[.5:.95]``,
        ``coco/mAP@0.5``, ``coco/mAP@0.75`` and its per-class AP as ``coco/AP_per_class``.
      max_detections: COCO's per-image, per-class detection cap (only with ``coco=True``).

    Returns:
      ``{"mAP@<iou_threshold>": float, "AP_per_class": list[float] (C entries, class c at index
      c - 1, NaN for a class without ground truth), "num_gt_per_class": list[int] (C),
      "num_detections_per_class": list[int] (C), "num_classes_with_gt": int, "num_images": int}``
      (plus the COCO keys). mAP is the mean AP over classes with ground truth (0.0 if there are
      none).

    Raises:
      ConfigError: invalid ``num_classes`` / ``iou_threshold``.
      DataError: malformed detections or ground truth (message names the image and the field).
    """
    num_classes = _check_num_classes(num_classes)
    iou_threshold = _check_threshold("iou_threshold", iou_threshold)
    images = _validated(groundtruths, detections, num_classes)
    num_gt = _gt_counts(images, num_classes)
    labels, scores, true_positive = _voc_matches(images, iou_threshold, plus_one)
    # Rank per class: label ascending, score descending, ties in concatenation order (stable).
    order = np.lexsort((np.arange(labels.shape[0]), -scores, labels))
    labels, true_positive = labels[order], true_positive[order]
    num_detections = np.bincount(labels, minlength=num_classes + 1)
    starts = np.concatenate(([0], np.cumsum(num_detections)))
    ap_per_class = np.full(num_classes, np.nan)
    for class_id in np.flatnonzero(num_gt[1:]) + 1:
        ranked = true_positive[starts[class_id] : starts[class_id + 1]]
        ap_per_class[class_id - 1] = average_precision(ranked, num_gt[class_id], use_07_metric)
    with_gt = int(np.count_nonzero(num_gt[1:]))
    results = {
        f"mAP@{iou_threshold:g}": float(np.nanmean(ap_per_class)) if with_gt else 0.0,
        "AP_per_class": [float(v) for v in ap_per_class],
        "num_gt_per_class": [int(v) for v in num_gt[1:]],
        "num_detections_per_class": [int(v) for v in num_detections[1:]],
        "num_classes_with_gt": with_gt,
        "num_images": len(images),
    }
    if coco:
        coco_results = _coco_from_images(images, num_classes, max_detections, plus_one)
        for key in ("mAP@[.5:.95]", "mAP@0.5", "mAP@0.75", "AP_per_class"):
            results[f"coco/{key}"] = coco_results[key]
    return results


# ---------------------------------------------------------------------------------------------------
# COCO style.
# ---------------------------------------------------------------------------------------------------


def _coco_image_matches(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, cap, plus_one):
    """Per kept detection: label, score and bool[T] matched flags (COCOeval.evaluateImg)."""
    thresholds = np.minimum(np.asarray(COCO_IOU_THRESHOLDS), _COCO_MAX_IOU)
    kept_labels, kept_scores, kept_tp = [], [], []
    for class_id in np.unique(det_labels):
        members = np.flatnonzero(det_labels == class_id)
        members = members[np.argsort(-det_scores[members], kind="stable")][:cap]
        matched = np.zeros((members.size, thresholds.size), bool)
        gt_members = np.flatnonzero(gt_labels == class_id)
        if gt_members.size:
            iou = box_ops.pairwise_iou(det_boxes[members], gt_boxes[gt_members], plus_one=plus_one)
            taken = np.zeros((thresholds.size, gt_members.size), bool)
            columns = np.arange(gt_members.size)
            for row in range(members.size):
                candidate = (iou[row][None, :] >= thresholds[:, None]) & ~taken
                masked = np.where(candidate, iou[row][None, :], -1.0)
                # COCOeval keeps the LAST box among equal best IoUs (it updates on `>=`).
                best = gt_members.size - 1 - np.argmax(masked[:, ::-1], axis=1)
                hit = candidate.any(axis=1)
                taken |= hit[:, None] & (columns[None, :] == best[:, None])
                matched[row] = hit
        kept_labels.append(np.full(members.size, class_id))
        kept_scores.append(det_scores[members])
        kept_tp.append(matched)
    return kept_labels, kept_scores, kept_tp


def _coco_from_images(images, num_classes, max_detections, plus_one) -> dict:
    if isinstance(max_detections, bool) or not isinstance(max_detections, int | np.integer):
        raise ConfigError("max_detections", f"expected an int, got {max_detections!r}")
    if max_detections < 1:
        raise ConfigError("max_detections", f"must be >= 1, got {max_detections}")
    num_thresholds = len(COCO_IOU_THRESHOLDS)
    labels, scores, matched = (
        [np.zeros(0, np.int64)],
        [np.zeros(0)],
        [np.zeros((0, num_thresholds), bool)],
    )
    for image in images:
        image_labels, image_scores, image_matched = _coco_image_matches(
            *image, int(max_detections), plus_one
        )
        labels += image_labels
        scores += image_scores
        matched += image_matched
    labels, scores, matched = (
        np.concatenate(labels),
        np.concatenate(scores),
        np.concatenate(matched),
    )
    num_gt = _gt_counts(images, num_classes)
    order = np.lexsort((np.arange(labels.shape[0]), -scores, labels))  # COCO: mergesort, stable
    labels, matched = labels[order], matched[order]
    starts = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=num_classes + 1))))
    ap = np.full((num_classes, num_thresholds), np.nan)
    for class_id in np.flatnonzero(num_gt[1:]) + 1:
        class_matched = matched[starts[class_id] : starts[class_id + 1]]
        tp = np.cumsum(class_matched, axis=0)
        fp = np.cumsum(~class_matched, axis=0)
        for t in range(num_thresholds):
            recall = tp[:, t] / num_gt[class_id]
            precision = tp[:, t] / np.maximum(tp[:, t] + fp[:, t], 1)
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            positions = np.searchsorted(recall, _COCO_RECALLS, side="left")
            values = np.zeros(_COCO_RECALLS.size)
            inside = positions < precision.size
            values[inside] = precision[positions[inside]]
            ap[class_id - 1, t] = values.mean()
    with_gt = num_gt[1:] > 0

    def mean(values):
        return float(values[with_gt].mean()) if with_gt.any() else 0.0

    index_50 = COCO_IOU_THRESHOLDS.index(0.5)
    index_75 = COCO_IOU_THRESHOLDS.index(0.75)
    per_class = ap.mean(axis=1)
    return {
        "mAP@[.5:.95]": mean(per_class),
        "mAP@0.5": mean(ap[:, index_50]),
        "mAP@0.75": mean(ap[:, index_75]),
        "AP_per_class": [float(v) for v in per_class],
        "AP_per_class_per_threshold": [[float(v) for v in row] for row in ap],
        "num_gt_per_class": [int(v) for v in num_gt[1:]],
        "num_classes_with_gt": int(with_gt.sum()),
        "num_images": len(images),
    }


def coco_map(
    groundtruths: Sequence[SceneGraph],
    detections: Sequence,
    num_classes: int,
    *,
    max_detections: int = 100,
    plus_one: bool = True,
) -> dict:
    """COCO-style box mAP@[.5:.95] (pycocotools ``COCOeval``, area "all", no crowd boxes).

    Args:
      groundtruths, detections, num_classes: as for :func:`detection_map`.
      max_detections: per image and class, only the top this many detections by score count
        (COCOeval's ``maxDets[-1] = 100``).
      plus_one: inclusive-pixel IoU (what maskrcnn_benchmark's COCO evaluation amounts to).

    Returns:
      ``{"mAP@[.5:.95]", "mAP@0.5", "mAP@0.75": float, "AP_per_class": list[float] (C; AP averaged
      over the 10 IoU thresholds; NaN without ground truth), "AP_per_class_per_threshold":
      list[list[float]] (C x 10), "num_gt_per_class": list[int], "num_classes_with_gt": int,
      "num_images": int}``.
    """
    num_classes = _check_num_classes(num_classes)
    images = _validated(groundtruths, detections, num_classes)
    return _coco_from_images(images, num_classes, max_detections, plus_one)
