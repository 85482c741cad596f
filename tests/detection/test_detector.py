"""Tests of the Faster R-CNN: config, matcher, sampler, inference outputs, losses, gradients, training.

Everything runs on the ``tiny`` preset with 64 x 64 images. Two programs are compiled for the
whole module (inference, and loss + gradients of training); both are shared through module-scoped
fixtures, and the training one is wrapped in ``chex.assert_max_traces(n=1)``.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from sgg_jax import boxes as box_ops
from sgg_jax.detection import detection_ops
from sgg_jax.detection.detector import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    DETECTOR_PRESETS,
    DetectorConfig,
    FasterRCNN,
    detector_trainable_mask,
    match_boxes,
    postprocess_detections,
    sample_balanced,
    smooth_l1_loss,
)
from sgg_jax.errors import ConfigError

CONFIG = DetectorConfig.tiny()

# Compiling, not running, is what these tests spend their time on.
fast_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def rbg_key(seed: int) -> jax.Array:
    """A cheap-to-compile PRNG key for the samplers."""
    return jax.random.key(seed, impl="rbg")


IMAGE_SIZES = np.array([[64, 64], [60, 50]], np.float32)  # (height, width); image 1 is padded
GT_BOXES = np.array(
    [
        [[6, 8, 29, 27], [34, 30, 57, 59], [40, 4, 55, 19], [0, 0, 0, 0]],
        [[10, 12, 41, 47], [4, 40, 23, 55], [0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    np.float32,
)
GT_LABELS = np.array([[1, 2, 3, 0], [2, 3, 0, 0]], np.int32)
GT_MASK = GT_LABELS > 0
CLASS_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 1.0, 0.2), 3: (0.2, 0.2, 1.0)}


def draw_images(seed: int = 0) -> np.ndarray:
    """Two 64 x 64 images: dark noise with one coloured rectangle per GT box (colour = class)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.1, (2, 64, 64, 3)).astype(np.float32)
    for image, boxes, labels, mask in zip(images, GT_BOXES, GT_LABELS, GT_MASK, strict=True):
        for (x1, y1, x2, y2), label in zip(boxes[mask].astype(int), labels[mask], strict=True):
            image[y1 : y2 + 1, x1 : x2 + 1] = CLASS_COLOURS[int(label)]
    return images


def host_variables(model: FasterRCNN, images: np.ndarray, seed: int = 0):
    """Variables filled on the host (a jitted ``init`` compiles the whole detector once more):
    LeCun-normal kernels, zero biases, the small normals of the RPN / predictor layers, and the
    initial frozen-BN constants."""
    shapes = jax.eval_shape(model.init, rbg_key(0), images, IMAGE_SIZES)
    rng = np.random.default_rng(seed)
    small = {("rpn_head", "cls_logits"): 0.01, ("rpn_head", "bbox_pred"): 0.01}
    small.update({("cls_score",): 0.01, ("bbox_pred",): 0.001})
    flat = {}
    for path, leaf in traverse_util.flatten_dict(dict(shapes)).items():
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            std = small.get(path[1:-1], np.sqrt(1.0 / np.prod(shape[:-1])))
            value = rng.normal(0.0, std, shape)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:  # biases, BN shifts / means
            value = np.zeros(shape)
        flat[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def model_and_variables():
    model = FasterRCNN(CONFIG)
    images = draw_images()
    return model, host_variables(model, images), images


@pytest.fixture(scope="module")
def infer(model_and_variables):
    model, _, _ = model_and_variables
    return fast_jit(lambda variables, images: model.apply(variables, images, IMAGE_SIZES))


@pytest.fixture(scope="module")
def loss_and_grad(model_and_variables):
    """jit(value_and_grad) of the total training loss; traced once for the whole module."""
    model, variables, _ = model_and_variables

    def loss(params, images, gt_boxes, gt_labels, gt_mask, rng):
        outputs = model.apply(
            {**variables, "params": params},
            images,
            IMAGE_SIZES,
            train=True,
            gt_boxes=gt_boxes,
            gt_labels=gt_labels,
            gt_mask=gt_mask,
            rng=rng,
        )
        return outputs["losses"]["total"], outputs

    return fast_jit(jax.value_and_grad(chex.assert_max_traces(loss, n=1), has_aux=True))


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def test_presets():
    for name in DETECTOR_PRESETS:
        config = DetectorConfig.preset(name)
        assert config.num_classes >= 2
    sgb = DetectorConfig.resnext101_fpn()
    assert sgb.backbone.num_groups == 32 and sgb.backbone.width_per_group == 8
    assert sgb.feature_names == ("P2", "P3", "P4", "P5", "P6")
    assert sgb.pooler_levels == (2, 3, 4, 5)
    assert (sgb.num_classes, sgb.detections_per_image, sgb.representation_size) == (151, 80, 4096)
    assert sgb.nms_filter_duplicates and sgb.roi_bg_iou_thresh == 0.3
    assert sgb.anchors_per_location == 4
    vgg = DetectorConfig.vgg16()
    assert vgg.feature_names == ("C4",) and vgg.feature_channels == 512
    assert vgg.anchors_per_location == 15 and vgg.num_proposals_test == 1000
    base = DetectorConfig.resnet50_fpn()
    assert (base.roi_batch_size_per_image, base.roi_positive_fraction) == (512, 0.25)
    assert (base.rpn_batch_size_per_image, base.rpn_positive_fraction) == (256, 0.5)
    assert (base.rpn_fg_iou_thresh, base.rpn_bg_iou_thresh, base.rpn_nms_thresh) == (0.7, 0.3, 0.7)
    assert base.box_coder_weights == (10.0, 10.0, 5.0, 5.0)
    assert (base.score_thresh, base.nms_thresh, base.detections_per_image) == (0.05, 0.5, 100)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"backbone": "resnet7"}, "backbone"),
        ({"num_classes": 1}, "num_classes"),
        ({"rpn_positive_fraction": 1.5}, "rpn_positive_fraction"),
        ({"roi_bg_iou_thresh": 0.6}, "roi_bg_iou_thresh"),
        ({"anchor_strides": (16,)}, "anchor_strides"),
        ({"anchor_sizes": (32, 64)}, "anchor_sizes"),
        ({"detections_per_image": 0}, "detections_per_image"),
        ({"use_fpn": "yes"}, "use_fpn"),
        ({"post_nms_per_class_top_n": 0}, "post_nms_per_class_top_n"),
        ({"box_coder_weights": (10.0, 10.0, 5.0)}, "box_coder_weights"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"option '{field}'"):
        DetectorConfig.tiny(**overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="option 'preset'"):
        DetectorConfig.preset("yolo")


def test_single_level_vgg_detector_traces_in_both_modes():
    """The VGG16-style C4 detector (tiny widths), traced only: shapes of every output."""
    config = DetectorConfig.vgg16(
        backbone="tiny_vgg",
        anchor_sizes=(16, 32),
        rpn_pre_nms_top_n_train=40,
        rpn_post_nms_top_n_train=20,
        rpn_pre_nms_top_n_test=40,
        rpn_post_nms_top_n_test=24,
        rpn_batch_size_per_image=32,
        roi_batch_size_per_image=16,
        representation_size=8,
        num_classes=4,
        detections_per_image=5,
    )
    model = FasterRCNN(config)
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(model.init, rbg_key(0), images, IMAGE_SIZES)
    assert variables["params"]["fc6"]["kernel"].shape == (7 * 7 * 32, 8)
    assert variables["params"]["rpn_head"]["cls_logits"]["kernel"].shape == (1, 1, 32, 6)
    test = jax.eval_shape(lambda v, x: model.apply(v, x, IMAGE_SIZES), variables, images)
    assert set(test["features"]) == {"C4"} and test["features"]["C4"].shape == (2, 4, 4, 32)
    assert test["proposals"].shape == (2, 24, 4)
    assert test["detections"]["boxes"].shape == (2, 5, 4)
    train = jax.eval_shape(
        lambda v, x: model.apply(
            v,
            x,
            IMAGE_SIZES,
            train=True,
            gt_boxes=GT_BOXES,
            gt_labels=GT_LABELS,
            gt_mask=GT_MASK,
            rng=rbg_key(0),
        ),
        variables,
        images,
    )
    assert train["proposals"].shape == (2, 20 + 4, 4)
    assert train["sampled_boxes"].shape == (2, 16, 4)
    assert all(loss.shape == () for loss in train["losses"].values())


# ----------------------------------------------------------------------------------------------
# Matcher, sampler, smooth L1
# ----------------------------------------------------------------------------------------------


def test_matcher_thresholds_low_quality_and_padding():
    quality = jnp.array(
        [
            [0.90, 0.10, 0.99],  # >= 0.7 with GT 0 (the padded GT 2 is ignored)
            [0.50, 0.20, 0.00],  # between 0.3 and 0.7
            [0.10, 0.65, 0.00],  # GT 1's best prediction: low-quality match
            [0.20, 0.10, 0.00],  # below 0.3
            [0.05, 0.65, 0.00],  # ties with GT 1's best: also matched
            [0.69, 0.30, 0.00],  # between (0.69 < 0.7); 0.3 is not below the low threshold
        ]
    )
    gt_mask = jnp.array([True, True, False])
    plain = match_boxes(quality, gt_mask, 0.7, 0.3, allow_low_quality_matches=False)
    np.testing.assert_array_equal(
        plain,
        [0, BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, -2],
    )
    low_quality = match_boxes(quality, gt_mask, 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(low_quality, [0, -2, 1, -1, 1, -2])


def test_matcher_low_quality_keeps_the_argmax_gt_and_skips_zero_iou():
    # GT 1's best prediction is 0, whose best GT is 0: it stays matched to GT 0 (as upstream), so
    # GT 1 gets no match. GT 2 overlaps nothing: no low-quality match (upstream would match all).
    quality = jnp.array([[0.50, 0.45, 0.0], [0.10, 0.30, 0.0], [0.0, 0.0, 0.0]])
    matches = match_boxes(quality, jnp.ones(3, bool), 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(matches, [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD])
    empty = match_boxes(quality, jnp.zeros(3, bool), 0.7, 0.3, allow_low_quality_matches=True)
    np.testing.assert_array_equal(empty, [BELOW_LOW_THRESHOLD] * 3)


def test_sampler_positive_fraction_counts_and_masks():
    num = 400
    positive = np.zeros(num, bool)
    positive[:30] = True
    negative = np.zeros(num, bool)
    negative[100:300] = True
    sample = fast_jit(sample_balanced, static_argnums=(3, 4))
    keys = jax.random.split(rbg_key(0), 40)

    def check(positive, negative, expect_positive, expect_negative, key):
        indices, is_positive, valid = (
            np.asarray(x)
            for x in sample(jnp.asarray(positive), jnp.asarray(negative), key, 64, 0.25)
        )
        assert is_positive.sum() == expect_positive
        assert (valid & ~is_positive).sum() == expect_negative
        assert positive[indices[is_positive]].all()
        assert negative[indices[valid & ~is_positive]].all()
        assert len(set(indices[valid].tolist())) == valid.sum()  # no index twice
        assert not is_positive[~valid].any()
        return indices, is_positive, valid

    # 30 positives: 16 = 64 * 0.25 kept; negatives fill the rest.
    chosen = set()
    for key in keys:
        indices, is_positive, _ = check(positive, negative, 16, 48, key)
        chosen.update(indices[is_positive].tolist())
    assert chosen == set(range(30))  # random subsets reach every positive
    # 5 positives: all kept, 59 negatives.
    few = positive & (np.arange(num) < 5)
    check(few, negative, 5, 59, keys[0])
    # 5 positives and 10 negatives: 15 slots valid, the rest padding.
    scarce = negative & (np.arange(num) < 110)
    _, _, valid = check(few, scarce, 5, 10, keys[1])
    assert valid.sum() == 15 and not valid[15:].any()
    # nothing to sample
    _, _, valid = check(np.zeros(num, bool), np.zeros(num, bool), 0, 0, keys[2])
    assert not valid.any()


def test_smooth_l1_values():
    x = jnp.array([-2.0, -0.05, 0.0, 0.1, 1.0])
    np.testing.assert_allclose(
        smooth_l1_loss(x, 1.0 / 9),
        [2 - 1 / 18, 0.5 * 0.05**2 * 9, 0, 0.5 * 0.01 * 9, 1 - 1 / 18],
        rtol=1e-6,
    )
    np.testing.assert_allclose(smooth_l1_loss(x, 0.0), np.abs(x))


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------


def greedy_nms(boxes, scores, threshold):
    """Reference greedy NMS (maskrcnn_benchmark, +1 IoU) on numpy arrays; returns kept indices."""
    order = np.argsort(-scores, kind="stable")
    kept = []
    for index in order:
        if all(
            box_ops.pairwise_iou(boxes[index][None], boxes[k][None], plus_one=True)[0, 0]
            <= threshold
            for k in kept
        ):
            kept.append(index)
    return kept


def test_inference_shapes_masks_and_reference_post_processing(model_and_variables, infer):
    model, variables, images = model_and_variables
    # Larger class weights spread the scores: some fall below the threshold, few ties.
    params = dict(variables["params"])
    params["cls_score"] = {**params["cls_score"], "kernel": params["cls_score"]["kernel"] * 300}
    variables = {**variables, "params": params}
    outputs = infer(variables, images)
    num_proposals, num_detections = CONFIG.num_proposals_test, CONFIG.detections_per_image
    assert outputs["proposals"].shape == (2, num_proposals, 4)
    assert outputs["proposal_mask"].shape == (2, num_proposals)
    assert outputs["proposal_mask"].all()  # 1023 anchors give more than 32 proposals
    assert set(outputs["features"]) == {"P2", "P3", "P4", "P5", "P6"}
    detections = jax.tree.map(np.asarray, outputs["detections"])
    for key, shape in [("boxes", (2, num_detections, 4)), ("labels", (2, num_detections))]:
        assert detections[key].shape == shape
    for key in ("scores", "mask", "proposal_index"):
        assert detections[key].shape == (2, num_detections)
    assert detections["mask"].any(axis=1).all()

    # Proposals and detections lie inside each (unpadded) image.
    for name, boxes in [("proposals", np.asarray(outputs["proposals"])), ("det", None)]:
        boxes = detections["boxes"] if boxes is None else boxes
        for image, (height, width) in enumerate(IMAGE_SIZES):
            assert (boxes[image] >= 0).all(), name
            assert (boxes[image][:, [0, 2]] <= width - 1).all(), name
            assert (boxes[image][:, [1, 3]] <= height - 1).all(), name

    # Reference post-processing on the box head's outputs for the same proposals (numpy).
    proposals, proposal_mask = outputs["proposals"], outputs["proposal_mask"]

    @fast_jit
    def box_head(variables, features, proposals, proposal_mask):
        def apply(method, *args):
            return model.apply(variables, *args, method=method)

        box_features = apply(FasterRCNN.box_features, features, proposals, proposal_mask)
        logits = apply(FasterRCNN.object_logits, box_features)
        return jax.nn.softmax(logits, axis=-1), apply(FasterRCNN.box_regression, box_features)

    probs, deltas = box_head(variables, outputs["features"], proposals, proposal_mask)
    probs = np.asarray(probs)
    for image in range(2):
        decoded = np.asarray(
            detection_ops.clip_boxes_to_image(
                CONFIG.box_coder.decode(deltas[image], proposals[image][:, None]),
                IMAGE_SIZES[image][None],
            )
        )
        candidates = []
        for label in range(1, CONFIG.num_classes):
            passing = np.flatnonzero(probs[image, :, label] > CONFIG.score_thresh)
            kept = greedy_nms(
                decoded[passing, label], probs[image, passing, label], CONFIG.nms_thresh
            )
            candidates += [(probs[image, passing[k], label], passing[k], label) for k in kept]
        candidates.sort(key=lambda c: -c[0])
        expected = candidates[:num_detections]
        mask = detections["mask"][image]
        assert mask.sum() == len(expected)
        np.testing.assert_allclose(
            detections["scores"][image][mask], [c[0] for c in expected], rtol=1e-5
        )
        np.testing.assert_array_equal(detections["labels"][image][mask], [c[2] for c in expected])
        np.testing.assert_array_equal(
            detections["proposal_index"][image][mask], [c[1] for c in expected]
        )
        np.testing.assert_allclose(
            detections["boxes"][image][mask],
            [decoded[c[1], c[2]] for c in expected],
            rtol=1e-5,
            atol=1e-3,
        )


@pytest.mark.parametrize(
    ("filter_duplicates", "per_class", "expected"),
    [
        # (score, proposal, label) of every detection, best first
        (False, None, [(0.6, 0, 1), (0.35, 0, 2), (0.3, 1, 2)]),
        (True, None, [(0.6, 0, 1), (0.3, 1, 2), (0.06, 2, 2)]),
        (False, 1, [(0.6, 0, 1), (0.35, 0, 2)]),
    ],
)
def test_postprocess_nms_threshold_duplicates_and_per_class_limit(
    filter_duplicates, per_class, expected
):
    probs = jnp.array([[0.05, 0.6, 0.35], [0.25, 0.45, 0.30], [0.9, 0.04, 0.06]])
    class_boxes = {
        1: [[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]],  # proposal 1 suppressed by 0
        2: [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],  # disjoint: all kept
    }
    boxes = jnp.stack([jnp.zeros((3, 4)), jnp.array(class_boxes[1]), jnp.array(class_boxes[2])], 1)
    config = DetectorConfig.tiny(
        num_classes=3,
        detections_per_image=3,
        nms_filter_duplicates=filter_duplicates,
        post_nms_per_class_top_n=per_class,
    )
    postprocess = fast_jit(lambda *args: postprocess_detections(*args, config))
    out = postprocess(probs, boxes.astype(jnp.float32), jnp.ones(3, bool))
    mask = np.asarray(out["mask"])
    assert mask.sum() == len(expected) and mask[: len(expected)].all()
    np.testing.assert_allclose(out["scores"][mask], [e[0] for e in expected], rtol=1e-6)
    np.testing.assert_array_equal(out["proposal_index"][mask], [e[1] for e in expected])
    np.testing.assert_array_equal(out["labels"][mask], [e[2] for e in expected])
    np.testing.assert_array_equal(out["boxes"][mask], [class_boxes[e[2]][e[1]] for e in expected])
    np.testing.assert_array_equal(out["labels"][~mask], 0)


def test_nothing_above_the_score_threshold_gives_an_empty_mask(model_and_variables, infer):
    _, variables, images = model_and_variables
    params = jax.tree.map(lambda x: x, variables["params"])
    # Background logit 30 above the others: every object probability is ~1e-13 < 0.05.
    params["cls_score"] = {
        "kernel": np.zeros_like(params["cls_score"]["kernel"]),
        "bias": np.array([30.0, 0.0, 0.0, 0.0], np.float32),
    }
    detections = infer({**variables, "params": params}, images)["detections"]
    assert not np.asarray(detections["mask"]).any()
    np.testing.assert_array_equal(detections["labels"], 0)
    np.testing.assert_array_equal(detections["scores"], 0.0)
    assert np.isfinite(np.asarray(detections["boxes"])).all()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_losses_positive_and_gradients_reach_heads_not_frozen_stages(
    model_and_variables, loss_and_grad
):
    _, variables, images = model_and_variables
    (total, outputs), grads = loss_and_grad(
        variables["params"], images, GT_BOXES, GT_LABELS, GT_MASK, rbg_key(1)
    )
    losses = {k: float(v) for k, v in outputs["losses"].items()}
    for name in ("rpn_objectness", "rpn_box", "box_classifier", "box_regression"):
        assert np.isfinite(losses[name]) and losses[name] > 0, (name, losses)
    assert losses["total"] == pytest.approx(float(total))
    assert losses["total"] == pytest.approx(sum(v for k, v in losses.items() if k != "total"))
    # Classification losses start near log(2) and log(4) (near-uniform initial predictions).
    assert abs(losses["rpn_objectness"] - np.log(2)) < 0.1
    assert abs(losses["box_classifier"] - np.log(4)) < 0.3

    # GT boxes are appended to the proposals; sampled RoIs: all 32 slots, at most 8 positives.
    proposal_mask = np.asarray(outputs["proposal_mask"])
    assert proposal_mask.shape == (2, CONFIG.num_proposals_train + 4)
    np.testing.assert_array_equal(proposal_mask[:, -4:], GT_MASK)
    sampled_mask = np.asarray(outputs["sampled_mask"])
    sampled_labels = np.asarray(outputs["sampled_labels"])
    assert sampled_mask.all()
    positives = (sampled_labels > 0).sum(axis=1)
    assert (positives >= GT_MASK.sum(axis=1)).all() and (positives <= 8).all()
    assert set(sampled_labels[sampled_labels > 0].tolist()) <= {1, 2, 3}

    def norm(tree):
        return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))

    for frozen in ("stem", "layer1"):
        assert norm(grads["backbone"][frozen]) == 0.0, frozen
    for trained in ("layer2", "layer3", "layer4"):
        assert norm(grads["backbone"][trained]) > 0, trained
    for module in ("conv", "cls_logits", "bbox_pred"):
        assert norm(grads["rpn_head"][module]) > 0, module
    for module in ("fpn", "fc6", "fc7", "cls_score", "bbox_pred"):
        assert norm(grads[module]) > 0, module
    mask = detector_trainable_mask(CONFIG, variables["params"])
    assert not any(jax.tree.leaves(mask["backbone"]["stem"]))
    assert all(jax.tree.leaves(mask["backbone"]["layer2"])) and all(jax.tree.leaves(mask["fc6"]))


def test_empty_ground_truth_and_other_gt_counts_reuse_the_trace(model_and_variables, loss_and_grad):
    _, variables, images = model_and_variables
    # One GT box in image 0 only, then no GT at all: same static G = 4, no retrace.
    one_mask = np.zeros_like(GT_MASK)
    one_mask[0, 0] = True
    (_, outputs), _ = loss_and_grad(
        variables["params"], images, GT_BOXES, GT_LABELS, one_mask, rbg_key(2)
    )
    assert np.isfinite(float(outputs["losses"]["total"]))
    (_, outputs), grads = loss_and_grad(
        variables["params"], images, GT_BOXES, GT_LABELS, np.zeros_like(GT_MASK), rbg_key(3)
    )
    losses = {k: float(v) for k, v in outputs["losses"].items()}
    assert losses["rpn_box"] == 0.0 and losses["box_regression"] == 0.0
    assert losses["rpn_objectness"] > 0 and losses["box_classifier"] > 0
    assert not np.asarray(outputs["sampled_labels"]).any()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.e2e
def test_adam_steps_reduce_the_loss(model_and_variables, loss_and_grad):
    _, variables, images = model_and_variables
    params = variables["params"]
    optimizer = optax.masked(optax.adam(3e-3), detector_trainable_mask(CONFIG, params))
    state = optimizer.init(params)

    @fast_jit
    def update(grads, state, params):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    key = rbg_key(7)  # the same samples every step: a deterministic objective
    history = []
    for _ in range(12):
        (total, _), grads = loss_and_grad(params, images, GT_BOXES, GT_LABELS, GT_MASK, key)
        history.append(float(total))
        params, state = update(grads, state, params)
    (total, _), _ = loss_and_grad(params, images, GT_BOXES, GT_LABELS, GT_MASK, key)
    history.append(float(total))
    assert np.isfinite(history).all()
    assert history[-1] < 0.6 * history[0], history
    # Frozen stages did not move.
    chex.assert_trees_all_equal(params["backbone"]["stem"], variables["params"]["backbone"]["stem"])
