"""Union-box features of (subject, object) pairs as Scene-Graph-Benchmark computes them.

Scene-Graph-Benchmark's ``RelationFeatureExtractor`` (KaihuaTang/Scene-Graph-Benchmark.pytorch,
``maskrcnn_benchmark/modeling/roi_heads/relation_head/roi_relation_feature_extractors.py``, cited
below as ``rfe.py:LINE``), restated with static shapes for the default configuration
(``ATTRIBUTE_ON=False``, ``CAUSAL.SEPARATE_SPATIAL=False``, ``POOLING_ALL_LEVELS=True``;
``maskrcnn_benchmark/config/defaults.py``:290, :332 and ``configs/e2e_relation_X_101_32_8_FPN_1x.yaml``
:67, :83):

1. **Union box** of each pair: ``(min x1, min y1, max x2, max y2)`` (``rfe.py``:66,
   ``boxlist_ops.py``:93-111).
2. **Two rectangle masks** (:func:`pair_rectangles`, ``rfe.py``:69-85): a ``rect_size x rect_size``
   grid, ``rect_size = 4 * pooler_resolution - 1`` (27 for 7x7, ``rfe.py``:47); channel 0 is the
   subject (head) box, channel 1 the object (tail) box. The boxes are scaled by
   ``rect_size / image width`` and ``rect_size / image height`` (``BoxList.resize`` from the
   *image* size, ``bounding_box.py``:96-138: the grid spans the whole image, not the union box),
   and a cell ``(y, x)`` is 1 when ``floor(x1') <= x <= ceil(x2')`` and
   ``floor(y1') <= y <= ceil(y2')`` (``rfe.py``:76-83): integer cell indices, no 0.5 offsets,
   inclusive at both ends. The scaling is float32 (``bbox * ratio`` of a float32 tensor).
3. **Rectangle features** (``rect_conv``, ``rfe.py``:48-56): conv 2 -> C/2 (7x7, stride 2, pad 3)
   + ReLU + BatchNorm, max-pool 3x3 stride 2 pad 1, conv C/2 -> C (3x3, pad 1) + ReLU + BatchNorm:
   27 -> 14 -> 7 cells, i.e. ``[P, 7, 7, C]`` like the pooled union box. BatchNorm (momentum 0.01
   in PyTorch's convention, eps 1e-5) is trained with the relation head: batch statistics in
   training (``train=True``), running averages otherwise (:class:`MaskedBatchNorm`).
4. **Pooled union box** (``self.feature_extractor.pooler``, ``rfe.py``:93): with an FPN the union
   box is pooled from *every* level P2-P5 (``POOLING_ALL_LEVELS``: ``Pooler(cat_all_levels=True)``,
   ``poolers.py``:58-135), the levels concatenated on the channel axis (P2 first) and reduced
   back to C channels by ``reduce_channel`` (3x3 conv + ReLU, ``make_conv3x3``, kaiming-normal
   fan-out init, ``poolers.py``:82-83, ``make_layers.py``:43-76). RoIAlign as the box head
   (``aligned=False``, ``pooler_sampling_ratio``). The single-map (C4) detector pools its one
   map and has no ``reduce_channel`` (``poolers.py``:110-111 returns before it is used).
5. **Sum and head** (``rfe.py``:100-101): ``pooled + rect_features`` flattened in PyTorch's
   (C, H, W) order through the union extractor's own fc6 + ReLU, fc7 + ReLU
   (``FPN2MLPFeatureExtractor.forward_without_pool``, ``roi_box_feature_extractors.py``:92-96):
   ``[P, representation_size]``.

Initialisation (``tools/relation_train_net.py``:62-63, 106 and
``maskrcnn_benchmark/utils/model_serialization.py``:32-37): from a detector-only checkpoint the
union head's fc6 / fc7 are *copied from the detector's box head* (``load_mapping`` maps
``roi_heads.relation.union_feature_extractor.feature_extractor`` to
``roi_heads.box.feature_extractor``); ``reduce_channel`` and ``rect_conv`` have no counterpart
in the detector and keep their fresh initialisation (PyTorch defaults for ``rect_conv``: uniform
``±1 / sqrt(fan_in)`` weights and biases, BatchNorm scale 1, shift 0). The union head is then
trained with the relation head (``rfe.py`` is outside the frozen ``rpn``, ``backbone`` and
``roi_heads.box``, ``relation_train_net.py``:50). :func:`sgg_jax.detection.convert.
union_head_from_box_head` does that copy; :func:`sgg_jax.detection.convert.convert_sgb_union_extractor`
reads the whole extractor from a relation checkpoint.

Padding: every pair is computed on its own except for the batch statistics of BatchNorm in
training, which are taken over the real pairs only (``pair_mask``), so a real pair's feature never
depends on padded pairs. Deviations: the batch statistics are those of the whole (global) batch,
where SGB's unsynchronised BatchNorm uses each GPU's share.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax import boxes as box_ops
from sgg_jax.detection.roi_align import multilevel_roi_align, roi_align_batch

__all__ = [
    "MaskedBatchNorm",
    "SGBUnionFeatureExtractor",
    "pair_rectangles",
    "rect_size",
    "union_rectangles",
]


def rect_size(pooler_resolution: int) -> int:
    """Side of the rectangle-mask grid: ``4 * pooler_resolution - 1`` (``rfe.py``:47)."""
    return 4 * int(pooler_resolution) - 1


def pair_rectangles(
    subject_box: jax.Array, object_box: jax.Array, image_size: jax.Array, size: int
) -> jax.Array:
    """The two binary masks of one pair (step 2 of the module docstring).

    Args:
      subject_box, object_box: f32[4] ``x1, y1, x2, y2`` in image pixels.
      image_size: f32[2] ``(height, width)`` of the image the boxes are in.
      size: ``rect_size`` (static).

    Returns:
      f32[size, size, 2]: ``[y, x, 0]`` the subject's mask, ``[y, x, 1]`` the object's.
    """
    image_size = jnp.asarray(image_size, jnp.float32)
    # BoxList.resize((size, size)): ratio = size / original size per axis, boxes scaled in float32.
    ratio_x = jnp.float32(size) / image_size[1]
    ratio_y = jnp.float32(size) / image_size[0]
    cells = jnp.arange(size, dtype=jnp.float32)
    columns, rows = cells[None, :], cells[:, None]

    def mask(box):
        box = jnp.asarray(box, jnp.float32)
        inside = (
            (columns >= jnp.floor(box[0] * ratio_x))
            & (columns <= jnp.ceil(box[2] * ratio_x))
            & (rows >= jnp.floor(box[1] * ratio_y))
            & (rows <= jnp.ceil(box[3] * ratio_y))
        )
        return inside.astype(jnp.float32)

    return jnp.stack([mask(subject_box), mask(object_box)], axis=-1)


def union_rectangles(
    subject_boxes: jax.Array, object_boxes: jax.Array, image_size: jax.Array, size: int
) -> jax.Array:
    """:func:`pair_rectangles` of every pair of a batch (vmapped over images and pairs).

    Args:
      subject_boxes, object_boxes: f32[B, P, 4] in image pixels.
      image_size: f32[B, 2] ``(height, width)`` per image.
      size: ``rect_size`` (static).

    Returns:
      f32[B, P, size, size, 2].
    """
    per_pair = jax.vmap(pair_rectangles, in_axes=(0, 0, None, None))
    per_image = jax.vmap(per_pair, in_axes=(0, 0, 0, None))
    return per_image(subject_boxes, object_boxes, image_size, size)


def _torch_default_bias(fan_in: int):
    """PyTorch's default conv bias initialisation: uniform in ``±1 / sqrt(fan_in)``."""
    bound = 1.0 / (fan_in**0.5)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# PyTorch's default conv weight initialisation: kaiming_uniform(a=sqrt(5)) = U(±1 / sqrt(fan_in)).
_TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# maskrcnn_benchmark make_fc: kaiming_uniform(a=1), bias 0.
_FC_KERNEL = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# make_conv3x3(kaiming_init=True): kaiming_normal(mode="fan_out", nonlinearity="relu"), bias 0.
_REDUCE_KERNEL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class MaskedBatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` over ``[N, H, W, C]`` whose batch statistics skip padded rows.

    Training (``train=True``): normalise with the biased variance of the real rows (``mask``);
    when the ``"batch_stats"`` collection is mutable (and not while initialising), update the
    running averages as PyTorch does: ``mean <- (1 - momentum) mean + momentum batch_mean``,
    ``var <- (1 - momentum) var + momentum unbiased_batch_var`` (unchanged without a real row).
    Otherwise normalise with the running averages. Variables: ``params/{scale, bias}``,
    ``batch_stats/{mean, var}`` (PyTorch ``weight``, ``bias``, ``running_mean``,
    ``running_var``).

    Attributes:
      momentum: PyTorch's momentum (SGB's ``rect_conv``: 0.01).
      epsilon: added to the variance (PyTorch: 1e-5).
    """

    momentum: float = 0.01
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        channels = inputs.shape[-1]
        inputs = inputs.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        if train:
            weights = jnp.asarray(mask, jnp.float32).reshape(-1, 1, 1, 1)
            count = jnp.sum(weights) * inputs.shape[1] * inputs.shape[2]
            denominator = jnp.maximum(count, 1.0)
            mean = jnp.sum(inputs * weights, axis=(0, 1, 2)) / denominator
            var = jnp.sum(jnp.square(inputs - mean) * weights, axis=(0, 1, 2)) / denominator
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                any_real = count > 0
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                momentum = self.momentum
                new_mean = (1.0 - momentum) * running_mean.value + momentum * mean
                new_var = (1.0 - momentum) * running_var.value + momentum * unbiased
                running_mean.value = jnp.where(any_real, new_mean, running_mean.value)
                running_var.value = jnp.where(any_real, new_var, running_var.value)
        else:
            mean, var = running_mean.value, running_var.value
        return (inputs - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class SGBUnionFeatureExtractor(nn.Module):
    """Scene-Graph-Benchmark's union features of pairs (module docstring).

    Variables (PyTorch names of ``roi_heads.relation.union_feature_extractor.`` in brackets):
    ``reduce_channel`` [``feature_extractor.pooler.reduce_channel.0``] (FPN only),
    ``rect_conv1`` [``rect_conv.0``], ``rect_bn1`` [``rect_conv.2``], ``rect_conv2``
    [``rect_conv.4``], ``rect_bn2`` [``rect_conv.6``], ``fc6`` / ``fc7``
    [``feature_extractor.fc6`` / ``fc7``]; BatchNorm running averages in ``"batch_stats"``.

    Attributes:
      detector: the :class:`~sgg_jax.detection.detector.DetectorConfig` whose maps are pooled
        (channels, pooler resolution and sampling, levels, ``representation_size``,
        ``box_chunk_size``).
    """

    detector: object

    @nn.compact
    def __call__(
        self,
        maps: Mapping[str, jax.Array],
        subject_boxes: jax.Array,
        object_boxes: jax.Array,
        image_size: jax.Array,
        pair_mask: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Union features of every pair.

        Args:
          maps: :meth:`~sgg_jax.detection.detector.FasterRCNN.features` of the images.
          subject_boxes, object_boxes: f32[B, P, 4] in image pixels.
          image_size: f32[B, 2] ``(height, width)`` of the images (unpadded).
          pair_mask: bool[B, P].
          train: BatchNorm batch statistics (and running-average updates when mutable).

        Returns:
          f32[B, P, representation_size]; zeros where ``pair_mask`` is False.
        """
        cfg = self.detector
        dtype = cfg.backbone.compute_dtype
        channels, resolution = cfg.feature_channels, cfg.pooler_resolution
        subject_boxes = jnp.asarray(subject_boxes, jnp.float32)
        object_boxes = jnp.asarray(object_boxes, jnp.float32)
        pair_mask = jnp.asarray(pair_mask, bool)
        batch, num_pairs = pair_mask.shape
        union = box_ops.union_boxes(subject_boxes, object_boxes)
        pool = {
            "output_size": resolution,
            "sampling_ratio": cfg.pooler_sampling_ratio,
            "box_chunk_size": cfg.box_chunk_size,
        }
        if cfg.use_fpn:
            # Every union box from every level: the boxes repeated once per level (level-major)
            # in one multi-level RoIAlign, then the levels concatenated on channels (P2 first).
            levels = cfg.pooler_levels
            per_level = multilevel_roi_align(
                {level: maps[f"P{level}"] for level in levels},
                jnp.tile(union, (1, len(levels), 1)),
                jnp.tile(pair_mask, (1, len(levels))),
                box_levels=jnp.repeat(jnp.asarray(levels, jnp.int32), num_pairs)[None],
                **pool,
            )
            per_level = per_level.reshape(batch, len(levels), num_pairs, resolution, resolution, -1)
            pooled = jnp.moveaxis(per_level, 1, 4).reshape(
                batch * num_pairs, resolution, resolution, -1
            )
            pooled = nn.relu(
                nn.Conv(
                    channels,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    kernel_init=_REDUCE_KERNEL,
                    dtype=dtype,
                    name="reduce_channel",
                )(pooled)
            )
        else:
            pooled = roi_align_batch(maps["C4"], union, pair_mask, spatial_scale=1.0 / 16, **pool)
            pooled = pooled.reshape(batch * num_pairs, resolution, resolution, -1)

        size = rect_size(resolution)
        rects = union_rectangles(subject_boxes, object_boxes, image_size, size)
        rects = rects.reshape(batch * num_pairs, size, size, 2)
        flat_mask = pair_mask.reshape(-1)
        hidden = nn.Conv(
            channels // 2,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            kernel_init=_TORCH_DEFAULT_KERNEL,
            bias_init=_torch_default_bias(2 * 7 * 7),
            name="rect_conv1",
        )(rects)
        hidden = MaskedBatchNorm(name="rect_bn1")(nn.relu(hidden), flat_mask, train=train)
        hidden = nn.max_pool(hidden, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        hidden = nn.Conv(
            channels,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=_TORCH_DEFAULT_KERNEL,
            bias_init=_torch_default_bias((channels // 2) * 3 * 3),
            name="rect_conv2",
        )(hidden)
        rect_features = MaskedBatchNorm(name="rect_bn2")(nn.relu(hidden), flat_mask, train=train)

        summed = pooled.astype(jnp.float32) + rect_features
        # PyTorch flattens [P, C, H, W]: keep its order so that converted fc6 weights load as is.
        flat = jnp.transpose(summed, (0, 3, 1, 2)).reshape(batch, num_pairs, -1)
        hidden = nn.relu(
            nn.Dense(cfg.representation_size, kernel_init=_FC_KERNEL, dtype=dtype, name="fc6")(flat)
        )
        hidden = nn.relu(
            nn.Dense(cfg.representation_size, kernel_init=_FC_KERNEL, dtype=dtype, name="fc7")(
                hidden
            )
        ).astype(jnp.float32)
        return jnp.where(pair_mask[..., None], hidden, 0.0)
