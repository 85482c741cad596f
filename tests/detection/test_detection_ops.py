"""Tests of the detector box operations against numpy ports of maskrcnn_benchmark / torchvision."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.detection import detection_ops
from sgg_jax.detection.detection_ops import (
    ROI_BOX_CODER,
    RPN_BOX_CODER,
    BoxCoder,
    anchor_visibility,
    clip_boxes_to_image,
    generate_anchors,
    grid_anchors,
    multilevel_anchors,
    small_boxes_mask,
)
from sgg_jax.errors import ConfigError

F32 = np.float32

nms = jax.jit(detection_ops.nms, static_argnames=("max_output", "plus_one"))
batched_nms = jax.jit(detection_ops.batched_nms, static_argnames=("max_output", "plus_one"))
top_k = jax.jit(detection_ops.top_k, static_argnames=("k",))
small_boxes_mask = jax.jit(small_boxes_mask, static_argnames=("plus_one",))
clip_boxes_to_image = jax.jit(clip_boxes_to_image, static_argnames=("plus_one",))


# --- numpy port of maskrcnn_benchmark/modeling/rpn/anchor_generator.py ---------------------------


def _whctrs(anchor):
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    x_ctr = anchor[0] + 0.5 * (w - 1)
    y_ctr = anchor[1] + 0.5 * (h - 1)
    return w, h, x_ctr, y_ctr


def _mkanchors(ws, hs, x_ctr, y_ctr):
    ws = ws[:, np.newaxis]
    hs = hs[:, np.newaxis]
    return np.hstack(
        (
            x_ctr - 0.5 * (ws - 1),
            y_ctr - 0.5 * (hs - 1),
            x_ctr + 0.5 * (ws - 1),
            y_ctr + 0.5 * (hs - 1),
        )
    )


def _ratio_enum(anchor, ratios):
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    size = w * h
    size_ratios = size / ratios
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * ratios)
    return _mkanchors(ws, hs, x_ctr, y_ctr)


def _scale_enum(anchor, scales):
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    return _mkanchors(w * scales, h * scales, x_ctr, y_ctr)


def reference_generate_anchors(stride, sizes, aspect_ratios):
    scales = np.array(sizes, dtype=np.float64) / stride
    anchor = np.array([1, 1, stride, stride], dtype=np.float64) - 1
    anchors = _ratio_enum(anchor, np.array(aspect_ratios, dtype=np.float64))
    return np.vstack([_scale_enum(anchors[i, :], scales) for i in range(anchors.shape[0])])


# --- greedy NMS reference ---------------------------------------------------------------------


def reference_iou_matrix(boxes, plus_one):
    """Pairwise IoU in float32, torchvision's formula ``inter / (area_i + area_j - inter)``."""
    boxes = np.asarray(boxes, F32)
    offset = F32(1.0 if plus_one else 0.0)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0] + offset, F32(0)) * np.maximum(
        boxes[:, 3] - boxes[:, 1] + offset, F32(0)
    )
    width = np.maximum(
        np.minimum(boxes[:, None, 2], boxes[None, :, 2])
        - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        + offset,
        F32(0),
    )
    height = np.maximum(
        np.minimum(boxes[:, None, 3], boxes[None, :, 3])
        - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        + offset,
        F32(0),
    )
    inter = width * height
    union = areas[:, None] + areas[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, F32(1)), F32(0))


def reference_nms(boxes, scores, valid, threshold, plus_one=False, classes=None, max_output=None):
    """Greedy NMS, box by box, as torchvision's CPU kernel (ties visited in index order)."""
    iou = reference_iou_matrix(boxes, plus_one)
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    keep, suppressed = [], set()
    for i in order:
        if i in suppressed:
            continue
        keep.append(int(i))
        for j in order:
            same_class = classes is None or classes[i] == classes[j]
            if j != i and same_class and iou[i, j] > threshold:
                suppressed.add(j)
    return keep if max_output is None else keep[:max_output]


def random_detections(rng, num):
    corner = rng.uniform(0, 50, size=(num, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 30, size=(num, 2))], axis=1)
    boxes[:8] = boxes[8:16]  # exact duplicates
    boxes[20, 2:] = boxes[20, :2]  # zero-size box
    scores = np.round(rng.uniform(0, 1, num), 1)  # many ties
    valid = rng.uniform(size=num) > 0.15
    return boxes.astype(F32), scores.astype(F32), valid


def kept(indices, valid):
    return np.asarray(indices)[np.asarray(valid)].tolist()


# --- anchors ----------------------------------------------------------------------------------


def test_anchors_hand_values():
    # stride 16, size 32: ratio 0.5 -> w = round(sqrt(512)) = 23, h = round(11.5) = 12 (half to
    # even), scaled by 2 around centre 7.5; ratio 2 -> w = round(11.31) = 11, h = 22.
    np.testing.assert_array_equal(
        generate_anchors(16, (32,), (0.5, 1.0, 2.0)),
        [[-15, -4, 30, 19], [-8, -8, 23, 23], [-3, -14, 18, 29]],
    )
    # The classic py-faster-rcnn anchors (stride 16, scales 8, 16, 32).
    np.testing.assert_array_equal(
        generate_anchors(16, (128, 256, 512)),
        [
            [-84, -40, 99, 55],
            [-176, -88, 191, 103],
            [-360, -184, 375, 199],
            [-56, -56, 71, 71],
            [-120, -120, 135, 135],
            [-248, -248, 263, 263],
            [-36, -80, 51, 95],
            [-80, -168, 95, 183],
            [-168, -344, 183, 359],
        ],
    )


@pytest.mark.parametrize(
    "stride,sizes,ratios",
    [
        (4, (32,), (0.5, 1, 2)),
        (8, (64,), (0.5, 1, 2)),
        (64, (512,), (0.5, 1, 2)),
        (16, (24, 40), (0.3, 1.7)),
    ],
)
def test_anchors_match_maskrcnn_benchmark_port(stride, sizes, ratios):
    np.testing.assert_allclose(
        generate_anchors(stride, sizes, ratios),
        reference_generate_anchors(stride, sizes, ratios).astype(F32),
    )


def test_grid_anchors_order_and_levels():
    cells = generate_anchors(8, (64,))
    anchors = grid_anchors(cells, 8, (2, 3))
    assert anchors.shape == (2 * 3 * 3, 4) and anchors.dtype == np.float32
    for y in range(2):
        for x in range(3):
            for a in range(3):
                np.testing.assert_array_equal(
                    anchors[(y * 3 + x) * 3 + a], cells[a] + np.array([8 * x, 8 * y, 8 * x, 8 * y])
                )
    levels = multilevel_anchors([(4, 5), (2, 3), (1, 2), (1, 1), (1, 1)])
    assert [level.shape[0] for level in levels] == [60, 18, 6, 3, 3]
    np.testing.assert_array_equal(levels[1], anchors)
    single = multilevel_anchors([(2, 2)], strides=(16,), sizes=(32, 64))
    np.testing.assert_array_equal(single[0][:6], generate_anchors(16, (32, 64)))
    with pytest.raises(ConfigError, match="sizes"):
        multilevel_anchors([(1, 1)] * 2, strides=(4, 8), sizes=(32,))


def test_anchor_visibility():
    anchors = np.array([[0, 0, 9, 9], [-1, 0, 5, 5], [0, 0, 10, 5], [2, 2, 9, 7.9]], F32)
    image_size = np.array([8, 10])  # height 8, width 10
    visible = jax.jit(anchor_visibility, static_argnames=("straddle_thresh",))
    np.testing.assert_array_equal(visible(anchors, image_size), [False, False, False, True])
    np.testing.assert_array_equal(
        visible(anchors, image_size, straddle_thresh=2.0), [True, True, True, True]
    )
    np.testing.assert_array_equal(visible(anchors, image_size, straddle_thresh=-1.0), [True] * 4)
    batched = visible(np.stack([anchors, anchors]), np.array([[8, 10], [20, 20]]))
    np.testing.assert_array_equal(batched, [[False, False, False, True], [True, False, True, True]])


# --- box coder --------------------------------------------------------------------------------


def test_box_coder_hand_values_and_clip():
    proposal = np.array([0.0, 0.0, 9.0, 9.0])  # w = h = 10, centre (5, 5)
    target = np.array([5.0, 5.0, 14.0, 24.0])  # w = 10, h = 20, centre (10, 15)
    np.testing.assert_allclose(
        jax.jit(RPN_BOX_CODER.encode)(target, proposal), [0.5, 1.0, 0.0, math.log(2)], rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.jit(ROI_BOX_CODER.encode)(target, proposal),
        [5.0, 10.0, 0.0, 5 * math.log(2)],
        rtol=1e-6,
    )
    # dw is clipped at log(1000 / 16): width 10 * 62.5 = 625 around centre 5.
    decoded = jax.jit(RPN_BOX_CODER.decode)(np.array([0.0, 0.0, 100.0, 0.0]), proposal)
    np.testing.assert_allclose(decoded, [-307.5, 0.0, 316.5, 9.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="weights"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))


@pytest.mark.parametrize("coder", [RPN_BOX_CODER, ROI_BOX_CODER])
def test_box_coder_roundtrip(coder):
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 100, size=(2, 50, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(1, 80, size=(2, 50, 2))], axis=-1)
    targets, proposals = boxes.astype(F32)

    @jax.jit
    def roundtrip(targets, proposals):
        codes = coder.encode(targets, proposals)
        return codes, coder.decode(codes, proposals)

    codes, decoded = roundtrip(targets, proposals)
    np.testing.assert_allclose(decoded, targets, atol=1e-3)
    # Class-specific codes [N, K, 4] broadcast against boxes [N, 1, 4]; zero codes are the identity.
    per_class = jax.jit(coder.decode)(
        np.stack([codes, np.zeros_like(codes)], axis=1), proposals[:, None]
    )
    np.testing.assert_allclose(per_class[:, 0], targets, atol=1e-3)
    np.testing.assert_allclose(per_class[:, 1], proposals, atol=1e-4)


# --- clipping, small boxes, top-k -------------------------------------------------------------


def test_clip_and_small_boxes():
    boxes = np.array([[[-5, 2, 12, 20], [3, -1, 4, 3]], [[-5, 2, 12, 20], [1, 1, 1.5, 9]]], F32)
    image_size = np.array([[10, 8], [30, 30]])  # (height, width)
    clipped = clip_boxes_to_image(boxes, image_size)
    np.testing.assert_array_equal(
        clipped, [[[0, 2, 7, 9], [3, 0, 4, 3]], [[0, 2, 12, 20], [1, 1, 1.5, 9]]]
    )
    np.testing.assert_array_equal(
        clip_boxes_to_image(boxes[0], image_size[0], plus_one=False), [[0, 2, 8, 10], [3, 0, 4, 3]]
    )
    # widths (+1): 18, 2 | 18, 1.5 ; heights (+1): 19, 5 | 19, 9
    np.testing.assert_array_equal(small_boxes_mask(boxes, 2.0), [[True, True], [True, False]])
    np.testing.assert_array_equal(
        small_boxes_mask(boxes, 1.0, plus_one=False), [[True, True], [True, False]]
    )
    np.testing.assert_array_equal(small_boxes_mask(boxes, 0.0), [[True, True], [True, True]])


def test_top_k_masks_invalid_keeps_index_order_and_pads():
    scores = np.array([0.5, 0.9, 0.5, 0.99, 0.1, np.nan], F32)
    valid = np.array([True, True, True, False, True, True])
    indices, top_scores, top_valid = top_k(scores, valid, 3)
    np.testing.assert_array_equal(indices, [1, 0, 2])
    np.testing.assert_allclose(top_scores, [0.9, 0.5, 0.5])
    np.testing.assert_array_equal(top_valid, [True, True, True])
    indices, top_scores, top_valid = top_k(scores, valid, 8)
    np.testing.assert_array_equal(indices, [1, 0, 2, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(top_valid, [True] * 4 + [False] * 4)
    assert np.all(np.isneginf(np.asarray(top_scores)[4:]))
    batched, _, batched_valid = top_k(np.stack([scores, scores[::-1]]), np.stack([valid, valid]), 2)
    np.testing.assert_array_equal(batched, [[1, 0], [2, 4]])
    np.testing.assert_array_equal(batched_valid, True)


# --- NMS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("plus_one", [False, True])
def test_nms_equals_greedy_reference(plus_one):
    rng = np.random.default_rng(7 + plus_one)
    for trial in range(3):
        boxes, scores, valid = random_detections(rng, 60)
        for threshold in (0.0, 0.3, 0.5, 0.7):
            expected = reference_nms(boxes, scores, valid, threshold, plus_one)
            indices, out_valid = nms(
                boxes, scores, valid, threshold, max_output=60, plus_one=plus_one
            )
            assert kept(indices, out_valid) == expected, (trial, threshold)
            assert np.all(np.asarray(indices)[~np.asarray(out_valid)] == 0)
            if not plus_one:  # max_output truncates to the highest-scoring kept boxes.
                indices, out_valid = nms(boxes, scores, valid, threshold, max_output=5)
                assert kept(indices, out_valid) == expected[:5]


def test_nms_hand_case_ties_and_conventions():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 30, 30]], F32)
    scores = np.array([0.5, 0.5, 0.6, 0.1], F32)
    valid = np.array([True, True, True, True])
    # IoU(box 2, box 0): continuous 4*9 / (81+81-36) = 0.2857; +1 pixels 5*10 / (100+100-50) = 1/3.
    indices, out_valid = nms(boxes, scores, valid, 0.3, max_output=4, plus_one=False)
    assert kept(indices, out_valid) == [2, 0, 3]  # tie 0 / 1: index 0 first, suppresses 1
    indices, out_valid = nms(boxes, scores, valid, 0.3, max_output=4, plus_one=True)
    assert kept(indices, out_valid) == [2, 3]
    # Nothing valid: all padding.
    indices, out_valid = nms(boxes, scores, np.zeros(4, bool), 0.3, max_output=4, plus_one=False)
    assert not np.any(out_valid) and np.all(np.asarray(indices) == 0)
    with pytest.raises(ConfigError, match="max_output"):
        detection_ops.nms(boxes, scores, valid, 0.5, max_output=0)


def test_batched_nms_equals_per_class_reference():
    rng = np.random.default_rng(11)
    boxes, scores, valid = random_detections(rng, 60)
    classes = rng.integers(0, 3, size=60)
    for threshold in (0.3, 0.6):
        expected = reference_nms(boxes, scores, valid, threshold, True, classes=classes)
        indices, out_valid = batched_nms(
            boxes, scores, classes, valid, threshold, max_output=60, plus_one=True
        )
        assert kept(indices, out_valid) == expected
        # Same as per-class NMS merged by decreasing score (ties by index).
        per_class = [
            i
            for c in range(3)
            for i in reference_nms(boxes, scores, valid & (classes == c), threshold, True)
        ]
        merged = sorted(per_class, key=lambda i: (-scores[i], i))
        assert merged == expected


def test_nms_vmaps_and_compiles_once():
    rng = np.random.default_rng(5)
    batch = [random_detections(rng, 40) for _ in range(3)]
    boxes, scores, valid = (np.stack(parts) for parts in zip(*batch, strict=True))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batched(boxes, scores, valid):
        return jax.vmap(lambda b, s, v: detection_ops.nms(b, s, v, 0.5, 20))(boxes, scores, valid)

    indices, out_valid = batched(boxes, scores, valid)
    assert indices.shape == (3, 20)
    for image in range(3):
        expected = reference_nms(boxes[image], scores[image], valid[image], 0.5, max_output=20)
        assert kept(indices[image], out_valid[image]) == expected
    batched(boxes + 1.0, scores, ~valid)  # no retrace
    assert jnp.issubdtype(indices.dtype, jnp.integer)
