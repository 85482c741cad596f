"""Tests of the Scene-Graph-Benchmark metrics: one hand-built case per rule, and agreement with the
per-image reference loop (``sgg_jax.evaluation._reference``) on random images."""

import numpy as np
import pytest

from sgg_jax import boxes as box_ops
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.evaluation import evaluate
from sgg_jax.evaluation._reference import reference_evaluate
from sgg_jax.structures import Prediction, SceneGraph

NUM_PREDICATES = 3
BOX_A = [0, 0, 9, 9]
BOX_B = [20, 0, 29, 9]
BOX_C = [40, 0, 49, 9]


def graph(boxes, labels, relations, image_id="1"):
    return SceneGraph(image_id, 100, 100, boxes, labels, np.asarray(relations).reshape(-1, 3))


def scores(rows, num_predicates=NUM_PREDICATES):
    """Predicate score matrix [Q, P+1] from ``{predicate: score}`` dicts (others 0)."""
    matrix = np.zeros((len(rows), num_predicates + 1), np.float32)
    for row, entries in enumerate(rows):
        for predicate, value in entries.items():
            matrix[row, predicate] = value
    return matrix


def prediction(gt, pairs, score_rows, *, boxes=None, labels=None, object_scores=None, P=None):
    num = gt.num_objects if boxes is None else len(boxes)
    return Prediction(
        boxes=gt.boxes if boxes is None else boxes,
        labels=gt.labels if labels is None else labels,
        object_scores=np.ones(num) if object_scores is None else object_scores,
        pairs=np.asarray(pairs).reshape(-1, 2),
        predicate_scores=scores(score_rows, P or NUM_PREDICATES),
    )


def run(gts, preds, mode="predcls", **kwargs):
    kwargs.setdefault("num_predicates", NUM_PREDICATES)
    return evaluate(gts, preds, mode=mode, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Matching rules.
# ---------------------------------------------------------------------------------------------------


def test_iou_threshold_uses_inclusive_pixels():
    gt_object_box = [0, 20, 99, 29]  # 100 x 10 pixels inclusive
    gt = graph([BOX_A, gt_object_box], [1, 2], [[0, 1, 1]])
    at_half = [0, 20, 49, 29]  # 50 x 10: IoU(+1) = 500 / 1000 = 0.5 exactly
    below = [0, 20, 48, 29]  # 49 x 10: IoU(+1) = 0.49

    def recall(object_box, **kwargs):
        pred = prediction(gt, [[0, 1]], [{1: 0.9}], boxes=[BOX_A, object_box], labels=[1, 2])
        return run([gt], [pred], mode="sgdet", ks=(1,), **kwargs)["R@1"]

    assert recall(at_half) == 1.0
    assert recall(below) == 0.0
    assert recall(below, iou_threshold=0.49) == 1.0
    # Without the +1 convention the first box would fail the 0.5 threshold: the convention matters.
    plain = box_ops.pairwise_iou(np.array([at_half], float), np.array([gt_object_box], float))
    assert plain[0, 0] < 0.5
    plus_one = box_ops.pairwise_iou(
        np.array([at_half], float), np.array([gt_object_box], float), plus_one=True
    )
    assert plus_one[0, 0] == 0.5


def test_subject_and_object_must_both_overlap():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]])
    far = [60, 60, 69, 69]
    pred_bad_subject = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[far, BOX_B])
    pred_bad_object = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[BOX_A, far])
    pred_good = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[BOX_A, BOX_B])
    assert run([gt], [pred_bad_subject], mode="sgdet", ks=(1,))["R@1"] == 0.0
    assert run([gt], [pred_bad_object], mode="sgdet", ks=(1,))["R@1"] == 0.0
    assert run([gt], [pred_good], mode="sgdet", ks=(1,))["R@1"] == 1.0


def test_classes_and_predicate_must_be_equal():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]])
    wrong_label = prediction(gt, [[0, 1]], [{1: 1.0}], labels=[1, 3])
    wrong_predicate = prediction(gt, [[0, 1]], [{2: 1.0}])
    assert run([gt], [wrong_label], mode="sgdet", ks=(1,))["R@1"] == 0.0
    assert run([gt], [wrong_predicate], mode="sgdet", ks=(1,))["R@1"] == 0.0


def test_phrase_detection_uses_union_boxes():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]])
    # Subject and object boxes swapped in space: each box's IoU is 0, the union box is the same.
    pred = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[BOX_B, BOX_A])
    assert run([gt], [pred], mode="sgdet", ks=(1,))["R@1"] == 0.0
    assert run([gt], [pred], mode="sgdet", ks=(1,), phrdet=True)["R@1"] == 1.0


# ---------------------------------------------------------------------------------------------------
# Ranking rules.
# ---------------------------------------------------------------------------------------------------


def test_top_k_cut_on_graph_constrained_ranking():
    gt = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 2]])
    pairs = [[0, 2], [0, 1], [1, 0], [2, 1], [1, 2]]
    # The correct pair (0, 1) with predicate 2 has the third best triplet score.
    rows = [{1: 0.5}, {2: 0.7}, {3: 0.9}, {1: 0.8}, {2: 0.1}]
    result = run([gt], [prediction(gt, pairs, rows)], ks=(1, 2, 3, 4))
    assert [result[f"R@{k}"] for k in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]


def test_ties_keep_prediction_order():
    gt = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 1]])
    right_first = prediction(gt, [[0, 1], [1, 2]], [{1: 0.5}, {1: 0.5}])
    right_second = prediction(gt, [[1, 2], [0, 1]], [{1: 0.5}, {1: 0.5}])
    assert run([gt], [right_first], ks=(1,))["R@1"] == 1.0
    assert run([gt], [right_second], ks=(1,))["R@1"] == 0.0
    assert run([gt], [right_second], ks=(1,))["ngR@1"] == 0.0


def test_triplet_score_multiplies_object_scores():
    gt = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 1]])
    pairs = [[0, 1], [1, 2]]
    rows = [{1: 0.9}, {1: 0.5}]
    # Object 0 is unsure: 0.9 * 0.4 * 1 < 0.5 * 1 * 1, so the correct pair drops to rank 2 in SGCls.
    sgcls = prediction(gt, pairs, rows, object_scores=[0.4, 1.0, 1.0])
    assert run([gt], [sgcls], mode="sgcls", ks=(1, 2))["R@1"] == 0.0
    assert run([gt], [sgcls], mode="sgcls", ks=(1, 2))["R@2"] == 1.0
    # PredCls ignores the prediction's object scores (all 1), so the correct pair is first.
    assert run([gt], [sgcls], mode="predcls", ks=(1,))["R@1"] == 1.0


def test_no_graph_constraint_second_predicate_reaches_top_k():
    gt = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 2]])
    # Pair (0, 1) prefers predicate 1 (wrong); its predicate 2 is the third best entry overall.
    rows = [{1: 0.6, 2: 0.3}, {1: 0.5, 2: 0.1}]
    pred = prediction(gt, [[0, 1], [1, 2]], rows)
    result = run([gt], [pred], ks=(1, 2, 3, 50))
    assert [result[f"R@{k}"] for k in (1, 2, 3, 50)] == [0.0] * 4
    assert [result[f"ngR@{k}"] for k in (1, 2, 3, 50)] == [0.0, 0.0, 1.0, 1.0]


def test_no_graph_constraint_ranks_beyond_100():
    # 12 objects, 132 pairs. Pair (0, 1) prefers predicate 2 (0.95, wrong); its predicate 1 (0.7) is
    # below the predicate-1 entries of the 131 other pairs, so its entry rank is 132 (0-based).
    boxes = [[20 * i, 0, 20 * i + 9, 9] for i in range(12)]
    gt = graph(boxes, [1] * 12, [[0, 1, 1]])
    pairs = [[i, j] for i in range(12) for j in range(12) if i != j]
    assert pairs[0] == [0, 1]
    rows = [{2: 0.95, 1: 0.7}] + [{1: 0.99 - 0.001 * q, 2: 0.5} for q in range(1, len(pairs))]
    pred = prediction(gt, pairs, rows)
    result = run([gt], [pred], ks=(100, 132, 133))
    assert [result[f"ngR@{k}"] for k in (100, 132, 133)] == [0.0, 0.0, 1.0]
    # SGB keeps only the top 100 entries, so its ngR@133 stays at its ngR@100.
    sgb = reference_evaluate([gt], [pred], mode="predcls", num_predicates=3, ks=(100, 133))
    assert sgb["ngR@133"] == 0.0


def test_mean_recall_at_all_uses_every_pair():
    boxes = [[20 * i, 0, 20 * i + 9, 9] for i in range(12)]
    gt = graph(boxes, [1] * 12, [[0, 1, 1]])
    pairs = [[i, j] for i in range(12) for j in range(12) if i != j]
    pairs.remove([0, 1])
    pairs.append([0, 1])  # the correct pair is ranked last (132nd)
    rows = [{1: 1.0 - 0.001 * q} for q in range(len(pairs))]
    result = run([gt], [prediction(gt, pairs, rows)], ks=(100,))
    assert result["R@100"] == 0.0 and result["mR@100"] == 0.0
    assert result["mR@all"] == pytest.approx(1.0 / NUM_PREDICATES)


# ---------------------------------------------------------------------------------------------------
# Reductions.
# ---------------------------------------------------------------------------------------------------


def test_mean_recall_averages_per_class_over_images_then_over_all_predicates():
    gt1 = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 1], [1, 2, 1], [0, 2, 2]], "a")
    # Image 1: predicate 1 hit once of twice (0.5), predicate 2 hit (1.0).
    pred1 = prediction(gt1, [[0, 1], [0, 2]], [{1: 0.9}, {2: 0.8}])
    gt2 = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]], "b")
    pred2 = prediction(gt2, [[0, 1]], [{1: 0.9}])  # image 2: predicate 1 hit (1.0)
    result = run(
        [gt1, gt2],
        [pred1, pred2],
        ks=(5,),
        predicate_groups={"head": [1], "tail": [2, 3]},
        predicate_names=["__background__", "on", "has", "near"],
    )
    assert result["per_predicate_R@5"] == [0.75, 1.0, 0.0]
    assert result["per_predicate_num_images"] == [2, 1, 0]
    assert result["mR@5"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert result["R@5"] == pytest.approx((2 / 3 + 1.0) / 2)
    recall, mean_recall = result["R@5"], result["mR@5"]
    assert result["F@5"] == pytest.approx(2 * recall * mean_recall / (recall + mean_recall))
    assert result["mR@5/head"] == 0.75
    assert result["mR@5/tail"] == 0.5
    assert result["predicate_names"] == ["on", "has", "near"]
    by_name = run([gt1, gt2], [pred1, pred2], ks=(5,), predicate_groups={"h": ["on"]},
                  predicate_names=["on", "has", "near"])  # fmt: skip
    assert by_name["mR@5/h"] == 0.75


def test_f_is_zero_when_both_recalls_are_zero():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]])
    result = run([gt], [prediction(gt, [[1, 0]], [{1: 1.0}])], ks=(1,))
    assert result["R@1"] == 0.0 and result["mR@1"] == 0.0 and result["F@1"] == 0.0


def test_duplicate_ground_truth_relations_are_separate_entries():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1], [0, 1, 1], [0, 1, 2]])
    pred = prediction(gt, [[0, 1]], [{1: 0.9, 2: 0.5}])
    result = run([gt], [pred], ks=(1, 2))
    assert result["R@1"] == pytest.approx(2 / 3)  # one prediction covers both duplicates
    assert result["R@2"] == pytest.approx(2 / 3)  # one predicate per pair
    assert result["ngR@1"] == pytest.approx(2 / 3)
    assert result["ngR@2"] == 1.0
    assert result["per_predicate_R@2"] == [1.0, 0.0, 0.0]


def test_zero_shot_recall_filters_listed_triplets():
    # Rows are (subject_class, object_class, predicate).
    zeroshot = np.array([[1, 2, 3]])
    gt1 = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 3], [1, 2, 1]], "a")
    pred1 = prediction(gt1, [[1, 2], [0, 1]], [{1: 0.9}, {3: 0.8}])
    gt2 = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 3], [0, 1, 2]], "b")
    pred2 = prediction(gt2, [[0, 1]], [{2: 0.9}])  # hits the non-zero-shot relation only
    gt3 = graph([BOX_A, BOX_B], [2, 2], [[0, 1, 3]], "c")  # (2, 2, 3) is not listed
    pred3 = prediction(gt3, [[0, 1]], [{1: 0.9}])
    gts, preds = [gt1, gt2, gt3], [pred1, pred2, pred3]
    result = run(gts, preds, ks=(1, 2), zeroshot_triplets=zeroshot)
    assert result["num_images_zeroshot"] == 2
    assert result["zR@1"] == 0.0  # image a: its zero-shot relation is at rank 2
    assert result["zR@2"] == 0.5  # (1 + 0) / 2 images
    assert result["ngzR@2"] == 0.5
    # The same triplet in SGB's (subject, predicate, object) order lists nothing here.
    swapped = run(gts, preds, ks=(2,), zeroshot_triplets=np.array([[1, 3, 2]]))
    assert swapped["num_images_zeroshot"] == 0 and swapped["zR@2"] == 0.0
    assert "zR@2" not in run(gts, preds, ks=(2,))


def test_pair_accuracy_ranks_only_ground_truth_pairs_and_sums_over_images():
    gt1 = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 1]], "a")
    pred1 = prediction(gt1, [[1, 0], [0, 2], [0, 1]], [{1: 0.9}, {1: 0.8}, {1: 0.7}])
    gt2 = graph([BOX_A, BOX_B, BOX_C], [1, 2, 3], [[0, 1, 1], [1, 2, 2], [0, 2, 3]], "b")
    pred2 = prediction(gt2, [[2, 1], [0, 1], [1, 2]], [{1: 0.9}, {1: 0.8}, {1: 0.7}])
    result = run([gt1, gt2], [pred1, pred2], ks=(1, 3))
    assert result["R@1"] == 0.0
    # Image a: the only ground-truth pair is the first of the kept pairs -> 1 hit of 1.
    # Image b: kept pairs (0,1) hit, (1,2) wrong predicate -> 1 hit of 3. A = (1 + 1) / (1 + 3).
    assert result["A@1"] == 0.5
    assert result["A@3"] == 0.5
    assert "A@1" not in run([gt1], [pred1], mode="sgdet", ks=(1,))


def test_predcls_uses_ground_truth_labels_and_boxes():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]])
    wrong = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[BOX_C, BOX_C], labels=[3, 3])
    assert run([gt], [wrong], mode="predcls", ks=(1,))["R@1"] == 1.0
    # SGCls takes the labels from the prediction (and still the ground-truth boxes).
    assert run([gt], [wrong], mode="sgcls", ks=(1,))["R@1"] == 0.0
    right_labels = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[BOX_C, BOX_C], labels=[1, 2])
    assert run([gt], [right_labels], mode="sgcls", ks=(1,))["R@1"] == 1.0
    assert run([gt], [right_labels], mode="sgdet", ks=(1,))["R@1"] == 0.0


def test_empty_prediction_skip_or_zero():
    gt1 = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]], "a")
    gt2 = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 2], [1, 0, 2]], "b")
    preds = [prediction(gt1, [[0, 1]], [{1: 1.0}]), prediction(gt2, np.zeros((0, 2)), [])]
    zeroshot = np.array([[1, 2, 2]])
    skipped = run([gt1, gt2], preds, ks=(1,), zeroshot_triplets=zeroshot)
    assert skipped["R@1"] == 1.0 and skipped["A@1"] == 1.0 and skipped["ngR@1"] == 1.0
    assert skipped["num_images_evaluated"] == 1 and skipped["num_images_empty_prediction"] == 1
    assert skipped["num_images_zeroshot"] == 0
    assert skipped["per_predicate_R@1"] == [1.0, 0.0, 0.0]
    zero = run([gt1, gt2], preds, ks=(1,), zeroshot_triplets=zeroshot, empty_prediction="zero")
    assert zero["R@1"] == 0.5 and zero["ngR@1"] == 0.5
    assert zero["A@1"] == pytest.approx(1 / 3)
    assert zero["per_predicate_R@1"] == [1.0, 0.0, 0.0]
    assert zero["per_predicate_num_images"] == [1, 1, 0]
    assert zero["num_images_zeroshot"] == 1 and zero["zR@1"] == 0.0
    assert zero["num_images_evaluated"] == 2 and zero["num_images_empty_prediction"] == 1
    only_empty = run([gt2], preds[1:], ks=(1,))
    assert only_empty["R@1"] == 0.0 and only_empty["num_images_evaluated"] == 0


def test_image_without_relations_is_skipped_and_its_prediction_unread():
    gt1 = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]], "a")
    gt2 = graph([BOX_A, BOX_B], [1, 2], np.zeros((0, 3)), "b")
    unreadable = prediction(gt2, [[5, 7]], [{1: 1.0}])  # out of range, but never read
    result = run([gt1, gt2], [prediction(gt1, [[0, 1]], [{1: 1.0}]), unreadable], ks=(1,))
    assert result["R@1"] == 1.0
    assert result["num_images_skipped_no_gt"] == 1 and result["num_images_evaluated"] == 1


# ---------------------------------------------------------------------------------------------------
# Agreement with the per-image reference loop.
# ---------------------------------------------------------------------------------------------------


def random_images(seed, mode, num_images=50, num_predicates=6, num_classes=3, quantised=False):
    """Random scenes with few classes (so triplets match) and boxes on a coarse grid."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for index in range(num_images):
        num_objects = int(rng.integers(1, 11))
        corner = rng.integers(0, 40, (num_objects, 2))
        boxes = np.concatenate([corner, corner + rng.integers(0, 25, (num_objects, 2))], 1)
        labels = rng.integers(1, num_classes + 1, num_objects)
        num_relations = int(rng.integers(0, 9)) if rng.random() > 0.05 else 0
        relations = np.stack(
            [
                rng.integers(0, num_objects, num_relations),
                rng.integers(0, num_objects, num_relations),
                rng.integers(1, num_predicates + 1, num_relations),
            ],
            1,
        )
        if num_relations > 2:
            relations[-1] = relations[0]  # a duplicate
        gts.append(SceneGraph(str(500 + index), 80, 80, boxes, labels, relations))
        if mode == "sgdet":
            num_pred_objects = int(rng.integers(1, 11))
            pred_corner = rng.integers(0, 40, (num_pred_objects, 2))
            pred_boxes = np.concatenate(
                [pred_corner, pred_corner + rng.integers(0, 25, (num_pred_objects, 2))], 1
            )
            shared = min(num_objects, num_pred_objects)
            jitter = rng.integers(-2, 3, (shared, 2))
            pred_boxes[:shared] = boxes[:shared] + np.concatenate([jitter, jitter], 1)
            pred_labels = rng.integers(1, num_classes + 1, num_pred_objects)
            pred_labels[:shared] = np.where(
                rng.random(shared) < 0.7, labels[:shared], pred_labels[:shared]
            )
        else:
            num_pred_objects, pred_boxes = num_objects, boxes
            pred_labels = np.where(
                rng.random(num_objects) < 0.6, labels, rng.integers(1, num_classes + 1, num_objects)
            )
        object_scores = rng.random(num_pred_objects)
        num_pairs = 0 if rng.random() < 0.1 else int(rng.integers(1, 3 * num_pred_objects**2 + 2))
        pairs = rng.integers(0, num_pred_objects, (num_pairs, 2))
        predicate_scores = rng.random((num_pairs, num_predicates + 1))
        if quantised:  # many exact ties: exercises the stable tie rules
            object_scores = np.round(object_scores * 2) / 2
            predicate_scores = np.round(predicate_scores * 4) / 4
        preds.append(Prediction(pred_boxes, pred_labels, object_scores, pairs, predicate_scores))
    return gts, preds


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
@pytest.mark.parametrize("quantised", [False, True])
def test_matches_reference_loop(mode, quantised):
    seed = {"predcls": 0, "sgcls": 1, "sgdet": 2}[mode] + 10 * quantised
    gts, preds = random_images(seed, mode, quantised=quantised)
    options = dict(
        mode=mode,
        num_predicates=6,
        ks=(1, 5, 20, 50, 100),
        zeroshot_triplets=np.array([[1, 2, 1], [2, 1, 3], [3, 3, 2], [1, 1, 6]]),
    )
    for phrdet, empty_prediction, chunk_size in ((False, "skip", 64), (True, "zero", 100_000)):
        expected = reference_evaluate(
            gts, preds, phrdet=phrdet, empty_prediction=empty_prediction, **options
        )
        result = evaluate(
            gts,
            preds,
            phrdet=phrdet,
            empty_prediction=empty_prediction,
            chunk_size=chunk_size,
            **options,
        )
        assert result["R@100"] > 0.0 and result["ngR@100"] > result["R@1"]
        for key, value in expected.items():
            if isinstance(value, list):
                np.testing.assert_allclose(result[key], value, rtol=0, atol=1e-12, err_msg=key)
            else:
                assert result[key] == pytest.approx(value, rel=0, abs=1e-12), key


def test_chunking_does_not_change_results():
    gts, preds = random_images(7, "sgcls", num_images=30)
    whole = evaluate(gts, preds, mode="sgcls", num_predicates=6)
    for chunk_size in (1, 17):
        assert evaluate(gts, preds, mode="sgcls", num_predicates=6, chunk_size=chunk_size) == whole


# ---------------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def one_image():
    gt = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]], "42")
    return gt, prediction(gt, [[0, 1]], [{1: 1.0}])


def _assert_data_error(gts, preds, field, mode="predcls", record="42 (index 0)"):
    with pytest.raises(DataError) as info:
        run(gts, preds, mode=mode)
    message = str(info.value)
    assert "\n" not in message and f"field '{field}'" in message
    if record is not None:
        assert f"image {record}" in message


def test_error_length_mismatch(one_image):
    gt, pred = one_image
    _assert_data_error([gt, gt], [pred], "predictions", record=None)


def test_error_pair_outside_boxes(one_image):
    gt, _ = one_image
    _assert_data_error([gt], [prediction(gt, [[0, 2]], [{1: 1.0}])], "pairs")
    _assert_data_error([gt], [prediction(gt, [[-1, 0]], [{1: 1.0}])], "pairs")


def test_error_score_columns(one_image):
    gt, _ = one_image
    bad = prediction(gt, [[0, 1]], [{1: 1.0}], P=NUM_PREDICATES + 1)
    _assert_data_error([gt], [bad], "predicate_scores")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_error_non_finite_scores(one_image, value):
    gt, _ = one_image
    _assert_data_error([gt], [prediction(gt, [[0, 1]], [{2: value}])], "predicate_scores")
    bad_object = prediction(gt, [[0, 1]], [{1: 1.0}], object_scores=[1.0, value])
    _assert_data_error([gt], [bad_object], "object_scores", mode="sgcls")


def test_error_negative_object_score(one_image):
    gt, _ = one_image
    bad = prediction(gt, [[0, 1]], [{1: 1.0}], object_scores=[1.0, -0.5])
    _assert_data_error([gt], [bad], "object_scores", mode="sgdet")


@pytest.mark.parametrize("mode", ["predcls", "sgcls"])
def test_error_box_count_differs_from_ground_truth(one_image, mode):
    gt, _ = one_image
    bad = prediction(gt, [[0, 1]], [{1: 1.0}], boxes=[BOX_A, BOX_B, BOX_C], labels=[1, 2, 3])
    _assert_data_error([gt], [bad], "boxes", mode=mode)
    assert run([gt], [bad], mode="sgdet")["R@20"] == 1.0


def test_error_label_count(one_image):
    gt, _ = one_image
    bad = prediction(gt, [[0, 1]], [{1: 1.0}], labels=[1])
    _assert_data_error([gt], [bad], "labels", mode="sgdet")


def test_error_ground_truth_relation(one_image):
    _, pred = one_image
    outside = graph([BOX_A, BOX_B], [1, 2], [[0, 2, 1]], "42")
    _assert_data_error([outside], [pred], "relations")
    predicate = graph([BOX_A, BOX_B], [1, 2], [[0, 1, NUM_PREDICATES + 1]], "42")
    _assert_data_error([predicate], [pred], "relations")


def test_error_names_the_failing_image(one_image):
    gt, pred = one_image
    other = graph([BOX_A, BOX_B], [1, 2], [[0, 1, 1]], "77")
    bad = prediction(other, [[0, 9]], [{1: 1.0}])
    with pytest.raises(DataError, match=r"image 77 \(index 1\): field 'pairs'"):
        run([gt, other], [pred, bad])


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "detection"},
        {"ks": (0, 20)},
        {"ks": (20, 20)},
        {"num_predicates": 0},
        {"iou_threshold": 1.5},
        {"empty_prediction": "drop"},
        {"chunk_size": 0},
        {"zeroshot_triplets": np.zeros((2, 2))},
        {"predicate_names": ["a"]},
        {"predicate_groups": {"tail": [NUM_PREDICATES + 1]}},
        {"predicate_groups": {"tail": ["near"]}},
    ],
)
def test_config_errors(one_image, options):
    gt, pred = one_image
    options = {"mode": "predcls", "num_predicates": NUM_PREDICATES, **options}
    with pytest.raises(ConfigError):
        evaluate([gt], [pred], **options)


def test_segment_kernels_agree_with_lexsort():
    from sgg_jax.evaluation import sgg

    rng = np.random.default_rng(3)
    values = np.round(rng.random(200) * 5) / 5  # many ties
    segments = np.sort(rng.integers(0, 6, 200))
    expected = np.lexsort((np.arange(200), -values, segments))
    small = sgg._segment_descending_order(values, segments, 6, np.arange(200))
    huge = sgg._segment_descending_order(values, segments, 6, np.arange(200) * 2**55)  # fallback
    np.testing.assert_array_equal(small, expected)
    np.testing.assert_array_equal(huge, expected)
    third = sgg._segment_kth_largest(values, segments, 7, 3)
    for segment in range(7):
        members = np.sort(values[segments == segment])[::-1]
        assert third[segment] == (members[2] if members.size >= 3 else -np.inf)
