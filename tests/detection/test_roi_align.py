"""Tests of RoIAlign against a numpy port of torchvision's loop, hand values and FPN levels."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.detection.roi_align import (
    map_boxes_to_levels,
    multilevel_roi_align,
    roi_align,
    roi_align_batch,
)
from sgg_jax.errors import ConfigError

F32 = np.float32

# One compiled program per static configuration (eager op-by-op dispatch is slow on busy CPUs).
roi_align = jax.jit(
    roi_align,
    static_argnames=(
        "output_size",
        "spatial_scale",
        "sampling_ratio",
        "aligned",
        "max_sampling_grid",
    ),
)
map_boxes_to_levels = jax.jit(map_boxes_to_levels, static_argnames=("plus_one",))


def _bilinear(features, y, x):
    """torchvision's ``bilinear_interpolate`` (float32)."""
    height, width = features.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(features.shape[2], F32)
    y = max(y, F32(0))
    x = max(x, F32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = F32(y - y_low), F32(x - x_low)
    hy, hx = F32(1) - ly, F32(1) - lx
    return (
        hy * hx * features[y_low, x_low]
        + hy * lx * features[y_low, x_high]
        + ly * hx * features[y_high, x_low]
        + ly * lx * features[y_high, x_high]
    )


def reference_roi_align(
    features, boxes, output_size, spatial_scale, sampling_ratio, aligned, max_grid=None
):
    """Loop-by-loop port of torchvision's ``roi_align_forward_kernel_impl`` (one image, HWC).

    ``max_grid`` caps the adaptive grid as :func:`roi_align` does with ``max_sampling_grid``.
    """
    features = np.asarray(features, F32)
    pooled_h, pooled_w = output_size
    out = np.zeros((len(boxes), pooled_h, pooled_w, features.shape[2]), F32)
    offset = F32(0.5) if aligned else F32(0.0)
    for n, box in enumerate(np.asarray(boxes, F32)):
        start_w = box[0] * F32(spatial_scale) - offset
        start_h = box[1] * F32(spatial_scale) - offset
        end_w = box[2] * F32(spatial_scale) - offset
        end_h = box[3] * F32(spatial_scale) - offset
        roi_w, roi_h = F32(end_w - start_w), F32(end_h - start_h)
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_h, bin_w = F32(roi_h / F32(pooled_h)), F32(roi_w / F32(pooled_w))
        if sampling_ratio > 0:
            grid_h = grid_w = sampling_ratio
        else:
            grid_h = math.ceil(F32(roi_h / F32(pooled_h)))
            grid_w = math.ceil(F32(roi_w / F32(pooled_w)))
            if max_grid is not None:
                grid_h, grid_w = min(grid_h, max_grid), min(grid_w, max_grid)
        count = F32(max(grid_h * grid_w, 1))
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                total = np.zeros(features.shape[2], F32)
                for iy in range(grid_h):
                    y = F32(start_h + F32(ph) * bin_h) + F32(F32(iy + 0.5) * bin_h / F32(grid_h))
                    for ix in range(grid_w):
                        x = F32(start_w + F32(pw) * bin_w) + F32(
                            F32(ix + 0.5) * bin_w / F32(grid_w)
                        )
                        total = total + _bilinear(features, F32(y), F32(x))
                out[n, ph, pw] = total / count
    return out


def random_boxes(rng, num_boxes, height, width, spatial_scale):
    """Boxes in image pixels, some reaching outside the feature map, some tiny, one inverted."""
    image_h, image_w = height / spatial_scale, width / spatial_scale
    corner = rng.uniform([-0.3 * image_w, -0.3 * image_h], [image_w, image_h], (num_boxes, 2))
    size = (
        rng.uniform(0.0, 1.0, (num_boxes, 2))
        * [image_w, image_h]
        * rng.choice([0.05, 1.0], (num_boxes, 1))
    )
    boxes = np.concatenate([corner, corner + size], axis=1)
    boxes[0] = [boxes[0, 2], boxes[0, 3], boxes[0, 0], boxes[0, 1]]  # inverted
    return boxes.astype(F32)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(
    "height,width,spatial_scale,output_size,sampling_ratio",
    [
        (9, 7, 1.0, (3, 3), 1),
        (9, 7, 0.25, (7, 7), 2),
        (6, 11, 0.5, (2, 4), 2),
        (8, 8, 1.0, (3, 2), 0),
    ],
)
def test_matches_torchvision_loop(
    aligned, height, width, spatial_scale, output_size, sampling_ratio
):
    rng = np.random.default_rng(height * 100 + width + int(aligned))
    features = rng.normal(size=(height, width, 3)).astype(F32)
    boxes = random_boxes(rng, 8, height, width, spatial_scale)
    expected = reference_roi_align(
        features, boxes, output_size, spatial_scale, sampling_ratio, aligned
    )
    max_grid = None
    if sampling_ratio <= 0:
        max_grid = 2 * max(height, width)  # bigger than any ceil(roi / bins): exact
    got = roi_align(
        features,
        boxes,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        max_sampling_grid=max_grid,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_adaptive_grid_is_capped_at_max_sampling_grid():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(10, 10, 2)).astype(F32)
    boxes = np.array([[0.0, 0.0, 9.0, 9.0], [1.0, 2.0, 3.5, 5.5], [2.0, 2.0, 2.5, 2.2]], F32)
    got = roi_align(features, boxes, (2, 2), 1.0, 0, False, max_sampling_grid=2)
    expected = reference_roi_align(features, boxes, (2, 2), 1.0, 0, False, max_grid=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The first box needs ceil(9 / 2) = 5 samples per axis, so the cap changes its value ...
    exact = reference_roi_align(features, boxes, (2, 2), 1.0, 0, False)
    assert not np.allclose(exact[0], expected[0])
    # ... and the small boxes (grid <= 2) are exact.
    np.testing.assert_allclose(got[1:], exact[1:], rtol=1e-5, atol=1e-5)


def test_adaptive_needs_static_bound():
    with pytest.raises(ConfigError, match="max_sampling_grid"):
        roi_align(jnp.zeros((4, 4, 1)), jnp.zeros((1, 4)), (2, 2), 1.0, 0)
    with pytest.raises(ConfigError, match="output_size"):
        roi_align(jnp.zeros((4, 4, 1)), jnp.zeros((1, 4)), (2, 0), 1.0, 2)


def test_hand_values_constant_and_linear_ramp():
    height, width = 8, 10
    ys, xs = np.meshgrid(np.arange(height, dtype=F32), np.arange(width, dtype=F32), indexing="ij")
    constant = np.full((height, width, 1), 3.0, F32)
    ramp = np.stack([xs, ys], axis=-1)  # channel 0 = column index, channel 1 = row index
    boxes = np.array([[2.0, 1.0, 6.0, 5.0]], F32)
    out = roi_align(constant, boxes, (2, 2), 1.0, 2, aligned=True)
    np.testing.assert_allclose(out, 3.0)
    # aligned=True: box [2, 6] -> [1.5, 5.5], bins [1.5, 3.5] and [3.5, 5.5]; bilinear is exact on a
    # ramp, so each bin's value is its centre.
    out = roi_align(ramp, boxes, (2, 2), 1.0, 2, aligned=True)
    np.testing.assert_allclose(out[0, :, :, 0], [[2.5, 4.5], [2.5, 4.5]], atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 1], [[1.5, 1.5], [3.5, 3.5]], atol=1e-6)
    # aligned=False: no shift, centres at 3 and 5 (x) and 2 and 4 (y).
    out = roi_align(ramp, boxes, (2, 2), 1.0, 2, aligned=False)
    np.testing.assert_allclose(out[0, :, :, 0], [[3.0, 5.0], [3.0, 5.0]], atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 1], [[2.0, 2.0], [4.0, 4.0]], atol=1e-6)
    # A box far outside the map samples nothing: zeros. A box past the last column reads it.
    far = roi_align(constant, np.array([[30.0, 30.0, 40.0, 40.0]], F32), (2, 2), 1.0, 2)
    np.testing.assert_allclose(far, 0.0)
    edge = roi_align(ramp, np.array([[9.2, 0.0, 9.8, 7.0]], F32), (1, 1), 1.0, 1, aligned=False)
    np.testing.assert_allclose(edge[0, 0, 0, 0], 9.0, atol=1e-6)


def test_batch_masks_vmaps_and_compiles_once():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 6, 7, 3)).astype(F32)
    boxes = np.stack([random_boxes(rng, 5, 6, 7, 0.5) for _ in range(2)])
    mask = np.array([[True, True, False, True, False], [False, True, True, True, True]])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def pool(f, b, m):
        return roi_align_batch(f, b, m, (3, 3), 0.5, 2, aligned=True)

    out = pool(features, boxes, mask)
    assert out.shape == (2, 5, 3, 3, 3)
    np.testing.assert_array_equal(out[~mask], 0.0)
    for image in range(2):
        expected = reference_roi_align(features[image], boxes[image], (3, 3), 0.5, 2, True)
        np.testing.assert_allclose(
            out[image][mask[image]], expected[mask[image]], rtol=1e-5, atol=1e-5
        )
    pool(features + 1.0, boxes * 0.5, ~mask)  # same shapes: no retrace
    # Pooling 2 boxes at a time (5 = 2 + 2 + 1 padded) gives the same values.
    chunked = jax.jit(
        lambda f, b, m: roi_align_batch(f, b, m, (3, 3), 0.5, 2, aligned=True, box_chunk_size=2)
    )(features, boxes, mask)
    np.testing.assert_allclose(chunked, out, rtol=1e-6, atol=1e-6)


def test_gradient_flows_to_features():
    features = jnp.ones((5, 5, 1))
    boxes = jnp.array([[1.0, 1.0, 3.0, 3.0]])
    grad = jax.grad(lambda f: roi_align(f, boxes, (2, 2), 1.0, 2).sum())(features)
    np.testing.assert_allclose(grad.sum(), 4.0, rtol=1e-6)  # 4 bins, each an average


def test_level_mapper_hand_boxes():
    # sqrt(area) with the +1 convention: 224 -> level 4 (eps keeps log2(1) from rounding down),
    # 112 -> 3, 448 -> 5, 56 -> 2, 20 -> clamped to 2, 2000 -> clamped to 5, 223 -> 3.
    sides = np.array([224, 112, 448, 56, 20, 2000, 223, 447], F32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides - 1, sides - 1], axis=1)
    np.testing.assert_array_equal(map_boxes_to_levels(boxes), [4, 3, 5, 2, 2, 5, 3, 4])
    np.testing.assert_array_equal(
        map_boxes_to_levels(boxes, plus_one=False), [3, 2, 4, 2, 2, 5, 3, 4]
    )
    np.testing.assert_array_equal(map_boxes_to_levels(np.array([[5.0, 5.0, 0.0, 0.0]])), [2])


def test_multilevel_selects_the_assigned_level():
    rng = np.random.default_rng(1)
    sizes = {2: 32, 3: 16, 4: 8, 5: 4}  # a 128 x 128 image
    features = {level: rng.normal(size=(2, s, s, 2)).astype(F32) for level, s in sizes.items()}
    sides = np.array([[20.0, 60.0, 250.0, 10.0], [40.0, 127.0, 30.0, 600.0]], F32)
    corner = rng.uniform(0, 20, size=(2, 4, 2)).astype(F32)
    boxes = np.concatenate([corner, corner + sides[..., None] - 1], axis=-1)
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    pool = jax.jit(multilevel_roi_align, static_argnums=(3, 4), static_argnames="box_chunk_size")
    out = pool(features, boxes, mask, (2, 2), 2)
    chunked = pool(features, boxes, mask, (2, 2), 2, box_chunk_size=3)
    np.testing.assert_allclose(chunked, out, rtol=1e-6, atol=1e-6)
    levels = np.asarray(map_boxes_to_levels(boxes))
    assert set(levels[mask].tolist()) == {2, 3, 4, 5}  # every level used, 2 and 5 by clamping
    np.testing.assert_array_equal(out[~mask], 0.0)
    for image in range(2):
        for box in range(4):
            if not mask[image, box]:
                continue
            level = levels[image, box]
            expected = reference_roi_align(
                features[level][image], boxes[image, box : box + 1], (2, 2), 2.0**-level, 2, False
            )
            np.testing.assert_allclose(out[image, box], expected[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="consecutive"):
        multilevel_roi_align({2: features[2], 4: features[4]}, boxes, mask)
