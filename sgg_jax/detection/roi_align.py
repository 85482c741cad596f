"""RoIAlign (Mask R-CNN, He et al. 2017, §3) and FPN multi-level RoI pooling; static shapes, jit.

Semantics follow torchvision's ``roi_align`` kernel
(``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``), which with ``aligned=False`` is also
maskrcnn_benchmark's / Scene-Graph-Benchmark's ``ROIAlign``:

* a box ``(x1, y1, x2, y2)`` in image pixels is scaled by ``spatial_scale``; with ``aligned=True``
  the scaled corners are shifted by -0.5 (pixel centres at integer + 0.5); with ``aligned=False``
  the scaled box is at least 1 x 1 feature cells (``roi_size = max(roi_size, 1)``);
* the box is split into ``output_size`` bins; each bin averages ``grid_h x grid_w`` bilinear samples
  at ``start + bin_index * bin_size + (i + 0.5) * bin_size / grid``;
* a sample with ``y < -1 or y > H or x < -1 or x > W`` contributes 0 (but still counts in the
  average); otherwise the coordinate is clamped as torchvision's ``bilinear_interpolate``
  (``max(y, 0)``; a sample at or beyond the last row/column reads that row/column);
* the average divides by ``max(grid_h * grid_w, 1)``.

Static shapes and the adaptive sampling ratio. torchvision's ``sampling_ratio <= 0`` means a grid of
``ceil(roi_size / output_size)`` samples per bin and axis, which depends on the box. Inside ``jit``
the number of samples must be static, so adaptive sampling needs a static bound
``max_sampling_grid``: every box evaluates ``max_sampling_grid`` sample positions per bin and axis,
of which the first ``ceil(roi_size / output_size)`` are used (the rest are masked). The result is
exactly torchvision's whenever ``ceil(roi_size / output_size) <= max_sampling_grid``; a larger box
uses ``max_sampling_grid`` evenly spaced samples per bin and axis instead. The cost per box grows
with ``max_sampling_grid ** 2``, so prefer a fixed ``sampling_ratio > 0``
(Scene-Graph-Benchmark's box head uses 2).

Implementation. Vectorised over boxes with one gather of the 4 bilinear corners of every sample:
memory and work ``O(R * PH * PW * G^2 * 4 * C)`` per image (``G`` = samples per bin and axis). No
Python loop over boxes; :func:`roi_align_batch` vmaps over images. XLA on CPU materialises the
gathered corners (512 boxes, 7 x 7 bins, ratio 2, C = 256: 411 MB of temporaries);
``box_chunk_size`` pools that many boxes at a time (``lax.map``) to cap that memory.

FPN level assignment (:func:`map_boxes_to_levels`) is maskrcnn_benchmark's ``LevelMapper``
(Lin et al., FPN, Eq. 1): ``k = floor(k0 + log2(sqrt(area) / 224 + 1e-6))`` clamped to the levels
present, with maskrcnn_benchmark's inclusive-pixel area ``(x2 - x1 + 1) * (y2 - y1 + 1)``.
:func:`multilevel_roi_align` keeps static shapes without pooling every box from every level: the
levels are flattened into one table and each box gathers from its own level's block (offset,
size and scale looked up by its level), so the work is that of one :func:`roi_align` call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from sgg_jax import boxes as box_ops
from sgg_jax.errors import ConfigError

__all__ = [
    "map_boxes_to_levels",
    "multilevel_roi_align",
    "roi_align",
    "roi_align_batch",
]


def _check_output_size(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = tuple(output_size)
    if len(output_size) != 2 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in output_size
    ):
        raise ConfigError(
            "output_size", f"must be a positive int or (height, width), got {output_size!r}"
        )
    return output_size


def _sample_grid(sampling_ratio: int, max_sampling_grid: int | None) -> int:
    """Static number of sample positions per bin and axis."""
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ConfigError("sampling_ratio", f"must be an int, got {sampling_ratio!r}")
    if sampling_ratio > 0:
        return sampling_ratio
    if (
        max_sampling_grid is None
        or isinstance(max_sampling_grid, bool)
        or not isinstance(max_sampling_grid, int)
        or max_sampling_grid < 1
    ):
        raise ConfigError(
            "max_sampling_grid",
            "adaptive sampling (sampling_ratio <= 0) needs a static bound max_sampling_grid >= 1 "
            f"inside jit, got {max_sampling_grid!r}",
        )
    return max_sampling_grid


def _check_chunk(box_chunk_size: int | None) -> None:
    if box_chunk_size is not None and (
        isinstance(box_chunk_size, bool)
        or not isinstance(box_chunk_size, int)
        or box_chunk_size < 1
    ):
        raise ConfigError(
            "box_chunk_size", f"must be None or a positive int, got {box_chunk_size!r}"
        )


def _axis_samples(start, bin_size, grid, num_bins: int, max_grid: int, size):
    """Bilinear sample indices and weights along one axis.

    Args:
      start: [R] scaled RoI start on this axis.
      bin_size: [R] bin size on this axis.
      grid: [R] int32 samples per bin actually used (may be <= 0: no samples).
      num_bins: pooled size on this axis.
      max_grid: static number of sample positions per bin.
      size: [R] int32 feature map size on this axis (per box: boxes may read different levels).

    Returns:
      low, high: [R, num_bins, max_grid] int32 neighbouring rows (or columns).
      weight_low, weight_high: [R, num_bins, max_grid] float32 interpolation weights, zero for
        samples outside [-1, size] and for unused sample positions.
    """
    bins = jnp.arange(num_bins, dtype=jnp.float32)[None, :, None]
    positions = jnp.arange(max_grid, dtype=jnp.float32)[None, None, :]
    grid_f = jnp.maximum(grid, 1).astype(jnp.float32)[:, None, None]
    start = start[:, None, None]
    bin_size = bin_size[:, None, None]
    size = size[:, None, None]
    # torchvision: roi_start + ph * bin_size + (iy + .5f) * bin_size / roi_bin_grid
    coord = start + bins * bin_size + (positions + 0.5) * bin_size / grid_f
    used = (jnp.arange(max_grid)[None, None, :] < grid[:, None, None]) & (coord >= -1.0)
    used = used & (coord <= size.astype(jnp.float32))
    coord = jnp.maximum(coord, 0.0)
    low = jnp.floor(coord).astype(jnp.int32)
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    coord = jnp.where(at_edge, low.astype(jnp.float32), coord)
    frac = coord - low.astype(jnp.float32)
    used_f = used.astype(jnp.float32)
    return low, high, (1.0 - frac) * used_f, frac * used_f


def _pool_boxes(
    flat_features, boxes, scale, height, width, base, pooled, sampling_ratio, max_grid, aligned
):
    """RoIAlign of boxes that each read their own ``height x width`` map inside ``flat_features``.

    Args:
      flat_features: [T, C] one or several feature maps, each flattened row-major.
      boxes: [R, 4] in image pixels.
      scale: [R] spatial scale of each box's map.
      height, width: [R] int32 size of each box's map.
      base: [R] int32 row of ``flat_features`` where each box's map starts.
      pooled: static ``(PH, PW)``.
      sampling_ratio, max_grid, aligned: see :func:`roi_align`.

    Returns:
      [R, PH, PW, C] float32.
    """
    pooled_h, pooled_w = pooled
    offset = 0.5 if aligned else 0.0
    scaled = boxes * scale[:, None] - jnp.float32(offset)
    start_x, start_y, end_x, end_y = (scaled[:, i] for i in range(4))
    roi_w = end_x - start_x
    roi_h = end_y - start_y
    if not aligned:
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    bin_h = roi_h / pooled_h
    bin_w = roi_w / pooled_w
    if sampling_ratio > 0:
        grid_h = jnp.full(boxes.shape[:1], sampling_ratio, jnp.int32)
        grid_w = grid_h
    else:
        grid_h = jnp.clip(jnp.ceil(roi_h / pooled_h), 0, max_grid).astype(jnp.int32)
        grid_w = jnp.clip(jnp.ceil(roi_w / pooled_w), 0, max_grid).astype(jnp.int32)
    count = jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)

    y_low, y_high, wy_low, wy_high = _axis_samples(
        start_y, bin_h, grid_h, pooled_h, max_grid, height
    )
    x_low, x_high, wx_low, wx_high = _axis_samples(
        start_x, bin_w, grid_w, pooled_w, max_grid, width
    )
    rows = jnp.stack([y_low, y_high], axis=-1)  # [R, PH, G, 2]
    cols = jnp.stack([x_low, x_high], axis=-1)  # [R, PW, G, 2]
    row_weights = jnp.stack([wy_low, wy_high], axis=-1) / count[:, None, None, None]
    col_weights = jnp.stack([wx_low, wx_high], axis=-1)
    # Flat index of every (bin_y, sample_y, corner_y, bin_x, sample_x, corner_x):
    # [R, PH, G, 2, PW, G, 2]
    expand = (slice(None), None, None, None, None, None, None)
    flat_index = (
        base[expand]
        + rows[:, :, :, :, None, None, None] * width[expand]
        + cols[:, None, None, None, :, :, :]
    )
    weights = row_weights[:, :, :, :, None, None, None] * col_weights[:, None, None, None, :, :, :]
    values = jnp.take(flat_features, flat_index, axis=0)
    return jnp.sum(values.astype(jnp.float32) * weights[..., None], axis=(2, 3, 5, 6))


def _pool_in_chunks(pool, box_chunk_size: int | None, *per_box):
    """``pool(*per_box)`` over chunks of ``box_chunk_size`` boxes (``lax.map``) to bound memory."""
    num_boxes = per_box[0].shape[0]
    if box_chunk_size is None or box_chunk_size >= num_boxes:
        return pool(*per_box)
    num_chunks = -(-num_boxes // box_chunk_size)
    padding = num_chunks * box_chunk_size - num_boxes
    chunked = [
        jnp.pad(x, [(0, padding)] + [(0, 0)] * (x.ndim - 1)).reshape(
            (num_chunks, box_chunk_size) + x.shape[1:]
        )
        for x in per_box
    ]
    pooled = jax.lax.map(lambda xs: pool(*xs), chunked)
    return pooled.reshape((num_chunks * box_chunk_size,) + pooled.shape[2:])[:num_boxes]


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: int | Sequence[int] = (7, 7),
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = False,
    max_sampling_grid: int | None = None,
    box_chunk_size: int | None = None,
) -> jax.Array:
    """RoIAlign of one image (torchvision semantics, see the module docstring).

    Args:
      features: [H, W, C] feature map of one image (NHWC without the batch axis).
      boxes: [R, 4] ``x1, y1, x2, y2`` in image pixels.
      output_size: ``(PH, PW)`` bins (or one int for both).
      spatial_scale: feature cells per image pixel (``1 / stride``).
      sampling_ratio: samples per bin and axis; ``<= 0`` = adaptive
        ``ceil(roi_size / output_size)``, which needs ``max_sampling_grid``.
      aligned: torchvision's ``aligned`` (half-pixel shift); ``False`` is maskrcnn_benchmark's
        legacy RoIAlign.
      max_sampling_grid: static bound on the adaptive grid (ignored when ``sampling_ratio > 0``).
      box_chunk_size: pool this many boxes at a time (``lax.map``) so that the gathered corners
        take ``box_chunk_size / R`` of the memory; ``None``: all boxes at once.

    Returns:
      [R, PH, PW, C] pooled features, in ``features.dtype``.
    """
    pooled = _check_output_size(output_size)
    max_grid = _sample_grid(sampling_ratio, max_sampling_grid)
    _check_chunk(box_chunk_size)
    height, width, channels = features.shape
    num_boxes = boxes.shape[0]
    boxes = boxes.astype(jnp.float32)

    def pool(boxes, scale, heights, widths, bases):
        return _pool_boxes(
            features.reshape(height * width, channels),
            boxes,
            scale,
            heights,
            widths,
            bases,
            pooled,
            sampling_ratio,
            max_grid,
            aligned,
        )

    out = _pool_in_chunks(
        pool,
        box_chunk_size,
        boxes,
        jnp.full((num_boxes,), spatial_scale, jnp.float32),
        jnp.full((num_boxes,), height, jnp.int32),
        jnp.full((num_boxes,), width, jnp.int32),
        jnp.zeros((num_boxes,), jnp.int32),
    )
    return out.astype(features.dtype)


def roi_align_batch(
    features: jax.Array,
    boxes: jax.Array,
    box_mask: jax.Array,
    output_size: int | Sequence[int] = (7, 7),
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = False,
    max_sampling_grid: int | None = None,
    box_chunk_size: int | None = None,
) -> jax.Array:
    """:func:`roi_align` over a batch of images; padded boxes get zeros.

    Args:
      features: [B, H, W, C].
      boxes: [B, R, 4] ``x1, y1, x2, y2`` in image pixels.
      box_mask: [B, R] bool, False for padding.
      output_size, spatial_scale, sampling_ratio, aligned, max_sampling_grid, box_chunk_size: as
        :func:`roi_align`.

    Returns:
      [B, R, PH, PW, C]; zero where ``box_mask`` is False.
    """

    def one_image(image_features, image_boxes):
        return roi_align(
            image_features,
            image_boxes,
            output_size=output_size,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            max_sampling_grid=max_sampling_grid,
            box_chunk_size=box_chunk_size,
        )

    pooled = jax.vmap(one_image)(features, boxes)
    return jnp.where(box_mask[:, :, None, None, None], pooled, jnp.zeros((), pooled.dtype))


def map_boxes_to_levels(
    boxes: jax.Array,
    min_level: int = 2,
    max_level: int = 5,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    plus_one: bool = True,
) -> jax.Array:
    """FPN level of each box: maskrcnn_benchmark's ``LevelMapper``.

    ``level = clip(floor(canonical_level + log2(sqrt(area) / canonical_scale + eps)), min, max)``.

    Args:
      boxes: [..., 4] ``x1, y1, x2, y2`` in image pixels.
      min_level, max_level: the levels present (maskrcnn_benchmark: 2 and 5 for P2-P5).
      canonical_scale, canonical_level, eps: ``s0``, ``k0`` and ``eps`` of the LevelMapper.
      plus_one: area ``(x2 - x1 + 1) * (y2 - y1 + 1)`` as maskrcnn_benchmark's ``BoxList.area``
        (``False``: torchvision's ``box_area``). Inverted boxes have area 0 and go to ``min_level``.

    Returns:
      [...] int32 absolute level numbers in ``[min_level, max_level]`` (maskrcnn_benchmark returns
      ``level - min_level``).
    """
    if min_level > max_level:
        raise ConfigError("min_level", f"must be <= max_level ({max_level}), got {min_level}")
    boxes = jnp.asarray(boxes, jnp.float32)
    scale = jnp.sqrt(box_ops.box_area(boxes, plus_one=plus_one))
    levels = jnp.floor(canonical_level + jnp.log2(scale / canonical_scale + eps))
    return jnp.clip(levels, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(
    features: Mapping[int, jax.Array],
    boxes: jax.Array,
    box_mask: jax.Array,
    output_size: int | Sequence[int] = (7, 7),
    sampling_ratio: int = 2,
    aligned: bool = False,
    spatial_scales: Mapping[int, float] | None = None,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    plus_one: bool = True,
    max_sampling_grid: int | None = None,
    box_chunk_size: int | None = None,
    box_levels: jax.Array | None = None,
) -> jax.Array:
    """FPN RoI pooling (maskrcnn_benchmark ``Pooler``): each box pooled from its assigned level.

    The levels of an image are flattened and concatenated into one ``[sum_l H_l W_l, C]`` table;
    each box reads its level's block (offset, height, width and scale looked up by level), so the
    cost is one :func:`roi_align` of all boxes plus one copy of the feature maps, whatever the
    number of levels.

    Args:
      features: ``{level: [B, H_l, W_l, C]}`` with consecutive integer levels (e.g. 2..5 for P2-P5).
      boxes: [B, R, 4] ``x1, y1, x2, y2`` in image pixels.
      box_mask: [B, R] bool, False for padding.
      output_size, sampling_ratio, aligned, max_sampling_grid, box_chunk_size: as
        :func:`roi_align` (maskrcnn_benchmark: ``aligned=False``).
      spatial_scales: ``{level: scale}``; default ``2 ** -level``.
      canonical_scale, canonical_level, eps, plus_one: as :func:`map_boxes_to_levels`.
      box_levels: optional int[B, R] absolute level of each box (one of ``features``), instead of
        :func:`map_boxes_to_levels` (e.g. every box from every level, as Scene-Graph-Benchmark's
        ``Pooler(cat_all_levels=True)``: repeat the boxes once per level).

    Returns:
      [B, R, PH, PW, C]; zero where ``box_mask`` is False.
    """
    pooled = _check_output_size(output_size)
    max_grid = _sample_grid(sampling_ratio, max_sampling_grid)
    _check_chunk(box_chunk_size)
    if not features:
        raise ConfigError("features", "needs at least one level")
    levels = sorted(features)
    if any(
        isinstance(level, bool) or not isinstance(level, int) for level in levels
    ) or levels != list(range(levels[0], levels[-1] + 1)):
        raise ConfigError("features", f"levels must be consecutive integers, got {levels}")
    if spatial_scales is None:
        spatial_scales = {level: math.pow(2.0, -level) for level in levels}
    missing = [level for level in levels if level not in spatial_scales]
    if missing:
        raise ConfigError("spatial_scales", f"missing levels {missing}")
    shapes = [features[level].shape for level in levels]
    if len({(shape[0], shape[3]) for shape in shapes}) != 1:
        raise ConfigError("features", f"levels differ in batch size or channels: {shapes}")
    batch, channels = shapes[0][0], shapes[0][3]
    dtype = jnp.result_type(*(features[level] for level in levels))
    flat = jnp.concatenate(
        [features[level].astype(dtype).reshape(batch, -1, channels) for level in levels], axis=1
    )
    level_heights = jnp.array([shape[1] for shape in shapes], jnp.int32)
    level_widths = jnp.array([shape[2] for shape in shapes], jnp.int32)
    level_bases = jnp.array(
        [sum(s[1] * s[2] for s in shapes[:i]) for i in range(len(shapes))], jnp.int32
    )
    level_scales = jnp.array([spatial_scales[level] for level in levels], jnp.float32)

    boxes = boxes.astype(jnp.float32)
    if box_levels is None:
        box_levels = map_boxes_to_levels(
            boxes,
            min_level=levels[0],
            max_level=levels[-1],
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
            eps=eps,
            plus_one=plus_one,
        )
    else:
        box_levels = jnp.broadcast_to(jnp.asarray(box_levels, jnp.int32), boxes.shape[:2])
        box_levels = jnp.clip(box_levels, levels[0], levels[-1])
    level_index = box_levels - levels[0]

    def one_image(image_flat, image_boxes, image_level_index):
        def pool(boxes, scale, heights, widths, bases):
            return _pool_boxes(
                image_flat,
                boxes,
                scale,
                heights,
                widths,
                bases,
                pooled,
                sampling_ratio,
                max_grid,
                aligned,
            )

        return _pool_in_chunks(
            pool,
            box_chunk_size,
            image_boxes,
            level_scales[image_level_index],
            level_heights[image_level_index],
            level_widths[image_level_index],
            level_bases[image_level_index],
        )

    out = jax.vmap(one_image)(flat, boxes, level_index).astype(dtype)
    return jnp.where(box_mask[:, :, None, None, None], out, jnp.zeros((), dtype))
