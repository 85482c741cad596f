"""Tests of box mAP: hand cases and loop-based re-implementations of voc_eval and COCOeval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.evaluation import detection
from sgg_jax.structures import Prediction, SceneGraph


def _graph(boxes, labels, image_id="img") -> SceneGraph:
    return SceneGraph(
        image_id=image_id, width=100, height=100, boxes=boxes, labels=labels, relations=[]
    )


def _dets(boxes, labels, scores):
    return (
        np.asarray(boxes, np.float64).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(scores, np.float64),
    )


# ---------------------------------------------------------------------------------------------------
# Direct, loop-based references.
# ---------------------------------------------------------------------------------------------------


def _iou_loop(a, b, plus_one=True):
    offset = 1.0 if plus_one else 0.0
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + offset, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + offset, 0.0)
    inter = iw * ih

    def area(box):
        return max(box[2] - box[0] + offset, 0.0) * max(box[3] - box[1] + offset, 0.0)

    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _reference_voc(graphs, dets, num_classes, iou_thresh=0.5, use_07_metric=False):
    """maskrcnn_benchmark calc_detection_voc_prec_rec + calc_detection_voc_ap, one +1, no difficult."""
    n_pos, score, match = {}, {}, {}
    for graph, (pred_bbox, pred_label, pred_score) in zip(graphs, dets, strict=True):
        gt_bbox, gt_label = graph.boxes.astype(np.float64), graph.labels
        for label in np.unique(np.concatenate((pred_label, gt_label)).astype(int)):
            pred_mask = pred_label == label
            pred_bbox_l = pred_bbox[pred_mask]
            pred_score_l = pred_score[pred_mask]
            order = pred_score_l.argsort()[::-1]
            pred_bbox_l = pred_bbox_l[order]
            pred_score_l = pred_score_l[order]
            gt_bbox_l = gt_bbox[gt_label == label]
            n_pos[label] = n_pos.get(label, 0) + len(gt_bbox_l)
            score.setdefault(label, []).extend(pred_score_l)
            match.setdefault(label, [])
            if len(pred_bbox_l) == 0:
                continue
            if len(gt_bbox_l) == 0:
                match[label].extend((0,) * pred_bbox_l.shape[0])
                continue
            iou = np.array([[_iou_loop(p, g) for g in gt_bbox_l] for p in pred_bbox_l])
            gt_index = iou.argmax(axis=1)
            gt_index[iou.max(axis=1) < iou_thresh] = -1
            selec = np.zeros(gt_bbox_l.shape[0], dtype=bool)
            for gt_idx in gt_index:
                if gt_idx >= 0:
                    match[label].append(0 if selec[gt_idx] else 1)
                    selec[gt_idx] = True
                else:
                    match[label].append(0)
    ap = np.full(num_classes + 1, np.nan)
    for label in n_pos:
        if n_pos[label] == 0:
            continue
        score_l = np.array(score[label])
        match_l = np.array(match[label], dtype=np.int8)[score_l.argsort()[::-1]]
        tp = np.cumsum(match_l == 1)
        fp = np.cumsum(match_l == 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = tp / (fp + tp)
        rec = tp / n_pos[label]
        if use_07_metric:
            value = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                p = 0 if np.sum(rec >= t) == 0 else np.max(np.nan_to_num(prec)[rec >= t])
                value += p / 11
        else:
            mpre = np.concatenate(([0], np.nan_to_num(prec), [0]))
            mrec = np.concatenate(([0], rec, [1]))
            mpre = np.maximum.accumulate(mpre[::-1])[::-1]
            i = np.where(mrec[1:] != mrec[:-1])[0]
            value = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        ap[label] = value
    return ap[1:]


def _reference_coco(graphs, dets, num_classes, max_det=100):
    """pycocotools COCOeval.evaluateImg + accumulate (area 'all', no crowd), per class AP[T]."""
    thresholds = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    rec_thrs = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
    ap = np.full((num_classes, len(thresholds)), np.nan)
    for cat in range(1, num_classes + 1):
        dt_scores, dt_matches, npig = [], [], 0
        for graph, (boxes, labels, scores) in zip(graphs, dets, strict=True):
            gt = [b for b, lab in zip(graph.boxes, graph.labels, strict=True) if lab == cat]
            dt = [(s, b) for b, lab, s in zip(boxes, labels, scores, strict=True) if lab == cat]
            dt_order = np.argsort([-s for s, _ in dt], kind="mergesort")
            dt = [dt[i] for i in dt_order[:max_det]]
            npig += len(gt)
            dtm = np.zeros((len(thresholds), len(dt)))
            gtm = np.zeros((len(thresholds), len(gt)))
            for tind, t in enumerate(thresholds):
                for dind, (_, d) in enumerate(dt):
                    iou = min([t, 1 - 1e-10])
                    m = -1
                    for gind, g in enumerate(gt):
                        if gtm[tind, gind] > 0:
                            continue
                        value = _iou_loop(d, g)
                        if value < iou:
                            continue
                        iou = value
                        m = gind
                    if m == -1:
                        continue
                    dtm[tind, dind] = 1
                    gtm[tind, m] = 1
            dt_scores += [s for s, _ in dt]
            dt_matches.append(dtm)
        if npig == 0:
            continue
        inds = np.argsort(-np.array(dt_scores), kind="mergesort")
        dtm = np.concatenate(dt_matches, axis=1)[:, inds]
        tp_sum = np.cumsum(dtm, axis=1).astype(float)
        fp_sum = np.cumsum(1 - dtm, axis=1).astype(float)
        for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
            nd = len(tp)
            rc = tp / npig
            pr = (tp / (fp + tp + np.spacing(1))).tolist()
            q = np.zeros(len(rec_thrs))
            for i in range(nd - 1, 0, -1):
                if pr[i] > pr[i - 1]:
                    pr[i - 1] = pr[i]
            inds_r = np.searchsorted(rc, rec_thrs, side="left")
            for ri, pi in enumerate(inds_r):
                if pi < len(pr):
                    q[ri] = pr[pi]
            ap[cat - 1, t] = q.mean()
    return ap


def _random_dataset(seed, num_images=12, num_classes=6):
    """Class num_classes has detections only; class num_classes - 1 has ground truth only."""
    rng = np.random.default_rng(seed)
    graphs, dets = [], []
    for image in range(num_images):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 60, size=(n, 2))
        wh = rng.uniform(5, 40, size=(n, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)
        gt_labels = rng.integers(1, num_classes, size=n)  # 1..C-1
        graphs.append(_graph(gt_boxes, gt_labels, image_id=f"img{image}"))
        # Jittered copies of the GT (some duplicated, some relabelled) plus random boxes.
        copies = rng.integers(0, 3, size=n)
        source = np.repeat(np.arange(n), copies)
        jitter = rng.normal(0, 4, size=(source.size, 4))
        det_boxes = gt_boxes[source] + jitter
        det_labels = gt_labels[source].copy()
        flip = rng.random(source.size) < 0.2
        det_labels[flip] = rng.integers(1, num_classes + 1, size=int(flip.sum()))
        extra = int(rng.integers(0, 4))
        exy = rng.uniform(0, 60, size=(extra, 2))
        det_boxes = np.concatenate([det_boxes, np.concatenate([exy, exy + 20], axis=1)])
        det_labels = np.concatenate([det_labels, rng.integers(1, num_classes + 1, size=extra)])
        det_labels[det_labels == num_classes - 1] = num_classes  # class C-1: GT only
        scores = rng.random(det_labels.size)
        dets.append(_dets(det_boxes, det_labels, scores))
    return graphs, dets


# ---------------------------------------------------------------------------------------------------
# Against the references.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07_metric", [False, True])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_matches_reference_voc_eval(seed, use_07_metric, iou_threshold):
    graphs, dets = _random_dataset(seed)
    result = detection.detection_map(
        graphs, dets, 6, iou_threshold=iou_threshold, use_07_metric=use_07_metric
    )
    expected = _reference_voc(graphs, dets, 6, iou_threshold, use_07_metric)
    np.testing.assert_allclose(result["AP_per_class"], expected, rtol=0, atol=1e-12)
    assert math.isnan(result["AP_per_class"][5])  # detections only
    assert result["AP_per_class"][4] == 0.0  # ground truth only
    assert result[f"mAP@{iou_threshold:g}"] == pytest.approx(np.nanmean(expected), abs=1e-12)
    assert result["num_classes_with_gt"] == int(np.sum(~np.isnan(expected)))
    gt_counts = np.bincount(np.concatenate([g.labels for g in graphs]), minlength=7)[1:]
    assert result["num_gt_per_class"] == gt_counts.tolist()
    assert 0.0 < result[f"mAP@{iou_threshold:g}"] < 1.0


@pytest.mark.parametrize("seed", [0, 3])
def test_coco_matches_reference_cocoeval(seed):
    graphs, dets = _random_dataset(seed, num_images=8)
    result = detection.coco_map(graphs, dets, 6, max_detections=3)
    expected = _reference_coco(graphs, dets, 6, max_det=3)
    np.testing.assert_allclose(result["AP_per_class_per_threshold"], expected, atol=1e-12)
    with_gt = ~np.isnan(expected[:, 0])
    assert result["mAP@[.5:.95]"] == pytest.approx(expected[with_gt].mean(), abs=1e-12)
    assert result["mAP@0.5"] == pytest.approx(expected[with_gt, 0].mean(), abs=1e-12)
    assert result["mAP@0.75"] == pytest.approx(expected[with_gt, 5].mean(), abs=1e-12)
    combined = detection.detection_map(graphs, dets, 6, coco=True, max_detections=3)
    assert combined["coco/mAP@[.5:.95]"] == result["mAP@[.5:.95]"]
    assert combined["mAP@0.5"] == detection.detection_map(graphs, dets, 6)["mAP@0.5"]


# ---------------------------------------------------------------------------------------------------
# Hand cases.
# ---------------------------------------------------------------------------------------------------


def test_perfect_detections_give_one():
    graphs = [
        _graph([[0, 0, 10, 10], [20, 20, 40, 50]], [1, 2], "a"),
        _graph([[5, 5, 30, 30]], [1], "b"),
    ]
    dets = [_dets(g.boxes, g.labels, [0.9, 0.8][: g.num_objects]) for g in graphs]
    for use_07 in (False, True):
        result = detection.detection_map(graphs, dets, 3, use_07_metric=use_07)
        assert result["mAP@0.5"] == 1.0
        assert result["AP_per_class"][:2] == [1.0, 1.0]
        assert math.isnan(result["AP_per_class"][2])
        assert result["num_classes_with_gt"] == 2
    assert detection.coco_map(graphs, dets, 3)["mAP@[.5:.95]"] == 1.0


def test_duplicates_are_false_positives():
    graph = _graph([[0, 0, 10, 10], [50, 50, 70, 70]], [1, 1])
    # A (0.9, TP), A again (0.8, duplicate -> FP), B (0.7, TP).
    dets = [_dets([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 70, 70]], [1, 1, 1], [0.9, 0.8, 0.7])]
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: envelope 1 then 2/3.
    assert detection.detection_map([graph], dets, 1)["mAP@0.5"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: recalls 0..0.5 see precision 1 (6 points), 0.6..1 see 2/3 (5 points).
    eleven = detection.detection_map([graph], dets, 1, use_07_metric=True)["mAP@0.5"]
    assert eleven == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc_rule_best_box_taken_is_false_positive_unlike_coco():
    # d2's best box (A) is taken by d1; box B (IoU 100/120 with d2) is free. voc_eval: FP; COCO: TP.
    graph = _graph([[0, 0, 9, 9], [0, 0, 9, 11]], [1, 1])
    dets = [_dets([[0, 0, 9, 9], [0, 0, 9, 9]], [1, 1], [0.9, 0.8])]
    voc = detection.detection_map([graph], dets, 1)
    assert voc["mAP@0.5"] == pytest.approx(0.5)
    np.testing.assert_allclose(voc["AP_per_class"], _reference_voc([graph], dets, 1))
    coco = detection.coco_map([graph], dets, 1)
    per_threshold = np.asarray(coco["AP_per_class_per_threshold"][0])
    thresholds = np.asarray(detection.COCO_IOU_THRESHOLDS)
    np.testing.assert_allclose(per_threshold[thresholds <= 0.8], 1.0)
    # Recall 1/2 at precision 1: 51 of the 101 recall points (0, 0.01, ..., 0.5).
    np.testing.assert_allclose(per_threshold[thresholds > 0.85], 51 / 101)


def test_wrong_class_is_a_miss():
    graph = _graph([[0, 0, 10, 10]], [1])
    result = detection.detection_map([graph], [_dets([[0, 0, 10, 10]], [2], [0.9])], 2)
    assert result["AP_per_class"][0] == 0.0
    assert math.isnan(result["AP_per_class"][1])
    assert result["mAP@0.5"] == 0.0
    assert result["num_classes_with_gt"] == 1
    assert result["num_detections_per_class"] == [0, 1]


def test_iou_threshold_with_plus_one_convention():
    graph = _graph([[0, 0, 9, 9]], [1])  # 10 x 10 pixels with +1
    at = [_dets([[0, 0, 9, 4]], [1], [0.9])]  # 10 x 5: IoU exactly 0.5 with +1 (36/81 without)
    below = [_dets([[0, 0, 9, 3.9]], [1], [0.9])]  # 10 x 4.9: IoU 0.49
    assert detection.detection_map([graph], at, 1)["mAP@0.5"] == 1.0
    assert detection.detection_map([graph], below, 1)["mAP@0.5"] == 0.0
    assert detection.detection_map([graph], at, 1, plus_one=False)["mAP@0.5"] == 0.0
    assert detection.detection_map([graph], at, 1, iou_threshold=0.51)["mAP@0.51"] == 0.0


def test_class_with_groundtruth_but_no_detection_has_ap_zero():
    graph = _graph([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    result = detection.detection_map([graph], [_dets([[0, 0, 10, 10]], [1], [0.5])], 2)
    assert result["AP_per_class"] == [1.0, 0.0]
    assert result["mAP@0.5"] == 0.5
    assert detection.coco_map([graph], [_dets([[0, 0, 10, 10]], [1], [0.5])], 2)[
        "AP_per_class"
    ] == [1.0, 0.0]


def test_empty_inputs():
    graph = _graph([[0, 0, 10, 10]], [1])
    result = detection.detection_map([graph], [_dets([], [], [])], 1)
    assert result["AP_per_class"] == [0.0] and result["mAP@0.5"] == 0.0
    result = detection.detection_map([], [], 3)
    assert result["mAP@0.5"] == 0.0 and result["num_classes_with_gt"] == 0
    assert result["num_images"] == 0
    empty_graph = _graph(np.zeros((0, 4)), [])
    result = detection.detection_map([empty_graph], [_dets([[0, 0, 1, 1]], [1], [1.0])], 1)
    assert result["num_classes_with_gt"] == 0 and math.isnan(result["AP_per_class"][0])
    assert detection.coco_map([], [], 2)["mAP@[.5:.95]"] == 0.0


def test_input_forms_agree():
    graphs, dets = _random_dataset(5, num_images=4)
    as_dicts = [{"boxes": b, "labels": lab, "scores": s} for b, lab, s in dets]
    as_predictions = [
        Prediction(
            boxes=b,
            labels=lab,
            object_scores=s,
            pairs=np.zeros((0, 2)),
            predicate_scores=np.zeros((0, 2)),
        )
        for b, lab, s in dets
    ]
    expected = detection.detection_map(graphs, dets, 6)
    np.testing.assert_equal(detection.detection_map(graphs, as_dicts, 6), expected)
    # Prediction stores float32 boxes: same result on these well-separated values.
    got = detection.detection_map(graphs, as_predictions, 6)
    assert got["mAP@0.5"] == pytest.approx(expected["mAP@0.5"], abs=1e-9)


def test_ties_keep_image_then_detection_order():
    # Same score: the FP of image 0 ranks before the TP of image 1 -> precision 0 then 1/2.
    graphs = [_graph([[50, 50, 60, 60]], [1], "a"), _graph([[0, 0, 10, 10]], [1], "b")]
    dets = [_dets([[0, 0, 10, 10]], [1], [0.5]), _dets([[0, 0, 10, 10]], [1], [0.5])]
    # recall 0 then 1/2 at precision 0 then 1/2: AP = 1/2 * 1/2.
    assert detection.detection_map(graphs, dets, 1)["mAP@0.5"] == pytest.approx(0.25)
    assert detection.detection_map(graphs[::-1], dets[::-1], 1)["mAP@0.5"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------------------------------


def test_bad_inputs_name_image_and_field():
    graph = _graph([[0, 0, 10, 10]], [1], "im7")
    cases = [
        (_dets([[0, 0, 1, 1]], [1, 1], [0.5]), "detections.labels"),
        (_dets([[0, 0, 1, 1]], [1], [0.5, 0.2]), "detections.scores"),
        ((np.zeros((2, 3)), np.ones(2), np.ones(2)), "detections.boxes"),
        (_dets([[0, 0, np.nan, 1]], [1], [0.5]), "detections.boxes"),
        (_dets([[0, 0, 1, 1]], [1], [np.inf]), "detections.scores"),
        (_dets([[0, 0, 1, 1]], [0], [0.5]), "detections.labels"),
        (_dets([[0, 0, 1, 1]], [4], [0.5]), "detections.labels"),
        ({"boxes": np.zeros((0, 4)), "labels": []}, "detections"),
        ("nonsense", "detections"),
    ]
    for item, field in cases:
        with pytest.raises(DataError) as info:
            detection.detection_map([graph], [item], 3)
        assert info.value.field == field, (item, str(info.value))
        assert "im7 (index 0)" in str(info.value) and f"field '{field}'" in str(info.value)
    nan_graph = _graph([[0, 0, np.nan, 10]], [1], "im8")
    with pytest.raises(DataError, match=r"im8 \(index 0\): field 'boxes': non-finite"):
        detection.detection_map([nan_graph], [_dets([], [], [])], 3)
    with pytest.raises(DataError, match="field 'labels'"):
        detection.detection_map([_graph([[0, 0, 1, 1]], [5])], [_dets([], [], [])], 3)
    with pytest.raises(DataError, match="2 detection entries for 1 ground-truth images"):
        detection.detection_map([graph], [_dets([], [], [])] * 2, 3)
    with pytest.raises(ConfigError, match="num_classes"):
        detection.detection_map([graph], [_dets([], [], [])], 0)
    with pytest.raises(ConfigError, match="iou_threshold"):
        detection.detection_map([graph], [_dets([], [], [])], 3, iou_threshold=1.5)
    with pytest.raises(ConfigError, match="max_detections"):
        detection.coco_map([graph], [_dets([], [], [])], 3, max_detections=0)
