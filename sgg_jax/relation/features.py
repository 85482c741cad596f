"""Feature sources: per-object and per-pair (union) features of a :class:`SceneGraphBatch`.

A relation head (e.g. :mod:`sgg_jax.relation.penet`) reads two feature arrays:

* object features ``f32[B, N, D_obj]`` — in Scene-Graph-Benchmark the box head's RoI features of
  each object (fc7, 4096-d);
* union features ``f32[B, P, D_union]`` — in Scene-Graph-Benchmark the RoI features of the union
  box of each (subject, object) pair, with a rectangle mask of the two boxes (4096-d).

Three sources produce them:

* ``"geometry"`` (:class:`GeometryFeatures`): no pixels. Object features are an MLP over the
  9-number box encoding (:func:`sgg_jax.boxes.encode_boxes`); union features are an MLP over the 15-number
  pair geometry (:func:`sgg_jax.boxes.pair_geometry`). Used on GQA-200-mini, which ships no images.
* ``"precomputed"`` (:class:`PrecomputedFeatures`): object features read from
  ``batch.object_features`` (e.g. detector RoI features saved by
  :mod:`sgg_jax.data.feature_store`); union features are an MLP over
  ``[feature of subject, feature of object, pair geometry]`` since no union RoI is pooled.
* ``"roi"`` (:class:`RoIFeatures`): RoI features pooled from ``batch.images`` by the Faster R-CNN
  of :mod:`sgg_jax.detection.detector`: object features are the box head's fc7 features of each
  object box (Scene-Graph-Benchmark's relation head pools them with its own copy of the box head,
  initialised from it and trained, ``relation_head.py``:31, 67; here the detector's box head,
  frozen with it). Union features (``union_features``, :data:`UNION_FEATURES`):

  - ``"sgb"`` (default): Scene-Graph-Benchmark's ``RelationFeatureExtractor``
    (:class:`~sgg_jax.detection.union_features.SGBUnionFeatureExtractor`, under ``union``): the
    union box pooled from every FPN level and channel-reduced, plus a conv feature of the two
    boxes' rectangle masks, through the union extractor's own fc6 / fc7 (copied from the
    detector's box head at initialisation, as SGB; trained with the relation head; BatchNorm
    statistics in ``"batch_stats"``). Width: the detector's ``representation_size``
    (``union_dim`` / ``hidden_dim`` are unused).
  - ``"shared_head"``: the detector's own box-head fc7 features of the union box, concatenated
    with the 15-number pair geometry and projected by an MLP (``union_mlp``, ``union_dim`` wide).

  ``freeze_detector`` stops gradients into the detector, as SGB freezes it when training
  relation heads; its parameters live under the feature source's ``detector`` subtree, where
  pretrained detector variables are loaded.

Every source is per object / per pair, so a real object's or pair's features never depend on the
padding of the batch; padded objects and pairs get zero features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax import boxes as box_ops
from sgg_jax.errors import (
    ConfigError,
    check_bool,
    check_choice,
    check_interval,
    check_positive_int,
)
from sgg_jax.structures import SceneGraphBatch

# Sources a relation model builds from its config; "roi" also needs a DetectorConfig and images.
FEATURE_SOURCES = ("geometry", "precomputed", "roi")
# Union features of the "roi" source (module docstring); the first is the default.
UNION_FEATURES = ("sgb", "shared_head")


def gather_objects(values: jax.Array, indices: jax.Array) -> jax.Array:
    """Rows of per-object values picked per pair, image by image (static shapes, no loops).

    Args:
      values: [B, N, ...] per-object values.
      indices: int[B, P] object index per pair (``batch.pairs[..., 0]`` for subjects,
        ``batch.pairs[..., 1]`` for objects).

    Returns:
      [B, P, ...] with ``out[b, p] = values[b, indices[b, p]]``.
    """
    return jax.vmap(lambda image_values, image_indices: image_values[image_indices])(
        values, indices
    )


def pair_geometry_features(batch: SceneGraphBatch) -> jax.Array:
    """The 15-number geometry of every pair of a batch (:func:`sgg_jax.boxes.pair_geometry`).

    Args:
      batch: a batch with ``boxes[B, N, 4]``, ``pairs[B, P, 2]`` and ``image_size[B, 2]``.

    Returns:
      f32[B, P, 15]; zeros for padded pairs.
    """
    boxes = jnp.asarray(batch.boxes, jnp.float32)
    pairs = jnp.asarray(batch.pairs, jnp.int32)
    subject_boxes = gather_objects(boxes, pairs[..., 0])
    object_boxes = gather_objects(boxes, pairs[..., 1])
    image_size = jnp.asarray(batch.image_size, jnp.float32)[:, None, :]
    geometry = box_ops.pair_geometry(subject_boxes, object_boxes, image_size)
    return jnp.where(jnp.asarray(batch.pair_mask, bool)[..., None], geometry, 0.0)


class FeatureMLP(nn.Module):
    """Dense layers with ReLU after each, as the fc6 / fc7 box head (non-negative outputs).

    Attributes:
      features: output size of each layer, e.g. ``(256, 256)``.
    """

    features: Sequence[int]

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        hidden = inputs
        for index, size in enumerate(self.features):
            hidden = nn.relu(nn.Dense(size, name=f"fc{index + 6}")(hidden))
        return hidden


class GeometryFeatures(nn.Module):
    """Object and union features from box geometry alone (no pixels).

    Attributes:
      object_dim: D_obj, size of the object features.
      union_dim: D_union, size of the union features.
      hidden_dim: size of the first layer of both MLPs.
    """

    object_dim: int
    union_dim: int
    hidden_dim: int

    @nn.compact
    def __call__(
        self, batch: SceneGraphBatch, *, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """Computes the features.

        Args:
          batch: B images, N objects, P pairs.
          train: unused (no dropout); part of the feature-source interface.

        Returns:
          ``(object_features f32[B, N, D_obj], union_features f32[B, P, D_union])``; zeros where
          padded.
        """
        del train
        image_size = jnp.asarray(batch.image_size, jnp.float32)[:, None, :]
        box_encoding = box_ops.encode_boxes(jnp.asarray(batch.boxes, jnp.float32), image_size)
        object_features = FeatureMLP((self.hidden_dim, self.object_dim), name="object_mlp")(
            box_encoding
        )
        union_features = FeatureMLP((self.hidden_dim, self.union_dim), name="union_mlp")(
            pair_geometry_features(batch)
        )
        object_mask = jnp.asarray(batch.object_mask, bool)[..., None]
        pair_mask = jnp.asarray(batch.pair_mask, bool)[..., None]
        return (
            jnp.where(object_mask, object_features, 0.0),
            jnp.where(pair_mask, union_features, 0.0),
        )


class PrecomputedFeatures(nn.Module):
    """Object features from ``batch.object_features``; union features from the pair's features.

    Attributes:
      union_dim: D_union, size of the union features.
      hidden_dim: size of the first layer of the union MLP.
    """

    union_dim: int
    hidden_dim: int

    @nn.compact
    def __call__(
        self, batch: SceneGraphBatch, *, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """Reads and derives the features.

        Args:
          batch: B images, N objects, P pairs, with ``object_features[B, N, D]``.
          train: unused (no dropout); part of the feature-source interface.

        Returns:
          ``(object_features f32[B, N, D], union_features f32[B, P, D_union])``; zeros where
          padded.

        Raises:
          ConfigError: when the batch carries no object features.
        """
        del train
        if batch.object_features is None:
            raise ConfigError(
                "feature_source",
                "'precomputed' reads batch.object_features, but the batch has none; build the "
                "loader with make_loader(..., object_features=...) or use 'geometry'",
            )
        object_mask = jnp.asarray(batch.object_mask, bool)[..., None]
        object_features = jnp.where(
            object_mask, jnp.asarray(batch.object_features, jnp.float32), 0.0
        )
        pairs = jnp.asarray(batch.pairs, jnp.int32)
        pair_inputs = jnp.concatenate(
            [
                gather_objects(object_features, pairs[..., 0]),
                gather_objects(object_features, pairs[..., 1]),
                pair_geometry_features(batch),
            ],
            axis=-1,
        )
        union_features = FeatureMLP((self.hidden_dim, self.union_dim), name="union_mlp")(
            pair_inputs
        )
        pair_mask = jnp.asarray(batch.pair_mask, bool)[..., None]
        return object_features, jnp.where(pair_mask, union_features, 0.0)


class RoIFeatures(nn.Module):
    """Object and union features pooled from pixels by the detector (module docstring).

    Attributes:
      detector: a :class:`~sgg_jax.detection.detector.DetectorConfig`.
      union_dim: D_union of ``"shared_head"`` union features.
      hidden_dim: first-layer size of the ``"shared_head"`` union MLP.
      freeze_detector: no gradient reaches the detector (pretrained and fixed, as in SGB).
      union_features: ``"sgb"`` or ``"shared_head"`` (module docstring).
    """

    detector: object
    union_dim: int
    hidden_dim: int
    freeze_detector: bool = True
    union_features: str = UNION_FEATURES[0]

    @nn.compact
    def __call__(
        self,
        batch: SceneGraphBatch,
        *,
        train: bool = False,
        detect: object | None = None,
        with_image_feature: bool = False,
    ) -> tuple[jax.Array, ...]:
        """Computes the features (of the batch's boxes, or of the detections with ``detect``).

        Args:
          batch: B images with ``images[B, H, W, 3]`` (normalised as the detector expects) and
            boxes in the pixels of those images.
          train: training mode (SGDet candidate sampling, the ``"sgb"`` union extractor's
            BatchNorm statistics); the frozen detector always runs in inference mode.
          detect: None, or a :class:`~sgg_jax.relation.sgdet.SGDetConfig`: run the detector on the
            images and pool the features of the detections and of their pairs (SGDet); in
            training this draws the ``"dropout"`` rng for the pair sampling.
          with_image_feature: also return the image feature f32[B, C] of
            :func:`pooled_image_feature` as the last element.

        Returns:
          ``(object_features f32[B, N, representation_size], union_features f32[B, P, D_union])``;
          zeros where padded. With ``detect``: ``(object_features, union_features, batch over
          the detections, detections)`` (:func:`sgg_jax.relation.sgdet.detection_batch`; the
          detector's ``boxes``, ``labels``, ``scores``, ``mask``).

        Raises:
          ConfigError: the batch has no images.
        """
        from sgg_jax.detection.detector import FasterRCNN

        if getattr(batch, "images", None) is None:
            raise ConfigError(
                "feature_source",
                "'roi' pools features from pixels and needs batch.images; this batch has none",
            )
        detector = FasterRCNN(self.detector, name="detector")
        maps = detector.features(batch.images)
        image_feature = None
        if with_image_feature:
            image_feature = pooled_image_feature(maps, batch.image_size, self.detector)
            if self.freeze_detector:
                image_feature = jax.lax.stop_gradient(image_feature)
        detections = None
        if detect is not None:
            from sgg_jax.relation import sgdet

            detections = jax.lax.stop_gradient(detector.detect(maps, batch.image_size))
            key = self.make_rng("dropout") if train else None
            batch = sgdet.detection_batch(batch, detections, train=train, config=detect, key=key)
        boxes = jnp.asarray(batch.boxes, jnp.float32)
        pairs = jnp.asarray(batch.pairs, jnp.int32)
        object_mask = jnp.asarray(batch.object_mask, bool)
        pair_mask = jnp.asarray(batch.pair_mask, bool)
        object_features = detector.box_features(maps, boxes, object_mask)
        if self.freeze_detector:
            object_features = jax.lax.stop_gradient(object_features)
        subject_boxes = gather_objects(boxes, pairs[..., 0])
        object_boxes = gather_objects(boxes, pairs[..., 1])
        if self.union_features == "sgb":
            from sgg_jax.detection.union_features import SGBUnionFeatureExtractor

            if self.freeze_detector:
                maps = jax.lax.stop_gradient(maps)
            union_features = SGBUnionFeatureExtractor(self.detector, name="union")(
                maps, subject_boxes, object_boxes, batch.image_size, pair_mask, train=train
            )
        else:
            union_roi = detector.box_features(
                maps, box_ops.union_boxes(subject_boxes, object_boxes), pair_mask
            )
            if self.freeze_detector:
                union_roi = jax.lax.stop_gradient(union_roi)
            union_features = FeatureMLP((self.hidden_dim, self.union_dim), name="union_mlp")(
                jnp.concatenate([union_roi, pair_geometry_features(batch)], axis=-1)
            )
        features = (
            jnp.where(object_mask[..., None], object_features, 0.0),
            jnp.where(pair_mask[..., None], union_features, 0.0),
        )
        if detect is not None:
            features = (*features, batch, detections)
        return features if image_feature is None else (*features, image_feature)


def pooled_image_feature(
    maps: Mapping[str, jax.Array], image_size: jax.Array, detector: Any
) -> jax.Array:
    """A global image feature: the average of the backbone's top map over the image's own area.

    The map is the coarsest level the box head pools from: ``P5`` (stride 32) with FPN (the
    RPN-only ``P6`` is a stride-2 max-pool of it), ``C4`` (stride 16, the only map) without.
    "Learning to Contrast and Score" (Huang et al., ACCV 2020, Sec. 3.4) gives its Scorer a
    global image feature pooled from the detector's backbone without naming the level, and its
    Scorer module (``lib/ranker.py`` of ``stevehuanghe/scene_graph``) is not published; its base
    code (neural-motifs) has a single VGG conv map at stride 16, which ``C4`` mirrors, and with
    FPN the top pooled level is the most global one. Cell ``(i, j)`` of a map of stride ``s`` covers
    pixels ``[i·s, (i+1)·s)``: the cells with ``i·s < height`` and ``j·s < width`` are averaged,
    so the padding of smaller images in a batch (and FPN's padding to multiples of 32) never
    enters the mean.

    Args:
      maps: :meth:`~sgg_jax.detection.detector.FasterRCNN.features` of the images.
      image_size: [B, 2] ``(height, width)`` of each image before padding.
      detector: its :class:`~sgg_jax.detection.detector.DetectorConfig`.

    Returns:
      f32[B, C] (C = the map's channels).
    """
    level = detector.pooler_levels[-1]
    top = jnp.asarray(maps[f"P{level}" if detector.use_fpn else "C4"], jnp.float32)
    stride = 2**level
    size = jnp.asarray(image_size, jnp.float32)
    rows = jnp.arange(top.shape[1])[None, :] * stride < size[:, :1]  # [B, H']
    cols = jnp.arange(top.shape[2])[None, :] * stride < size[:, 1:]  # [B, W']
    valid = (rows[:, :, None] & cols[:, None, :])[..., None]
    total = jnp.sum(jnp.where(valid, top, 0.0), axis=(1, 2))
    return total / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1).astype(jnp.float32)


def relation_trainable_mask(
    detector: object | None, freeze_detector: bool
) -> Callable[[Mapping[str, Any]], Any]:
    """``mask_fn(params) -> bool tree`` of the parameters a relation model's optimizer updates.

    Everything is trainable except, with a ``"roi"`` feature source, the detector under
    ``features/detector``: all of it with ``freeze_detector`` (SGB trains relation heads on a
    frozen detector), else its frozen backbone stages
    (:func:`~sgg_jax.detection.detector.detector_trainable_mask`). Frozen parameters get zero updates,
    weight decay included.
    """

    def mask_fn(params):
        mask = jax.tree.map(lambda _: True, params)
        features = params.get("features", {}) if isinstance(params, Mapping) else {}
        if detector is None or "detector" not in features:
            return mask
        if freeze_detector:
            detector_mask = jax.tree.map(lambda _: False, features["detector"])
        else:
            from sgg_jax.detection.detector import detector_trainable_mask

            detector_mask = detector_trainable_mask(detector, features["detector"])
        return {**mask, "features": {**mask["features"], "detector": detector_mask}}

    return mask_fn


def union_head_from_detector(variables: Mapping[str, Any]) -> dict[str, Any]:
    """``variables`` with every ``"sgb"`` union extractor's fc6 / fc7 copied from its detector.

    Scene-Graph-Benchmark initialises ``roi_heads.relation.union_feature_extractor.
    feature_extractor`` from the detector checkpoint's ``roi_heads.box.feature_extractor``
    (``tools/relation_train_net.py``:62-63, 106; :mod:`sgg_jax.detection.union_features`): here,
    wherever a ``params`` subtree holds both ``detector`` (with ``fc6`` / ``fc7``) and ``union``
    (the ``"roi"`` source's ``features``, at any depth), ``union/fc6`` and ``union/fc7`` become
    copies of ``detector/fc6`` and ``detector/fc7``. Everything else is unchanged (the rectangle
    convs and ``reduce_channel`` keep their fresh initialisation, as in SGB); without such a
    subtree (``"shared_head"``, other sources) ``variables`` come back as they are.

    Raises:
      ConfigError: naming ``union_features`` when the shapes differ (the union head is built for
        another detector).
    """

    def visit(tree, path):
        if not isinstance(tree, Mapping):
            return tree
        tree = {key: visit(value, (*path, key)) for key, value in tree.items()}
        detector, union = tree.get("detector"), tree.get("union")
        if not (isinstance(detector, Mapping) and isinstance(union, Mapping)):
            return tree
        if "fc6" not in detector or "fc6" not in union:
            return tree
        union = dict(union)
        for layer in ("fc6", "fc7"):
            source, target = detector[layer], union[layer]
            for leaf in target:
                if np.shape(source[leaf]) != np.shape(target[leaf]):
                    raise ConfigError(
                        "union_features",
                        f"{'/'.join((*path, 'union', layer, leaf))} has shape "
                        f"{np.shape(target[leaf])}, the detector's box head "
                        f"{np.shape(source[leaf])}",
                    )
            # Host copies: the two heads must not share one buffer (donated train states).
            union[layer] = {leaf: np.array(source[leaf], copy=True) for leaf in target}
        return {**tree, "union": union}

    variables = dict(variables)
    if "params" in variables:
        variables["params"] = visit(variables["params"], ("params",))
    return variables


def make_feature_source(
    source: str,
    *,
    object_dim: int = 256,
    union_dim: int = 256,
    hidden_dim: int = 256,
    name: str | None = None,
    detector: object | None = None,
    freeze_detector: bool = True,
    union_features: str = UNION_FEATURES[0],
) -> nn.Module:
    """Builds a feature source by name.

    Args:
      source: ``"geometry"``, ``"precomputed"`` or ``"roi"`` (needs ``detector`` and images).
      object_dim: D_obj of the geometry source (the precomputed source keeps the stored size).
      union_dim: D_union of either source.
      hidden_dim: first-layer size of the source's MLPs.
      name: the module's name when built inside a parent module (e.g. ``"features"``).
      detector: the :class:`~sgg_jax.detection.detector.DetectorConfig` of the ``"roi"`` source.
      freeze_detector: ``"roi"``: stop gradients into the detector.
      union_features: ``"roi"``: ``"sgb"`` or ``"shared_head"`` (module docstring).

    Returns:
      A module called as ``source(batch, train=...) -> (object_features, union_features)``.

    Raises:
      ConfigError: naming ``feature_source`` for an unknown name, ``union_features`` for an
        unknown union option, or the option of a bad size.
    """
    for option, value in (
        ("object_dim", object_dim),
        ("union_dim", union_dim),
        ("hidden_dim", hidden_dim),
    ):
        check_positive_int(option, value)
    if source == "geometry":
        return GeometryFeatures(
            object_dim=object_dim, union_dim=union_dim, hidden_dim=hidden_dim, name=name
        )
    if source == "precomputed":
        return PrecomputedFeatures(union_dim=union_dim, hidden_dim=hidden_dim, name=name)
    if source == "roi":
        if detector is None:
            raise ConfigError(
                "feature_source",
                "'roi' pools features from pixels with a detector: pass detector=DetectorConfig "
                "(sgg_jax.detection.detector); use 'geometry' (boxes only) or 'precomputed' (saved "
                "object features) without one",
            )
        return RoIFeatures(
            detector=detector,
            union_dim=union_dim,
            hidden_dim=hidden_dim,
            freeze_detector=freeze_detector,
            union_features=check_choice("union_features", union_features, UNION_FEATURES),
            name=name,
        )
    raise ConfigError(
        "feature_source",
        f"unknown feature source {source!r}; expected one of {FEATURE_SOURCES}",
    )


def check_relation_config(config: Any, int_fields: Sequence[str], tasks: Sequence[str]) -> None:
    """Validates and normalises, in place, the fields every relation-model config shares.

    For a frozen dataclass with ``task``, ``feature_source``, ``detector``, ``freeze_detector``,
    ``union_features``, ``sgdet``, ``dropout_rate`` and ``frequency_bias`` (PE-Net's and
    MotifNet's configs): the ``int_fields`` become positive ints, ``task`` one of ``tasks``,
    ``feature_source`` a known source that fits the task and detector, ``freeze_detector`` and
    ``frequency_bias`` bools, ``sgdet`` an :class:`~sgg_jax.relation.sgdet.SGDetConfig`,
    ``dropout_rate`` a float in [0, 1). ``union_features`` becomes one of
    :data:`UNION_FEATURES` with ``"roi"`` (None: the first, ``"sgb"``) and None with the other
    sources, which have no union extractor (so configs of those sources, and the run configs
    that record them, do not change with it).

    Raises:
      ConfigError: naming the first invalid field.
    """
    from sgg_jax.relation.sgdet import SGDetConfig, check_pixel_task

    def store(field: str, value: Any) -> None:
        object.__setattr__(config, field, value)

    for field in int_fields:
        store(field, check_positive_int(field, getattr(config, field)))
    check_choice("task", config.task, tuple(tasks))
    if config.feature_source not in FEATURE_SOURCES:
        make_feature_source(config.feature_source)  # raises the source's own ConfigError
    check_pixel_task(config.task, config.feature_source, config.detector)
    store("freeze_detector", check_bool("freeze_detector", config.freeze_detector))
    union = getattr(config, "union_features", None)
    if union is not None:
        check_choice("union_features", union, UNION_FEATURES)
    if config.feature_source == "roi":
        store("union_features", union or UNION_FEATURES[0])
    else:
        store("union_features", None)
    store("sgdet", SGDetConfig.from_mapping(config.sgdet))
    store("dropout_rate", check_interval("dropout_rate", config.dropout_rate, "[0, 1)"))
    store("frequency_bias", check_table_flag("frequency_bias", config.frequency_bias))


def check_table_flag(field: str, value: Any) -> bool:
    """A config flag that says a table variable exists (its values come from ``with_tables``).

    Raises:
      ConfigError: naming ``field`` unless ``value`` is a bool; an array gets a message saying
        where tables go.
    """
    if np.ndim(value) > 0:
        raise ConfigError(
            field,
            f"must be True or False, got an array of shape {np.shape(value)}: the config only "
            "says the table exists; its values go into the variables (the model's with_tables)",
        )
    return check_bool(field, value)


def relation_model_features(
    config: Any, batch: SceneGraphBatch, *, train: bool
) -> tuple[jax.Array, jax.Array, SceneGraphBatch, dict[str, jax.Array]]:
    """The feature source of a relation-model config, called inside the model (name ``features``).

    ``config`` has ``feature_source``, ``object_feature_dim``, ``union_feature_dim``,
    ``feature_hidden_dim``, ``task`` and, for ``"roi"``, ``detector``, ``freeze_detector``,
    ``union_features`` and ``sgdet`` (:class:`~sgg_jax.relation.penet.PENetConfig`,
    :class:`~sgg_jax.relation.motifs.MotifsConfig`).

    Returns:
      ``(object_features, union_features, batch, sgdet_outputs)``: in SGDet ``batch`` is the
      batch over the detections (:func:`sgg_jax.relation.sgdet.detection_batch`) and
      ``sgdet_outputs`` holds ``boxes`` [B, D, 4], ``object_mask``, ``pairs``, ``pair_mask`` of
      that batch and the detector's ``detection_labels`` / ``detection_scores`` [B, D]; otherwise
      the input batch and ``{}``. With ``"roi"`` (every task) ``sgdet_outputs`` also holds
      ``image_feature`` f32[B, C], the backbone's globally pooled top map
      (:func:`pooled_image_feature`); the models put it into their outputs.
    """
    source = make_feature_source(
        config.feature_source,
        object_dim=config.object_feature_dim,
        union_dim=config.union_feature_dim,
        hidden_dim=config.feature_hidden_dim,
        name="features",
        detector=getattr(config, "detector", None),
        freeze_detector=getattr(config, "freeze_detector", True),
        union_features=getattr(config, "union_features", None) or UNION_FEATURES[0],
    )
    pixels = {"with_image_feature": True} if config.feature_source == "roi" else {}
    if config.task != "sgdet":
        object_features, union_features, *rest = source(batch, train=train, **pixels)
        return object_features, union_features, batch, {"image_feature": rest[0]} if rest else {}
    object_features, union_features, batch, detections, image_feature = source(
        batch, train=train, detect=config.sgdet, **pixels
    )
    mask = jnp.asarray(batch.object_mask, bool)
    extra = {
        "image_feature": image_feature,
        "boxes": batch.boxes,
        "object_mask": mask,
        "pairs": batch.pairs,
        "pair_mask": batch.pair_mask,
        "detection_labels": jnp.where(mask, jnp.asarray(detections["labels"], jnp.int32), 0),
        "detection_scores": jnp.where(mask, jnp.asarray(detections["scores"], jnp.float32), 0.0),
    }
    return object_features, union_features, batch, extra
