"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

As maskrcnn_benchmark's ``FPN`` with ``LastLevelMaxPool`` (Scene-Graph-Benchmark's ``*-FPN``
backbones), on the backbone outputs ``C2..C5`` of :mod:`sgg_jax.detection.backbone`:

* lateral 1x1 conv (with bias) on every ``C_k`` -> ``out_channels`` (``lateral{k}``, PyTorch
  ``fpn_inner{k-1}``);
* top-down path from the coarsest level: ``inner_k = lateral_k(C_k) + upsample2x(inner_{k+1})``,
  nearest-neighbour upsampling by 2 (PyTorch ``F.interpolate(scale_factor=2, mode="nearest")``);
* 3x3 output conv (pad 1, with bias) on every ``inner_k`` -> ``P_k`` (``output{k}``, PyTorch
  ``fpn_layer{k-1}``);
* ``P6`` = max-pool kernel 1 stride 2 of ``P5``, i.e. ``P5[:, ::2, ::2]`` (``LastLevelMaxPool``,
  used by the RPN only).

No normalisation and no ReLU (maskrcnn_benchmark's defaults ``USE_GN: False``, ``USE_RELU:
False``); convs are initialised like its ``conv_with_kaiming_uniform`` (Kaiming uniform with
``a=1``, i.e. variance 1/fan_in; zero bias).

Input sizes: the top-down sum needs ``size(C_k) == 2 * size(C_{k+1})``, which holds for images
whose height and width are divisible by 32 (the C5 stride). Other sizes raise
:class:`~sgg_jax.errors.ConfigError`; pad images first with
:func:`sgg_jax.detection.backbone.pad_to_multiple` (maskrcnn_benchmark's ``SIZE_DIVISIBILITY: 32``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.errors import ConfigError

DEFAULT_OUT_CHANNELS = 256
fpn_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1)


def upsample_nearest_2x(features: jax.Array) -> jax.Array:
    """Nearest-neighbour upsampling by 2 of NHWC features: ``out[:, i, j] = in[:, i // 2, j // 2]``."""
    return jnp.repeat(jnp.repeat(features, 2, axis=1), 2, axis=2)


class FPN(nn.Module):
    """FPN over consecutive backbone levels ``{"C2": ..., "C5": ...}`` -> ``{"P2": ..., "P6": ...}``.

    Attributes:
      out_channels: channels of every ``P_k`` (256 as maskrcnn_benchmark).
      dtype: compute dtype (parameters are float32).

    Call ``(features) -> pyramid``: ``features`` maps ``"C{k}"`` to [B, H/2^k, W/2^k, C_k] for
    consecutive k (ResNet: 2..5); the result maps ``"P{k}"`` to [B, H/2^k, W/2^k, out_channels]
    for the same k plus one more level (``P6``) from the max-pool.
    """

    out_channels: int = DEFAULT_OUT_CHANNELS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        levels = []
        for key in features:
            match = re.fullmatch(r"C(\d+)", key)
            if match is None:
                raise ConfigError("features", f"keys must look like 'C2'..'C5', got {key!r}")
            levels.append(int(match.group(1)))
        levels.sort()
        if not levels or levels != list(range(levels[0], levels[0] + len(levels))):
            raise ConfigError("features", f"needs consecutive levels, got {sorted(features)}")

        def conv(level: int, kind: str, kernel: int) -> nn.Conv:
            return nn.Conv(
                self.out_channels,
                (kernel, kernel),
                padding=((kernel // 2, kernel // 2),) * 2,
                use_bias=True,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=fpn_kernel_init,
                name=f"{kind}{level}",
            )

        pyramid = {}
        inner = None
        for level in reversed(levels):
            lateral = conv(level, "lateral", 1)(jnp.asarray(features[f"C{level}"]))
            if inner is not None:
                top_down = upsample_nearest_2x(inner)
                if top_down.shape[1:3] != lateral.shape[1:3]:
                    raise ConfigError(
                        "image_size",
                        f"C{level} is {lateral.shape[1:3]} but twice C{level + 1} is "
                        f"{top_down.shape[1:3]}: image height and width must be divisible by "
                        "32 (pad with backbone.pad_to_multiple)",
                    )
                lateral = lateral + top_down
            inner = lateral
            pyramid[f"P{level}"] = conv(level, "output", 3)(inner)
        top = levels[-1]
        pyramid[f"P{top + 1}"] = pyramid[f"P{top}"][:, ::2, ::2]  # max-pool, kernel 1, stride 2
        return {key: pyramid[key] for key in sorted(pyramid, key=lambda k: int(k[1:]))}
