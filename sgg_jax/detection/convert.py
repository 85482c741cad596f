"""PyTorch checkpoints -> backbone / FPN / Faster R-CNN variables (and back): torchvision and
maskrcnn_benchmark.

Names read:

* torchvision ``resnet50`` / ``resnet101`` / ``resnext101_32x8d`` state dicts: ``conv1.weight``,
  ``bn1.{weight,bias,running_mean,running_var}``, ``layer{s}.{b}.conv{1,2,3}.weight``,
  ``layer{s}.{b}.bn{1,2,3}.*``, ``layer{s}.{b}.downsample.0.weight`` (projection conv) and
  ``layer{s}.{b}.downsample.1.*`` (its BN); ``fc.*`` and ``*.num_batches_tracked`` are skipped.
  torchvision ``vgg16``: ``features.{i}.{weight,bias}`` with ``i`` the index in
  ``vgg16().features`` (conv1_1 = 0, conv1_2 = 2, conv2_1 = 5, ..., conv5_3 = 28);
  ``classifier.*`` is skipped.
* maskrcnn_benchmark / Scene-Graph-Benchmark checkpoints (``{"model": state_dict, ...}``, keys
  possibly prefixed ``module.``): ``backbone.body.stem.conv1.weight``,
  ``backbone.body.stem.bn1.*`` (FrozenBatchNorm2d buffers ``weight``, ``bias``,
  ``running_mean``, ``running_var``), ``backbone.body.layer{s}.{b}.conv{k}.weight``,
  ``backbone.body.layer{s}.{b}.bn{k}.*``, ``backbone.body.layer{s}.{b}.downsample.{0,1}.*``;
  the FPN's ``backbone.fpn.fpn_inner{i}.{weight,bias}`` (lateral 1x1 on C{i+1}) and
  ``backbone.fpn.fpn_layer{i}.{weight,bias}`` (3x3 output conv of P{i+1}), i = 1..4; the VGG
  body's ``backbone.body.conv_body.{i}.*`` (indices as torchvision's). Keys outside
  ``backbone.`` (``rpn.``, ``roi_heads.``, ...) are ignored by :func:`convert_maskrcnn_benchmark`.
* The whole maskrcnn_benchmark Faster R-CNN (:func:`convert_maskrcnn_benchmark_detector`, the
  variables of :class:`~sgg_jax.detection.detector.FasterRCNN`): the backbone and FPN keys above
  (``params/backbone``, ``constants/backbone``, ``params/fpn``) plus

  - the RPN head (``RPNHead``, shared by every level): ``rpn.head.conv.{weight,bias}`` (3x3,
    C -> C), ``rpn.head.cls_logits.*`` (1x1, C -> A) and ``rpn.head.bbox_pred.*`` (1x1, C -> 4A,
    ``(dx, dy, dw, dh)`` per anchor) -> ``params/rpn_head/{conv,cls_logits,bbox_pred}``;
  - the box head (``FPN2MLPFeatureExtractor`` + ``FPNPredictor``, and the same names on
    the single-level VGG16 detector): ``roi_heads.box.feature_extractor.fc6.*`` (on
    the RoIAlign output flattened in PyTorch's (C, H, W) order, which
    :meth:`~sgg_jax.detection.detector.FasterRCNN.box_features` keeps),
    ``roi_heads.box.feature_extractor.fc7.*``, ``roi_heads.box.predictor.cls_score.*`` and
    ``roi_heads.box.predictor.bbox_pred.*`` (``4 * num_classes`` outputs, class-major then
    ``(dx, dy, dw, dh)``: the ``[..., num_classes, 4]`` of
    :meth:`~sgg_jax.detection.detector.FasterRCNN.box_regression`) -> ``params/{fc6,fc7,cls_score,
    bbox_pred}``. The pooler has no parameters; class-agnostic box regression
    (``CLS_AGNOSTIC_BBOX_REG``, 8 outputs) and the ResNet-C4 ``res5`` head are not supported
    (a shape error / unexpected keys).

  Skipped: ``rpn.anchor_generator.*`` (anchor buffers; anchors come from the config) and
  ``*.num_batches_tracked``. Not the detector's, and ignored even with ``strict=True``: every key
  outside ``backbone.``, ``rpn.`` and ``roi_heads.box.``, e.g. Scene-Graph-Benchmark's
  ``roi_heads.relation.*`` and ``roi_heads.attribute.*``. Without a config,
  :func:`infer_detector_config` reads the backbone, FPN width, anchors per location, pooler
  resolution, head width and class count off the weights, the rest from the closest preset.

* Scene-Graph-Benchmark's union feature extractor of relation checkpoints
  (``roi_heads.relation.union_feature_extractor.*``, the variables of
  :class:`~sgg_jax.detection.union_features.SGBUnionFeatureExtractor`):
  :func:`convert_sgb_union_extractor` / :func:`to_sgb_union_extractor` (key table there);
  from a detector-only checkpoint :func:`union_head_from_box_head` gives its fc6 / fc7 from the
  box head's, as SGB initialises them.

Layouts: conv weights are OIHW in PyTorch and HWIO in Flax (``kernel = weight.transpose(2, 3, 1,
0)``); Linear weights ``[out, in]`` become Dense kernels ``[in, out]`` (``weight.T``); a grouped
conv's weight ``[O, I / groups, kh, kw]`` becomes ``[kh, kw, I / groups, O]``,
which is what ``feature_group_count`` expects. BN ``weight`` / ``bias`` / ``running_mean`` /
``running_var`` become ``scale`` / ``bias`` / ``mean`` / ``var``: in ``"constants"`` for
``norm="frozen_bn"``, in ``"params"`` (scale, bias) and ``"batch_stats"`` (mean, var) for
``norm="bn"``.

Errors: with ``strict=True`` (default) a key the model has but the file lacks, or a key the file
has that maps to nothing, raises :class:`DataError` naming the key (``field``); ``strict=False``
ignores unknown keys and leaves missing variables out of the result (merge them into an
initialised tree). A shape mismatch always raises, naming the key and both shapes.

Without a config the architecture is read off the state dict (:func:`infer_resnet_config`,
:func:`infer_vgg_config`). What shapes cannot tell is the stride placement: torchvision and
ResNeXt checkpoints use the 3x3 conv (``stride_in_1x1=False``); for maskrcnn_benchmark the
inferred value follows its configs: ``True`` (MSRA) for ResNet, ``False`` for ResNeXt.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sgg_jax.data.fileio import load_npz, load_numpy
from sgg_jax.data.torch_zip import read_torch_zip
from sgg_jax.detection.backbone import BackboneConfig, build_backbone, vgg_layer_names
from sgg_jax.detection.detector import DetectorConfig
from sgg_jax.errors import ConfigError, DataError

STYLES = ("torchvision", "maskrcnn_benchmark")
MASKRCNN_BODY = "backbone.body."
MASKRCNN_FPN = "backbone.fpn."
MASKRCNN_RPN_HEAD = "rpn.head."
MASKRCNN_ANCHORS = "rpn.anchor_generator."
MASKRCNN_BOX_HEAD = "roi_heads.box."
DETECTOR_PREFIXES = ("backbone.", "rpn.", MASKRCNN_BOX_HEAD)  # the rest is not the detector's
MASKRCNN_UNION = "roi_heads.relation.union_feature_extractor."  # SGB relation checkpoints
_KNOWN_ASPECT_RATIOS = (
    (0.5, 1.0, 2.0),  # maskrcnn_benchmark
    DetectorConfig.resnext101_fpn().aspect_ratios,  # Scene-Graph-Benchmark (VG, Neural Motifs)
)
_LEAF_TO_TORCH = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_SHAPE_PROBE = (1, 64, 64, 3)  # any input works: variable shapes do not depend on it


# ----------------------------------------------------------------------------------------------
# Key and shape tables
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _variable_shapes(config: BackboneConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat ``{(collection, module, ..., leaf): shape}`` of the backbone's variables (traced)."""
    model = build_backbone(config)
    images = jax.ShapeDtypeStruct(_SHAPE_PROBE, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    flat = traverse_util.flatten_dict(dict(variables))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _vgg_feature_indices(config: BackboneConfig) -> dict[str, int]:
    """``{"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, ...}``: positions in ``vgg16().features``."""
    indices, position = {}, 0
    for block, names in enumerate(vgg_layer_names(config)):
        if block > 0:
            position += 1  # the max-pool before the block
        for name in names:
            indices[name] = position
            position += 2  # conv, ReLU
    return indices


def _module_key(config: BackboneConfig, modules: tuple[str, ...], style: str) -> str:
    """The PyTorch module name of a backbone module path, e.g. ``("layer1", "block0", "conv1")``."""
    if config.arch == "vgg":
        index = _vgg_feature_indices(config)[modules[0]]
        return (
            f"features.{index}" if style == "torchvision" else f"{MASKRCNN_BODY}conv_body.{index}"
        )
    if modules[0] == "stem":
        name = modules[1]
        return name if style == "torchvision" else f"{MASKRCNN_BODY}stem.{name}"
    stage, block, name = modules
    block_index = int(block.removeprefix("block"))
    name = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)
    key = f"{stage}.{block_index}.{name}"
    return key if style == "torchvision" else MASKRCNN_BODY + key


def _backbone_table(
    config: BackboneConfig, style: str
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``{torch key: (our flat path, torch shape)}`` for every backbone variable."""
    if style not in STYLES:
        raise ConfigError("style", f"must be one of {STYLES}, got {style!r}")
    table = {}
    for path, shape in _variable_shapes(config).items():
        key = f"{_module_key(config, path[1:-1], style)}.{_LEAF_TO_TORCH[path[-1]]}"
        table[key] = (path, _torch_shape(path, shape))
    return table


def _fpn_table(
    config: BackboneConfig, out_channels: int
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``{torch key: (our flat path, torch shape)}`` for the FPN on ``config``'s outputs."""
    table = {}
    for name, in_channels in config.out_channels.items():
        level = int(name[1:])
        for kind, torch_kind, kernel, channels in (
            ("lateral", "fpn_inner", 1, in_channels),
            ("output", "fpn_layer", 3, out_channels),
        ):
            prefix = f"{MASKRCNN_FPN}{torch_kind}{level - 1}"
            table[f"{prefix}.weight"] = (
                ("params", f"{kind}{level}", "kernel"),
                (out_channels, channels, kernel, kernel),
            )
            table[f"{prefix}.bias"] = (("params", f"{kind}{level}", "bias"), (out_channels,))
    return table


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def torch_shapes(
    config: BackboneConfig, style: str, *, fpn_channels: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Every PyTorch key (and its shape) that ``config``'s backbone reads, in ``style``'s names.

    Args:
      config: the backbone config.
      style: ``"torchvision"`` or ``"maskrcnn_benchmark"``.
      fpn_channels: with maskrcnn_benchmark names, also the FPN's keys for this many channels.

    Returns:
      ``{key: shape}``, e.g. ``{"conv1.weight": (64, 3, 7, 7), ...}``.
    """
    table = dict(_backbone_table(config, style))
    if fpn_channels is not None:
        if style != "maskrcnn_benchmark":
            raise ConfigError("fpn_channels", "only maskrcnn_benchmark checkpoints hold an FPN")
        table.update(_fpn_table(config, fpn_channels))
    return {key: shape for key, (_, shape) in table.items()}


# ----------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------


def _require(state_dict: Mapping[str, Any], key: str, path: str | None) -> tuple[int, ...]:
    if key not in state_dict:
        message = "missing from the state dict (needed to infer the architecture)"
        raise DataError(message, path=path, field=key)
    return tuple(np.shape(state_dict[key]))


def infer_resnet_config(
    state_dict: Mapping[str, Any], style: str, *, path: str | None = None, **overrides: Any
) -> BackboneConfig:
    """The ResNet / ResNeXt :class:`BackboneConfig` whose keys and shapes ``state_dict`` has.

    Blocks per stage, stem / stage widths and the group count come from the keys and weight
    shapes; ``stride_in_1x1`` is False for torchvision and for grouped (ResNeXt) maskrcnn_benchmark
    checkpoints, True for other maskrcnn_benchmark ones (its MSRA default).

    Args:
      state_dict: PyTorch names -> arrays (``module.`` prefixes already stripped).
      style: ``"torchvision"`` or ``"maskrcnn_benchmark"``.
      path: the file, for error messages.
      **overrides: other fields (``norm``, ``freeze_at``, ``dtype``, ``stride_in_1x1``).
    """
    prefix = "" if style == "torchvision" else MASKRCNN_BODY
    stem_key = f"{prefix}conv1.weight" if style == "torchvision" else f"{prefix}stem.conv1.weight"
    stem_channels = _require(state_dict, stem_key, path)[0]
    blocks = []
    for stage in range(1, 5):
        count = 0
        while f"{prefix}layer{stage}.{count}.conv1.weight" in state_dict:
            count += 1
        if count == 0:
            _require(state_dict, f"{prefix}layer{stage}.0.conv1.weight", path)
        blocks.append(count)
    bottleneck = _require(state_dict, f"{prefix}layer1.0.conv1.weight", path)[0]
    res2_out = _require(state_dict, f"{prefix}layer1.0.conv3.weight", path)[0]
    per_group = _require(state_dict, f"{prefix}layer1.0.conv2.weight", path)[1]
    groups = max(1, bottleneck // per_group)
    fields = {
        "arch": "resnet",
        "stage_blocks": tuple(blocks),
        "num_groups": groups,
        "width_per_group": bottleneck // groups,
        "stem_channels": stem_channels,
        "res2_out_channels": res2_out,
        "stride_in_1x1": style == "maskrcnn_benchmark" and groups == 1,
    }
    return BackboneConfig(**{**fields, **overrides})


def infer_vgg_config(
    state_dict: Mapping[str, Any], style: str, *, path: str | None = None, **overrides: Any
) -> BackboneConfig:
    """The VGG :class:`BackboneConfig` of a ``features.{i}`` / ``conv_body.{i}`` state dict.

    Convs two indices apart (conv, ReLU) share a block; three apart (conv, ReLU, max-pool) start
    a new one.
    """
    prefix = "features." if style == "torchvision" else f"{MASKRCNN_BODY}conv_body."
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight")
    indices = sorted(int(m.group(1)) for key in state_dict if (m := pattern.fullmatch(key)))
    if not indices:
        _require(state_dict, f"{prefix}0.weight", path)
    blocks, channels = [1], [int(np.shape(state_dict[f"{prefix}{indices[0]}.weight"])[0])]
    for previous, index in zip(indices, indices[1:], strict=False):
        if index - previous == 2:
            blocks[-1] += 1
        else:
            blocks.append(1)
            channels.append(0)
        channels[-1] = int(np.shape(state_dict[f"{prefix}{index}.weight"])[0])
    if len(blocks) != 5:
        raise DataError(
            f"conv layers {indices} form {len(blocks)} blocks, VGG has 5", path=path, field=prefix
        )
    fields = {"arch": "vgg", "stage_blocks": tuple(blocks), "vgg_channels": tuple(channels)}
    return BackboneConfig(**{**fields, **overrides})


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bf16 / fp16 included)
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _describe(keys: list[str]) -> str:
    if len(keys) <= 1:
        return ""
    shown = ", ".join(keys[1:4])
    more = f", ... ({len(keys) - 4} more)" if len(keys) > 4 else ""
    return f" (also {shown}{more})"


def _convert(
    state_dict: Mapping[str, Any],
    table: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]],
    *,
    considered: Callable[[str], bool],
    strict: bool,
    path: str | None,
    what: str,
) -> dict[str, Any]:
    """Looks up every key of ``table`` in ``state_dict`` and returns the nested variables."""
    unexpected = sorted(k for k in state_dict if considered(k) and k not in table)
    missing = sorted(k for k in table if k not in state_dict)
    if strict and missing:
        message = f"missing from the state dict of {what}{_describe(missing)}"
        raise DataError(message, path=path, field=missing[0])
    if strict and unexpected:
        message = f"unexpected key: no variable of {what} matches it{_describe(unexpected)}"
        raise DataError(message, path=path, field=unexpected[0])
    flat = {}
    for key, (our_path, torch_shape) in table.items():
        if key not in state_dict:
            continue
        value = _to_numpy(state_dict[key])
        if value.shape != torch_shape:
            raise DataError(
                f"shape {value.shape} in the file, {what} expects {torch_shape}",
                path=path,
                field=key,
            )
        if our_path[-1] == "kernel":
            value = _kernel_from_torch(value)
        flat[our_path] = value
    return traverse_util.unflatten_dict(flat)


def _kernel_from_torch(value: np.ndarray) -> np.ndarray:
    """Conv ``OIHW -> HWIO``; Linear ``[out, in] -> [in, out]``."""
    axes = (2, 3, 1, 0) if value.ndim == 4 else (1, 0)
    return np.ascontiguousarray(value.transpose(axes))


def _kernel_to_torch(value: np.ndarray) -> np.ndarray:
    """Conv ``HWIO -> OIHW``; Linear ``[in, out] -> [out, in]``."""
    return value.transpose((3, 2, 0, 1) if value.ndim == 4 else (1, 0))


def _skip_torchvision(key: str) -> bool:
    return key.endswith("num_batches_tracked") or key.startswith(("fc.", "classifier."))


def convert_torchvision_resnet(
    state_dict: Mapping[str, Any],
    config: BackboneConfig | None = None,
    *,
    strict: bool = True,
    path: str | None = None,
) -> dict[str, Any]:
    """Variables of :class:`~sgg_jax.detection.backbone.ResNet` from a torchvision ResNet / ResNeXt.

    Args:
      state_dict: ``model.state_dict()`` of ``torchvision.models.resnet50`` / ``resnet101`` /
        ``resnext101_32x8d`` as name -> array (or tensor); ``fc.*`` and ``num_batches_tracked``
        are skipped.
      config: the target architecture; inferred from the state dict when None.
      strict: raise on missing or unknown keys (see the module docstring).
      path: the file the state dict came from, for error messages.

    Returns:
      ``{"params": ..., "constants": ...}`` (``"batch_stats"`` instead of ``"constants"`` for
      ``norm="bn"``), numpy float32 arrays.
    """
    state_dict = _strip_module_prefix(state_dict)
    if config is None:
        config = infer_resnet_config(state_dict, "torchvision", path=path)
    _check_arch(config, "resnet")
    return _convert(
        state_dict,
        _backbone_table(config, "torchvision"),
        considered=lambda key: not _skip_torchvision(key),
        strict=strict,
        path=path,
        what="the ResNet backbone",
    )


def convert_torchvision_vgg16(
    state_dict: Mapping[str, Any],
    config: BackboneConfig | None = None,
    *,
    strict: bool = True,
    path: str | None = None,
) -> dict[str, Any]:
    """Variables of :class:`~sgg_jax.detection.backbone.VGG` from ``torchvision.models.vgg16``.

    Args and return as :func:`convert_torchvision_resnet`; ``classifier.*`` is skipped.
    """
    state_dict = _strip_module_prefix(state_dict)
    if config is None:
        config = infer_vgg_config(state_dict, "torchvision", path=path)
    _check_arch(config, "vgg")
    return _convert(
        state_dict,
        _backbone_table(config, "torchvision"),
        considered=lambda key: not _skip_torchvision(key),
        strict=strict,
        path=path,
        what="the VGG backbone",
    )


def convert_maskrcnn_benchmark(
    state_dict: Mapping[str, Any],
    config: BackboneConfig | None = None,
    *,
    strict: bool = True,
    path: str | None = None,
) -> dict[str, Any]:
    """Backbone (and FPN) variables from a maskrcnn_benchmark / Scene-Graph-Benchmark checkpoint.

    Args:
      state_dict: the checkpoint's ``"model"`` entry (``module.`` prefixes are stripped); only
        keys under ``backbone.`` are read.
      config: the backbone architecture; inferred from the state dict when None (VGG if it has
        ``backbone.body.conv_body.*`` keys, otherwise ResNet / ResNeXt).
      strict: raise on missing or unknown ``backbone.*`` keys.
      path: the file the state dict came from, for error messages.

    Returns:
      ``{"backbone": {"params": ..., "constants" | "batch_stats": ...}, "fpn": {"params": ...}
      or None}``: the FPN entry (for :class:`~sgg_jax.detection.fpn.FPN` with ``out_channels``
      read off ``fpn_inner1.weight``) is present when the checkpoint has ``backbone.fpn.*``
      keys.
    """
    state_dict = _strip_module_prefix(state_dict)
    if config is None:
        if any(key.startswith(f"{MASKRCNN_BODY}conv_body.") for key in state_dict):
            config = infer_vgg_config(state_dict, "maskrcnn_benchmark", path=path)
        else:
            config = infer_resnet_config(state_dict, "maskrcnn_benchmark", path=path)
    backbone = _convert(
        state_dict,
        _backbone_table(config, "maskrcnn_benchmark"),
        considered=lambda key: (
            key.startswith(MASKRCNN_BODY) and not key.endswith("num_batches_tracked")
        ),
        strict=strict,
        path=path,
        what=f"the {config.arch} backbone",
    )
    fpn = None
    if any(key.startswith(MASKRCNN_FPN) for key in state_dict):
        first = f"{MASKRCNN_FPN}fpn_inner1.weight"
        out_channels = _require(state_dict, first, path)[0]
        fpn = _convert(
            state_dict,
            _fpn_table(config, out_channels),
            considered=lambda key: key.startswith(MASKRCNN_FPN),
            strict=strict,
            path=path,
            what="the FPN",
        )
    return {"backbone": backbone, "fpn": fpn}


def _check_arch(config: BackboneConfig, arch: str) -> None:
    if not isinstance(config, BackboneConfig):
        raise ConfigError("config", f"must be a BackboneConfig, got {type(config).__name__}")
    if config.arch != arch:
        raise ConfigError("arch", f"this converter needs a {arch!r} config, got {config.arch!r}")


# ----------------------------------------------------------------------------------------------
# Export (the inverse mapping)
# ----------------------------------------------------------------------------------------------


def _export(variables: Mapping[str, Any], table) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(dict(variables))
    state_dict = {}
    for key, (our_path, torch_shape) in table.items():
        if our_path not in flat:
            raise DataError("missing from the variables", field="/".join(our_path))
        value = np.asarray(flat[our_path], dtype=np.float32)
        if our_path[-1] == "kernel":
            value = _kernel_to_torch(value)
        if value.shape != torch_shape:
            raise DataError(f"shape {value.shape}, expected {torch_shape}", field=key)
        state_dict[key] = np.ascontiguousarray(value)
    return state_dict


def to_torchvision(variables: Mapping[str, Any], config: BackboneConfig) -> dict[str, np.ndarray]:
    """The torchvision state dict (without ``fc`` / ``classifier``) of backbone ``variables``.

    The inverse of :func:`convert_torchvision_resnet` / :func:`convert_torchvision_vgg16`.
    """
    return _export(variables, _backbone_table(config, "torchvision"))


def to_maskrcnn_benchmark(
    variables: Mapping[str, Any],
    config: BackboneConfig,
    fpn_variables: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The maskrcnn_benchmark ``backbone.*`` state dict of backbone (and FPN) variables.

    The inverse of :func:`convert_maskrcnn_benchmark`.
    """
    state_dict = _export(variables, _backbone_table(config, "maskrcnn_benchmark"))
    if fpn_variables is not None:
        out_channels = int(np.shape(fpn_variables["params"]["lateral2"]["bias"])[0])
        state_dict.update(_export(fpn_variables, _fpn_table(config, out_channels)))
    return state_dict


# ----------------------------------------------------------------------------------------------
# The whole Faster R-CNN (backbone, FPN, RPN head, box head)
# ----------------------------------------------------------------------------------------------


def _is_detector_key(key: str) -> bool:
    """Whether a (prefix-stripped) maskrcnn_benchmark key is one the detector must account for."""
    if key.endswith("num_batches_tracked") or key.startswith(MASKRCNN_ANCHORS):
        return False
    return key.startswith(DETECTOR_PREFIXES)


def _detector_table(config: DetectorConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``{torch key: (flat path in FasterRCNN's variables, torch shape)}`` for the whole detector."""
    if not isinstance(config, DetectorConfig):
        raise ConfigError("config", f"must be a DetectorConfig, got {type(config).__name__}")
    return _cached_detector_table(config)


@functools.lru_cache(maxsize=32)
def _cached_detector_table(config: DetectorConfig):
    table = {}
    for key, (path, shape) in _backbone_table(config.backbone, "maskrcnn_benchmark").items():
        table[key] = ((path[0], "backbone", *path[1:]), shape)
    if config.use_fpn:
        for key, (path, shape) in _fpn_table(config.backbone, config.fpn_channels).items():
            table[key] = ((path[0], "fpn", *path[1:]), shape)
    channels, anchors = config.feature_channels, config.anchors_per_location
    for name, shape in (
        ("conv", (channels, channels, 3, 3)),
        ("cls_logits", (anchors, channels, 1, 1)),
        ("bbox_pred", (4 * anchors, channels, 1, 1)),
    ):
        table[f"{MASKRCNN_RPN_HEAD}{name}.weight"] = (("params", "rpn_head", name, "kernel"), shape)
        table[f"{MASKRCNN_RPN_HEAD}{name}.bias"] = (("params", "rpn_head", name, "bias"), shape[:1])
    width, classes = config.representation_size, config.num_classes
    pooled = channels * config.pooler_resolution**2  # flattened in PyTorch's (C, H, W) order
    for torch_name, name, shape in (
        ("feature_extractor.fc6", "fc6", (width, pooled)),
        ("feature_extractor.fc7", "fc7", (width, width)),
        ("predictor.cls_score", "cls_score", (classes, width)),
        ("predictor.bbox_pred", "bbox_pred", (4 * classes, width)),  # [class, (dx, dy, dw, dh)]
    ):
        prefix = f"{MASKRCNN_BOX_HEAD}{torch_name}"
        table[f"{prefix}.weight"] = (("params", name, "kernel"), shape)
        table[f"{prefix}.bias"] = (("params", name, "bias"), shape[:1])
    return table


def detector_torch_shapes(config: DetectorConfig) -> dict[str, tuple[int, ...]]:
    """Every maskrcnn_benchmark key (and its shape) of :class:`FasterRCNN` ``config``'s variables."""
    return {key: shape for key, (_, shape) in _detector_table(config).items()}


def infer_detector_config(
    state_dict: Mapping[str, Any], *, path: str | None = None, **overrides: Any
) -> DetectorConfig:
    """The :class:`DetectorConfig` of a maskrcnn_benchmark / Scene-Graph-Benchmark checkpoint.

    Starts from the closest preset (``vgg16`` without ``backbone.fpn.*`` keys; otherwise
    ``resnext101_fpn`` for a grouped backbone, ``resnet50_fpn`` for a plain ResNet) and overrides
    what the weights determine:

    * ``backbone``: :func:`infer_vgg_config` / :func:`infer_resnet_config`;
    * ``use_fpn``: whether ``backbone.fpn.*`` keys exist; ``fpn_channels``: rows of
      ``backbone.fpn.fpn_inner1.weight``;
    * ``num_classes``: rows of ``roi_heads.box.predictor.cls_score.weight``;
      ``representation_size``: rows of ``roi_heads.box.feature_extractor.fc7.weight``;
      ``pooler_resolution``: ``sqrt(fc6 inputs / feature channels)``;
    * ``aspect_ratios``: only their count is known (rows of ``rpn.head.cls_logits.weight``, divided
      by the number of anchor sizes without FPN). The preset's ratios are kept when the count
      matches, else maskrcnn_benchmark's ``(0.5, 1, 2)`` or Scene-Graph-Benchmark's four VG ratios
      when one of them has that count; otherwise pass ``aspect_ratios`` (and ``anchor_sizes``).

    ``input_convention`` is Scene-Graph-Benchmark's (``"sgb"``: BGR 0..255 minus its pixel mean,
    600 / 1000 resize; maskrcnn_benchmark/config/defaults.py), what the weights were trained on.

    Everything else (RPN / RoI sampling, NMS and score thresholds, proposal counts, anchor sizes)
    is not stored in the weights and comes from the preset: pass ``overrides`` to match the
    checkpoint's yaml config.

    Args:
      state_dict: the checkpoint's ``"model"`` entry (``module.`` prefixes are stripped).
      path: the file, for error messages.
      **overrides: :class:`DetectorConfig` fields that take precedence over the inferred ones
        (``backbone`` included: then the backbone is not inferred).
    """
    state_dict = _strip_module_prefix(state_dict)
    backbone = overrides.get("backbone")
    if isinstance(backbone, str):
        backbone = BackboneConfig.preset(backbone)
    if backbone is None:
        if any(key.startswith(f"{MASKRCNN_BODY}conv_body.") for key in state_dict):
            backbone = infer_vgg_config(state_dict, "maskrcnn_benchmark", path=path)
        else:
            backbone = infer_resnet_config(state_dict, "maskrcnn_benchmark", path=path)
    use_fpn = overrides.get("use_fpn", any(k.startswith(MASKRCNN_FPN) for k in state_dict))
    if not use_fpn:
        preset = "vgg16"
    else:
        preset = "resnext101_fpn" if backbone.num_groups > 1 else "resnet50_fpn"
    fields: dict[str, Any] = {"backbone": backbone, "input_convention": "sgb"}
    if use_fpn:
        fields["use_fpn"] = True
        fields["anchor_strides"] = DetectorConfig().anchor_strides
        fields["fpn_channels"] = _require(state_dict, f"{MASKRCNN_FPN}fpn_inner1.weight", path)[0]
    fields["num_classes"] = _require(
        state_dict, f"{MASKRCNN_BOX_HEAD}predictor.cls_score.weight", path
    )[0]
    fields["representation_size"] = _require(
        state_dict, f"{MASKRCNN_BOX_HEAD}feature_extractor.fc7.weight", path
    )[0]
    base = DetectorConfig.preset(preset, **{**fields, **overrides})
    fc6_key = f"{MASKRCNN_BOX_HEAD}feature_extractor.fc6.weight"
    pooled = _require(state_dict, fc6_key, path)[1]
    resolution = math.isqrt(pooled // base.feature_channels)
    if "pooler_resolution" not in overrides and pooled == base.feature_channels * resolution**2:
        fields["pooler_resolution"] = resolution
    logits_key = f"{MASKRCNN_RPN_HEAD}cls_logits.weight"
    anchors = _require(state_dict, logits_key, path)[0]
    if base.anchors_per_location != anchors and not {"aspect_ratios", "anchor_sizes"} & set(
        overrides
    ):
        sizes = base.anchors_per_location // len(base.aspect_ratios)
        for ratios in _KNOWN_ASPECT_RATIOS:
            if sizes * len(ratios) == anchors:
                fields["aspect_ratios"] = ratios
                break
    config = DetectorConfig.preset(preset, **{**fields, **overrides})
    if config.anchors_per_location != anchors:
        raise DataError(
            f"{anchors} anchors per location in the file, the config has "
            f"{config.anchors_per_location} ({len(config.anchor_sizes)} sizes x "
            f"{len(config.aspect_ratios)} aspect ratios): pass aspect_ratios= / anchor_sizes=",
            path=path,
            field=logits_key,
        )
    return config


def convert_maskrcnn_benchmark_detector(
    state_dict: Mapping[str, Any],
    config: DetectorConfig | None = None,
    *,
    strict: bool = True,
    path: str | None = None,
) -> dict[str, Any]:
    """Variables of :class:`~sgg_jax.detection.detector.FasterRCNN` from a whole maskrcnn_benchmark /
    Scene-Graph-Benchmark Faster R-CNN checkpoint (backbone, FPN, RPN head, box head).

    Args:
      state_dict: the checkpoint's ``"model"`` entry (``module.`` prefixes are stripped). Keys
        under ``backbone.``, ``rpn.`` and ``roi_heads.box.`` are the detector's; of these,
        ``rpn.anchor_generator.*`` (anchor buffers, recomputed from the config) and
        ``*.num_batches_tracked`` are skipped. Everything else (``roi_heads.relation.*``,
        ``roi_heads.attribute.*``, ... of relation models) is ignored, also with ``strict=True``.
      config: the detector; when None, :func:`infer_detector_config` (call it yourself to get the
        config the variables are for).
      strict: raise on a missing detector key or an unmapped one under ``backbone.``, ``rpn.``
        or ``roi_heads.box.``; with False, unknown keys are ignored and missing variables left
        out (merge the result into an initialised tree).
      path: the file the state dict came from, for error messages.

    Returns:
      ``{"params": {"backbone", "fpn" (with FPN), "rpn_head", "fc6", "fc7", "cls_score",
      "bbox_pred"}, "constants": {"backbone": ...}}`` (``"batch_stats"`` instead of
      ``"constants"`` for ``norm="bn"``): ``FasterRCNN(config).apply``'s variables, numpy float32.
    """
    state_dict = _strip_module_prefix(state_dict)
    if config is None:
        config = infer_detector_config(state_dict, path=path)
    return _convert(
        state_dict,
        _detector_table(config),
        considered=_is_detector_key,
        strict=strict,
        path=path,
        what="the Faster R-CNN detector",
    )


def to_maskrcnn_benchmark_detector(
    variables: Mapping[str, Any], config: DetectorConfig
) -> dict[str, np.ndarray]:
    """The maskrcnn_benchmark state dict (``backbone.*``, ``rpn.head.*``, ``roi_heads.box.*``) of
    :class:`~sgg_jax.detection.detector.FasterRCNN` ``variables``; the inverse of
    :func:`convert_maskrcnn_benchmark_detector` (no ``rpn.anchor_generator.*`` buffers)."""
    return _export(variables, _detector_table(config))


# ----------------------------------------------------------------------------------------------
# Scene-Graph-Benchmark's union feature extractor (relation checkpoints)
# ----------------------------------------------------------------------------------------------


def _union_table(config: DetectorConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``{torch key: (flat path in SGBUnionFeatureExtractor's variables, torch shape)}``."""
    if not isinstance(config, DetectorConfig):
        raise ConfigError("config", f"must be a DetectorConfig, got {type(config).__name__}")
    return _cached_union_table(config)


@functools.lru_cache(maxsize=32)
def _cached_union_table(config: DetectorConfig):
    channels, width = config.feature_channels, config.representation_size
    half = channels // 2
    extractor = f"{MASKRCNN_UNION}feature_extractor."
    table = {}
    if config.use_fpn:  # POOLING_ALL_LEVELS: every level concatenated, then reduced to C
        reduce = f"{extractor}pooler.reduce_channel.0"
        shape = (channels, channels * len(config.pooler_levels), 3, 3)
        table[f"{reduce}.weight"] = (("params", "reduce_channel", "kernel"), shape)
        table[f"{reduce}.bias"] = (("params", "reduce_channel", "bias"), (channels,))
    pooled = channels * config.pooler_resolution**2  # flattened in PyTorch's (C, H, W) order
    for name, inputs in (("fc6", pooled), ("fc7", width)):
        table[f"{extractor}{name}.weight"] = (("params", name, "kernel"), (width, inputs))
        table[f"{extractor}{name}.bias"] = (("params", name, "bias"), (width,))
    rect = f"{MASKRCNN_UNION}rect_conv."
    for index, name, shape in (
        (0, "rect_conv1", (half, 2, 7, 7)),
        (4, "rect_conv2", (channels, half, 3, 3)),
    ):
        table[f"{rect}{index}.weight"] = (("params", name, "kernel"), shape)
        table[f"{rect}{index}.bias"] = (("params", name, "bias"), shape[:1])
    for index, name, size in ((2, "rect_bn1", half), (6, "rect_bn2", channels)):
        table[f"{rect}{index}.weight"] = (("params", name, "scale"), (size,))
        table[f"{rect}{index}.bias"] = (("params", name, "bias"), (size,))
        table[f"{rect}{index}.running_mean"] = (("batch_stats", name, "mean"), (size,))
        table[f"{rect}{index}.running_var"] = (("batch_stats", name, "var"), (size,))
    return table


def union_extractor_torch_shapes(config: DetectorConfig) -> dict[str, tuple[int, ...]]:
    """Every ``roi_heads.relation.union_feature_extractor.*`` key (and shape) the
    :class:`~sgg_jax.detection.union_features.SGBUnionFeatureExtractor` of ``config`` reads
    (``*.num_batches_tracked`` excluded)."""
    return {key: shape for key, (_, shape) in _union_table(config).items()}


def _is_union_key(config: DetectorConfig) -> Callable[[str], bool]:
    def considered(key: str) -> bool:
        if not key.startswith(MASKRCNN_UNION) or key.endswith("num_batches_tracked"):
            return False
        # Without FPN, SGB's Pooler still builds reduce_channel but never uses it (poolers.py:110).
        return config.use_fpn or ".pooler.reduce_channel." not in key

    return considered


def convert_sgb_union_extractor(
    state_dict: Mapping[str, Any],
    config: DetectorConfig | None = None,
    *,
    strict: bool = True,
    path: str | None = None,
) -> dict[str, Any]:
    """Variables of :class:`~sgg_jax.detection.union_features.SGBUnionFeatureExtractor` from a
    Scene-Graph-Benchmark relation checkpoint (``roi_heads.relation.union_feature_extractor.*``).

    Keys read (``U = roi_heads.relation.union_feature_extractor.``; conv ``OIHW -> HWIO``,
    Linear ``[out, in] -> [in, out]``):

    * ``U.feature_extractor.pooler.reduce_channel.0.{weight,bias}`` -> ``params/reduce_channel``
      (FPN only; ``[C, 4C, 3, 3]``; skipped without FPN, where SGB never uses it);
    * ``U.feature_extractor.fc6.*`` (on the (C, H, W)-flattened sum), ``U.feature_extractor.fc7.*``
      -> ``params/fc6``, ``params/fc7``;
    * ``U.rect_conv.0.*`` -> ``params/rect_conv1``; ``U.rect_conv.4.*`` -> ``params/rect_conv2``;
    * ``U.rect_conv.{2,6}.{weight,bias}`` -> ``params/rect_bn{1,2}/{scale,bias}`` and
      ``U.rect_conv.{2,6}.{running_mean,running_var}`` -> ``batch_stats/rect_bn{1,2}/{mean,var}``;
      ``num_batches_tracked`` is skipped (PyTorch only reads it when ``momentum`` is None).

    Args:
      state_dict: the checkpoint's ``"model"`` entry (``module.`` prefixes are stripped); keys
        outside ``U`` are ignored.
      config: the detector the extractor pools from; None: :func:`infer_detector_config`.
      strict: raise on a missing or an unmapped key under ``U``; False leaves missing variables
        out (merge the result into an initialised tree).
      path: the file, for error messages.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` numpy float32, the variables of the ``"roi"``
      source's ``union`` module (:mod:`sgg_jax.relation.features`).
    """
    state_dict = _strip_module_prefix(state_dict)
    if config is None:
        config = infer_detector_config(state_dict, path=path)
    return _convert(
        state_dict,
        _union_table(config),
        considered=_is_union_key(config),
        strict=strict,
        path=path,
        what="Scene-Graph-Benchmark's union feature extractor",
    )


def to_sgb_union_extractor(
    variables: Mapping[str, Any], config: DetectorConfig
) -> dict[str, np.ndarray]:
    """The ``roi_heads.relation.union_feature_extractor.*`` state dict of
    :class:`~sgg_jax.detection.union_features.SGBUnionFeatureExtractor` ``variables``
    (``{"params", "batch_stats"}``); the inverse of :func:`convert_sgb_union_extractor` (no
    ``num_batches_tracked`` buffers)."""
    return _export(variables, _union_table(config))


def union_head_from_box_head(
    state_dict: Mapping[str, Any],
    config: DetectorConfig | None = None,
    *,
    path: str | None = None,
) -> dict[str, Any]:
    """The union extractor's ``fc6`` / ``fc7`` from a detector-only checkpoint, as SGB
    initialises them: ``load_mapping`` of ``tools/relation_train_net.py``:62-63 reads
    ``roi_heads.relation.union_feature_extractor.feature_extractor.*`` from
    ``roi_heads.box.feature_extractor.*`` (``model_serialization.py``:32-37). The rectangle convs
    and ``reduce_channel`` have no counterpart in a detector and keep their initialisation.

    Returns:
      ``{"params": {"fc6": ..., "fc7": ...}}`` to merge into initialised union variables.

    Raises:
      DataError: naming a missing key or a shape that does not fit ``config``.
    """
    state_dict = _strip_module_prefix(state_dict)
    if config is None:
        config = infer_detector_config(state_dict, path=path)
    extractor = f"{MASKRCNN_UNION}feature_extractor."
    box_head = f"{MASKRCNN_BOX_HEAD}feature_extractor."
    table = {
        box_head + key.removeprefix(extractor): entry
        for key, entry in _union_table(config).items()
        if key.startswith(f"{extractor}fc")
    }
    return _convert(
        state_dict,
        table,
        considered=lambda key: False,
        strict=True,
        path=path,
        what="the union extractor's fc6 / fc7",
    )


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


MIN_TORCH_VERSION = (2, 6, 0)


def check_torch_version(version: object, path: str = "") -> None:
    """Refuses torch older than :data:`MIN_TORCH_VERSION` (2.6.0) for reading ``.pth`` files.

    ``torch.load(weights_only=True)`` of torch <= 2.5.1 can be made to run code by a crafted
    checkpoint (CVE-2025-32434). A pre-release of 2.6.0 (``2.6.0a0``, ``2.6.0.dev...``,
    ``2.6.0rc1``) and a version string that cannot be read are refused too; a local suffix
    (``2.6.0+cu124``) is accepted.

    Raises:
      ConfigError: one line naming the installed version (and ``path``).
    """
    text = str(version) if version is not None else ""
    found = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?([^+]*)", text)
    minimum = ".".join(str(v) for v in MIN_TORCH_VERSION)
    release = None
    if found:
        release = tuple(int(v or 0) for v in found.groups()[:3])
        pre_release = found.group(4).strip(".-_") != ""
        if release > MIN_TORCH_VERSION or (release == MIN_TORCH_VERSION and not pre_release):
            return
    target = f"reading {path!r} " if path else "reading .pth / .pt files "
    raise ConfigError(
        "path",
        f"{target}needs torch >= {minimum} (older torch.load can run code from a crafted "
        f"checkpoint, CVE-2025-32434); installed: torch {text or 'of unknown version'}; upgrade "
        "torch, or convert the file to .npz with a safe torch",
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict from ``.pth`` / ``.pt`` or ``.npz`` (numpy only).

    A checkpoint holding ``{"model": state_dict, ...}`` (maskrcnn_benchmark) or
    ``{"state_dict": ...}`` yields that entry; non-tensor entries are dropped. Without torch,
    ``.pth`` files (torch >= 1.6 zip format) are read by
    :func:`sgg_jax.data.torch_zip.read_torch_zip`, which runs no code from the file. With torch
    installed they are read with ``torch.load(weights_only=True)`` on the CPU, and only with
    torch >= 2.6.0: ``weights_only=True`` of older versions can still run code from a crafted file
    (CVE-2025-32434), so they are refused (:func:`check_torch_version`) before the file is opened.
    :func:`save_npz` converts a state dict to ``.npz``.

    Args:
      path: the file.

    Returns:
      ``{PyTorch key: float32 array}``.

    Raises:
      ConfigError: the suffix is none of these, or the installed torch is older than 2.6.0.
      DataError: the file is missing, not a PyTorch file, or holds no state dict.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npz", ".pth", ".pt"):
        raise ConfigError("path", f"must end in .npz, .pth or .pt, got {path!r}")
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    if suffix == ".npz":
        with load_numpy(path, ".npz") as archive:
            keys = list(archive.files)
        arrays = load_npz(path, keys)
        try:
            return {key: np.asarray(array, dtype=np.float32) for key, array in arrays.items()}
        except (TypeError, ValueError) as error:
            raise DataError(f"not a readable .npz file ({error})", path=path) from None
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None:
        checkpoint = read_torch_zip(path)
    else:
        check_torch_version(getattr(torch, "__version__", None), path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for entry in ("model", "state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(entry), Mapping):
            checkpoint = checkpoint[entry]
            break
    if not isinstance(checkpoint, Mapping):
        raise DataError(f"holds a {type(checkpoint).__name__}, not a state dict", path=path)
    return {
        str(key): _to_numpy(value)
        for key, value in checkpoint.items()
        if hasattr(value, "detach") or isinstance(value, np.ndarray)
    }


def save_npz(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes ``{PyTorch key: array or tensor}`` as an ``.npz`` that :func:`load_state_dict` reads."""
    np.savez(os.fspath(path), **{key: _to_numpy(value) for key, value in state_dict.items()})
