"""Faster R-CNN (Ren et al., NeurIPS 2015) with optional FPN (Lin et al., CVPR 2017): static shapes, jit.

The detector of Scene-Graph-Benchmark (Tang et al., CVPR 2020), which is maskrcnn_benchmark's
``GeneralizedRCNN`` with an RPN and a box head, written as one pure Flax module on the building
blocks of :mod:`~sgg_jax.detection.backbone`, :mod:`~sgg_jax.detection.fpn`,
:mod:`~sgg_jax.detection.roi_align` and :mod:`~sgg_jax.detection.detection_ops`. Every shape is static:
a variable number of boxes is a fixed-size array plus a boolean mask, so the whole forward pass,
losses included, runs under one ``jax.jit`` and is ``vmap``-ed over images (no Python loop over
images; Python loops only over the few static FPN levels).

Pipeline (maskrcnn_benchmark module names in brackets):

1. ``features``: backbone ``C2..C5`` -> FPN ``P2..P6`` (images zero-padded at the bottom / right to
   a multiple of 32, ``SIZE_DIVISIBILITY``); without FPN (VGG16, the CCE paper's detector) the
   single map ``C4`` (stride 16; VGG16 conv5_3).
2. RPN [``RPNHead``, ``RPNPostProcessor``]: a shared 3x3 conv + ReLU, 1x1 objectness (``A``
   logits) and 1x1 deltas (``4A``) on every level. Proposals per image and level: top
   ``pre_nms_top_n`` by objectness, decode (``RPN_BOX_CODER``), clip to the image, drop boxes
   smaller than ``rpn_min_size``, NMS ``rpn_nms_thresh`` keeping ``post_nms_top_n``; then with
   several levels the top ``fpn_post_nms_top_n`` over all levels. In training the proposals are
   computed under ``stop_gradient`` (``torch.no_grad``) and the ground-truth boxes are appended
   (``add_gt_proposals``).
3. RPN loss [``RPNLossComputation``]: IoU of every anchor with every GT box, :func:`match_boxes`
   (fg 0.7 / bg 0.3, ``allow_low_quality_matches``), anchors straddling the image border by more
   than ``straddle_thresh`` ignored, :func:`sample_balanced` 256 anchors per image with at most
   half positive; BCE on the sampled anchors (mean) + smooth-L1 (beta 1/9) on the positives,
   summed and divided by the number of sampled anchors of the batch.
4. Box head [``ROIBoxHead``, ``FPN2MLPFeatureExtractor``, ``FPNPredictor``]: in training the
   proposals are matched (fg 0.5 / bg ``roi_bg_iou_thresh``, no low-quality matches) and 512 per
   image sampled with at most 25 % positives; RoIAlign 7x7 (sampling 2, ``aligned=False``, the
   legacy maskrcnn_benchmark op) from the FPN level of each box (``P2..P5``, ``LevelMapper``) or
   from ``C4``; flatten in PyTorch's (C, H, W) order; fc6 + ReLU, fc7 + ReLU (:meth:`FasterRCNN.
   box_features`); a class score layer (``num_classes`` = C + 1, background 0) and class-specific
   box deltas (``ROI_BOX_CODER`` weights (10, 10, 5, 5)). Loss: cross-entropy over the sampled
   RoIs (mean) + smooth-L1 (beta 1) of the true class's deltas over the positives divided by the
   number of sampled RoIs.
5. Inference [``PostProcessor``]: softmax, decode every class's box, clip, per class keep scores
   ``> score_thresh`` and NMS ``nms_thresh`` (optionally at most ``post_nms_per_class_top_n`` per
   class), optionally ``nms_filter_duplicates`` (Scene-Graph-Benchmark / Neural Motifs: each
   proposal keeps only its best surviving class, so detections are distinct boxes), then the top
   ``detections_per_image`` by score.

Conventions: boxes are ``x1, y1, x2, y2`` in pixels of the (resized, unpadded) image with
maskrcnn_benchmark's inclusive-pixel ``+1`` widths in IoU, coding, clipping and NMS;
``image_sizes`` are ``(height, width)``; labels are 1-based with 0 = background; padded boxes have
mask False and never change a loss. GT labels must be >= 1 (a GT labelled 0 would be a positive
match with a background target).

Deviations from maskrcnn_benchmark, all deliberate:

* ``FPN_POST_NMS_PER_BATCH``: the top ``fpn_post_nms_top_n_train`` proposals are chosen per image
  (as torchvision / detectron2 and Scene-Graph-Benchmark's ``FPN_POST_NMS_PER_BATCH: False``), not
  over the whole batch (maskrcnn_benchmark's default, a known quirk).
* Matcher: a GT box whose best IoU with every anchor is 0 gets no low-quality match (upstream
  would match every zero-IoU anchor to its argmax GT); an image without GT boxes trains the RPN and
  the box head with negatives only (upstream raises).
* ``detections_per_image`` keeps exactly that many (upstream's ``kthvalue`` threshold keeps ties).
* Random subsampling draws a uniform key per candidate and keeps the largest keys
  (``jax.random``), equal in distribution to ``torch.randperm`` but not the same draws.
* In training the box head is run on the sampled RoIs only and no detections are produced (as
  upstream); call with ``train=False`` for detections.
* Without FPN the box head is the MLP head on ``C4`` (VGG16 conv5_3, fc6 / fc7 of 4096 as the VGG
  classifier with RoIAlign instead of RoIPool); maskrcnn_benchmark's ResNet-C4 ``res5`` head is not
  implemented.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sgg_jax import boxes as box_ops
from sgg_jax.data.images import InputConvention
from sgg_jax.detection import detection_ops
from sgg_jax.detection.backbone import (
    SIZE_DIVISIBILITY,
    BackboneConfig,
    build_backbone,
    pad_to_multiple,
    trainable_mask,
)
from sgg_jax.detection.fpn import FPN
from sgg_jax.detection.roi_align import multilevel_roi_align, roi_align_batch
from sgg_jax.errors import ConfigError

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "DETECTOR_PRESETS",
    "DetectorConfig",
    "FasterRCNN",
    "detector_trainable_mask",
    "match_boxes",
    "postprocess_detections",
    "sample_balanced",
    "smooth_l1_loss",
]

BELOW_LOW_THRESHOLD = -1  # maskrcnn_benchmark Matcher: background
BETWEEN_THRESHOLDS = -2  # maskrcnn_benchmark Matcher: ignored

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def _is_number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.integer | np.floating)
        and math.isfinite(value)
    )


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Faster R-CNN options (maskrcnn_benchmark config names in brackets); invalid values raise
    :class:`ConfigError` naming the field.

    Attributes:
      backbone: a :class:`BackboneConfig` or the name of one of its presets.
      use_fpn: FPN ``P2..P6`` (``True``) or the single map ``C4`` (stride 16).
      fpn_channels: channels of the FPN levels [``BACKBONE_OUT_CHANNELS``].
      anchor_sizes: anchor sizes in pixels; with FPN one per level [``RPN.ANCHOR_SIZES``].
      anchor_strides: stride of every level: FPN ``(4, 8, 16, 32, 64)``, else ``(16,)``.
      aspect_ratios: anchor ``height / width`` ratios [``RPN.ASPECT_RATIOS``].
      straddle_thresh: anchors crossing the image border by more are ignored in the RPN loss.
      rpn_pre_nms_top_n_train / _test: proposals per level before NMS.
      rpn_post_nms_top_n_train / _test: proposals per level kept by NMS.
      rpn_fpn_post_nms_top_n_train / _test: proposals per image over all FPN levels (ignored
        without FPN, where the per-level count is final).
      rpn_nms_thresh, rpn_min_size: RPN NMS IoU and minimum proposal side.
      rpn_batch_size_per_image, rpn_positive_fraction: anchors sampled per image for the loss.
      rpn_fg_iou_thresh, rpn_bg_iou_thresh: matcher thresholds of the anchors.
      rpn_smooth_l1_beta: beta of the RPN box loss (1/9).
      roi_batch_size_per_image, roi_positive_fraction: RoIs sampled per image for the box head.
      roi_fg_iou_thresh, roi_bg_iou_thresh: proposals with IoU >= fg are positives, < bg
        negatives, in between ignored.
      add_gt_proposals: append the GT boxes to the proposals in training.
      pooler_resolution, pooler_sampling_ratio: RoIAlign bins and samples per bin and axis.
      representation_size: width of fc6 / fc7 [``MLP_HEAD_DIM``].
      num_classes: object classes + 1 (index 0 = background).
      box_coder_weights: ``ROI_BOX_CODER`` weights.
      box_smooth_l1_beta: beta of the box-head regression loss (1).
      score_thresh: detections need a class probability above this [``ROI_HEADS.SCORE_THRESH``].
      nms_thresh: per-class NMS IoU of the detections.
      detections_per_image: detections returned per image (static; padded with mask False).
      post_nms_per_class_top_n: at most this many boxes per class survive NMS (None: no limit;
        Scene-Graph-Benchmark: 300).
      nms_filter_duplicates: each proposal keeps only its best class surviving NMS
        (Scene-Graph-Benchmark's ``NMS_FILTER_DUPLICATES``).
      box_chunk_size: RoIAlign pools this many boxes at a time (memory bound); None = all.
      input_convention: the pixels the weights expect, an
        :class:`~sgg_jax.data.images.InputConvention` (or a preset name, or its ``to_dict``):
        ``"imagenet"`` by default, ``"sgb"`` for converted Scene-Graph-Benchmark weights
        [``INPUT.PIXEL_MEAN``, ``PIXEL_STD``, ``TO_BGR255``, ``MIN_SIZE_TEST``, ``MAX_SIZE_TEST``].
        Image transforms built for this detector use it.
    """

    backbone: BackboneConfig | str = "resnet50"
    use_fpn: bool = True
    fpn_channels: int = 256
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    straddle_thresh: float = 0.0
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_fpn_post_nms_top_n_train: int = 2000
    rpn_fpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 0.0
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_smooth_l1_beta: float = 1.0 / 9.0
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou_thresh: float = 0.5
    roi_bg_iou_thresh: float = 0.5
    add_gt_proposals: bool = True
    pooler_resolution: int = 7
    pooler_sampling_ratio: int = 2
    representation_size: int = 1024
    num_classes: int = 151
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_smooth_l1_beta: float = 1.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    post_nms_per_class_top_n: int | None = None
    nms_filter_duplicates: bool = False
    box_chunk_size: int | None = None
    input_convention: InputConvention | str = "imagenet"

    def __post_init__(self):
        object.__setattr__(self, "input_convention", InputConvention.coerce(self.input_convention))
        backbone = self.backbone
        if isinstance(backbone, str):
            backbone = BackboneConfig.preset(backbone)
        if not isinstance(backbone, BackboneConfig):
            raise ConfigError(
                "backbone", f"must be a BackboneConfig or a preset name, got {backbone!r}"
            )
        object.__setattr__(self, "backbone", backbone)
        for field in ("use_fpn", "add_gt_proposals", "nms_filter_duplicates"):
            value = getattr(self, field)
            if not isinstance(value, bool | np.bool_):
                raise ConfigError(field, f"must be a bool, got {value!r}")
            object.__setattr__(self, field, bool(value))
        for field in (
            "fpn_channels",
            "rpn_pre_nms_top_n_train",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_train",
            "rpn_post_nms_top_n_test",
            "rpn_fpn_post_nms_top_n_train",
            "rpn_fpn_post_nms_top_n_test",
            "rpn_batch_size_per_image",
            "roi_batch_size_per_image",
            "pooler_resolution",
            "pooler_sampling_ratio",
            "representation_size",
            "detections_per_image",
        ):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise ConfigError(field, f"must be a positive integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise ConfigError(
                "num_classes",
                f"must be an integer >= 2 (classes + background), got {self.num_classes!r}",
            )
        object.__setattr__(self, "num_classes", int(self.num_classes))
        for field in ("post_nms_per_class_top_n", "box_chunk_size"):
            value = getattr(self, field)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(field, f"must be None or a positive integer, got {value!r}")
        for field in (
            "rpn_nms_thresh",
            "rpn_fg_iou_thresh",
            "rpn_bg_iou_thresh",
            "roi_fg_iou_thresh",
            "roi_bg_iou_thresh",
            "nms_thresh",
            "score_thresh",
            "rpn_positive_fraction",
            "roi_positive_fraction",
        ):
            value = getattr(self, field)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(field, f"must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, field, float(value))
        for field in ("rpn_min_size", "rpn_smooth_l1_beta", "box_smooth_l1_beta"):
            value = getattr(self, field)
            if not _is_number(value) or value < 0:
                raise ConfigError(field, f"must be a number >= 0, got {value!r}")
            object.__setattr__(self, field, float(value))
        if not _is_number(self.straddle_thresh):
            raise ConfigError("straddle_thresh", f"must be a number, got {self.straddle_thresh!r}")
        for low, high in (
            ("rpn_bg_iou_thresh", "rpn_fg_iou_thresh"),
            ("roi_bg_iou_thresh", "roi_fg_iou_thresh"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(
                    low, f"must be <= {high} ({getattr(self, high)}), got {getattr(self, low)}"
                )
        for field, check in (
            ("anchor_sizes", _is_number),
            ("anchor_strides", _is_int),
            ("aspect_ratios", _is_number),
            ("box_coder_weights", _is_number),
        ):
            values = getattr(self, field)
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
                raise ConfigError(field, f"must be a non-empty sequence, got {values!r}")
            if any(not check(v) or v <= 0 for v in values):
                raise ConfigError(field, f"must hold positive numbers, got {tuple(values)!r}")
            cast = int if field == "anchor_strides" else float
            object.__setattr__(self, field, tuple(cast(v) for v in values))
        if len(self.box_coder_weights) != 4:
            raise ConfigError("box_coder_weights", f"needs 4 numbers, got {self.box_coder_weights}")
        expected = tuple(2**level for level in self.rpn_levels)
        if self.anchor_strides != expected:
            raise ConfigError(
                "anchor_strides",
                f"must be {expected} for the feature levels {self.feature_names} "
                f"(use_fpn={self.use_fpn}), got {self.anchor_strides}",
            )
        if self.use_fpn and len(self.anchor_sizes) != len(self.anchor_strides):
            raise ConfigError(
                "anchor_sizes",
                f"FPN needs one size per level ({len(self.anchor_strides)}), "
                f"got {self.anchor_sizes}",
            )
        if not self.use_fpn and "C4" not in self.backbone.out_strides:
            raise ConfigError("use_fpn", "the single-level detector needs a C4 backbone output")

    # -- derived -------------------------------------------------------------------------------

    @property
    def rpn_levels(self) -> tuple[int, ...]:
        """Pyramid levels the RPN runs on: FPN ``(2, ..., 6)``, else ``(4,)``."""
        if not self.use_fpn:
            return (4,)
        levels = sorted(int(name[1:]) for name in self.backbone.out_strides)
        return (*levels, levels[-1] + 1)

    @property
    def pooler_levels(self) -> tuple[int, ...]:
        """Levels the box head pools from: FPN ``(2, ..., 5)`` (not the max-pool level), else 4."""
        return self.rpn_levels[:-1] if self.use_fpn else self.rpn_levels

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Keys of :meth:`FasterRCNN.features`: ``("P2", ..., "P6")`` or ``("C4",)``."""
        prefix = "P" if self.use_fpn else "C"
        return tuple(f"{prefix}{level}" for level in self.rpn_levels)

    @property
    def feature_channels(self) -> int:
        """Channels of the maps the RPN and the box head read."""
        return self.fpn_channels if self.use_fpn else self.backbone.out_channels["C4"]

    @property
    def anchors_per_location(self) -> int:
        sizes = 1 if self.use_fpn else len(self.anchor_sizes)
        return sizes * len(self.aspect_ratios)

    @property
    def box_coder(self) -> detection_ops.BoxCoder:
        return detection_ops.BoxCoder(self.box_coder_weights)

    @property
    def num_proposals_train(self) -> int:
        """Proposals per image in training, before the GT boxes are appended."""
        if self.use_fpn:
            return self.rpn_fpn_post_nms_top_n_train
        return self.rpn_post_nms_top_n_train

    @property
    def num_proposals_test(self) -> int:
        return self.rpn_fpn_post_nms_top_n_test if self.use_fpn else self.rpn_post_nms_top_n_test

    def replace(self, **changes: Any) -> DetectorConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectorConfig:
        """The config of ``dataclasses.asdict(config)`` read back from JSON (lists -> tuples, the
        backbone's dict -> :class:`BackboneConfig`); unknown fields raise naming them."""
        if not isinstance(values, Mapping):
            raise ConfigError("detector", f"expected a mapping of fields, got {type(values)!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError("detector", f"unknown fields {unknown}")
        values = dict(values)
        backbone = values.get("backbone", "resnet50")
        if isinstance(backbone, Mapping):
            backbone_fields = {f.name for f in dataclasses.fields(BackboneConfig)}
            unknown = sorted(set(backbone) - backbone_fields)
            if unknown:
                raise ConfigError("backbone", f"unknown fields {unknown}")
            backbone = BackboneConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in backbone.items()}
            )
        values["backbone"] = backbone
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    # -- presets -------------------------------------------------------------------------------

    @classmethod
    def resnet50_fpn(cls, **overrides: Any) -> DetectorConfig:
        """maskrcnn_benchmark ``e2e_faster_rcnn_R_50_FPN_1x`` (classes set by ``num_classes``)."""
        return cls(**{"backbone": "resnet50", **overrides})

    @classmethod
    def resnext101_fpn(cls, **overrides: Any) -> DetectorConfig:
        """Scene-Graph-Benchmark's VG detector (``e2e_relation_X_101_32_8_FPN_1x.yaml`` +
        ``defaults.py``): X-101-32x8d FPN, VG anchor ratios from Neural Motifs, 6000 / 1000 RPN
        proposals, 256 RoIs with half positives and background below IoU 0.3, 4096-d head, 151
        classes; test score 0.01, NMS 0.3, 300 per class, duplicates filtered, 80 detections."""
        fields = {
            "backbone": "resnext101_32x8d",
            "aspect_ratios": (0.23232838, 0.63365731, 1.28478321, 3.15089189),
            "rpn_pre_nms_top_n_train": 6000,
            "rpn_pre_nms_top_n_test": 6000,
            "rpn_post_nms_top_n_train": 1000,
            "rpn_post_nms_top_n_test": 1000,
            "rpn_fpn_post_nms_top_n_train": 1000,
            "rpn_fpn_post_nms_top_n_test": 1000,
            "roi_batch_size_per_image": 256,
            "roi_positive_fraction": 0.5,
            "roi_bg_iou_thresh": 0.3,
            "representation_size": 4096,
            "num_classes": 151,
            "score_thresh": 0.01,
            "nms_thresh": 0.3,
            "post_nms_per_class_top_n": 300,
            "nms_filter_duplicates": True,
            "detections_per_image": 80,
        }
        return cls(**{**fields, **overrides})

    @classmethod
    def vgg16(cls, **overrides: Any) -> DetectorConfig:
        """VGG16 conv5_3 Faster R-CNN (the CCE paper's detector) with maskrcnn_benchmark's
        single-level RPN defaults (12000 / 2000 proposals in training, 6000 / 1000 at test) and a
        4096-d fc6 / fc7 head."""
        fields = {
            "backbone": "vgg16",
            "use_fpn": False,
            "anchor_strides": (16,),
            "rpn_pre_nms_top_n_train": 12000,
            "rpn_pre_nms_top_n_test": 6000,
            "rpn_post_nms_top_n_train": 2000,
            "rpn_post_nms_top_n_test": 1000,
            "representation_size": 4096,
        }
        return cls(**{**fields, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> DetectorConfig:
        """A CPU-test detector for 64 x 64 images: tiny ResNet FPN (16 channels), anchors 8..128,
        1023 anchors, 32 proposals, 32 RoIs, 32-d head, 3 classes + background, 10 detections."""
        fields = {
            "backbone": "tiny",
            "fpn_channels": 16,
            "anchor_sizes": (8, 16, 32, 64, 128),
            "rpn_pre_nms_top_n_train": 64,
            "rpn_pre_nms_top_n_test": 64,
            "rpn_post_nms_top_n_train": 32,
            "rpn_post_nms_top_n_test": 32,
            "rpn_fpn_post_nms_top_n_train": 32,
            "rpn_fpn_post_nms_top_n_test": 32,
            "rpn_batch_size_per_image": 64,
            "roi_batch_size_per_image": 32,
            "representation_size": 32,
            "num_classes": 4,
            "detections_per_image": 10,
        }
        return cls(**{**fields, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DetectorConfig:
        """The preset ``name`` (one of :data:`DETECTOR_PRESETS`) with ``overrides``."""
        if name not in DETECTOR_PRESETS:
            raise ConfigError("preset", f"must be one of {DETECTOR_PRESETS}, got {name!r}")
        return getattr(cls, name)(**overrides)


DETECTOR_PRESETS = ("tiny", "resnet50_fpn", "resnext101_fpn", "vgg16")


def detector_trainable_mask(config: DetectorConfig, params: Mapping[str, Any]) -> Any:
    """Like :func:`~sgg_jax.detection.backbone.trainable_mask` for the whole detector: False for the
    frozen backbone stages, True elsewhere (use with ``optax.masked``)."""
    flat = {path: True for path in traverse_util.flatten_dict(dict(params))}
    if "backbone" in params:
        backbone_mask = trainable_mask(config.backbone, params["backbone"])
        for path, value in traverse_util.flatten_dict(dict(backbone_mask)).items():
            flat[("backbone", *path)] = value
    return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------
# Matching, sampling, losses (pure functions on one image unless said otherwise)
# ----------------------------------------------------------------------------------------------


def match_boxes(
    quality: jax.Array,
    gt_mask: jax.Array,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool,
) -> jax.Array:
    """maskrcnn_benchmark's ``Matcher`` on an IoU matrix with padded ground truth.

    Each prediction takes the GT of highest IoU: ``>= high_threshold`` -> that GT's index;
    ``< low_threshold`` -> :data:`BELOW_LOW_THRESHOLD`; in between -> :data:`BETWEEN_THRESHOLDS`.
    With ``allow_low_quality_matches``, every prediction whose IoU with some GT equals that GT's
    highest IoU (ties included) keeps its best GT whatever the thresholds (only for a highest IoU
    above 0; upstream also matches zero-IoU predictions).

    Args:
      quality: [N, G] IoU of every prediction with every GT.
      gt_mask: [G] bool, False for padded GT (never matched).
      high_threshold, low_threshold: the thresholds.
      allow_low_quality_matches: see above.

    Returns:
      [N] int32 matched GT index, or -1 / -2.
    """
    quality = jnp.where(gt_mask[None, :], quality, -1.0)
    matched_vals = jnp.max(quality, axis=1)
    best = jnp.argmax(quality, axis=1).astype(jnp.int32)
    matches = jnp.where(
        matched_vals >= high_threshold,
        best,
        jnp.where(matched_vals >= low_threshold, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD),
    ).astype(jnp.int32)
    if allow_low_quality_matches:
        highest = jnp.max(quality, axis=0)  # [G]
        is_best = (quality == highest[None, :]) & gt_mask[None, :] & (highest[None, :] > 0)
        matches = jnp.where(jnp.any(is_best, axis=1), best, matches)
    return matches


def sample_balanced(
    positive: jax.Array,
    negative: jax.Array,
    key: jax.Array,
    batch_size: int,
    positive_fraction: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """maskrcnn_benchmark's ``BalancedPositiveNegativeSampler`` with static shapes.

    Keeps ``min(#positive, int(batch_size * positive_fraction))`` random positives and fills the
    rest of ``batch_size`` with random negatives (as many as exist). Random subsets: one uniform
    key per candidate, the largest keys win.

    Args:
      positive, negative: [N] bool, disjoint.
      key: a ``jax.random`` key.
      batch_size: static number of slots.
      positive_fraction: most positives as a fraction of ``batch_size``.

    Returns:
      indices: [batch_size] int32 into N (positives first, then negatives, then padding 0).
      is_positive: [batch_size] bool.
      valid: [batch_size] bool, False for padding.
    """
    num = positive.shape[0]
    max_positive = int(batch_size * positive_fraction)
    keys = jax.random.uniform(key, (num,))
    slots = jnp.arange(batch_size)
    if max_positive > 0:
        positive_index, _, positive_valid = detection_ops.top_k(keys, positive, max_positive)
        num_positive = jnp.sum(positive_valid.astype(jnp.int32))
        positive_at = positive_index[jnp.minimum(slots, max_positive - 1)]
    else:
        num_positive = jnp.zeros((), jnp.int32)
        positive_at = jnp.zeros((batch_size,), jnp.int32)
    negative_index, _, negative_valid = detection_ops.top_k(keys, negative, batch_size)
    negative_slot = jnp.clip(slots - num_positive, 0, batch_size - 1)
    is_positive = slots < num_positive
    indices = jnp.where(is_positive, positive_at, negative_index[negative_slot])
    valid = is_positive | negative_valid[negative_slot]
    return indices.astype(jnp.int32), is_positive, valid


def smooth_l1_loss(difference: jax.Array, beta: float) -> jax.Array:
    """maskrcnn_benchmark's elementwise smooth-L1: ``0.5 x^2 / beta`` if ``|x| < beta`` else
    ``|x| - 0.5 beta`` (plain L1 for ``beta = 0``)."""
    abs_diff = jnp.abs(difference)
    if beta <= 0:
        return abs_diff
    return jnp.where(abs_diff < beta, 0.5 * abs_diff**2 / beta, abs_diff - 0.5 * beta)


def _masked_mean_denominator(mask: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)


def _rpn_targets_one_image(anchors, visible, gt_boxes, gt_mask, key, config: DetectorConfig):
    """Sampled anchors of one image: indices, is_positive, valid [S] and deltas targets [S, 4]."""
    iou = box_ops.pairwise_iou(anchors, gt_boxes, plus_one=True)
    matches = match_boxes(iou, gt_mask, config.rpn_fg_iou_thresh, config.rpn_bg_iou_thresh, True)
    positive = (matches >= 0) & visible
    negative = (matches == BELOW_LOW_THRESHOLD) & visible
    indices, is_positive, valid = sample_balanced(
        positive,
        negative,
        key,
        config.rpn_batch_size_per_image,
        config.rpn_positive_fraction,
    )
    matched_gt = gt_boxes[jnp.maximum(matches[indices], 0)]
    targets = detection_ops.RPN_BOX_CODER.encode(matched_gt, anchors[indices])
    targets = jnp.where((is_positive & valid)[:, None], targets, 0.0)
    return indices, is_positive, valid, targets


def _roi_targets_one_image(proposals, proposal_mask, gt_boxes, gt_labels, gt_mask, key, config):
    """Sampled RoIs of one image: boxes [S, 4], labels [S] (0 = background), targets [S, 4], valid."""
    iou = box_ops.pairwise_iou(proposals, gt_boxes, plus_one=True)
    matches = match_boxes(iou, gt_mask, config.roi_fg_iou_thresh, config.roi_bg_iou_thresh, False)
    positive = (matches >= 0) & proposal_mask
    negative = (matches == BELOW_LOW_THRESHOLD) & proposal_mask
    indices, is_positive, valid = sample_balanced(
        positive,
        negative,
        key,
        config.roi_batch_size_per_image,
        config.roi_positive_fraction,
    )
    boxes = proposals[indices]
    matched = jnp.maximum(matches[indices], 0)
    labels = jnp.where(is_positive & valid, gt_labels[matched], 0).astype(jnp.int32)
    targets = config.box_coder.encode(gt_boxes[matched], boxes)
    targets = jnp.where((is_positive & valid)[:, None], targets, 0.0)
    return boxes, labels, targets, valid


def _stack_levels(per_level: Sequence[jax.Array], fill: float) -> jax.Array:
    """[L, N_max, ...]: levels padded with ``fill`` to the longest (one op for all levels)."""
    longest = max(level.shape[0] for level in per_level)
    return jnp.stack(
        [
            jnp.pad(
                jnp.asarray(level),
                [(0, longest - level.shape[0])] + [(0, 0)] * (level.ndim - 1),
                constant_values=fill,
            )
            for level in per_level
        ]
    )


def _proposals_one_image(
    objectness, deltas, anchors, image_size, *, pre_n, post_n, final_n, config
):
    """RPN post-processing of one image.

    The levels are padded to one length (padding invalid) so that the top-k, decoding and NMS of
    all levels are single ops (NMS: one ``vmap``-ed while loop), which keeps compilation short.

    Args:
      objectness: [L, N_max] logits (levels padded).
      deltas: [L, N_max, 4].
      anchors: [L, N_max, 4].
      image_size: [2] ``(height, width)``.
      pre_n, post_n, final_n: per-level pre-NMS / post-NMS counts and the final count.

    Returns:
      boxes [final_n, 4], logits [final_n] (-inf for padding), valid [final_n].
    """
    longest = objectness.shape[1]
    k = min(pre_n, longest)
    index, scores, valid = detection_ops.top_k(objectness, jnp.isfinite(objectness), k)
    boxes = detection_ops.RPN_BOX_CODER.decode(
        jnp.take_along_axis(deltas, index[..., None], axis=1),
        jnp.take_along_axis(anchors, index[..., None], axis=1),
    )
    boxes = detection_ops.clip_boxes_to_image(boxes, image_size[None])
    valid = valid & detection_ops.small_boxes_mask(boxes, config.rpn_min_size)
    boxes = jnp.where(valid[..., None], boxes, 0.0)

    def level_nms(boxes, scores, valid):
        return detection_ops.nms(
            boxes, scores, valid, config.rpn_nms_thresh, min(post_n, k), plus_one=True
        )

    keep, keep_valid = jax.vmap(level_nms)(boxes, scores, valid)  # [L, post]
    boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1).reshape(-1, 4)
    scores = jnp.where(keep_valid, jnp.take_along_axis(scores, keep, axis=1), -jnp.inf).reshape(-1)
    index, scores, valid = detection_ops.top_k(scores, keep_valid.reshape(-1), final_n)
    return jnp.where(valid[:, None], boxes[index], 0.0), scores, valid


def postprocess_detections(probs, boxes, proposal_mask, config: DetectorConfig):
    """Box-head post-processing of one image (maskrcnn_benchmark / SGB ``PostProcessor``).

    Per class ``1..K-1``: boxes with probability ``> score_thresh`` go through greedy NMS
    (``nms_thresh``, inclusive-pixel IoU, at most ``post_nms_per_class_top_n`` kept); the NMS of
    all classes runs as one ``vmap``-ed while loop. Then either every surviving (box, class) is a
    candidate, or with ``nms_filter_duplicates`` each proposal's best surviving class only; the
    ``detections_per_image`` best candidates by probability are returned, padded.

    Args:
      probs: [R, K] class probabilities.
      boxes: [R, K, 4] decoded, clipped boxes of every class.
      proposal_mask: [R] bool.

    Returns:
      dict of boxes [D, 4], labels [D], scores [D], mask [D], proposal_index [D].
    """
    num_rois, num_classes = probs.shape
    foreground = probs[:, 1:]  # [R, K - 1]
    candidates = proposal_mask[:, None] & (foreground > config.score_thresh)
    per_class = num_rois
    if config.post_nms_per_class_top_n is not None:
        per_class = min(per_class, config.post_nms_per_class_top_n)

    def class_nms(class_boxes, class_scores, class_valid):
        return detection_ops.nms(
            class_boxes, class_scores, class_valid, config.nms_thresh, per_class, plus_one=True
        )

    keep, keep_valid = jax.vmap(class_nms)(
        jnp.swapaxes(boxes[:, 1:], 0, 1), foreground.T, candidates.T
    )  # [K - 1, per_class]
    class_index = jnp.broadcast_to(jnp.arange(num_classes - 1)[:, None], keep.shape)
    survived = (
        jnp.zeros((num_rois, num_classes - 1), bool)
        .at[keep.reshape(-1), class_index.reshape(-1)]
        .max(keep_valid.reshape(-1))
    )
    num_out = config.detections_per_image
    if config.nms_filter_duplicates:
        kept_scores = jnp.where(survived, foreground, -1.0)
        best_class = jnp.argmax(kept_scores, axis=1)
        best_score = jnp.max(kept_scores, axis=1)
        index, scores, valid = detection_ops.top_k(best_score, best_score > 0, num_out)
        roi = index
        label = best_class[index] + 1
    else:
        flat_valid = survived.reshape(-1)
        index, scores, valid = detection_ops.top_k(foreground.reshape(-1), flat_valid, num_out)
        roi, label = jnp.divmod(index, num_classes - 1)
        label = label + 1
    det_boxes = boxes[roi, label]
    return {
        "boxes": jnp.where(valid[:, None], det_boxes, 0.0),
        "labels": jnp.where(valid, label, 0).astype(jnp.int32),
        "scores": jnp.where(valid, scores, 0.0),
        "mask": valid,
        "proposal_index": jnp.where(valid, roi, 0).astype(jnp.int32),
    }


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, 1x1 objectness (``A``) and 1x1 box deltas (``4A``); weights
    normal(0.01), biases 0 (maskrcnn_benchmark ``RPNHead``).

    Call ``(feature [B, H, W, C]) -> (logits [B, H*W*A], deltas [B, H*W*A, 4])`` in the anchor
    order of :func:`~sgg_jax.detection.detection_ops.grid_anchors` (cell-major, anchor-minor).
    """

    channels: int
    num_anchors: int
    dtype: Any = jnp.float32

    def setup(self):
        init = nn.initializers.normal(0.01)

        def conv(features, kernel, name):
            return nn.Conv(
                features,
                (kernel, kernel),
                padding=((kernel // 2, kernel // 2),) * 2,
                kernel_init=init,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=name,
            )

        self.conv = conv(self.channels, 3, "conv")
        self.cls_logits = conv(self.num_anchors, 1, "cls_logits")
        self.bbox_pred = conv(4 * self.num_anchors, 1, "bbox_pred")

    def __call__(self, feature: jax.Array) -> tuple[jax.Array, jax.Array]:
        hidden = nn.relu(self.conv(feature))
        batch = feature.shape[0]
        logits = self.cls_logits(hidden).astype(jnp.float32).reshape(batch, -1)
        deltas = self.bbox_pred(hidden).astype(jnp.float32).reshape(batch, -1, 4)
        return logits, deltas


class FasterRCNN(nn.Module):
    """Faster R-CNN (see the module docstring); variables ``backbone``, ``fpn``, ``rpn_head``,
    ``fc6``, ``fc7``, ``cls_score``, ``bbox_pred`` (frozen-BN statistics in ``"constants"``).

    Methods (each usable with ``model.apply(variables, ..., method=...)``):

    * ``__call__(images, image_sizes, *, train, gt_boxes, gt_labels, gt_mask, rng)``: the detector.
    * :meth:`features` ``(images) -> {"P2": ..., "P6": ...}`` (or ``{"C4": ...}``).
    * :meth:`box_features` ``(features, boxes, box_mask) -> [B, R, representation_size]``: the
      pooled fc7 features of any boxes, e.g. detections or GT boxes for the relation heads.
    * :meth:`detect` ``(features, image_sizes) -> detections``: inference on precomputed maps.
    * :meth:`object_logits` ``(box_features) -> [B, R, num_classes]``.
    * :meth:`box_regression` ``(box_features) -> [B, R, num_classes, 4]`` class-specific deltas.
    """

    config: DetectorConfig

    def setup(self):
        cfg = self.config
        dtype = cfg.backbone.compute_dtype
        self.backbone = build_backbone(cfg.backbone)
        if cfg.use_fpn:
            self.fpn = FPN(out_channels=cfg.fpn_channels, dtype=dtype)
        self.rpn_head = RPNHead(cfg.feature_channels, cfg.anchors_per_location, dtype=dtype)
        fc_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1)
        self.fc6 = nn.Dense(cfg.representation_size, kernel_init=fc_init, dtype=dtype)
        self.fc7 = nn.Dense(cfg.representation_size, kernel_init=fc_init, dtype=dtype)
        self.cls_score = nn.Dense(cfg.num_classes, kernel_init=nn.initializers.normal(0.01))
        self.bbox_pred = nn.Dense(4 * cfg.num_classes, kernel_init=nn.initializers.normal(0.001))

    # -- building blocks -----------------------------------------------------------------------

    def features(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Feature maps of the RPN / box head.

        Args:
          images: [B, H, W, 3] normalised as the backbone's weights expect; with FPN they are
            zero-padded to multiples of 32 (boxes keep their coordinates).
          train: batch-statistics mode for ``norm="bn"`` backbones.

        Returns:
          ``{"P2": [B, H/4, W/4, fpn_channels], ..., "P6": ...}`` or ``{"C4": [B, H/16, W/16, C]}``.
        """
        cfg = self.config
        images = jnp.asarray(images, jnp.float32)
        if cfg.use_fpn:
            images = pad_to_multiple(images, SIZE_DIVISIBILITY)
        body = self.backbone(images, train=train)
        if cfg.use_fpn:
            return self.fpn(body)
        return {"C4": body["C4"]}

    def box_features(
        self, features: Mapping[str, jax.Array], boxes: jax.Array, box_mask: jax.Array
    ) -> jax.Array:
        """fc7 features of boxes (RoIAlign -> flatten (C, H, W) -> fc6 + ReLU -> fc7 + ReLU).

        Args:
          features: the output of :meth:`features`.
          boxes: [B, R, 4] ``x1, y1, x2, y2`` in image pixels.
          box_mask: [B, R] bool.

        Returns:
          [B, R, representation_size] float32; zero where ``box_mask`` is False.
        """
        cfg = self.config
        boxes = jnp.asarray(boxes, jnp.float32)
        box_mask = jnp.asarray(box_mask, bool)
        if cfg.use_fpn:
            pooled = multilevel_roi_align(
                {level: features[f"P{level}"] for level in cfg.pooler_levels},
                boxes,
                box_mask,
                output_size=cfg.pooler_resolution,
                sampling_ratio=cfg.pooler_sampling_ratio,
                box_chunk_size=cfg.box_chunk_size,
            )
        else:
            pooled = roi_align_batch(
                features["C4"],
                boxes,
                box_mask,
                output_size=cfg.pooler_resolution,
                spatial_scale=1.0 / 16,
                sampling_ratio=cfg.pooler_sampling_ratio,
                box_chunk_size=cfg.box_chunk_size,
            )
        batch, num_boxes = boxes.shape[:2]
        # PyTorch flattens [R, C, PH, PW]: keep its order so that converted fc6 weights load as is.
        flat = jnp.transpose(pooled, (0, 1, 4, 2, 3)).reshape(batch, num_boxes, -1)
        hidden = nn.relu(self.fc6(flat))
        hidden = nn.relu(self.fc7(hidden)).astype(jnp.float32)
        return jnp.where(box_mask[..., None], hidden, 0.0)

    def object_logits(self, box_features: jax.Array) -> jax.Array:
        """Class logits [..., num_classes] (column 0 = background) of :meth:`box_features`."""
        return self.cls_score(box_features).astype(jnp.float32)

    def box_regression(self, box_features: jax.Array) -> jax.Array:
        """Class-specific box deltas [..., num_classes, 4] (``ROI_BOX_CODER`` units)."""
        deltas = self.bbox_pred(box_features).astype(jnp.float32)
        return deltas.reshape(*deltas.shape[:-1], self.config.num_classes, 4)

    def _rpn(self, features):
        """Per-level RPN logits [B, N_l], deltas [B, N_l, 4] and numpy anchors [N_l, 4]."""
        cfg = self.config
        grids = [features[name].shape[1:3] for name in cfg.feature_names]
        anchors = detection_ops.multilevel_anchors(
            grids, cfg.anchor_strides, cfg.anchor_sizes, cfg.aspect_ratios
        )
        logits, deltas = [], []
        for name in cfg.feature_names:
            level_logits, level_deltas = self.rpn_head(features[name])
            logits.append(level_logits)
            deltas.append(level_deltas)
        return logits, deltas, anchors

    # -- the detector --------------------------------------------------------------------------

    def __call__(
        self,
        images: jax.Array,
        image_sizes: jax.Array,
        *,
        train: bool = False,
        gt_boxes: jax.Array | None = None,
        gt_labels: jax.Array | None = None,
        gt_mask: jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> dict[str, Any]:
        """Runs the detector.

        Args:
          images: [B, H, W, 3] float, normalised for the backbone.
          image_sizes: [B, 2] ``(height, width)`` of each image before padding.
          train: training mode: needs ``gt_*`` and ``rng``; returns losses instead of detections.
          gt_boxes: [B, G, 4] ground-truth boxes in pixels (G >= 1 static budget).
          gt_labels: [B, G] int labels >= 1.
          gt_mask: [B, G] bool, False for padding (an all-False row is an image without objects).
          rng: ``jax.random`` key for the anchor and RoI subsampling.

        Returns:
          dict with ``proposals`` [B, Npost(+G), 4], ``proposal_scores`` (objectness probability),
          ``proposal_mask``; ``features`` (the maps of :meth:`features`); at inference
          ``detections`` = {``boxes`` [B, D, 4], ``labels`` [B, D], ``scores`` [B, D], ``mask``
          [B, D], ``proposal_index`` [B, D]}; in training ``sampled_boxes`` [B, S, 4],
          ``sampled_labels``, ``sampled_mask`` and ``losses`` = {``rpn_objectness``,
          ``rpn_box``, ``box_classifier``, ``box_regression``, ``total``} (float32 scalars).
        """
        cfg = self.config
        image_sizes = jnp.asarray(image_sizes, jnp.float32)
        features = self.features(images, train=train)
        logits, deltas, anchors = self._rpn(features)
        proposals, proposal_scores, proposal_mask = self._proposals(
            logits, deltas, anchors, image_sizes, train=train
        )
        outputs: dict[str, Any] = {"features": features}
        if not train:
            outputs.update(
                proposals=proposals, proposal_scores=proposal_scores, proposal_mask=proposal_mask
            )
            outputs["detections"] = self._detect(features, proposals, proposal_mask, image_sizes)
            return outputs

        if gt_boxes is None or gt_labels is None or gt_mask is None or rng is None:
            raise ConfigError("train", "training needs gt_boxes, gt_labels, gt_mask and rng")
        gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
        if gt_boxes.ndim != 3 or gt_boxes.shape[1] < 1:
            raise ConfigError("gt_boxes", f"must be [B, G >= 1, 4], got {gt_boxes.shape}")
        gt_mask = jnp.asarray(gt_mask, bool)
        gt_labels = jnp.asarray(gt_labels, jnp.int32)
        gt_boxes = jnp.where(gt_mask[..., None], gt_boxes, 0.0)
        batch = gt_boxes.shape[0]
        rpn_key, roi_key = jax.random.split(rng)

        # RPN loss on sampled anchors.
        all_anchors = jnp.asarray(np.concatenate(anchors))
        all_logits = jnp.concatenate(logits, axis=1)
        all_deltas = jnp.concatenate(deltas, axis=1)
        visible = detection_ops.anchor_visibility(
            all_anchors[None], image_sizes, cfg.straddle_thresh
        )  # [B, N]

        def rpn_targets(image_visible, image_gt, image_gt_mask, key):
            return _rpn_targets_one_image(
                all_anchors, image_visible, image_gt, image_gt_mask, key, cfg
            )

        indices, is_positive, rpn_valid, rpn_targets_ = jax.vmap(rpn_targets)(
            visible, gt_boxes, gt_mask, jax.random.split(rpn_key, batch)
        )
        sampled_logits = jnp.take_along_axis(all_logits, indices, axis=1)
        sampled_deltas = jnp.take_along_axis(all_deltas, indices[..., None], axis=1)
        denominator = _masked_mean_denominator(rpn_valid)
        bce = _sigmoid_bce(sampled_logits, is_positive.astype(jnp.float32))
        rpn_objectness = jnp.sum(jnp.where(rpn_valid, bce, 0.0)) / denominator
        rpn_box_terms = smooth_l1_loss(sampled_deltas - rpn_targets_, cfg.rpn_smooth_l1_beta)
        rpn_box = jnp.sum(jnp.where((is_positive & rpn_valid)[..., None], rpn_box_terms, 0.0))
        rpn_box = rpn_box / denominator

        # Box head on sampled proposals (+ GT boxes).
        if cfg.add_gt_proposals:
            proposals = jnp.concatenate([proposals, gt_boxes], axis=1)
            proposal_scores = jnp.concatenate(
                [proposal_scores, gt_mask.astype(jnp.float32)], axis=1
            )
            proposal_mask = jnp.concatenate([proposal_mask, gt_mask], axis=1)
        outputs.update(
            proposals=proposals, proposal_scores=proposal_scores, proposal_mask=proposal_mask
        )

        def roi_targets(image_proposals, image_mask, image_gt, image_labels, image_gt_mask, key):
            return _roi_targets_one_image(
                image_proposals, image_mask, image_gt, image_labels, image_gt_mask, key, cfg
            )

        roi_boxes, roi_labels, roi_targets_, roi_valid = jax.vmap(roi_targets)(
            proposals, proposal_mask, gt_boxes, gt_labels, gt_mask, jax.random.split(roi_key, batch)
        )
        roi_features = self.box_features(features, roi_boxes, roi_valid)
        class_logits = self.object_logits(roi_features)
        regression = self.box_regression(roi_features)
        roi_denominator = _masked_mean_denominator(roi_valid)
        cross_entropy = -jnp.take_along_axis(
            jax.nn.log_softmax(class_logits, axis=-1), roi_labels[..., None], axis=-1
        )[..., 0]
        box_classifier = jnp.sum(jnp.where(roi_valid, cross_entropy, 0.0)) / roi_denominator
        predicted = jnp.take_along_axis(regression, roi_labels[..., None, None], axis=2)[:, :, 0]
        box_terms = smooth_l1_loss(predicted - roi_targets_, cfg.box_smooth_l1_beta)
        roi_positive = roi_valid & (roi_labels > 0)
        box_regression = jnp.sum(jnp.where(roi_positive[..., None], box_terms, 0.0))
        box_regression = box_regression / roi_denominator

        losses = {
            "rpn_objectness": rpn_objectness,
            "rpn_box": rpn_box,
            "box_classifier": box_classifier,
            "box_regression": box_regression,
        }
        losses["total"] = sum(losses.values())
        outputs.update(
            sampled_boxes=roi_boxes,
            sampled_labels=roi_labels,
            sampled_mask=roi_valid,
            losses=losses,
        )
        return outputs

    def _proposals(self, logits, deltas, anchors, image_sizes, *, train: bool):
        """RPN post-processing of every image -> (proposals, objectness probability, mask)."""
        cfg = self.config
        if train:
            pre_n, post_n = cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train
            final_n = cfg.num_proposals_train
        else:
            pre_n, post_n = cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test
            final_n = cfg.num_proposals_test

        stacked_anchors = _stack_levels(anchors, 0.0)  # [L, N_max, 4]

        def propose(image_logits, image_deltas, image_size):
            return _proposals_one_image(
                _stack_levels(image_logits, -jnp.inf),
                _stack_levels(image_deltas, 0.0),
                stacked_anchors,
                image_size,
                pre_n=pre_n,
                post_n=post_n,
                final_n=final_n,
                config=cfg,
            )

        proposals, proposal_logits, proposal_mask = jax.vmap(propose)(
            jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas), image_sizes
        )
        proposal_scores = jnp.where(proposal_mask, jax.nn.sigmoid(proposal_logits), 0.0)
        return proposals, proposal_scores, proposal_mask

    def detect(
        self, features: Mapping[str, jax.Array], image_sizes: jax.Array
    ) -> dict[str, jax.Array]:
        """Inference from feature maps already computed by :meth:`features` (e.g. shared with
        the relation head's RoI features): RPN proposals, box head, post-processing.

        Args:
          features: the output of :meth:`features`.
          image_sizes: [B, 2] ``(height, width)`` of each image before padding.

        Returns:
          the ``detections`` dict of :meth:`__call__` (boxes, labels, scores, mask,
          proposal_index).
        """
        image_sizes = jnp.asarray(image_sizes, jnp.float32)
        logits, deltas, anchors = self._rpn(features)
        proposals, _, proposal_mask = self._proposals(
            logits, deltas, anchors, image_sizes, train=False
        )
        return self._detect(features, proposals, proposal_mask, image_sizes)

    def _detect(self, features, proposals, proposal_mask, image_sizes):
        """Box head + post-processing on the proposals -> padded detections."""
        cfg = self.config
        roi_features = self.box_features(features, proposals, proposal_mask)
        probs = jax.nn.softmax(self.object_logits(roi_features), axis=-1)
        boxes = cfg.box_coder.decode(self.box_regression(roi_features), proposals[:, :, None, :])
        batch, num_rois, num_classes = probs.shape
        boxes = detection_ops.clip_boxes_to_image(
            boxes.reshape(batch, num_rois * num_classes, 4), image_sizes
        ).reshape(batch, num_rois, num_classes, 4)

        def detect(image_probs, image_boxes, image_mask):
            return postprocess_detections(image_probs, image_boxes, image_mask, cfg)

        return jax.vmap(detect)(probs, boxes, proposal_mask)


def _sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Elementwise ``binary_cross_entropy_with_logits`` (stable: ``max(x, 0) - x y + log1p(e^-|x|)``)."""
    return jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
