"""SGDet: relation heads on the detector's boxes instead of the ground-truth boxes.

In Scene Graph Detection the relation model sees no ground-truth box: the detector's detections
become the objects of the image and every ordered pair of distinct detections is a relation
candidate. This module turns a batch of ground truth (boxes, labels, relations, pixels) plus the
detections of its images into a :class:`~sgg_jax.structures.SceneGraphBatch` over the detections,
with static shapes, inside ``jit`` (vmapped over images). The relation models
(:class:`~sgg_jax.relation.penet.PENet`, :class:`~sgg_jax.relation.motifs.MotifNet`) call it with
``task="sgdet"`` and a ``"roi"`` feature source.

Training targets follow Scene-Graph-Benchmark (``roi_box_head`` ``assign_label_to_proposals`` and
``RelationSampling.detect_relsample``):

* object labels — each detection takes the label of the ground-truth box it overlaps most when that
  IoU is ``>= fg_iou_thresh`` (the box head's ``Matcher``, no low-quality matches), else 0
  (background); these are the targets of the relation model's object classifier;
* ``is_match[g, d]`` — detection ``d`` covers ground-truth object ``g``: same label (its assigned
  label equals ``g``'s) and IoU ``> fg_iou_thresh`` (SGB's strict ``>``);
* pair labels — the ordered pair of detections ``(i, j)``, ``i != j``, is foreground with predicate
  ``p`` when some ground-truth relation ``(s, o, p)`` has ``is_match[s, i]`` and ``is_match[o, j]``.
  SGB lists one row per (pair, relation) and samples rows; here a pair carries one label, drawn at
  random among the relations it matches (so a pair matching two relations sees each half of the
  time over training);
* sampling — at most ``train_fg`` foreground pairs (SGB: 64 of 256), the rest of the
  ``train_pairs`` budget filled with random background pairs (both sampled uniformly,
  :func:`~sgg_jax.detection.detector.sample_balanced`).

The ground-truth relations are the foreground pairs of the input batch (``pair_labels > 0``): a
training loader samples at most ``max_fg`` of them per image, an evaluation loader keeps all; an
image with several predicates on one pair lists the pair once per predicate in neither, as the
pipeline keeps one label per pair slot.

At inference every ordered pair of valid detections is scored (``D (D - 1)`` static pairs for
``D = detections_per_image``; SGB uses all pairs too) and the detector's labels fill
``batch.labels``. Box coordinates stay in the pixels the detector saw (the resized image); map them
back with the image transform's scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax import boxes as box_ops
from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraphBatch


@dataclasses.dataclass(frozen=True)
class SGDetConfig:
    """How detections become relation candidates (module docstring).

    Attributes:
      fg_iou_thresh: IoU for a detection to take a ground-truth label / match a relation's object
        (SGB ``ROI_HEADS.FG_IOU_THRESHOLD`` 0.5).
      require_label_match: a detection matches a ground-truth object only when its assigned label
        is the object's (SGB); False matches on IoU alone.
      train_pairs: relation candidates per training image (SGB ``BATCH_SIZE_PER_IMAGE`` 256).
      train_fg: most foreground pairs among them (SGB ``POSITIVE_FRACTION`` 0.25 -> 64).
    """

    fg_iou_thresh: float = 0.5
    require_label_match: bool = True
    train_pairs: int = 256
    train_fg: int = 64

    def __post_init__(self):
        value = self.fg_iou_thresh
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError("fg_iou_thresh", f"must be a number in [0, 1], got {value!r}")
        for field in ("train_pairs", "train_fg"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(field, f"must be a positive integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        if self.train_fg > self.train_pairs:
            raise ConfigError("train_fg", f"{self.train_fg} exceeds train_pairs={self.train_pairs}")
        if not isinstance(self.require_label_match, bool | np.bool_):
            raise ConfigError("require_label_match", "must be a bool")
        object.__setattr__(self, "fg_iou_thresh", float(self.fg_iou_thresh))
        object.__setattr__(self, "require_label_match", bool(self.require_label_match))

    @classmethod
    def from_mapping(cls, values: SGDetConfig | Mapping[str, Any] | None) -> SGDetConfig:
        """``values`` as a config (None = the defaults; a dict from a JSON config works)."""
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError("sgdet", f"must be an SGDetConfig or a mapping, got {values!r}")
        return cls(**dict(values))


def all_pairs(num_objects: int) -> np.ndarray:
    """int32[N (N - 1), 2]: every ordered pair ``(i, j)``, ``i != j``, subject-major."""
    subjects, objects = np.meshgrid(np.arange(num_objects), np.arange(num_objects), indexing="ij")
    keep = subjects != objects
    return np.stack([subjects[keep], objects[keep]], axis=-1).astype(np.int32)


def assign_labels(
    det_boxes: jax.Array,
    det_mask: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_mask: jax.Array,
    config: SGDetConfig,
) -> tuple[jax.Array, jax.Array]:
    """Ground-truth labels of one image's detections and their matches to the GT objects.

    Args:
      det_boxes: [D, 4]; det_mask: [D] bool.
      gt_boxes: [G, 4]; gt_labels: [G] (1-based); gt_mask: [G] bool.
      config: thresholds.

    Returns:
      ``(labels [D] int32, is_match [G, D] bool)``; labels 0 for background / padded detections.
    """
    iou = box_ops.pairwise_iou(gt_boxes, det_boxes, plus_one=True)  # [G, D], SGB boxlist_iou
    valid = gt_mask[:, None] & det_mask[None, :]
    iou = jnp.where(valid, iou, -1.0)
    best = jnp.argmax(iou, axis=0)  # [D]
    best_iou = jnp.max(iou, axis=0)
    labels = jnp.where(
        det_mask & (best_iou >= config.fg_iou_thresh), gt_labels[best].astype(jnp.int32), 0
    )
    is_match = valid & (iou > config.fg_iou_thresh)
    if config.require_label_match:
        is_match = is_match & (gt_labels[:, None] == labels[None, :])
    return labels, is_match


def pair_labels_of_matches(
    is_match: jax.Array,
    gt_pairs: jax.Array,
    gt_pair_labels: jax.Array,
    gt_pair_mask: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """Predicate of every ordered detection pair of one image (0 = background).

    Args:
      is_match: [G, D] detection ``d`` covers GT object ``g``.
      gt_pairs: [Q, 2] GT object pairs; gt_pair_labels: [Q]; gt_pair_mask: [Q].
      key: draws one relation when a detection pair matches several.

    Returns:
      int32[D, D] with zeros on the diagonal.
    """
    relation = gt_pair_mask & (gt_pair_labels > 0)  # [Q]
    subject_match = is_match[gt_pairs[:, 0]]  # [Q, D]
    object_match = is_match[gt_pairs[:, 1]]
    hits = relation[:, None, None] & subject_match[:, :, None] & object_match[:, None, :]
    num = is_match.shape[1]
    hits = hits & ~jnp.eye(num, dtype=bool)[None]
    draws = jax.random.uniform(key, (gt_pairs.shape[0],))
    weights = jnp.where(hits, draws[:, None, None], -1.0)
    chosen = jnp.argmax(weights, axis=0)  # [D, D]
    return jnp.where(jnp.any(hits, axis=0), gt_pair_labels[chosen].astype(jnp.int32), 0)


def detection_batch(
    batch: SceneGraphBatch,
    detections: Mapping[str, jax.Array],
    *,
    train: bool,
    config: SGDetConfig,
    key: jax.Array | None = None,
) -> SceneGraphBatch:
    """The batch of relation candidates over the detections (module docstring).

    Args:
      batch: the ground-truth batch the detections were computed on (boxes in the detector's
        pixels; in training its ``labels`` / ``pairs`` / ``pair_labels`` are the targets).
      detections: ``boxes`` [B, D, 4], ``labels`` [B, D], ``mask`` [B, D] (the detector's output).
      train: sample ``config.train_pairs`` candidates with targets; else every ordered pair of
        detections, labels from the detector, ``pair_labels`` 0.
      config: matching and sampling options.
      key: ``jax.random`` key (training only).

    Returns:
      a :class:`SceneGraphBatch` with N = D objects (the detections) and P = ``train_pairs``
      (training) or ``D (D - 1)`` (inference) pairs; ``images``, ``image_size``, ``graph_mask``
      and ``image_index`` are the input's.
    """
    det_boxes = jax.lax.stop_gradient(jnp.asarray(detections["boxes"], jnp.float32))
    det_mask = jnp.asarray(detections["mask"], bool) & jnp.asarray(batch.graph_mask, bool)[:, None]
    det_boxes = jnp.where(det_mask[..., None], det_boxes, 0.0)
    num_images, num_dets = det_mask.shape
    candidates = jnp.asarray(all_pairs(num_dets))  # [D(D-1), 2]
    zeros = jnp.zeros((num_images,), jnp.int32)
    common = dict(
        boxes=det_boxes,
        object_mask=det_mask,
        image_size=batch.image_size,
        graph_mask=batch.graph_mask,
        image_index=batch.image_index,
        num_truncated_objects=zeros,
        num_truncated_pairs=zeros,
        images=batch.images,
    )
    if not train:
        labels = jnp.where(det_mask, jnp.asarray(detections["labels"], jnp.int32), 0)
        pair_mask = det_mask[:, candidates[:, 0]] & det_mask[:, candidates[:, 1]]
        pairs = jnp.where(pair_mask[..., None], candidates[None], 0)
        return SceneGraphBatch(
            labels=labels,
            pairs=pairs,
            pair_labels=jnp.zeros(pair_mask.shape, jnp.int32),
            pair_mask=pair_mask,
            **common,
        )
    if key is None:
        raise ConfigError("key", "SGDet training samples relation candidates and needs a key")
    from sgg_jax.detection.detector import sample_balanced

    num_pairs = config.train_pairs

    def one_image(boxes, mask, gt_boxes, gt_labels, gt_mask, gt_pairs, gt_labels_p, gt_pmask, k):
        match_key, sample_key = jax.random.split(k)
        labels, is_match = assign_labels(boxes, mask, gt_boxes, gt_labels, gt_mask, config)
        table = pair_labels_of_matches(is_match, gt_pairs, gt_labels_p, gt_pmask, match_key)
        candidate_labels = table[candidates[:, 0], candidates[:, 1]]
        candidate_valid = mask[candidates[:, 0]] & mask[candidates[:, 1]]
        index, _, valid = sample_balanced(
            candidate_valid & (candidate_labels > 0),
            candidate_valid & (candidate_labels == 0),
            sample_key,
            num_pairs,
            (config.train_fg + 0.5) / num_pairs,  # int(num_pairs * fraction) == train_fg
        )
        pairs = jnp.where(valid[:, None], candidates[index], 0)
        pair_labels = jnp.where(valid, candidate_labels[index], 0)
        return labels, pairs, pair_labels, valid

    labels, pairs, pair_labels, pair_mask = jax.vmap(one_image)(
        det_boxes,
        det_mask,
        jnp.asarray(batch.boxes, jnp.float32),
        jnp.asarray(batch.labels, jnp.int32),
        jnp.asarray(batch.object_mask, bool),
        jnp.asarray(batch.pairs, jnp.int32),
        jnp.asarray(batch.pair_labels, jnp.int32),
        jnp.asarray(batch.pair_mask, bool),
        jax.random.split(key, num_images),
    )
    return SceneGraphBatch(
        labels=labels, pairs=pairs, pair_labels=pair_labels, pair_mask=pair_mask, **common
    )


def num_inference_pairs(detections_per_image: int) -> int:
    """Relation candidates per image at inference: ``D (D - 1)``."""
    return detections_per_image * (detections_per_image - 1)


def check_pixel_task(task: str, feature_source: str, detector: Any) -> None:
    """The task / feature-source / detector combination of a relation-model config.

    Raises:
      ConfigError: ``sgdet`` without the ``"roi"`` source, ``"roi"`` without a detector, or a
        detector that is not a :class:`~sgg_jax.detection.detector.DetectorConfig`.
    """
    from sgg_jax.detection.detector import DetectorConfig

    if task == "sgdet" and feature_source != "roi":
        raise ConfigError(
            "task",
            "sgdet detects the objects from pixels: it needs feature_source='roi' and a detector",
        )
    if feature_source == "roi":
        if detector is None:
            raise ConfigError(
                "detector",
                "feature_source='roi' needs a DetectorConfig (sgg_jax.detection.detector)",
            )
        if not isinstance(detector, DetectorConfig):
            raise ConfigError("detector", f"must be a DetectorConfig, got {type(detector)!r}")
        if task == "sgdet" and detector.detections_per_image < 2:
            raise ConfigError(
                "detector",
                f"sgdet pairs detections: detections_per_image must be >= 2, got "
                f"{detector.detections_per_image}",
            )
    elif detector is not None:
        raise ConfigError(
            "detector", f"is only used with feature_source='roi', not {feature_source!r}"
        )


__all__ = [
    "SGDetConfig",
    "all_pairs",
    "assign_labels",
    "check_pixel_task",
    "detection_batch",
    "num_inference_pairs",
    "pair_labels_of_matches",
]
