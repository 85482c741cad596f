"""Straightforward per-image loop of the Scene-Graph-Benchmark evaluator: the test oracle.

This module re-states, image by image and with plain Python loops, the algorithm of
Scene-Graph-Benchmark's ``sgg_eval.py`` / ``vg_eval.py`` (``evaluate_relation_of_one_image``,
``SGRecall``, ``SGNoGraphConstraintRecall``, ``SGZeroShotRecall``, ``SGPairAccuracy``,
``SGMeanRecall``, ``_triplet``, ``_compute_pred_matches``) plus the ranking step of its
``RelationPostProcessor``. It is slow by design and is only used by the tests and by
``benchmarks/bench_evaluator.py`` to check :func:`sgg_jax.evaluation.sgg.evaluate`; ``evaluate`` never
imports it.

Two deliberate choices, shared with ``evaluate`` (see its module docstring): every sort is stable
(SGB's ``torch.sort`` / ``np.argsort`` leave ties unspecified), and the ground-truth-pair test of
``SGPairAccuracy`` compares index pairs exactly (SGB encodes a pair as ``subject * 1024 + object``,
which collides from 1024 objects on).
"""

from __future__ import annotations

from functools import reduce

import numpy as np

SGB_NO_GRAPH_CONSTRAINT_TOP = 100


def bbox_overlaps_plus_one(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """SGB ``bbox_overlaps`` (maskrcnn ``boxlist_iou``): IoU with inclusive pixel coordinates.

    Args:
      boxes_a: float64[N, 4] xyxy.
      boxes_b: float64[M, 4] xyxy.

    Returns:
      float64[N, M].
    """
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + 1) * (boxes_a[:, 3] - boxes_a[:, 1] + 1)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + 1) * (boxes_b[:, 3] - boxes_b[:, 1] + 1)
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    width_height = np.clip(bottom_right - top_left + 1, 0, None)
    intersection = width_height[..., 0] * width_height[..., 1]
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)


def intersect_2d(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """bool[len(a), len(b)]: row i of ``rows_a`` equals row j of ``rows_b``."""
    return (rows_a[..., None] == rows_b.T[None, ...]).all(1)


def argsort_desc_stable(scores: np.ndarray) -> np.ndarray:
    """Row-major flattened descending order of ``scores`` as [numel, ndim] indices (stable)."""
    return np.column_stack(
        np.unravel_index(np.argsort(-scores.ravel(), kind="stable"), scores.shape)
    )


def triplets_of(relations, classes, boxes):
    """SGB ``_triplet``: (subject class, predicate, object class) and the two boxes per relation."""
    subject, object_, predicate = relations[:, 0], relations[:, 1], relations[:, 2]
    triplets = np.column_stack((classes[subject], predicate, classes[object_]))
    triplet_boxes = np.column_stack((boxes[subject], boxes[object_]))
    return triplets, triplet_boxes


def compute_pred_matches(gt_triplets, pred_triplets, gt_boxes, pred_boxes, iou_threshold, phrdet):
    """SGB ``_compute_pred_matches``: for each prediction, the list of ground truths it matches."""
    keeps = intersect_2d(gt_triplets, pred_triplets)
    gt_has_match = keeps.any(1)
    pred_to_gt = [[] for _ in range(pred_boxes.shape[0])]
    for gt_index, gt_box, keep in zip(
        np.where(gt_has_match)[0], gt_boxes[gt_has_match], keeps[gt_has_match], strict=True
    ):
        candidate_boxes = pred_boxes[keep]
        if phrdet:
            gt_pair = gt_box.reshape(2, 4)
            gt_union = np.concatenate((gt_pair.min(0)[:2], gt_pair.max(0)[2:]))
            pred_pairs = candidate_boxes.reshape(-1, 2, 4)
            pred_union = np.concatenate((pred_pairs.min(1)[:, :2], pred_pairs.max(1)[:, 2:]), 1)
            ok = bbox_overlaps_plus_one(gt_union[None], pred_union)[0] >= iou_threshold
        else:
            subject_iou = bbox_overlaps_plus_one(gt_box[None, :4], candidate_boxes[:, :4])[0]
            object_iou = bbox_overlaps_plus_one(gt_box[None, 4:], candidate_boxes[:, 4:])[0]
            ok = (subject_iou >= iou_threshold) & (object_iou >= iou_threshold)
        for prediction in np.where(keep)[0][ok]:
            pred_to_gt[prediction].append(int(gt_index))
    return pred_to_gt


def _matched(pred_to_gt, k):
    if not pred_to_gt[:k]:
        return []
    return reduce(np.union1d, pred_to_gt[:k])


def reference_evaluate(
    groundtruths,
    predictions,
    *,
    mode,
    num_predicates,
    ks=(20, 50, 100),
    zeroshot_triplets=None,
    iou_threshold=0.5,
    phrdet=False,
    empty_prediction="skip",
    nogc_top=SGB_NO_GRAPH_CONSTRAINT_TOP,
) -> dict:
    """SGB's evaluation, one image at a time; returns the metrics under ``evaluate``'s key names.

    Args: as :func:`sgg_jax.evaluation.sgg.evaluate`; ``nogc_top`` is SGB's hard-coded 100.

    Returns:
      dict with ``R@K``, ``ngR@K``, ``mR@K``, ``ngmR@K``, ``zR@K``, ``ngzR@K``, ``A@K``, ``mR@all``,
      ``per_predicate_R@K``, ``per_predicate_ngR@K`` and the image counts.
    """
    num_rel = num_predicates + 1  # SGB's NUM_CLASSES, background included
    containers = {
        name: {k: [] for k in ks}
        for name in ("recall", "nogc", "zeroshot", "nogc_zeroshot", "acc_hit", "acc_count")
    }
    collect = {
        name: {k: [[] for _ in range(num_rel)] for k in (*ks, "all")} for name in ("mr", "ng_mr")
    }
    counts = {
        "num_images_evaluated": 0,
        "num_images_skipped_no_gt": 0,
        "num_images_empty_prediction": 0,
    }
    if zeroshot_triplets is not None:
        zeroshot_triplets = np.asarray(zeroshot_triplets, np.int64).reshape(-1, 3)

    for graph, prediction in zip(groundtruths, predictions, strict=True):
        gt_rels = graph.relations.astype(np.int64)
        if len(gt_rels) == 0:
            counts["num_images_skipped_no_gt"] += 1
            continue
        gt_boxes = graph.boxes.astype(np.float64)
        gt_classes = graph.labels.astype(np.int64)
        pred_rel_inds = prediction.pairs.astype(np.int64)
        rel_scores = prediction.predicate_scores.astype(np.float64)
        if mode == "predcls":
            pred_boxes, pred_classes = gt_boxes, gt_classes
            obj_scores = np.ones(gt_classes.shape[0])
        elif mode == "sgcls":
            pred_boxes = gt_boxes
            pred_classes = prediction.labels.astype(np.int64)
            obj_scores = prediction.object_scores.astype(np.float64)
        else:
            pred_boxes = prediction.boxes.astype(np.float64)
            pred_classes = prediction.labels.astype(np.int64)
            obj_scores = prediction.object_scores.astype(np.float64)

        # SGZeroShotRecall.prepare_zeroshot.
        zeroshot_idx = []
        if zeroshot_triplets is not None:
            gt_class_triplets = np.column_stack(
                (gt_classes[gt_rels[:, 0]], gt_classes[gt_rels[:, 1]], gt_rels[:, 2])
            )
            zeroshot_idx = np.where(intersect_2d(gt_class_triplets, zeroshot_triplets).sum(-1) > 0)[
                0
            ].tolist()

        if pred_rel_inds.shape[0] == 0:
            counts["num_images_empty_prediction"] += 1
            if empty_prediction == "skip":
                continue
            pred_to_gt, nogc_pred_to_gt, pair_in_gt = [], [], np.zeros(0, bool)
        else:
            # RelationPostProcessor: sort pairs by predicate score * subject score * object score.
            best_scores = rel_scores[:, 1:].max(1)
            triple_scores = (
                best_scores * obj_scores[pred_rel_inds[:, 0]] * obj_scores[pred_rel_inds[:, 1]]
            )
            sorting = np.argsort(-triple_scores, kind="stable")
            pred_rel_inds = pred_rel_inds[sorting]
            rel_scores = rel_scores[sorting]

            # SGRecall.
            pred_rels = np.column_stack((pred_rel_inds, 1 + rel_scores[:, 1:].argmax(1)))
            gt_triplets, gt_triplet_boxes = triplets_of(gt_rels, gt_classes, gt_boxes)
            pred_triplets, pred_triplet_boxes = triplets_of(pred_rels, pred_classes, pred_boxes)
            pred_to_gt = compute_pred_matches(
                gt_triplets,
                pred_triplets,
                gt_triplet_boxes,
                pred_triplet_boxes,
                iou_threshold,
                phrdet,
            )

            # SGNoGraphConstraintRecall.
            obj_scores_per_rel = obj_scores[pred_rel_inds].prod(1)
            nogc_overall_scores = obj_scores_per_rel[:, None] * rel_scores[:, 1:]
            nogc_score_inds = argsort_desc_stable(nogc_overall_scores)[: max(nogc_top, 0)]
            nogc_pred_rels = np.column_stack(
                (pred_rel_inds[nogc_score_inds[:, 0]], nogc_score_inds[:, 1] + 1)
            )
            nogc_triplets, nogc_triplet_boxes = triplets_of(
                nogc_pred_rels, pred_classes, pred_boxes
            )
            nogc_pred_to_gt = compute_pred_matches(
                gt_triplets,
                nogc_triplets,
                gt_triplet_boxes,
                nogc_triplet_boxes,
                iou_threshold,
                phrdet,
            )

            # SGPairAccuracy.prepare_gtpair (exact pair comparison).
            pair_in_gt = (
                (pred_rel_inds[:, None, 0] == gt_rels[None, :, 0])
                & (pred_rel_inds[:, None, 1] == gt_rels[None, :, 1])
            ).any(-1)

        counts["num_images_evaluated"] += 1
        num_gt = float(gt_rels.shape[0])
        for k in ks:
            match = _matched(pred_to_gt, k)
            containers["recall"][k].append(float(len(match)) / num_gt)
            nogc_match = _matched(nogc_pred_to_gt, k)
            containers["nogc"][k].append(float(len(nogc_match)) / num_gt)
            if zeroshot_idx:
                for name, matched in (("zeroshot", match), ("nogc_zeroshot", nogc_match)):
                    matched = list(np.asarray(matched).tolist())
                    hits = len(zeroshot_idx) + len(matched) - len(set(zeroshot_idx + matched))
                    containers[name][k].append(float(hits) / float(len(zeroshot_idx)))
            if mode != "sgdet":
                gt_pair_pred_to_gt = [
                    p for p, flag in zip(pred_to_gt, pair_in_gt, strict=True) if flag
                ]
                hits = _matched(gt_pair_pred_to_gt, k)
                containers["acc_hit"][k].append(float(len(hits)))
                containers["acc_count"][k].append(num_gt)

        # SGMeanRecall.collect_mean_recall_items (and K = all for mR@all).
        for name, matches in (("mr", pred_to_gt), ("ng_mr", nogc_pred_to_gt)):
            for k in collect[name]:
                if name == "ng_mr" and k == "all":
                    continue
                match = _matched(matches, len(matches) if k == "all" else k)
                recall_hit = [0] * num_rel
                recall_count = [0] * num_rel
                for index in range(gt_rels.shape[0]):
                    recall_count[int(gt_rels[index, 2])] += 1
                    recall_count[0] += 1
                for index in range(len(match)):
                    recall_hit[int(gt_rels[int(match[index]), 2])] += 1
                    recall_hit[0] += 1
                for predicate in range(num_rel):
                    if recall_count[predicate] > 0:
                        collect[name][k][predicate].append(
                            float(recall_hit[predicate] / recall_count[predicate])
                        )

    def mean(values):
        return float(np.mean(values)) if len(values) else 0.0

    def mean_recall(per_class):
        # SGMeanRecall.calculate_mean_recall.
        recalls = [mean(per_class[predicate]) for predicate in range(1, num_rel)]
        return float(sum(recalls) / float(num_rel - 1)), recalls

    results = {}
    for k in ks:
        results[f"R@{k}"] = mean(containers["recall"][k])
        results[f"ngR@{k}"] = mean(containers["nogc"][k])
        results[f"mR@{k}"], results[f"per_predicate_R@{k}"] = mean_recall(collect["mr"][k])
        results[f"ngmR@{k}"], results[f"per_predicate_ngR@{k}"] = mean_recall(collect["ng_mr"][k])
        if zeroshot_triplets is not None:
            results[f"zR@{k}"] = mean(containers["zeroshot"][k])
            results[f"ngzR@{k}"] = mean(containers["nogc_zeroshot"][k])
        if mode != "sgdet":
            count = mean(containers["acc_count"][k])
            results[f"A@{k}"] = mean(containers["acc_hit"][k]) / count if count else 0.0
    results["mR@all"] = mean_recall(collect["mr"]["all"])[0]
    results.update(counts)
    return results
