"""SGDet: detections -> relation candidates and targets (hand values), and the pieces around it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgg_jax.detection.detector import DetectorConfig
from sgg_jax.errors import ConfigError
from sgg_jax.evaluation.collect import detection_predictions
from sgg_jax.relation import sgdet
from sgg_jax.relation.features import relation_trainable_mask
from sgg_jax.relation.motifs import MotifsConfig
from sgg_jax.relation.penet import PENetConfig
from sgg_jax.relation.sgdet import SGDetConfig
from sgg_jax.structures import SceneGraphBatch
from sgg_jax.train.optim import freeze

GT_BOXES = np.array([[0, 0, 19, 19], [40, 40, 59, 59], [0, 40, 19, 59]], np.float32)
GT_LABELS = np.array([1, 2, 3], np.int32)


def gt_batch(relations, num_pairs=4):
    """One image with the three GT objects and ``relations`` as its foreground pairs."""
    pairs = np.zeros((1, num_pairs, 2), np.int32)
    labels = np.zeros((1, num_pairs), np.int32)
    mask = np.zeros((1, num_pairs), bool)
    for q, (s, o, p) in enumerate(relations):
        pairs[0, q], labels[0, q], mask[0, q] = (s, o), p, True
    return SceneGraphBatch(
        boxes=GT_BOXES[None],
        labels=GT_LABELS[None],
        object_mask=np.ones((1, 3), bool),
        pairs=pairs,
        pair_labels=labels,
        pair_mask=mask,
        image_size=np.array([[64, 64]], np.int32),
        graph_mask=np.ones(1, bool),
        image_index=np.zeros(1, np.int32),
        num_truncated_objects=np.zeros(1, np.int32),
        num_truncated_pairs=np.zeros(1, np.int32),
    )


# Detections: 0 ~ GT 0 (IoU 0.81), 1 ~ GT 1 (exact), 2 overlaps GT 2 by IoU 0.25, 3 ~ GT 0 again,
# 4 is padding.
DET_BOXES = np.array(
    [[[0, 0, 17, 17], [40, 40, 59, 59], [0, 50, 19, 69], [1, 1, 19, 19], [0, 0, 0, 0]]],
    np.float32,
)
DET_MASK = np.array([[True, True, True, True, False]])


def detections():
    return {
        "boxes": DET_BOXES,
        "labels": np.array([[1, 2, 3, 1, 0]], np.int32),
        "scores": np.array([[0.9, 0.8, 0.7, 0.6, 0.0]], np.float32),
        "mask": DET_MASK,
    }


def test_all_pairs_are_ordered_and_distinct():
    np.testing.assert_array_equal(
        sgdet.all_pairs(3), [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]]
    )
    assert sgdet.all_pairs(1).shape == (0, 2)
    assert sgdet.num_inference_pairs(20) == 380


def test_assign_labels_takes_the_best_gt_at_iou_half_and_matches_need_the_label():
    config = SGDetConfig()
    labels, is_match = sgdet.assign_labels(
        jnp.asarray(DET_BOXES[0]),
        jnp.asarray(DET_MASK[0]),
        jnp.asarray(GT_BOXES),
        jnp.asarray(GT_LABELS),
        jnp.ones(3, bool),
        config,
    )
    # IoU (inclusive pixels) of det 0 and GT 0: 18*18 / 20*20 = 0.81; det 2 and GT 2: 10*20 /
    # (400 + 400 - 200) = 0.33 < 0.5 -> background.
    np.testing.assert_array_equal(labels, [1, 2, 0, 1, 0])
    expected = np.zeros((3, 5), bool)
    expected[0, 0] = expected[1, 1] = expected[0, 3] = True
    np.testing.assert_array_equal(is_match, expected)
    # Without the label rule IoU alone decides (same result here: labels come from the match).
    loose = SGDetConfig(require_label_match=False, fg_iou_thresh=0.3)
    labels, is_match = sgdet.assign_labels(
        jnp.asarray(DET_BOXES[0]),
        jnp.asarray(DET_MASK[0]),
        jnp.asarray(GT_BOXES),
        jnp.asarray(GT_LABELS),
        jnp.ones(3, bool),
        loose,
    )
    np.testing.assert_array_equal(labels, [1, 2, 3, 1, 0])
    assert bool(is_match[2, 2])


def test_pair_labels_follow_gt_relations_in_direction_and_skip_the_diagonal():
    is_match = np.zeros((3, 4), bool)
    is_match[0, 0] = is_match[0, 3] = is_match[1, 1] = True
    pairs = np.array([[0, 1], [1, 2], [0, 0]], np.int32)
    table = sgdet.pair_labels_of_matches(
        jnp.asarray(is_match),
        jnp.asarray(pairs),
        jnp.asarray([5, 7, 0]),
        jnp.asarray([True, True, False]),
        jax.random.key(0),
    )
    expected = np.zeros((4, 4), np.int32)
    expected[0, 1] = expected[3, 1] = 5  # both detections of GT 0 -> detection of GT 1
    np.testing.assert_array_equal(table, expected)  # (1, 2): GT 2 is never detected


def test_a_pair_matching_two_relations_draws_one_of_them():
    is_match = np.eye(2, dtype=bool)
    pairs = np.array([[0, 1], [0, 1]], np.int32)
    seen = set()
    for seed in range(12):
        table = sgdet.pair_labels_of_matches(
            jnp.asarray(is_match),
            jnp.asarray(pairs),
            jnp.asarray([3, 4]),
            jnp.ones(2, bool),
            jax.random.key(seed),
        )
        seen.add(int(table[0, 1]))
    assert seen == {3, 4}


@pytest.mark.e2e
def test_detection_batch_in_training_samples_foreground_first_within_the_budget():
    batch = gt_batch([(0, 1, 5), (1, 0, 6)])
    config = SGDetConfig(train_pairs=6, train_fg=1)
    out = sgdet.detection_batch(
        batch, detections(), train=True, config=config, key=jax.random.key(0)
    )
    assert out.pairs.shape == (1, 6, 2) and out.boxes.shape == (1, 5, 4)
    np.testing.assert_array_equal(out.labels, [[1, 2, 0, 1, 0]])
    np.testing.assert_array_equal(out.object_mask, DET_MASK)
    pair_labels = np.asarray(out.pair_labels[0])
    pairs = np.asarray(out.pairs[0])
    mask = np.asarray(out.pair_mask[0])
    assert mask.all()  # 4 valid detections -> 12 candidates >= 6
    assert (pair_labels > 0).sum() == 1 and pair_labels[0] > 0  # at most train_fg, first
    foreground = {(0, 1): 5, (3, 1): 5, (1, 0): 6, (1, 3): 6}
    for (s, o), label in zip(pairs.tolist(), pair_labels.tolist(), strict=True):
        assert s != o and DET_MASK[0, s] and DET_MASK[0, o]
        assert label == foreground.get((s, o), 0)
    # Enough budget: all four foreground pairs and every other valid pair once.
    out = sgdet.detection_batch(
        batch,
        detections(),
        train=True,
        config=SGDetConfig(train_pairs=16, train_fg=8),
        key=jax.random.key(1),
    )
    mask = np.asarray(out.pair_mask[0])
    assert mask.sum() == 12
    chosen = {tuple(p) for p in np.asarray(out.pairs[0])[mask].tolist()}
    assert chosen == {tuple(p) for p in sgdet.all_pairs(4).tolist()}
    got = {
        tuple(p): int(label)
        for p, label in zip(
            np.asarray(out.pairs[0])[mask], np.asarray(out.pair_labels[0])[mask], strict=True
        )
    }
    assert {k: v for k, v in got.items() if v} == foreground


def test_detection_batch_at_inference_scores_every_pair_of_valid_detections():
    batch = gt_batch([(0, 1, 5)])
    out = sgdet.detection_batch(batch, detections(), train=False, config=SGDetConfig())
    assert out.pairs.shape == (1, 20, 2)
    np.testing.assert_array_equal(out.labels, [[1, 2, 3, 1, 0]])  # the detector's labels
    mask = np.asarray(out.pair_mask[0])
    assert mask.sum() == 12 and not np.asarray(out.pair_labels).any()
    assert {tuple(p) for p in np.asarray(out.pairs[0])[mask].tolist()} == {
        tuple(p) for p in sgdet.all_pairs(4).tolist()
    }
    # A padding image (graph_mask False) has no detection and no pair.
    padded = batch.replace(graph_mask=np.zeros(1, bool))
    out = sgdet.detection_batch(padded, detections(), train=False, config=SGDetConfig())
    assert not np.asarray(out.object_mask).any() and not np.asarray(out.pair_mask).any()
    with pytest.raises(ConfigError, match="'key'"):
        sgdet.detection_batch(batch, detections(), train=True, config=SGDetConfig())


def test_detection_predictions_reindex_valid_detections_and_rescale_boxes():
    batch = gt_batch([(0, 1, 5)])
    outputs = {
        "boxes": DET_BOXES,
        "object_mask": np.array([[True, False, True, True, False]]),
        "object_labels": np.array([[1, 2, 3, 1, 0]]),
        "object_scores": np.array([[0.9, 0.8, 0.7, 0.6, 0.0]]),
        "pairs": np.array([[[0, 2], [2, 3], [1, 0], [3, 0]]]),
        "pair_mask": np.array([[True, True, True, False]]),
        "predicate_scores": np.arange(4 * 3, dtype=np.float32).reshape(1, 4, 3),
    }
    prediction = detection_predictions(batch, outputs, scales=np.array([0.5]))[0]
    np.testing.assert_array_equal(prediction.boxes, DET_BOXES[0][[0, 2, 3]] * 2)
    np.testing.assert_array_equal(prediction.labels, [1, 3, 1])
    np.testing.assert_array_equal(prediction.pairs, [[0, 1], [1, 2]])  # (1, 0): slot 1 invalid
    np.testing.assert_array_equal(prediction.predicate_scores, [[0, 1, 2], [3, 4, 5]])


def test_configs_check_task_source_and_detector():
    tiny = DetectorConfig.tiny()
    for make in (PENetConfig.small, MotifsConfig.small):
        with pytest.raises(ConfigError, match="'task'.*roi"):
            make(3, 2, task="sgdet")
        with pytest.raises(ConfigError, match="'detector'"):
            make(3, 2, feature_source="roi")
        with pytest.raises(ConfigError, match="'detector'"):
            make(3, 2, detector=tiny)
        with pytest.raises(ConfigError, match="'detector'.*detections_per_image"):
            make(
                3,
                2,
                task="sgdet",
                feature_source="roi",
                detector=tiny.replace(detections_per_image=1),
            )
        config = make(
            3, 2, task="sgdet", feature_source="roi", detector=tiny, sgdet={"train_fg": 4}
        )
        assert config.sgdet == SGDetConfig(train_fg=4)
        assert config == make(
            3, 2, task="sgdet", feature_source="roi", detector=tiny, sgdet=SGDetConfig(train_fg=4)
        )
        assert config != config.replace(freeze_detector=False)
        hash(config)
    with pytest.raises(ConfigError, match="'train_fg'"):
        SGDetConfig(train_pairs=4, train_fg=5)
    with pytest.raises(ConfigError, match="'fg_iou_thresh'"):
        SGDetConfig(fg_iou_thresh=1.5)


def test_frozen_detector_gets_no_update_not_even_weight_decay():
    params = {
        "features": {"detector": {"fc6": {"kernel": jnp.ones((2, 2))}}, "union_mlp": jnp.ones(2)},
        "head": jnp.ones(3),
    }
    grads = jax.tree.map(jnp.ones_like, params)
    detector = DetectorConfig.tiny()
    for frozen, changed in ((True, False), (False, True)):
        optimizer = freeze(
            optax.adamw(0.1, weight_decay=0.5), relation_trainable_mask(detector, frozen)
        )
        state = optimizer.init(params)
        updates, _ = optimizer.update(grads, state, params)
        new = optax.apply_updates(params, updates)
        moved = not np.allclose(new["features"]["detector"]["fc6"]["kernel"], 1.0)
        assert moved == changed
        assert not np.allclose(new["head"], 1.0)
        assert not np.allclose(new["features"]["union_mlp"], 1.0)
    # Without a detector everything trains.
    mask = relation_trainable_mask(None, True)(params)
    assert all(jax.tree.leaves(mask))
