"""Static-shape Faster R-CNN box operations (Ren et al. 2015; FPN, Lin et al. 2017): anchors, box
coding, NMS, top-k selection, clipping and small-box masks.

Conventions follow maskrcnn_benchmark (the detector Scene-Graph-Benchmark trains), which treats box
coordinates as inclusive pixel indices (``TO_REMOVE = 1``: width = ``x2 - x1 + 1``):

* Anchors (:func:`generate_anchors`, :func:`grid_anchors`, :func:`multilevel_anchors`) are
  maskrcnn_benchmark's ``AnchorGenerator``: a base box ``[0, 0, stride - 1, stride - 1]``
  (centre ``(stride - 1) / 2``); for each aspect ratio ``r`` (``h / w``) the base area is kept with
  ``w = round(sqrt(stride^2 / r))`` and ``h = round(w * r)`` (numpy ``round``: halves to even);
  then for each size ``w`` and ``h`` are scaled by ``size / stride`` without rounding; a box of
  width ``w`` around centre ``c`` is ``[c - (w - 1) / 2, c + (w - 1) / 2]``. Order: ratio-major
  then size per cell, cells row-major (y, then x), shifted by ``stride * (x, y)``. With FPN each
  level has one size: strides ``(4, 8, 16, 32, 64)`` and sizes ``(32, 64, 128, 256, 512)``.
  Anchors depend only on static grid sizes, so they are computed on the host in numpy (float32,
  like torch).
* :class:`BoxCoder` is maskrcnn_benchmark's ``BoxCoder``: centres are ``x1 + 0.5 * w`` with
  ``w = x2 - x1 + 1`` and a decoded box is ``[cx - w/2, cy - h/2, cx + w/2 - 1, cy + h/2 - 1]``;
  ``dw, dh`` are clipped at ``log(1000 / 16)`` before ``exp``. Weights ``(1, 1, 1, 1)`` for the RPN,
  ``(10, 10, 5, 5)`` for the box head.
* :func:`nms` is greedy NMS (torchvision ``ops.nms``: visit boxes by decreasing score, keep a box
  unless a kept box overlaps it with ``IoU > iou_threshold``); ``plus_one=True`` selects
  maskrcnn_benchmark's IoU with ``+1`` widths (its CUDA kernel, which also uses ``>``). Equal scores
  are visited in index order, so the result is deterministic.
* :func:`clip_boxes_to_image` clips to ``[0, W - 1] x [0, H - 1]`` (``plus_one``) as
  ``BoxList.clip_to_image``; :func:`small_boxes_mask` keeps ``w >= min_size`` and ``h >= min_size``
  with ``w = x2 - x1 + 1`` (``plus_one``) as ``remove_small_boxes``. Both return masks or arrays of
  unchanged shape: nothing is removed inside ``jit``.

``image_size`` is ``(height, width)`` everywhere, as in :class:`sgg_jax.structures.SceneGraphBatch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from sgg_jax import boxes as box_ops
from sgg_jax.errors import ConfigError

__all__ = [
    "BBOX_XFORM_CLIP",
    "BoxCoder",
    "anchor_visibility",
    "batched_nms",
    "clip_boxes_to_image",
    "generate_anchors",
    "grid_anchors",
    "multilevel_anchors",
    "nms",
    "small_boxes_mask",
    "top_k",
]

BBOX_XFORM_CLIP = math.log(1000.0 / 16)

# ----------------------------------------------------------------------------------------------
# Anchors (host, numpy: they depend only on static shapes).
# ----------------------------------------------------------------------------------------------


def _centred_boxes(widths, heights, centre_x, centre_y):
    """Boxes of inclusive widths / heights around a centre (maskrcnn_benchmark ``_mkanchors``)."""
    widths = widths[:, None]
    heights = heights[:, None]
    return np.hstack(
        [
            centre_x - 0.5 * (widths - 1),
            centre_y - 0.5 * (heights - 1),
            centre_x + 0.5 * (widths - 1),
            centre_y + 0.5 * (heights - 1),
        ]
    )


def generate_anchors(
    stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
) -> np.ndarray:
    """Cell anchors of one feature level (maskrcnn_benchmark ``generate_anchors``).

    Args:
      stride: the level's stride in image pixels (also the base anchor's side).
      sizes: anchor sizes (square-anchor side) in pixels.
      aspect_ratios: ``height / width`` ratios.

    Returns:
      float32 [len(aspect_ratios) * len(sizes), 4] ``x1, y1, x2, y2`` centred on the cell at the
      origin, ratio-major (all sizes of the first ratio first).
    """
    if not sizes or not aspect_ratios:
        raise ConfigError("sizes", "anchor sizes and aspect ratios must be non-empty")
    if stride <= 0 or any(s <= 0 for s in sizes) or any(r <= 0 for r in aspect_ratios):
        raise ConfigError(
            "anchor",
            f"stride, sizes and ratios must be positive: {stride}, {sizes}, {aspect_ratios}",
        )
    scales = np.asarray(sizes, np.float64) / stride
    ratios = np.asarray(aspect_ratios, np.float64)
    base = np.array([1, 1, stride, stride], np.float64) - 1
    width = base[2] - base[0] + 1
    height = base[3] - base[1] + 1
    centre_x = base[0] + 0.5 * (width - 1)
    centre_y = base[1] + 0.5 * (height - 1)
    # _ratio_enum: keep the area, round the sides (numpy round: halves to even).
    ratio_widths = np.round(np.sqrt(width * height / ratios))
    ratio_heights = np.round(ratio_widths * ratios)
    # _scale_enum: scale each ratio anchor by size / stride, no rounding.
    anchors = [
        _centred_boxes(w * scales, h * scales, centre_x, centre_y)
        for w, h in zip(ratio_widths, ratio_heights, strict=True)
    ]
    return np.vstack(anchors).astype(np.float32)


def grid_anchors(cell_anchors: np.ndarray, stride: int, grid_size: Sequence[int]) -> np.ndarray:
    """Cell anchors shifted to every cell of a ``(grid_height, grid_width)`` feature map.

    Args:
      cell_anchors: [A, 4] from :func:`generate_anchors`.
      stride: the level's stride in pixels.
      grid_size: ``(grid_height, grid_width)`` of the feature map.

    Returns:
      float32 [grid_height * grid_width * A, 4]; index ``(y * grid_width + x) * A + a``.
    """
    grid_height, grid_width = (int(s) for s in grid_size)
    shifts_x = np.arange(0, grid_width * stride, stride, dtype=np.float32)
    shifts_y = np.arange(0, grid_height * stride, stride, dtype=np.float32)
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1)
    anchors = shifts[:, None, :] + np.asarray(cell_anchors, np.float32)[None, :, :]
    return anchors.reshape(-1, 4)


def multilevel_anchors(
    grid_sizes: Sequence[Sequence[int]],
    strides: Sequence[int] = (4, 8, 16, 32, 64),
    sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> list[np.ndarray]:
    """Anchors of every level (maskrcnn_benchmark ``AnchorGenerator``).

    With one stride (C4 detector) all ``sizes`` go to that level; with several (FPN) level ``i``
    gets ``sizes[i]`` (a number or a tuple of numbers).

    Args:
      grid_sizes: ``(grid_height, grid_width)`` per level.
      strides: stride per level.
      sizes: see above.
      aspect_ratios: ``height / width`` ratios.

    Returns:
      list over levels of float32 [H_l * W_l * A_l, 4].
    """
    if len(strides) == 1:
        cell_anchors = [generate_anchors(strides[0], tuple(sizes), aspect_ratios)]
    else:
        if len(strides) != len(sizes):
            raise ConfigError("sizes", f"FPN needs one size per stride: {sizes} vs {strides}")
        cell_anchors = [
            generate_anchors(
                stride, tuple(size) if isinstance(size, Sequence) else (size,), aspect_ratios
            )
            for stride, size in zip(strides, sizes, strict=True)
        ]
    if len(grid_sizes) != len(strides):
        raise ConfigError(
            "grid_sizes", f"one grid size per stride: {len(grid_sizes)} vs {len(strides)}"
        )
    return [
        grid_anchors(cells, stride, grid)
        for cells, stride, grid in zip(cell_anchors, strides, grid_sizes, strict=True)
    ]


def anchor_visibility(anchors, image_size, straddle_thresh: float = 0.0):
    """Which anchors lie inside the image, up to ``straddle_thresh`` pixels (``add_visibility_to``).

    Args:
      anchors: [..., A, 4].
      image_size: [..., 2] ``(height, width)`` of each (unpadded) image (leading axes as
        ``anchors``').
      straddle_thresh: pixels an anchor may straddle the border; negative: every anchor is visible.

    Returns:
      [..., A] bool.
    """
    anchors = jnp.asarray(anchors)
    if straddle_thresh < 0:
        return jnp.ones(anchors.shape[:-1], bool)
    image_size = jnp.asarray(image_size, anchors.dtype)
    height = image_size[..., 0:1]
    width = image_size[..., 1:2]
    return (
        (anchors[..., 0] >= -straddle_thresh)
        & (anchors[..., 1] >= -straddle_thresh)
        & (anchors[..., 2] < width + straddle_thresh)
        & (anchors[..., 3] < height + straddle_thresh)
    )


# ----------------------------------------------------------------------------------------------
# Box coding.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BoxCoder:
    """maskrcnn_benchmark's ``BoxCoder`` (``TO_REMOVE = 1`` widths).

    Attributes:
      weights: ``(wx, wy, ww, wh)``; RPN ``(1, 1, 1, 1)``, box head ``(10, 10, 5, 5)``.
      bbox_xform_clip: upper clip of ``dw, dh`` before ``exp`` (``log(1000 / 16)``).
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    bbox_xform_clip: float = BBOX_XFORM_CLIP

    def __post_init__(self):
        if len(self.weights) != 4 or any(w <= 0 for w in self.weights):
            raise ConfigError("weights", f"must be 4 positive numbers, got {self.weights!r}")

    def encode(self, reference_boxes, proposals):
        """Regression targets that move ``proposals`` onto ``reference_boxes``.

        Args:
          reference_boxes: [..., 4] ground-truth ``x1, y1, x2, y2``.
          proposals: [..., 4] anchors or proposals, broadcastable to ``reference_boxes``.

        Returns:
          [..., 4] ``(dx, dy, dw, dh)`` times ``weights``.
        """
        reference_boxes = jnp.asarray(reference_boxes, jnp.float32)
        proposals = jnp.asarray(proposals, jnp.float32)
        ex_widths = proposals[..., 2] - proposals[..., 0] + 1.0
        ex_heights = proposals[..., 3] - proposals[..., 1] + 1.0
        ex_ctr_x = proposals[..., 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[..., 1] + 0.5 * ex_heights
        gt_widths = reference_boxes[..., 2] - reference_boxes[..., 0] + 1.0
        gt_heights = reference_boxes[..., 3] - reference_boxes[..., 1] + 1.0
        gt_ctr_x = reference_boxes[..., 0] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[..., 1] + 0.5 * gt_heights
        wx, wy, ww, wh = self.weights
        return jnp.stack(
            [
                wx * (gt_ctr_x - ex_ctr_x) / ex_widths,
                wy * (gt_ctr_y - ex_ctr_y) / ex_heights,
                ww * jnp.log(gt_widths / ex_widths),
                wh * jnp.log(gt_heights / ex_heights),
            ],
            axis=-1,
        )

    def decode(self, rel_codes, boxes):
        """Boxes obtained by applying ``rel_codes`` to ``boxes``.

        maskrcnn_benchmark's class-specific codes ``[N, 4 K]`` are ``rel_codes.reshape(N, K, 4)``
        with ``boxes[:, None, :]``.

        Args:
          rel_codes: [..., 4] ``(dx, dy, dw, dh)`` times ``weights``.
          boxes: [..., 4] reference boxes, broadcastable to ``rel_codes``.

        Returns:
          [..., 4] decoded ``x1, y1, x2, y2`` (float32).
        """
        rel_codes = jnp.asarray(rel_codes, jnp.float32)
        boxes = jnp.asarray(boxes, jnp.float32)
        widths = boxes[..., 2] - boxes[..., 0] + 1.0
        heights = boxes[..., 3] - boxes[..., 1] + 1.0
        ctr_x = boxes[..., 0] + 0.5 * widths
        ctr_y = boxes[..., 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[..., 0] / wx
        dy = rel_codes[..., 1] / wy
        dw = jnp.minimum(rel_codes[..., 2] / ww, self.bbox_xform_clip)
        dh = jnp.minimum(rel_codes[..., 3] / wh, self.bbox_xform_clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = jnp.exp(dw) * widths
        pred_h = jnp.exp(dh) * heights
        # The "- 1" on x2 / y2 is maskrcnn_benchmark's inclusive-pixel convention.
        return jnp.stack(
            [
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w - 1.0,
                pred_ctr_y + 0.5 * pred_h - 1.0,
            ],
            axis=-1,
        )


RPN_BOX_CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))
ROI_BOX_CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))

# ----------------------------------------------------------------------------------------------
# Clipping and small boxes.
# ----------------------------------------------------------------------------------------------


def clip_boxes_to_image(boxes, image_size, plus_one: bool = True):
    """Clip boxes to the image (``BoxList.clip_to_image(remove_empty=False)``).

    Args:
      boxes: [..., N, 4].
      image_size: [..., 2] ``(height, width)`` of each image (leading axes as ``boxes``').
      plus_one: clip to ``[0, W - 1] x [0, H - 1]`` (maskrcnn_benchmark); else ``[0, W] x [0, H]``.

    Returns:
      [..., 4] clipped boxes.
    """
    boxes = jnp.asarray(boxes)
    image_size = jnp.asarray(image_size, boxes.dtype)
    offset = 1.0 if plus_one else 0.0
    max_x = image_size[..., None, 1] - offset
    max_y = image_size[..., None, 0] - offset
    return jnp.stack(
        [
            jnp.clip(boxes[..., 0], 0.0, max_x),
            jnp.clip(boxes[..., 1], 0.0, max_y),
            jnp.clip(boxes[..., 2], 0.0, max_x),
            jnp.clip(boxes[..., 3], 0.0, max_y),
        ],
        axis=-1,
    )


def small_boxes_mask(boxes, min_size: float, plus_one: bool = True):
    """True for boxes at least ``min_size`` wide and high (``remove_small_boxes`` as a mask).

    Args:
      boxes: [..., 4].
      min_size: minimum side in pixels.
      plus_one: side ``x2 - x1 + 1`` (maskrcnn_benchmark); else ``x2 - x1`` (torchvision).

    Returns:
      [...] bool: True = keep.
    """
    boxes = jnp.asarray(boxes)
    offset = 1.0 if plus_one else 0.0
    widths = boxes[..., 2] - boxes[..., 0] + offset
    heights = boxes[..., 3] - boxes[..., 1] + offset
    return (widths >= min_size) & (heights >= min_size)


# ----------------------------------------------------------------------------------------------
# Top-k and NMS.
# ----------------------------------------------------------------------------------------------


def top_k(scores, valid, k: int):
    """The ``k`` highest-scoring valid entries along the last axis (pre-NMS selection).

    Invalid entries (and NaN scores) rank below every valid one; equal scores keep index order.
    When fewer than ``k`` entries exist (or are valid) the rest of the output is padding with
    ``valid = False``.
    For per-class scores ``[N, K]`` pass ``scores.reshape(-1)`` and split the indices with
    ``divmod(index, K)``.

    Args:
      scores: [..., N].
      valid: [..., N] bool.
      k: static number of outputs.

    Returns:
      indices: [..., k] int32 into the last axis (0 for padding).
      scores: [..., k] selected scores (``-inf`` for padding).
      valid: [..., k] bool.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("k", f"must be a positive int, got {k!r}")
    scores = jnp.asarray(scores, jnp.float32)
    valid = jnp.asarray(valid, bool) & ~jnp.isnan(scores)
    keys = jnp.where(valid, scores, -jnp.inf)
    num = scores.shape[-1]
    k_in = min(k, num)
    top_scores, indices = lax.top_k(keys, k_in)
    top_valid = jnp.take_along_axis(valid, indices, axis=-1)
    indices = jnp.where(top_valid, indices, 0).astype(jnp.int32)
    if k_in < k:
        pad = [(0, 0)] * (scores.ndim - 1) + [(0, k - k_in)]
        indices = jnp.pad(indices, pad)
        top_scores = jnp.pad(top_scores, pad, constant_values=-jnp.inf)
        top_valid = jnp.pad(top_valid, pad)
    return indices, jnp.where(top_valid, top_scores, -jnp.inf), top_valid


def nms(
    boxes,
    scores,
    valid,
    iou_threshold: float,
    max_output: int,
    plus_one: bool = False,
    classes=None,
):
    """Greedy non-maximum suppression with static shapes (torchvision ``ops.nms`` semantics).

    Boxes are visited by decreasing score (ties: lower index first); a box is kept unless a kept
    box has ``IoU > iou_threshold`` with it; at most ``max_output`` are kept. Invalid boxes (and NaN
    scores) are neither kept nor suppress anything. With ``classes``, only boxes of the same class
    suppress each other (see :func:`batched_nms`).

    Algorithm: sort once, then a ``lax.while_loop`` that keeps the first surviving box, computes its
    IoU with all ``N`` boxes and removes the suppressed ones; it stops after ``max_output`` kept
    boxes or when none survives. Work ``O(N log N + K N)`` for ``K = min(max_output, kept)``,
    memory ``O(N)`` (no ``N x N`` IoU matrix), ``K`` sequential steps.

    Args:
      boxes: [N, 4] ``x1, y1, x2, y2``.
      scores: [N].
      valid: [N] bool.
      iou_threshold: suppress when IoU is strictly above.
      max_output: static number of outputs.
      plus_one: maskrcnn_benchmark's inclusive-pixel IoU (``x2 - x1 + 1``).
      classes: optional [N] int class of each box.

    Returns:
      indices: [max_output] int32 kept boxes by decreasing score; padding is 0.
      valid: [max_output] bool, False for padding.
    """
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
        raise ConfigError("max_output", f"must be a positive int, got {max_output!r}")
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    valid = jnp.asarray(valid, bool) & ~jnp.isnan(scores)
    # "+ 0.0" maps -0.0 to 0.0 so that zero scores tie regardless of sign.
    keys = jnp.where(valid, scores, -jnp.inf) + 0.0
    order = jnp.argsort(-keys, stable=True)
    sorted_boxes = boxes[order]
    alive = valid[order]
    sorted_classes = None if classes is None else jnp.asarray(classes)[order]

    def cond(state):
        step, alive, _, _ = state
        return (step < max_output) & jnp.any(alive)

    def body(state):
        step, alive, kept, kept_valid = state
        first = jnp.argmax(alive)  # first surviving box in score order
        iou = box_ops.pairwise_iou(sorted_boxes[first][None], sorted_boxes, plus_one=plus_one)[0]
        suppressed = iou > iou_threshold
        if sorted_classes is not None:
            suppressed = suppressed & (sorted_classes == sorted_classes[first])
        alive = alive & ~suppressed
        alive = alive.at[first].set(False)
        kept = kept.at[step].set(order[first].astype(jnp.int32))
        kept_valid = kept_valid.at[step].set(True)
        return step + 1, alive, kept, kept_valid

    state = (
        jnp.zeros((), jnp.int32),
        alive,
        jnp.zeros((max_output,), jnp.int32),
        jnp.zeros((max_output,), bool),
    )
    _, _, kept, kept_valid = lax.while_loop(cond, body, state)
    return kept, kept_valid


def batched_nms(
    boxes,
    scores,
    classes,
    valid,
    iou_threshold: float,
    max_output: int,
    plus_one: bool = False,
):
    """Per-class greedy NMS in one pass (torchvision ``ops.batched_nms`` semantics).

    Equal to running :func:`nms` per class and merging the kept boxes by decreasing score.
    torchvision shifts each class's boxes by ``class * (max_coordinate + 1)`` so that classes never
    overlap; here the suppression test is multiplied by a same-class mask instead, which gives the
    same result without the float32 precision loss of coordinates offset by up to
    ``num_classes * image_size``.

    Args:
      boxes: [N, 4].
      scores: [N].
      classes: [N] int.
      valid: [N] bool.
      iou_threshold, max_output, plus_one: as :func:`nms`.

    Returns:
      indices: [max_output] int32 by decreasing score (0 for padding); valid: [max_output] bool.
    """
    return nms(boxes, scores, valid, iou_threshold, max_output, plus_one=plus_one, classes=classes)
