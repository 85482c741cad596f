"""Tests of the feature sources: gathering, geometry and precomputed features, padding, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax import boxes as box_ops
from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError
from sgg_jax.relation.features import (
    UNION_FEATURES,
    GeometryFeatures,
    PrecomputedFeatures,
    RoIFeatures,
    gather_objects,
    make_feature_source,
    pair_geometry_features,
    pooled_image_feature,
    union_head_from_detector,
)
from sgg_jax.structures import SceneGraph

FEATURE_DIM = 5


def make_graph(rng: np.random.Generator, image_id: str, num_objects: int) -> SceneGraph:
    corners = rng.uniform(0, 60, size=(num_objects, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=(num_objects, 2))], axis=1)
    relations = np.array([[0, 1, 1], [1, 2 % num_objects, 2]])
    return SceneGraph(image_id, 100, 80, boxes, rng.integers(1, 4, num_objects), relations)


def make_batch(graphs, max_objects, max_pairs, batch_size=None, with_features=True):
    config = pipeline.PipelineConfig.evaluation(
        batch_size=batch_size or len(graphs), max_objects=max_objects, max_pairs=max_pairs
    )
    examples = []
    for index, graph in enumerate(graphs):
        features = None
        if with_features:
            features = np.random.default_rng(index).normal(size=(graph.num_objects, FEATURE_DIM))
        examples.append(
            pipeline.prepare_example(
                graph, image_index=index, epoch=0, config=config, object_features=features
            )
        )
    return pipeline.collate(examples, batch_size)


@pytest.fixture(scope="module")
def graphs():
    rng = np.random.default_rng(0)
    return [make_graph(rng, "a", 3), make_graph(rng, "b", 4)]


def test_gather_objects_picks_rows_per_image():
    values = jnp.arange(2 * 3 * 2).reshape(2, 3, 2)
    indices = jnp.array([[2, 0], [1, 1]])
    gathered = gather_objects(values, indices)
    np.testing.assert_array_equal(
        gathered, np.array([[[4, 5], [0, 1]], [[8, 9], [8, 9]]], dtype=np.int32)
    )


def test_pair_geometry_features_match_numpy_per_pair(graphs):
    batch = make_batch(graphs, max_objects=5, max_pairs=16)
    geometry = np.asarray(pair_geometry_features(batch))
    assert geometry.shape == (2, 16, box_ops.PAIR_GEOMETRY_DIM)
    for row, graph in enumerate(graphs):
        for slot in range(16):
            if not batch.pair_mask[row, slot]:
                np.testing.assert_array_equal(geometry[row, slot], 0.0)
                continue
            subject, object_ = batch.pairs[row, slot]
            expected = box_ops.pair_geometry(
                graph.boxes[subject],
                graph.boxes[object_],
                np.array([graph.height, graph.width], np.float32),
            )
            np.testing.assert_allclose(geometry[row, slot], expected, rtol=1e-5, atol=1e-6)


def test_geometry_features_shapes_padding_and_values(graphs):
    batch = make_batch(graphs, max_objects=5, max_pairs=16)
    source = GeometryFeatures(object_dim=6, union_dim=7, hidden_dim=8)
    variables = source.init(jax.random.key(0), batch)
    object_features, union_features = source.apply(variables, batch)
    assert object_features.shape == (2, 5, 6) and object_features.dtype == jnp.float32
    assert union_features.shape == (2, 16, 7) and union_features.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(object_features)[~batch.object_mask], 0.0)
    np.testing.assert_array_equal(np.asarray(union_features)[~batch.pair_mask], 0.0)
    # The object MLP of the 9-number box encoding, recomputed by hand.
    params = variables["params"]["object_mlp"]
    encoding = box_ops.encode_boxes(graphs[0].boxes, np.array([80.0, 100.0], np.float32))
    hidden = np.maximum(encoding @ params["fc6"]["kernel"] + params["fc6"]["bias"], 0)
    expected = np.maximum(hidden @ params["fc7"]["kernel"] + params["fc7"]["bias"], 0)
    np.testing.assert_allclose(object_features[0, :3], expected, rtol=1e-5, atol=1e-6)


def test_geometry_features_do_not_depend_on_padding(graphs):
    small = make_batch(graphs[:1], max_objects=3, max_pairs=6)
    large = make_batch(graphs[:1], max_objects=7, max_pairs=20, batch_size=3)
    source = GeometryFeatures(object_dim=6, union_dim=7, hidden_dim=8)
    variables = source.init(jax.random.key(0), small)
    small_objects, small_union = source.apply(variables, small)
    large_objects, large_union = source.apply(variables, large)
    np.testing.assert_allclose(large_objects[0, :3], small_objects[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(large_union[0, :6], small_union[0], rtol=1e-6, atol=1e-6)


def test_precomputed_features_read_the_batch_and_build_union_features(graphs):
    batch = make_batch(graphs, max_objects=5, max_pairs=16)
    source = PrecomputedFeatures(union_dim=7, hidden_dim=8)
    variables = source.init(jax.random.key(0), batch)
    object_features, union_features = source.apply(variables, batch)
    np.testing.assert_allclose(object_features, batch.object_features, rtol=0, atol=0)
    assert union_features.shape == (2, 16, 7)
    # Union features = MLP([x_subject, x_object, pair geometry]).
    params = variables["params"]["union_mlp"]
    subject, object_ = batch.pairs[1, 0]
    inputs = np.concatenate(
        [
            batch.object_features[1, subject],
            batch.object_features[1, object_],
            np.asarray(pair_geometry_features(batch))[1, 0],
        ]
    )
    hidden = np.maximum(inputs @ params["fc6"]["kernel"] + params["fc6"]["bias"], 0)
    expected = np.maximum(hidden @ params["fc7"]["kernel"] + params["fc7"]["bias"], 0)
    np.testing.assert_allclose(union_features[1, 0], expected, rtol=1e-5, atol=1e-6)
    # Changing the subject's stored feature changes the pair's union feature.
    changed = batch.replace(object_features=batch.object_features + 1.0)
    _, changed_union = source.apply(variables, changed)
    assert not np.allclose(changed_union[1, 0], union_features[1, 0])


def test_precomputed_features_without_features_name_the_option(graphs):
    batch = make_batch(graphs, max_objects=5, max_pairs=16, with_features=False)
    source = PrecomputedFeatures(union_dim=7, hidden_dim=8)
    with pytest.raises(ConfigError, match="feature_source.*object_features"):
        source.init(jax.random.key(0), batch)


def test_make_feature_source_names_and_errors():
    assert isinstance(make_feature_source("geometry", object_dim=3), GeometryFeatures)
    assert isinstance(make_feature_source("precomputed"), PrecomputedFeatures)
    assert isinstance(make_feature_source("geometry"), nn.Module)
    with pytest.raises(ConfigError, match="'feature_source'.*detector"):
        make_feature_source("roi")
    with pytest.raises(ConfigError, match="'feature_source'.*unknown"):
        make_feature_source("clip")
    with pytest.raises(ConfigError, match="'union_dim'"):
        make_feature_source("geometry", union_dim=0)
    from sgg_jax.detection.detector import DetectorConfig

    tiny = DetectorConfig.tiny()
    assert make_feature_source("roi", detector=tiny).union_features == "sgb"
    shared = make_feature_source("roi", detector=tiny, union_features="shared_head")
    assert shared.union_features == "shared_head"
    with pytest.raises(ConfigError, match="'union_features'.*'sgb', 'shared_head'"):
        make_feature_source("roi", detector=tiny, union_features="rect")


def test_union_features_option_of_the_relation_configs():
    from sgg_jax.detection.detector import DetectorConfig
    from sgg_jax.relation.motifs import MotifsConfig
    from sgg_jax.relation.penet import PENetConfig

    tiny = DetectorConfig.tiny()
    assert UNION_FEATURES[0] == "sgb"
    for kind in (PENetConfig, MotifsConfig):
        roi = kind.small(3, 2, task="sgcls", feature_source="roi", detector=tiny)
        assert roi.union_features == "sgb"
        shared = roi.replace(union_features="shared_head")
        assert shared.union_features == "shared_head" and shared != roi
        # Sources without a union extractor record None (their run configs do not change).
        assert kind.small(3, 2).union_features is None
        assert kind.small(3, 2, union_features="shared_head").union_features is None
        with pytest.raises(ConfigError, match="'union_features'"):
            kind.small(3, 2, feature_source="roi", detector=tiny, union_features="union")
        with pytest.raises(ConfigError, match="'union_features'"):
            kind.small(3, 2, union_features=1)


def test_union_head_from_detector_copies_the_box_head_into_every_union_head():
    rng = np.random.default_rng(0)

    def dense(inputs, outputs):
        return {
            "kernel": rng.normal(size=(inputs, outputs)).astype(np.float32),
            "bias": rng.normal(size=outputs).astype(np.float32),
        }

    detector = {"fc6": dense(12, 4), "fc7": dense(4, 4), "cls_score": dense(4, 3)}
    union = {"fc6": dense(12, 4), "fc7": dense(4, 4), "rect_conv1": dense(2, 2)}
    variables = {
        "params": {"base": {"features": {"detector": detector, "union": union}}, "head": {}},
        "batch_stats": {"base": {"features": {"union": {"rect_bn1": {"mean": np.zeros(2)}}}}},
    }
    merged = union_head_from_detector(variables)
    features = merged["params"]["base"]["features"]
    for layer in ("fc6", "fc7"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(features["union"][layer][leaf], detector[layer][leaf])
            assert features["union"][layer][leaf] is not detector[layer][leaf]
    np.testing.assert_array_equal(
        features["union"]["rect_conv1"]["kernel"], union["rect_conv1"]["kernel"]
    )
    assert merged["batch_stats"] is variables["batch_stats"]
    assert not np.array_equal(
        variables["params"]["base"]["features"]["union"]["fc6"]["kernel"], detector["fc6"]["kernel"]
    )  # the input is not changed
    # Without a union head (shared_head, other sources) nothing changes.
    plain = {"params": {"features": {"detector": detector, "union_mlp": union}}}
    assert union_head_from_detector(plain)["params"] == plain["params"]
    wrong = {"params": {"features": {"detector": detector, "union": {**union, "fc7": dense(4, 5)}}}}
    with pytest.raises(ConfigError, match="'union_features'.*union/fc7"):
        union_head_from_detector(wrong)


@pytest.mark.e2e
def test_roi_features_pool_pixels_per_object_and_union_box(graphs):
    from sgg_jax.detection.detector import DetectorConfig, FasterRCNN

    batch = make_batch(graphs, max_objects=5, max_pairs=16, with_features=False)
    images = np.random.default_rng(0).uniform(-1, 1, size=(2, 96, 128, 3)).astype(np.float32)
    batch = batch.replace(images=images)
    config = DetectorConfig.tiny()
    source = make_feature_source(
        "roi", union_dim=6, hidden_dim=8, detector=config, union_features="shared_head"
    )
    assert isinstance(source, RoIFeatures)
    variables = jax.jit(lambda b: source.init(jax.random.key(0), b))(batch)
    apply = jax.jit(source.apply)
    object_features, union_features = apply(variables, batch)
    assert object_features.shape == (2, 5, config.representation_size)
    assert union_features.shape == (2, 16, 6)
    mask = np.asarray(batch.object_mask)
    assert np.all(np.asarray(object_features)[~mask] == 0)
    assert np.all(np.asarray(union_features)[~np.asarray(batch.pair_mask)] == 0)
    # Object features are the detector's own box features of the object boxes.
    detector_variables = {
        name: collection["detector"]
        for name, collection in variables.items()
        if "detector" in collection
    }
    detector = FasterRCNN(config)
    maps = detector.apply(detector_variables, batch.images, method=detector.features)
    expected = detector.apply(
        detector_variables, maps, batch.boxes, batch.object_mask, method=detector.box_features
    )
    np.testing.assert_allclose(object_features, expected, atol=1e-5)
    # Pixels change the features; the frozen detector receives no gradient.
    other = apply(variables, batch.replace(images=images[::-1].copy()))[0]
    assert not np.allclose(other, object_features)

    def loss(params):
        objects, unions = source.apply({**variables, "params": params}, batch)
        return jnp.sum(objects) + jnp.sum(unions)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    detector_norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads["detector"]))
    union_norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads["union_mlp"]))
    assert detector_norm == 0.0 and union_norm > 0.0
    with pytest.raises(ConfigError, match="'feature_source'.*images"):
        source.init(jax.random.key(0), batch.replace(images=None))


@pytest.mark.e2e
def test_roi_features_with_sgb_union_features_train_the_union_head_only(graphs):
    from sgg_jax.detection.detector import DetectorConfig, FasterRCNN
    from sgg_jax.detection.union_features import SGBUnionFeatureExtractor

    batch = make_batch(graphs, max_objects=5, max_pairs=16, with_features=False)
    images = np.random.default_rng(0).uniform(-1, 1, size=(2, 96, 128, 3)).astype(np.float32)
    batch = batch.replace(images=images)
    config = DetectorConfig.tiny()
    source = make_feature_source("roi", union_dim=6, hidden_dim=8, detector=config)
    variables = jax.jit(lambda b: source.init(jax.random.key(0), b))(batch)
    assert set(variables["params"]) == {"detector", "union"}
    assert set(variables["batch_stats"]) == {"union"}
    variables = {**variables, "params": union_head_from_detector(variables)["params"]}
    np.testing.assert_array_equal(
        variables["params"]["union"]["fc7"]["kernel"],
        variables["params"]["detector"]["fc7"]["kernel"],
    )
    object_features, union_features = jax.jit(source.apply)(variables, batch)
    assert union_features.shape == (2, 16, config.representation_size)
    assert np.all(np.asarray(union_features)[~np.asarray(batch.pair_mask)] == 0)
    # The union features are SGBUnionFeatureExtractor's on the detector's maps (evaluation).
    detector_variables = {
        name: collection["detector"]
        for name, collection in variables.items()
        if "detector" in collection
    }
    detector = FasterRCNN(config)
    maps = detector.apply(detector_variables, batch.images, method=detector.features)
    pairs = np.asarray(batch.pairs)
    boxes = np.asarray(batch.boxes)
    subjects = np.take_along_axis(boxes, pairs[..., :1], axis=1)
    objects = np.take_along_axis(boxes, pairs[..., 1:], axis=1)
    union_variables = {
        name: collection["union"] for name, collection in variables.items() if "union" in collection
    }
    expected = SGBUnionFeatureExtractor(config).apply(
        union_variables, maps, subjects, objects, batch.image_size, batch.pair_mask
    )
    np.testing.assert_allclose(union_features, expected, rtol=1e-5, atol=1e-5)

    def loss(params):
        (objects_, unions), updates = source.apply(
            {**variables, "params": params}, batch, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(objects_) + jnp.sum(unions), updates

    grads, updates = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    detector_norm = sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads["detector"]))
    assert detector_norm == 0.0
    for layer in ("fc6", "rect_conv1", "rect_bn2", "reduce_channel"):
        assert (
            float(
                jnp.sum(jnp.abs(grads["union"][layer]["kernel" if "bn" not in layer else "scale"]))
            )
            > 0
        )
    assert not np.allclose(
        updates["batch_stats"]["union"]["rect_bn1"]["var"],
        variables["batch_stats"]["union"]["rect_bn1"]["var"],
    )


@pytest.mark.parametrize("use_fpn", [True, False])
def test_pooled_image_feature_averages_the_top_map_over_the_image_only(use_fpn):
    from sgg_jax.detection.detector import DetectorConfig

    config = DetectorConfig.tiny()
    if not use_fpn:
        config = config.replace(use_fpn=False, anchor_strides=(16,))
    name, stride = ("P5", 32) if use_fpn else ("C4", 16)
    assert config.pooler_levels[-1] == int(name[1:])
    rng = np.random.default_rng(0)
    # Image 0 fills the 128 x 160 batch canvas; image 1 is 50 x 70 (cells 0-1 x 0-2 are its own).
    top = rng.normal(size=(2, 128 // stride, 160 // stride, 3)).astype(np.float32)
    sizes = np.array([[128, 160], [50, 70]], np.int32)
    feature = np.asarray(pooled_image_feature({name: top}, sizes, config))
    rows, cols = -(-50 // stride), -(-70 // stride)
    np.testing.assert_allclose(feature[0], top[0].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(feature[1], top[1, :rows, :cols].mean(axis=(0, 1)), rtol=1e-5)
    # The padding (here garbage) and the canvas size never enter the mean.
    garbage = top.copy()
    garbage[1, rows:] = 1e6
    garbage[1, :, cols:] = -1e6
    np.testing.assert_array_equal(pooled_image_feature({name: garbage}, sizes, config), feature)
    cropped = np.asarray(pooled_image_feature({name: top[1:, :rows, :cols]}, sizes[1:], config))
    np.testing.assert_allclose(cropped[0], feature[1], rtol=1e-6)
