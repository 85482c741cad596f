"""Tests of Scene-Graph-Benchmark's union features: rectangle masks, BatchNorm, padding."""

import functools

import jax
import numpy as np
import pytest

from sgg_jax import boxes as box_ops
from sgg_jax.detection import convert
from sgg_jax.detection.detector import DetectorConfig
from sgg_jax.detection.roi_align import roi_align_batch
from sgg_jax.detection.union_features import (
    MaskedBatchNorm,
    SGBUnionFeatureExtractor,
    pair_rectangles,
    rect_size,
    union_rectangles,
)

fast_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def sgb_rectangles(head_boxes, tail_boxes, width, height, size):
    """Scene-Graph-Benchmark's masks, restated in numpy from ``roi_relation_feature_extractors.py``
    :69-85 (``RelationFeatureExtractor.forward``) and ``bounding_box.py``:96-138
    (``BoxList.resize``, float32 ``bbox * ratio``). Boxes f32[N, 4]; returns f32[N, 2, S, S]."""
    count = len(head_boxes)
    x_range = np.broadcast_to(np.arange(size).reshape(1, 1, -1), (count, size, size))
    y_range = np.broadcast_to(np.arange(size).reshape(1, -1, 1), (count, size, size))
    ratios = tuple(
        float(s) / float(s_orig) for s, s_orig in zip((size, size), (width, height), strict=True)
    )

    def resize(boxes):
        boxes = np.asarray(boxes, np.float32)
        if ratios[0] == ratios[1]:
            return boxes * np.float32(ratios[0])
        ratio_width, ratio_height = np.float32(ratios[0]), np.float32(ratios[1])
        return np.stack(
            [
                boxes[:, 0] * ratio_width,
                boxes[:, 1] * ratio_height,
                boxes[:, 2] * ratio_width,
                boxes[:, 3] * ratio_height,
            ],
            axis=1,
        )

    def rect(boxes):
        boxes = resize(boxes)
        x1 = np.floor(boxes[:, 0]).astype(np.int64).reshape(-1, 1, 1)
        x2 = np.ceil(boxes[:, 2]).astype(np.int64).reshape(-1, 1, 1)
        y1 = np.floor(boxes[:, 1]).astype(np.int64).reshape(-1, 1, 1)
        y2 = np.ceil(boxes[:, 3]).astype(np.int64).reshape(-1, 1, 1)
        inside = (x_range >= x1) & (x_range <= x2) & (y_range >= y1) & (y_range <= y2)
        return inside.astype(np.float32)

    return np.stack((rect(head_boxes), rect(tail_boxes)), axis=1)


def random_boxes(rng, count, width, height):
    x = np.sort(rng.uniform(0, width - 1, (count, 2)), axis=1)
    y = np.sort(rng.uniform(0, height - 1, (count, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    # Integer corners, corners on the image border and degenerate boxes hit floor / ceil ties.
    boxes[: count // 4] = np.round(boxes[: count // 4])
    boxes[count // 4 : count // 3, 2:] = (width - 1, height - 1)
    boxes[count // 3 : count // 2, 2:] = boxes[count // 3 : count // 2, :2]
    return boxes.astype(np.float32)


def test_rect_size_is_four_times_the_pooler_resolution_minus_one():
    assert rect_size(7) == 27 and rect_size(2) == 7


def test_pair_rectangles_pin_one_hand_computed_mask():
    # 27 px wide, 54 px high: x scaled by 1, y by 0.5; x in [2, 10], y in [floor(2), ceil(6.6)].
    masks = np.asarray(pair_rectangles([2.5, 4.0, 10.0, 13.2], [0, 0, 0, 0], [54.0, 27.0], 27))
    expected = np.zeros((27, 27), np.float32)
    expected[2:8, 2:11] = 1.0
    np.testing.assert_array_equal(masks[..., 0], expected)
    corner = np.zeros((27, 27), np.float32)
    corner[0, 0] = 1.0
    np.testing.assert_array_equal(masks[..., 1], corner)


@pytest.mark.parametrize("size", [27, 11])
def test_union_rectangles_equal_sgb_on_random_boxes(size):
    rng = np.random.default_rng(size)
    image_sizes = [(600, 800), (592, 592), (37, 1000), (1000, 61)]  # (height, width)
    num_pairs = 48
    subjects, objects = [], []
    for height, width in image_sizes:
        subjects.append(random_boxes(rng, num_pairs, width, height))
        objects.append(random_boxes(rng, num_pairs, width, height)[::-1])
    subjects, objects = np.stack(subjects), np.stack(objects)
    masks = fast_jit(union_rectangles, static_argnums=3)(
        subjects, objects, np.asarray(image_sizes, np.float32), size
    )
    masks = np.asarray(masks)
    assert masks.shape == (len(image_sizes), num_pairs, size, size, 2)
    for index, (height, width) in enumerate(image_sizes):
        expected = sgb_rectangles(subjects[index], objects[index], width, height, size)
        np.testing.assert_array_equal(masks[index].transpose(0, 3, 1, 2), expected)
    assert 0 < masks.mean() < 1


def test_masked_batch_norm_matches_pytorch_batch_norm_on_real_rows():
    rng = np.random.default_rng(0)
    inputs = rng.normal(2.0, 3.0, (5, 4, 3, 2)).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    norm = MaskedBatchNorm(momentum=0.1)
    variables = norm.init(jax.random.key(0), inputs, mask, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(2))
    variables["params"]["scale"] = np.array([2.0, 0.5], np.float32)
    variables["params"]["bias"] = np.array([1.0, -1.0], np.float32)
    outputs, updates = norm.apply(variables, inputs, mask, train=True, mutable=["batch_stats"])
    real = inputs[mask].reshape(-1, 2).astype(np.float64)
    mean, var = real.mean(0), real.var(0)
    expected = (inputs - mean) / np.sqrt(var + 1e-5) * [2.0, 0.5] + [1.0, -1.0]
    np.testing.assert_allclose(outputs[mask], expected[mask], rtol=1e-5, atol=1e-5)
    unbiased = real.var(0, ddof=1)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
    # Padded rows change nothing; without a real row the running averages stay.
    garbage = inputs.copy()
    garbage[~mask] = 1e3
    again, _ = norm.apply(variables, garbage, mask, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(again[mask], outputs[mask], rtol=1e-6)
    _, none = norm.apply(variables, inputs, np.zeros(5, bool), train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(none["batch_stats"]["var"], np.ones(2))
    evaluated = norm.apply(variables, inputs, mask, train=False)
    expected = inputs / np.sqrt(1 + 1e-5) * [2.0, 0.5] + [1.0, -1.0]
    np.testing.assert_allclose(evaluated, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def extractor_setup():
    config = DetectorConfig.tiny()
    rng = np.random.default_rng(1)
    maps = {
        f"P{level}": rng.normal(size=(2, 64 >> level, 64 >> level, 16)).astype(np.float32)
        for level in range(2, 7)
    }
    module = SGBUnionFeatureExtractor(config)
    image_size = np.array([[64, 60], [48, 64]], np.float32)

    def run(variables, subjects, objects, mask, train):
        if train:
            return module.apply(
                variables,
                maps,
                subjects,
                objects,
                image_size,
                mask,
                train=True,
                mutable=["batch_stats"],
            )
        return module.apply(variables, maps, subjects, objects, image_size, mask), {}

    subjects = random_boxes(rng, 6, 60, 48).reshape(2, 3, 4)
    objects = random_boxes(rng, 6, 60, 48).reshape(2, 3, 4)
    mask = np.array([[True, True, True], [True, True, False]])
    variables = fast_jit(module.init)(jax.random.key(0), maps, subjects, objects, image_size, mask)
    run = fast_jit(run, static_argnums=4)
    run.maps, run.image_size, run.config = maps, image_size, config
    return run, variables, subjects, objects, mask


@pytest.mark.parametrize("train", [False, True])
def test_union_extractor_real_pairs_do_not_depend_on_padding(extractor_setup, train):
    run, variables, subjects, objects, mask = extractor_setup
    # Random BatchNorm statistics, so that evaluation mode is not the identity on them.
    stats = jax.tree.map(lambda leaf: leaf + 0.3, variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
    small, small_stats = run(variables, subjects, objects, mask, train)
    rng = np.random.default_rng(5)
    pad = 4
    garbage = rng.uniform(0, 60, (2, pad, 4)).astype(np.float32)
    big_subjects = np.concatenate([subjects, garbage], axis=1)
    big_objects = np.concatenate([objects, garbage[:, ::-1]], axis=1)
    big_subjects[1, 2] = [1, 2, 50, 40]  # a padded slot of the small batch, with another box
    big_mask = np.concatenate([mask, np.zeros((2, pad), bool)], axis=1)
    big, big_stats = run(variables, big_subjects, big_objects, big_mask, train)
    small, big = np.asarray(small), np.asarray(big)
    assert small.shape == (2, 3, 32) and big.shape == (2, 7, 32)
    np.testing.assert_allclose(big[:, :3][mask], small[mask], rtol=1e-5, atol=1e-5)
    assert np.all(big[~big_mask] == 0) and np.all(small[~mask] == 0)
    assert np.abs(small[mask]).sum() > 0
    assert jax.tree.structure(small_stats) == jax.tree.structure(big_stats)
    for small_leaf, big_leaf in zip(
        jax.tree.leaves(small_stats), jax.tree.leaves(big_stats), strict=True
    ):
        np.testing.assert_allclose(big_leaf, small_leaf, rtol=1e-5, atol=1e-6)
    if train:
        updated = small_stats["batch_stats"]["rect_bn1"]["mean"]
        assert not np.allclose(updated, stats["rect_bn1"]["mean"])
    # The rectangles matter: moving the subject of a real pair changes its feature.
    moved = subjects.copy()
    moved[0, 0] = [0, 0, 5, 5]
    other = np.asarray(run(variables, moved, objects, mask, train)[0])
    assert not np.allclose(other[0, 0], small[0, 0])


def conv2d(inputs, weight, bias, stride, pad):
    """``torch.nn.Conv2d`` in numpy: NCHW inputs, OIHW weights."""
    kernel = weight.shape[2:]
    padded = np.pad(inputs, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, weight) + bias[None, :, None, None]


def max_pool(inputs):
    """``torch.nn.MaxPool2d(3, stride=2, padding=1)`` in numpy (padding never wins)."""
    padded = np.pad(inputs, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return windows[:, :, ::2, ::2].max(axis=(-1, -2))


def batch_norm_eval(inputs, state_dict, prefix):
    def per_channel(name):
        return state_dict[f"{prefix}.{name}"][None, :, None, None]

    normalised = (inputs - per_channel("running_mean")) / np.sqrt(per_channel("running_var") + 1e-5)
    return normalised * per_channel("weight") + per_channel("bias")


def test_union_extractor_equals_sgb_forward_with_the_converted_weights(extractor_setup):
    """Scene-Graph-Benchmark's ``RelationFeatureExtractor.forward`` in evaluation mode, restated
    in numpy on the PyTorch-layout weights of :func:`convert.to_sgb_union_extractor`: a check of
    the module and of the converter's layouts together."""
    run, variables, subjects, objects, mask = extractor_setup
    rng = np.random.default_rng(3)
    stats = jax.tree.map(
        lambda leaf: rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32),
        variables["batch_stats"],
    )
    variables = {**variables, "batch_stats": stats}
    ours = np.asarray(run(variables, subjects, objects, mask, False)[0])
    config = run.config
    weights = convert.to_sgb_union_extractor(variables, config)
    u = "roi_heads.relation.union_feature_extractor."

    def w(name):
        return weights[u + name].astype(np.float64)

    # Pooler(cat_all_levels=True): every level, concatenated, then reduce_channel + ReLU.
    union = np.asarray(box_ops.union_boxes(subjects, objects))
    pool = fast_jit(roi_align_batch, static_argnames=("spatial_scale",))
    levels = [
        np.asarray(pool(run.maps[f"P{level}"], union, mask, spatial_scale=2.0**-level))
        for level in (2, 3, 4, 5)
    ]
    all_pooled = np.concatenate(levels, axis=-1).transpose(0, 1, 4, 2, 3).astype(np.float64)
    for image in range(2):
        real = mask[image]
        head, tail = subjects[image][real], objects[image][real]
        height, width = run.image_size[image]
        # rect_conv (rfe.py:48-56) on the masks (rfe.py:69-85).
        rect = sgb_rectangles(head, tail, width, height, 27).astype(np.float64)
        rect = conv2d(rect, w("rect_conv.0.weight"), w("rect_conv.0.bias"), 2, 3)
        rect = batch_norm_eval(np.maximum(rect, 0), weights, u + "rect_conv.2")
        rect = max_pool(rect)
        rect = conv2d(rect, w("rect_conv.4.weight"), w("rect_conv.4.bias"), 1, 1)
        rect = batch_norm_eval(np.maximum(rect, 0), weights, u + "rect_conv.6")
        reduce = "feature_extractor.pooler.reduce_channel.0"
        pooled = conv2d(all_pooled[image][real], w(f"{reduce}.weight"), w(f"{reduce}.bias"), 1, 1)
        pooled = np.maximum(pooled, 0)
        # union_vis_features + rect_features -> forward_without_pool (fc6, fc7).
        flat = (pooled + rect).reshape(len(head), -1)
        hidden = np.maximum(
            flat @ w("feature_extractor.fc6.weight").T + w("feature_extractor.fc6.bias"), 0
        )
        hidden = np.maximum(
            hidden @ w("feature_extractor.fc7.weight").T + w("feature_extractor.fc7.bias"), 0
        )
        np.testing.assert_allclose(ours[image][real], hidden, rtol=2e-4, atol=2e-4)
        assert np.abs(hidden).sum() > 0
