"""Convolutional backbones of the detector: ResNet-50/101, ResNeXt-101 32x8d and VGG16, NHWC.

The detector of Scene-Graph-Benchmark (Tang et al., CVPR 2020; ``maskrcnn_benchmark``) is a Faster
R-CNN on a ResNeXt-101 32x8d FPN; the CCE + Scorer paper's Faster R-CNN uses VGG16 conv5_3
features. This module builds those bodies as pure Flax modules; :mod:`sgg_jax.detection.fpn` adds the
feature pyramid and :mod:`sgg_jax.detection.convert` loads PyTorch weights into them.

ResNet / ResNeXt (He et al. 2016; Xie et al. 2017), as ``maskrcnn_benchmark``'s ``ResNet`` and
torchvision's ``resnet50`` / ``resnet101`` / ``resnext101_32x8d``:

* stem: conv 7x7 stride 2 pad 3 (no bias), norm, ReLU, max-pool 3x3 stride 2 pad 1;
* four stages ``layer1..layer4`` of bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4); the
  bottleneck width of stage ``i`` (0-based) is ``num_groups * width_per_group * 2**i`` and its
  output ``res2_out_channels * 2**i``; the 3x3 conv is grouped (``feature_group_count``);
  the first block of a stage has a projection shortcut (1x1 conv with the block's stride + norm);
* stride placement: ``stride_in_1x1=False`` (the default) puts a stage's stride 2 on the 3x3 conv,
  as torchvision ("ResNet v1.5"), fb.torch / Caffe2 ResNeXt and maskrcnn_benchmark's
  ``STRIDE_IN_1X1: False`` (Scene-Graph-Benchmark's X-101-32x8d config). ``True`` puts it on the
  first 1x1 conv as the original MSRA ResNet — maskrcnn_benchmark's default, needed for its
  ``R-50`` / ``R-101`` ImageNet checkpoints converted from Detectron;
* outputs ``C2..C5``: the outputs of ``layer1..layer4``, strides 4, 8, 16, 32.

VGG16 (Simonyan & Zisserman 2015), conv layers only, as ``torchvision.models.vgg16().features``
without its last max-pool (Scene-Graph-Benchmark's ``VGG-16`` body): five blocks of 3x3 convs
(with bias) + ReLU, 2x2 max-pools between blocks. Outputs are keyed by stride like the ResNet's:
``C2`` = conv3_3 (stride 4), ``C3`` = conv4_3 (stride 8), ``C4`` = conv5_3 (stride 16, the
Faster R-CNN feature map); VGG has no ``C5``.

Normalisation (``BackboneConfig.norm``):

* ``"frozen_bn"`` — :class:`FrozenBatchNorm`, ``y = (x - mean) * scale / sqrt(var + eps) + bias``
  with all four per-channel vectors fixed. They live in the variable collection ``"constants"``,
  not in ``"params"``: the optimizer is given ``variables["params"]`` only, so optax can never
  update them (not even by weight decay), and a training step that marks ``"batch_stats"``
  mutable for other modules never touches them. ``eps`` is ``bn_epsilon`` (1e-5, PyTorch's
  ``F.batch_norm`` default used by maskrcnn_benchmark's FrozenBatchNorm2d in eval mode and by
  torchvision's; maskrcnn_benchmark's training-mode path uses no epsilon — a 5e-6 relative
  difference for its checkpoints, whose ``running_var`` is 1).
* ``"bn"`` — ``flax.linen.BatchNorm`` (scale/bias in ``"params"``, mean/var in ``"batch_stats"``,
  momentum 0.9 = PyTorch's 0.1, epsilon ``bn_epsilon``); batch statistics in training
  (``train=True`` with ``mutable=["batch_stats"]``), running averages otherwise and always in
  frozen stages.

Freezing (``freeze_at``, maskrcnn_benchmark's ``FREEZE_CONV_BODY_AT``, default 2): stage 0 is the
stem, stage ``i`` is ``layer{i}``; stages ``0 .. freeze_at-1`` are frozen: ``stop_gradient`` on
the output of the last frozen stage, so their parameters get zero gradients. For VGG, stage
``i`` (1-based) is conv block ``i`` and ``freeze_at`` counts frozen blocks (py-faster-rcnn freezes
conv1 and conv2: 2). Zero gradients do not stop weight decay: build the optimizer with
``optax.masked(..., trainable_mask(config, params))`` (or ``optax.multi_transform``).

Inputs are NHWC images already normalised as the weights expect (torchvision: RGB in [0, 1] minus
ImageNet mean, over std; maskrcnn_benchmark / Detectron: BGR in [0, 255] minus ``PIXEL_MEAN``).
Every conv pads explicitly like PyTorch, so any input size works and output sizes follow PyTorch's
floor arithmetic; the FPN needs sizes divisible by 32 (:func:`pad_to_multiple`).

Parameters are float32; ``dtype`` ("float32" | "bfloat16" | "float16") sets the compute dtype
(inputs are cast, outputs come back in it). Conv kernels are initialised as torchvision's
(He normal, fan-out), BN scale 1 / bias 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sgg_jax.errors import ConfigError

ARCHS = ("resnet", "vgg")
NORMS = ("frozen_bn", "bn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SIZE_DIVISIBILITY = 32  # C5 stride; the FPN's top-down path needs sizes divisible by it

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Architecture and options of a backbone; invalid values raise :class:`ConfigError`.

    Attributes:
      arch: ``"resnet"`` (ResNet / ResNeXt bottleneck body) or ``"vgg"``.
      stage_blocks: ResNet: bottleneck blocks in ``layer1..layer4`` (ResNet-50: (3, 4, 6, 3)).
        VGG: 3x3 convs in each of the five blocks ((2, 2, 3, 3, 3) for VGG16).
      num_groups: groups of the ResNeXt 3x3 conv (cardinality; 1 for ResNet).
      width_per_group: channels per group of the stage-2 3x3 conv (64 for ResNet, 8 for 32x8d).
      stem_channels: output channels of the ResNet stem.
      res2_out_channels: output channels of ``layer1`` (doubled each stage).
      stride_in_1x1: put a stage's stride on the first 1x1 conv (MSRA) instead of the 3x3.
      vgg_channels: output channels of the five VGG blocks.
      norm: ``"frozen_bn"`` or ``"bn"`` (see the module docstring).
      freeze_at: number of frozen stages, stem included for ResNet (0 = train everything).
      bn_epsilon: epsilon of the batch norms.
      dtype: compute dtype name; parameters stay float32.
    """

    arch: str = "resnet"
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    num_groups: int = 1
    width_per_group: int = 64
    stem_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    vgg_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    norm: str = "frozen_bn"
    freeze_at: int = 2
    bn_epsilon: float = 1e-5
    dtype: str = "float32"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError("arch", f"must be one of {ARCHS}, got {self.arch!r}")
        if self.norm not in NORMS:
            raise ConfigError("norm", f"must be one of {NORMS}, got {self.norm!r}")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        for field in ("stage_blocks", "vgg_channels"):
            values = getattr(self, field)
            if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
                raise ConfigError(field, f"must be a sequence of positive integers, got {values!r}")
            values = tuple(values)
            if any(not _is_int(v) or v <= 0 for v in values):
                raise ConfigError(field, f"must hold positive integers, got {values!r}")
            object.__setattr__(self, field, tuple(int(v) for v in values))
        num_stages = 4 if self.arch == "resnet" else 5
        if len(self.stage_blocks) != num_stages:
            raise ConfigError(
                "stage_blocks",
                f"{self.arch} needs {num_stages} entries, got {len(self.stage_blocks)}",
            )
        if len(self.vgg_channels) != 5:
            raise ConfigError("vgg_channels", f"needs 5 entries, got {len(self.vgg_channels)}")
        for field in ("num_groups", "width_per_group", "stem_channels", "res2_out_channels"):
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                raise ConfigError(field, f"must be a positive integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        if not _is_int(self.freeze_at) or not 0 <= self.freeze_at <= 5:
            raise ConfigError("freeze_at", f"must be an integer in [0, 5], got {self.freeze_at!r}")
        object.__setattr__(self, "freeze_at", int(self.freeze_at))
        if not isinstance(self.stride_in_1x1, bool | np.bool_):
            raise ConfigError("stride_in_1x1", f"must be a bool, got {self.stride_in_1x1!r}")
        object.__setattr__(self, "stride_in_1x1", bool(self.stride_in_1x1))
        eps = self.bn_epsilon
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps < 1:
            raise ConfigError("bn_epsilon", f"must be a number in [0, 1), got {eps!r}")
        object.__setattr__(self, "bn_epsilon", float(eps))

    # -- derived sizes -------------------------------------------------------------------------

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype of activations."""
        return DTYPES[self.dtype]

    @property
    def out_strides(self) -> dict[str, int]:
        """Stride of every output, e.g. ``{"C2": 4, "C3": 8, "C4": 16, "C5": 32}``."""
        levels = (2, 3, 4, 5) if self.arch == "resnet" else (2, 3, 4)
        return {f"C{level}": 2**level for level in levels}

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of every output, e.g. ResNet-50: ``{"C2": 256, ..., "C5": 2048}``."""
        if self.arch == "resnet":
            return {f"C{i + 2}": self.res2_out_channels * 2**i for i in range(4)}
        return {f"C{i + 2}": self.vgg_channels[i + 2] for i in range(3)}

    def bottleneck_channels(self, stage: int) -> int:
        """Width of the 3x3 conv of ``layer{stage + 1}`` (0-based ``stage``)."""
        return self.num_groups * self.width_per_group * 2**stage

    def replace(self, **changes: Any) -> BackboneConfig:
        return dataclasses.replace(self, **changes)

    # -- presets -------------------------------------------------------------------------------

    @classmethod
    def resnet50(cls, **overrides: Any) -> BackboneConfig:
        """torchvision ``resnet50`` / maskrcnn_benchmark ``R-50`` (pass ``stride_in_1x1=True``
        for the MSRA checkpoints)."""
        return cls(**{"stage_blocks": (3, 4, 6, 3), **overrides})

    @classmethod
    def resnet101(cls, **overrides: Any) -> BackboneConfig:
        """torchvision ``resnet101`` / maskrcnn_benchmark ``R-101``."""
        return cls(**{"stage_blocks": (3, 4, 23, 3), **overrides})

    @classmethod
    def resnext101_32x8d(cls, **overrides: Any) -> BackboneConfig:
        """ResNeXt-101 32x8d, Scene-Graph-Benchmark's detector body (``X-101-32x8d-FPN``)."""
        fields = {"stage_blocks": (3, 4, 23, 3), "num_groups": 32, "width_per_group": 8}
        return cls(**{**fields, **overrides})

    @classmethod
    def vgg16(cls, **overrides: Any) -> BackboneConfig:
        """VGG16 conv1_1..conv5_3 (torchvision ``vgg16().features``), as the CCE paper's detector."""
        fields = {"arch": "vgg", "stage_blocks": (2, 2, 3, 3, 3)}
        return cls(**{**fields, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> BackboneConfig:
        """A CPU-test ResNet: widths / 16, one block per stage (C5 has 128 channels)."""
        fields = {
            "stage_blocks": (1, 1, 1, 1),
            "width_per_group": 4,
            "stem_channels": 4,
            "res2_out_channels": 16,
        }
        return cls(**{**fields, **overrides})

    @classmethod
    def tiny_resnext(cls, **overrides: Any) -> BackboneConfig:
        """:meth:`tiny` with a 2-group 3x3 conv (2 x 2 channels in stage 2)."""
        return cls.tiny(**{"num_groups": 2, "width_per_group": 2, **overrides})

    @classmethod
    def tiny_vgg(cls, **overrides: Any) -> BackboneConfig:
        """A CPU-test VGG: widths / 16, one conv per block."""
        fields = {"arch": "vgg", "stage_blocks": (1,) * 5, "vgg_channels": (4, 8, 16, 32, 32)}
        return cls(**{**fields, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BackboneConfig:
        """The preset called ``name`` (one of :data:`PRESETS`) with ``overrides``."""
        if name not in PRESETS:
            raise ConfigError("backbone", f"must be one of {PRESETS}, got {name!r}")
        return getattr(cls, name)(**overrides)


PRESETS = ("resnet50", "resnet101", "resnext101_32x8d", "vgg16", "tiny", "tiny_resnext", "tiny_vgg")


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine parameters, in the ``"constants"`` collection.

    ``y = x * m + (bias - mean * m)`` with ``m = scale / sqrt(var + epsilon)``, per channel (last
    axis). Variables: ``constants/{scale, bias, mean, var}``, float32, initialised 1, 0, 0, 1.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        channels = inputs.shape[-1]

        def constant(name, fill):
            return self.variable(
                "constants", name, lambda: jnp.full((channels,), fill, jnp.float32)
            ).value

        scale, bias = constant("scale", 1.0), constant("bias", 0.0)
        mean, var = constant("mean", 0.0), constant("var", 1.0)
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        offset = bias - mean * multiplier
        return inputs * multiplier.astype(inputs.dtype) + offset.astype(inputs.dtype)


def _conv(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    use_bias: bool = False,
    dtype: Any,
    name: str,
) -> nn.Conv:
    """A PyTorch-like conv: explicit symmetric padding, float32 parameters."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_kernel_init,
        name=name,
    )


def _norm(config: BackboneConfig, *, frozen: bool, train: bool, name: str) -> nn.Module:
    if config.norm == "frozen_bn":
        return FrozenBatchNorm(epsilon=config.bn_epsilon, name=name)
    return nn.BatchNorm(
        use_running_average=frozen or not train,
        momentum=0.9,
        epsilon=config.bn_epsilon,
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class Stem(nn.Module):
    """ResNet stem: conv 7x7/2 (``conv1``), norm (``bn1``), ReLU, max-pool 3x3/2 pad 1."""

    config: BackboneConfig
    frozen: bool = False

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        x = _conv(cfg.stem_channels, 7, stride=2, padding=3, dtype=cfg.compute_dtype, name="conv1")(
            inputs
        )
        x = nn.relu(_norm(cfg, frozen=self.frozen, train=train, name="bn1")(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Bottleneck(nn.Module):
    """Bottleneck block ``conv1`` 1x1 -> ``conv2`` 3x3 (grouped) -> ``conv3`` 1x1, each followed
    by ``bn1..bn3``; projection shortcut ``downsample_conv`` + ``downsample_bn`` when the
    channels or the stride change."""

    config: BackboneConfig
    bottleneck_channels: int
    out_channels: int
    stride: int = 1
    frozen: bool = False

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.config
        dtype = cfg.compute_dtype
        stride_1x1, stride_3x3 = (self.stride, 1) if cfg.stride_in_1x1 else (1, self.stride)

        def norm(name):
            return _norm(cfg, frozen=self.frozen, train=train, name=name)

        x = _conv(self.bottleneck_channels, 1, stride=stride_1x1, dtype=dtype, name="conv1")(inputs)
        x = nn.relu(norm("bn1")(x))
        x = _conv(
            self.bottleneck_channels,
            3,
            stride=stride_3x3,
            padding=1,
            groups=cfg.num_groups,
            dtype=dtype,
            name="conv2",
        )(x)
        x = nn.relu(norm("bn2")(x))
        x = _conv(self.out_channels, 1, dtype=dtype, name="conv3")(x)
        x = norm("bn3")(x)
        shortcut = inputs
        if inputs.shape[-1] != self.out_channels or self.stride != 1:
            shortcut = _conv(
                self.out_channels, 1, stride=self.stride, dtype=dtype, name="downsample_conv"
            )(inputs)
            shortcut = norm("downsample_bn")(shortcut)
        return nn.relu(x + shortcut)


class ResStage(nn.Module):
    """``layer{i}``: ``num_blocks`` bottlenecks ``block0, block1, ...``; the first has the stride."""

    config: BackboneConfig
    num_blocks: int
    bottleneck_channels: int
    out_channels: int
    stride: int
    frozen: bool = False

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        x = inputs
        for index in range(self.num_blocks):
            x = Bottleneck(
                self.config,
                self.bottleneck_channels,
                self.out_channels,
                stride=self.stride if index == 0 else 1,
                frozen=self.frozen,
                name=f"block{index}",
            )(x, train=train)
        return x


# ----------------------------------------------------------------------------------------------
# Bodies
# ----------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """ResNet / ResNeXt body; variables ``stem/...``, ``layer1/block0/conv1/kernel``, ...

    Call ``(images f[B, H, W, 3], *, train=False) -> {"C2": [B, H/4, W/4, C], ..., "C5": ...}``
    (sizes rounded as PyTorch's convs round them).
    """

    config: BackboneConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        cfg = self.config
        x = jnp.asarray(images).astype(cfg.compute_dtype)
        x = Stem(cfg, frozen=cfg.freeze_at >= 1, name="stem")(x, train=train)
        if cfg.freeze_at >= 1:
            x = jax.lax.stop_gradient(x)
        outputs = {}
        for stage in range(4):
            frozen = cfg.freeze_at >= stage + 2
            x = ResStage(
                cfg,
                num_blocks=cfg.stage_blocks[stage],
                bottleneck_channels=cfg.bottleneck_channels(stage),
                out_channels=cfg.res2_out_channels * 2**stage,
                stride=1 if stage == 0 else 2,
                frozen=frozen,
                name=f"layer{stage + 1}",
            )(x, train=train)
            if frozen:
                x = jax.lax.stop_gradient(x)
            outputs[f"C{stage + 2}"] = x
        return outputs


def vgg_layer_names(config: BackboneConfig) -> list[list[str]]:
    """Names of the VGG convs block by block: ``[["conv1_1", "conv1_2"], ["conv2_1", ...], ...]``."""
    return [
        [f"conv{block + 1}_{index + 1}" for index in range(count)]
        for block, count in enumerate(config.stage_blocks)
    ]


class VGG(nn.Module):
    """VGG conv body (3x3 convs with bias, ReLU, 2x2 max-pools between the five blocks).

    Call ``(images f[B, H, W, 3], *, train=False) -> {"C2": conv3_x (stride 4), "C3": conv4_x
    (stride 8), "C4": conv5_x (stride 16)}``, each after its ReLU.
    """

    config: BackboneConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        del train  # no batch statistics in VGG
        cfg = self.config
        x = jnp.asarray(images).astype(cfg.compute_dtype)
        outputs = {}
        for block, names in enumerate(vgg_layer_names(cfg)):
            if block > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for name in names:
                conv = _conv(
                    cfg.vgg_channels[block],
                    3,
                    padding=1,
                    use_bias=True,
                    dtype=cfg.compute_dtype,
                    name=name,
                )
                x = nn.relu(conv(x))
            if cfg.freeze_at >= block + 1:
                x = jax.lax.stop_gradient(x)
            if block >= 2:
                outputs[f"C{block}"] = x
        return outputs


def build_backbone(config: BackboneConfig) -> nn.Module:
    """The backbone module of ``config``: :class:`ResNet` or :class:`VGG`."""
    if not isinstance(config, BackboneConfig):
        raise ConfigError("backbone", f"must be a BackboneConfig, got {type(config).__name__}")
    return ResNet(config) if config.arch == "resnet" else VGG(config)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def frozen_module_names(config: BackboneConfig) -> tuple[str, ...]:
    """Top-level module names whose parameters ``freeze_at`` freezes, e.g. ``("stem", "layer1")``."""
    if config.arch == "resnet":
        names = ["stem", "layer1", "layer2", "layer3", "layer4"]
        return tuple(names[: config.freeze_at])
    blocks = vgg_layer_names(config)[: config.freeze_at]
    return tuple(name for block in blocks for name in block)


def trainable_mask(config: BackboneConfig, params: Mapping[str, Any]) -> Any:
    """A pytree of bools like ``params``: False for parameters of frozen stages.

    Use with ``optax.masked(optimizer, mask)`` so that weight decay leaves frozen stages alone.

    Args:
      config: the backbone's config.
      params: the backbone's ``variables["params"]`` (arrays or ``ShapeDtypeStruct``).

    Returns:
      the mask, same structure as ``params``.
    """
    frozen = set(frozen_module_names(config))
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({path: path[0] not in frozen for path in flat})


def pad_to_multiple(images: jax.Array, multiple: int = SIZE_DIVISIBILITY) -> jax.Array:
    """Zero-pads NHWC images at the bottom and right to sizes divisible by ``multiple``.

    Like maskrcnn_benchmark's ``SIZE_DIVISIBILITY: 32`` batching; boxes keep their coordinates.

    Args:
      images: [B, H, W, C].
      multiple: the divisor (32 for the FPN).

    Returns:
      [B, ceil(H / multiple) * multiple, ceil(W / multiple) * multiple, C].
    """
    if not _is_int(multiple) or multiple <= 0:
        raise ConfigError("multiple", f"must be a positive integer, got {multiple!r}")
    height, width = images.shape[1], images.shape[2]
    pad_h, pad_w = -height % multiple, -width % multiple
    return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
