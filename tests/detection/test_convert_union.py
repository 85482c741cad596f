"""Tests of the conversion of Scene-Graph-Benchmark's union feature extractor (relation checkpoints)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sgg_jax.detection import convert
from sgg_jax.detection.detector import DetectorConfig, FasterRCNN
from sgg_jax.detection.union_features import SGBUnionFeatureExtractor
from sgg_jax.errors import DataError

U = "roi_heads.relation.union_feature_extractor."


def union_shapes(config):
    """Flat ``{path: shape}`` of ``SGBUnionFeatureExtractor(config)``'s variables (traced)."""
    maps = {
        name: jax.ShapeDtypeStruct((1, 8, 8, config.feature_channels), jnp.float32)
        for name in config.feature_names
    }
    boxes = jax.ShapeDtypeStruct((1, 2, 4), jnp.float32)
    shapes = jax.eval_shape(
        SGBUnionFeatureExtractor(config).init,
        jax.random.key(0),
        maps,
        boxes,
        boxes,
        jax.ShapeDtypeStruct((1, 2), jnp.float32),
        jax.ShapeDtypeStruct((1, 2), jnp.bool_),
    )
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(dict(shapes)).items()}


def random_variables(shapes, seed):
    rng = np.random.default_rng(seed)
    flat = {path: rng.normal(size=shape).astype(np.float32) for path, shape in shapes.items()}
    return traverse_util.unflatten_dict(flat)


def test_sgb_keys_and_shapes_of_the_x101_fpn_extractor():
    # RelationFeatureExtractor of e2e_relation_X_101_32_8_FPN_1x.yaml: 256 FPN channels, 7x7
    # pooler over 4 levels (cat_all_levels), MLP_HEAD_DIM 4096 (roi_relation_feature_extractors.py
    # :34-56, poolers.py:82-83, roi_box_feature_extractors.py:68-79).
    expected = {
        "feature_extractor.pooler.reduce_channel.0.weight": (256, 1024, 3, 3),
        "feature_extractor.pooler.reduce_channel.0.bias": (256,),
        "feature_extractor.fc6.weight": (4096, 256 * 7 * 7),
        "feature_extractor.fc6.bias": (4096,),
        "feature_extractor.fc7.weight": (4096, 4096),
        "feature_extractor.fc7.bias": (4096,),
        "rect_conv.0.weight": (128, 2, 7, 7),
        "rect_conv.0.bias": (128,),
        "rect_conv.4.weight": (256, 128, 3, 3),
        "rect_conv.4.bias": (256,),
    }
    for index, size in ((2, 128), (6, 256)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            expected[f"rect_conv.{index}.{leaf}"] = (size,)
    config = DetectorConfig.resnext101_fpn()
    assert convert.union_extractor_torch_shapes(config) == {U + k: v for k, v in expected.items()}


def test_table_covers_every_variable_of_the_module_with_its_shape():
    config = DetectorConfig.tiny()
    shapes = union_shapes(config)
    variables = random_variables(shapes, seed=0)
    state_dict = convert.to_sgb_union_extractor(variables, config)
    assert set(state_dict) == set(convert.union_extractor_torch_shapes(config))
    assert len(state_dict) == len(shapes)
    for key, value in state_dict.items():
        assert value.shape == convert.union_extractor_torch_shapes(config)[key], key
    # Conv OIHW <-> HWIO, Linear [out, in] <-> [in, out].
    kernel = variables["params"]["rect_conv1"]["kernel"]
    np.testing.assert_array_equal(
        state_dict[U + "rect_conv.0.weight"][3, 1, 2, 4], kernel[2, 4, 1, 3]
    )
    fc6 = variables["params"]["fc6"]["kernel"]
    np.testing.assert_array_equal(state_dict[U + "feature_extractor.fc6.weight"], fc6.T)
    mean = variables["batch_stats"]["rect_bn2"]["mean"]
    np.testing.assert_array_equal(state_dict[U + "rect_conv.6.running_mean"], mean)


def test_round_trip_through_a_relation_checkpoint_is_exact():
    config = DetectorConfig.tiny()
    variables = random_variables(union_shapes(config), seed=1)
    state_dict = convert.to_sgb_union_extractor(variables, config)
    checkpoint = {f"module.{key}": value for key, value in state_dict.items()}
    checkpoint.update(
        {
            f"module.{U}rect_conv.2.num_batches_tracked": np.array(12),
            "module.roi_heads.relation.predictor.rel_compress.weight": np.ones((5, 3), np.float32),
            "module.roi_heads.box.feature_extractor.fc6.weight": np.ones((2, 2), np.float32),
        }
    )
    restored = convert.convert_sgb_union_extractor(checkpoint, config)
    flat = traverse_util.flatten_dict(restored)
    expected = traverse_util.flatten_dict(variables)
    assert set(flat) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(flat[path], value, err_msg="/".join(path))
    # Missing and unmapped keys under the extractor's prefix name the key.
    missing = dict(state_dict)
    del missing[U + "rect_conv.4.bias"]
    with pytest.raises(DataError, match="rect_conv.4.bias"):
        convert.convert_sgb_union_extractor(missing, config)
    partial = convert.convert_sgb_union_extractor(missing, config, strict=False)
    assert "bias" not in partial["params"]["rect_conv2"]
    with pytest.raises(DataError, match="rect_conv.8.weight"):
        convert.convert_sgb_union_extractor(
            {**state_dict, U + "rect_conv.8.weight": np.ones(3, np.float32)}, config
        )
    wrong = {**state_dict, U + "rect_conv.0.bias": np.ones(3, np.float32)}
    with pytest.raises(DataError, match=r"rect_conv.0.bias.*\(8,\)"):
        convert.convert_sgb_union_extractor(wrong, config)


def test_single_level_detector_skips_the_unused_reduce_channel():
    config = DetectorConfig.vgg16(representation_size=64)
    shapes = convert.union_extractor_torch_shapes(config)
    assert not any("reduce_channel" in key for key in shapes)
    assert shapes[U + "rect_conv.0.weight"] == (256, 2, 7, 7)
    assert shapes[U + "feature_extractor.fc6.weight"] == (64, 512 * 49)
    state_dict = {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}
    unused = U + "feature_extractor.pooler.reduce_channel.0.weight"
    state_dict[unused] = np.zeros((512, 512, 3, 3), np.float32)
    variables = convert.convert_sgb_union_extractor(state_dict, config)
    assert "reduce_channel" not in variables["params"]


def test_detector_only_checkpoint_gives_the_box_head_fc6_fc7():
    config = DetectorConfig.tiny()
    shapes = jax.eval_shape(
        FasterRCNN(config).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
        np.array([[64, 64]], np.float32),
    )
    flat = {
        path: np.random.default_rng(len(path)).normal(size=leaf.shape).astype(np.float32)
        for path, leaf in traverse_util.flatten_dict(dict(shapes)).items()
    }
    detector = traverse_util.unflatten_dict(flat)
    state_dict = convert.to_maskrcnn_benchmark_detector(detector, config)
    head = convert.union_head_from_box_head(
        {f"module.{key}": value for key, value in state_dict.items()}, config
    )
    assert set(head["params"]) == {"fc6", "fc7"}
    for layer in ("fc6", "fc7"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(
                head["params"][layer][leaf], detector["params"][layer][leaf]
            )
    module_shapes = union_shapes(config)
    assert head["params"]["fc6"]["kernel"].shape == module_shapes[("params", "fc6", "kernel")]
    del state_dict["roi_heads.box.feature_extractor.fc7.bias"]
    with pytest.raises(DataError, match="roi_heads.box.feature_extractor.fc7.bias"):
        convert.union_head_from_box_head(state_dict, config)
