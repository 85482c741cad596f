"""Box geometry: areas, IoU, union boxes, normalised box encodings and pair geometry features.

All boxes are ``xyxy`` in pixels. Every function works on numpy arrays (host: evaluator, readers) and
on ``jax.Array`` (device: feature sources inside ``jit``); the array namespace follows the input.

Pixel convention. Scene-Graph-Benchmark's evaluator (``sgg_eval.py`` → ``bbox_overlaps``) treats box
coordinates as inclusive pixel indices, so a box's width is ``x2 - x1 + 1``. ``plus_one=True`` selects
that convention; it is what :mod:`sgg_jax.evaluation` uses so that recalls agree with published
numbers. ``plus_one=False`` is the continuous convention (width ``x2 - x1``) used for features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-6


def _xp(*arrays):
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def box_area(boxes, plus_one: bool = False):
    """Area of boxes.

    Args:
      boxes: [..., 4] xyxy.
      plus_one: inclusive-pixel convention (width = x2 - x1 + 1).

    Returns:
      [...] areas; degenerate (inverted) boxes have area 0.
    """
    xp = _xp(boxes)
    offset = 1.0 if plus_one else 0.0
    widths = xp.maximum(boxes[..., 2] - boxes[..., 0] + offset, 0.0)
    heights = xp.maximum(boxes[..., 3] - boxes[..., 1] + offset, 0.0)
    return widths * heights


def pairwise_iou(boxes_a, boxes_b, plus_one: bool = False):
    """IoU between every box of ``boxes_a`` and every box of ``boxes_b``.

    Args:
      boxes_a: [N, 4] xyxy.
      boxes_b: [M, 4] xyxy.
      plus_one: inclusive-pixel convention of Scene-Graph-Benchmark's evaluator.

    Returns:
      [N, M] IoU in [0, 1] (0 where the union is empty).
    """
    xp = _xp(boxes_a, boxes_b)
    offset = 1.0 if plus_one else 0.0
    top_left = xp.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = xp.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    sizes = xp.maximum(bottom_right - top_left + offset, 0.0)
    intersection = sizes[..., 0] * sizes[..., 1]
    union = (
        box_area(boxes_a, plus_one)[:, None] + box_area(boxes_b, plus_one)[None, :] - intersection
    )
    return xp.where(union > 0, intersection / xp.where(union > 0, union, 1.0), 0.0)


def elementwise_iou(boxes_a, boxes_b, plus_one: bool = False):
    """IoU of aligned boxes: ``boxes_a[i]`` with ``boxes_b[i]``.

    Args:
      boxes_a, boxes_b: [..., 4] xyxy, same leading shape.
      plus_one: inclusive-pixel convention.

    Returns:
      [...] IoU.
    """
    xp = _xp(boxes_a, boxes_b)
    offset = 1.0 if plus_one else 0.0
    top_left = xp.maximum(boxes_a[..., :2], boxes_b[..., :2])
    bottom_right = xp.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    sizes = xp.maximum(bottom_right - top_left + offset, 0.0)
    intersection = sizes[..., 0] * sizes[..., 1]
    union = box_area(boxes_a, plus_one) + box_area(boxes_b, plus_one) - intersection
    return xp.where(union > 0, intersection / xp.where(union > 0, union, 1.0), 0.0)


def union_boxes(boxes_a, boxes_b):
    """Smallest box enclosing each aligned pair (the relation's union box).

    Args:
      boxes_a, boxes_b: [..., 4] xyxy.

    Returns:
      [..., 4] xyxy.
    """
    xp = _xp(boxes_a, boxes_b)
    return xp.concatenate(
        [
            xp.minimum(boxes_a[..., :2], boxes_b[..., :2]),
            xp.maximum(boxes_a[..., 2:], boxes_b[..., 2:]),
        ],
        axis=-1,
    )


BOX_ENCODING_DIM = 9


def encode_boxes(boxes, image_size):
    """Normalised box encoding (Motifs' box info): 9 numbers per box in roughly [0, 1].

    ``[w/W, h/H, cx/W, cy/H, x1/W, y1/H, x2/W, y2/H, w·h/(W·H)]``.

    Args:
      boxes: [..., 4] xyxy pixels.
      image_size: [..., 2] ``(height, width)`` broadcastable to ``boxes[..., 0]``'s shape + (2,).

    Returns:
      [..., 9] float32.
    """
    xp = _xp(boxes, image_size)
    boxes = boxes.astype(xp.float32)
    image_size = xp.asarray(image_size, dtype=xp.float32)
    height = xp.maximum(image_size[..., 0:1], 1.0)
    width = xp.maximum(image_size[..., 1:2], 1.0)
    box_w = boxes[..., 2:3] - boxes[..., 0:1]
    box_h = boxes[..., 3:4] - boxes[..., 1:2]
    centre_x = boxes[..., 0:1] + 0.5 * box_w
    centre_y = boxes[..., 1:2] + 0.5 * box_h
    return xp.concatenate(
        [
            box_w / width,
            box_h / height,
            centre_x / width,
            centre_y / height,
            boxes[..., 0:1] / width,
            boxes[..., 1:2] / height,
            boxes[..., 2:3] / width,
            boxes[..., 3:4] / height,
            box_w * box_h / (width * height),
        ],
        axis=-1,
    )


PAIR_GEOMETRY_DIM = 9 + 6


def pair_geometry(subject_boxes, object_boxes, image_size):
    """Geometry features of ordered (subject, object) pairs.

    Six relative terms (translation- and scale-invariant, as in box-regression deltas) followed by
    the 9-number encoding of the union box:
    ``[(cx_o − cx_s)/w_s, (cy_o − cy_s)/h_s, log(w_o/w_s), log(h_o/h_s), IoU(s, o),
    area(s ∩ o)/area(s)] ++ encode_boxes(union(s, o))``.

    Args:
      subject_boxes, object_boxes: [..., 4] xyxy pixels, aligned.
      image_size: [..., 2] ``(height, width)``.

    Returns:
      [..., 15] float32.
    """
    xp = _xp(subject_boxes, object_boxes, image_size)
    subject_boxes = subject_boxes.astype(xp.float32)
    object_boxes = object_boxes.astype(xp.float32)
    subject_w = xp.maximum(subject_boxes[..., 2] - subject_boxes[..., 0], _EPS)
    subject_h = xp.maximum(subject_boxes[..., 3] - subject_boxes[..., 1], _EPS)
    object_w = xp.maximum(object_boxes[..., 2] - object_boxes[..., 0], _EPS)
    object_h = xp.maximum(object_boxes[..., 3] - object_boxes[..., 1], _EPS)
    subject_cx = 0.5 * (subject_boxes[..., 0] + subject_boxes[..., 2])
    subject_cy = 0.5 * (subject_boxes[..., 1] + subject_boxes[..., 3])
    object_cx = 0.5 * (object_boxes[..., 0] + object_boxes[..., 2])
    object_cy = 0.5 * (object_boxes[..., 1] + object_boxes[..., 3])
    top_left = xp.maximum(subject_boxes[..., :2], object_boxes[..., :2])
    bottom_right = xp.minimum(subject_boxes[..., 2:], object_boxes[..., 2:])
    overlap = xp.maximum(bottom_right - top_left, 0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    relative = xp.stack(
        [
            (object_cx - subject_cx) / subject_w,
            (object_cy - subject_cy) / subject_h,
            xp.log(object_w / subject_w),
            xp.log(object_h / subject_h),
            elementwise_iou(subject_boxes, object_boxes),
            intersection / (subject_w * subject_h),
        ],
        axis=-1,
    )
    union = encode_boxes(union_boxes(subject_boxes, object_boxes), image_size)
    return xp.concatenate([relative, union], axis=-1).astype(xp.float32)
