"""Tests of the whole-detector conversion: maskrcnn_benchmark Faster R-CNN <-> FasterRCNN variables.

Everything runs on the ``tiny`` preset with one 64 x 64 image; the detector's inference and its box
head are each compiled once for the module (module-scoped fixtures).
"""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from sgg_jax.detection import convert
from sgg_jax.detection.backbone import BackboneConfig
from sgg_jax.detection.detector import DetectorConfig, FasterRCNN
from sgg_jax.detection.roi_align import multilevel_roi_align
from sgg_jax.errors import ConfigError, DataError
from tests.detection import IMAGE_SIZES, random_detector_variables

CONFIG = DetectorConfig.tiny()
VG_RATIOS = DetectorConfig.resnext101_fpn().aspect_ratios

# Compiling, not running, is what these tests spend their time on.
fast_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def assert_trees_equal(actual, expected):
    flat_actual = traverse_util.flatten_dict(dict(actual))
    flat_expected = traverse_util.flatten_dict(dict(expected))
    assert set(flat_actual) == set(flat_expected)
    for path, value in flat_expected.items():
        np.testing.assert_array_equal(flat_actual[path], value, err_msg="/".join(path))


def checkpoint_of(state_dict):
    """A Scene-Graph-Benchmark-like checkpoint: DDP prefixes, anchor buffers, relation weights."""
    checkpoint = {f"module.{key}": value for key, value in state_dict.items()}
    junk = {
        "rpn.anchor_generator.cell_anchors.0": np.zeros((3, 4), np.float32),
        "backbone.body.stem.bn1.num_batches_tracked": np.array(7),
        "roi_heads.relation.predictor.rel_compress.weight": np.ones((51, 32), np.float32),
        "roi_heads.relation.box_feature_extractor.fc6.weight": np.ones((8, 784), np.float32),
        "roi_heads.attribute.predictor.weight": np.ones((3, 3), np.float32),
        "some_other_head.weight": np.ones(2, np.float32),
    }
    checkpoint.update({f"module.{key}": value for key, value in junk.items()})
    return checkpoint


@pytest.fixture(scope="module")
def detector():
    variables = random_detector_variables(CONFIG, seed=1)
    state_dict = convert.to_maskrcnn_benchmark_detector(variables, CONFIG)
    images = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype(np.float32)
    model = FasterRCNN(CONFIG)
    infer = fast_jit(lambda variables, images: model.apply(variables, images, IMAGE_SIZES))
    return model, variables, state_dict, images, infer


# ----------------------------------------------------------------------------------------------
# Key names and shapes
# ----------------------------------------------------------------------------------------------


def test_keys_and_shapes_of_the_scene_graph_benchmark_detectors():
    config = DetectorConfig.resnext101_fpn()
    shapes = convert.detector_torch_shapes(config)
    backbone = convert.torch_shapes(config.backbone, "maskrcnn_benchmark", fpn_channels=256)
    assert {k: v for k, v in shapes.items() if k.startswith("backbone.")} == backbone
    heads = {k: v for k, v in shapes.items() if not k.startswith("backbone.")}
    assert heads == {
        "rpn.head.conv.weight": (256, 256, 3, 3),
        "rpn.head.conv.bias": (256,),
        "rpn.head.cls_logits.weight": (4, 256, 1, 1),  # the 4 VG aspect ratios, one size per level
        "rpn.head.cls_logits.bias": (4,),
        "rpn.head.bbox_pred.weight": (16, 256, 1, 1),
        "rpn.head.bbox_pred.bias": (16,),
        "roi_heads.box.feature_extractor.fc6.weight": (4096, 256 * 7 * 7),
        "roi_heads.box.feature_extractor.fc6.bias": (4096,),
        "roi_heads.box.feature_extractor.fc7.weight": (4096, 4096),
        "roi_heads.box.feature_extractor.fc7.bias": (4096,),
        "roi_heads.box.predictor.cls_score.weight": (151, 4096),
        "roi_heads.box.predictor.cls_score.bias": (151,),
        "roi_heads.box.predictor.bbox_pred.weight": (604, 4096),
        "roi_heads.box.predictor.bbox_pred.bias": (604,),
    }
    vgg = convert.detector_torch_shapes(DetectorConfig.vgg16())
    assert vgg["rpn.head.cls_logits.weight"] == (15, 512, 1, 1)  # 5 sizes x 3 ratios on conv5_3
    assert vgg["roi_heads.box.feature_extractor.fc6.weight"] == (4096, 512 * 7 * 7)
    assert not any(key.startswith("backbone.fpn.") for key in vgg)
    assert "backbone.body.conv_body.28.weight" in vgg  # conv5_3


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


def test_round_trip_gives_the_same_variables_and_detections(detector):
    model, variables, state_dict, images, infer = detector
    assert state_dict["roi_heads.box.feature_extractor.fc6.weight"].shape == (32, 16 * 7 * 7)
    np.testing.assert_array_equal(
        state_dict["roi_heads.box.predictor.bbox_pred.weight"],
        variables["params"]["bbox_pred"]["kernel"].T,
    )
    np.testing.assert_array_equal(
        state_dict["rpn.head.conv.weight"],
        variables["params"]["rpn_head"]["conv"]["kernel"].transpose(3, 2, 0, 1),
    )
    checkpoint = checkpoint_of(state_dict)
    converted = convert.convert_maskrcnn_benchmark_detector(checkpoint, CONFIG)  # strict
    assert sorted(converted) == ["constants", "params"]
    assert sorted(converted["params"]) == [
        "backbone",
        "bbox_pred",
        "cls_score",
        "fc6",
        "fc7",
        "fpn",
        "rpn_head",
    ]
    assert_trees_equal(converted, variables)

    expected, actual = infer(variables, images), infer(converted, images)
    assert int(np.sum(expected["proposal_mask"])) > 0
    assert int(np.sum(expected["detections"]["mask"])) > 0
    for name in ("proposals", "proposal_scores", "proposal_mask"):
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    for name, value in expected["detections"].items():
        np.testing.assert_array_equal(actual["detections"][name], value, err_msg=name)

    # Without a config everything the weights determine is inferred.
    inferred = convert.infer_detector_config(checkpoint)
    assert inferred.backbone == BackboneConfig.tiny(stride_in_1x1=True)  # maskrcnn_benchmark MSRA
    assert inferred.use_fpn and inferred.fpn_channels == 16
    assert (inferred.num_classes, inferred.representation_size) == (4, 32)
    assert inferred.pooler_resolution == 7
    assert inferred.aspect_ratios == (0.5, 1.0, 2.0)
    assert_trees_equal(convert.convert_maskrcnn_benchmark_detector(checkpoint), variables)
    assert (
        convert.infer_detector_config(checkpoint, num_classes=4, score_thresh=0.2).score_thresh
        == 0.2
    )


def test_round_trip_through_npz(detector, tmp_path):
    _, variables, state_dict, _, _ = detector
    path = tmp_path / "faster_rcnn.npz"
    convert.save_npz(checkpoint_of(state_dict), path)
    loaded = convert.load_state_dict(path)
    assert "module.rpn.head.cls_logits.weight" in loaded
    converted = convert.convert_maskrcnn_benchmark_detector(loaded, CONFIG, path=str(path))
    assert_trees_equal(converted, variables)
    assert_trees_equal(convert.to_maskrcnn_benchmark_detector(converted, CONFIG), state_dict)


def test_vgg_detector_round_trip_and_config_inference():
    config = DetectorConfig.tiny(backbone="tiny_vgg", use_fpn=False, anchor_strides=(16,))
    variables = random_detector_variables(config, seed=3)
    state_dict = convert.to_maskrcnn_benchmark_detector(variables, config)
    assert not any(key.startswith("backbone.fpn.") for key in state_dict)
    assert state_dict["rpn.head.cls_logits.weight"].shape == (15, 32, 1, 1)  # C4 = conv5: 32
    assert state_dict["roi_heads.box.feature_extractor.fc6.weight"].shape == (32, 32 * 7 * 7)
    checkpoint = checkpoint_of(state_dict)
    assert_trees_equal(convert.convert_maskrcnn_benchmark_detector(checkpoint, config), variables)
    inferred = convert.infer_detector_config(checkpoint)
    assert inferred.backbone == BackboneConfig.tiny_vgg()
    assert not inferred.use_fpn and inferred.anchor_strides == (16,)
    assert (inferred.num_classes, inferred.representation_size) == (4, 32)
    assert inferred.anchors_per_location == 15
    assert_trees_equal(convert.convert_maskrcnn_benchmark_detector(checkpoint), variables)


def test_aspect_ratio_count_is_read_off_the_rpn():
    def zeros(config):
        return {
            k: np.zeros(s, np.float32) for k, s in convert.detector_torch_shapes(config).items()
        }

    vg = zeros(CONFIG.replace(aspect_ratios=VG_RATIOS))
    assert convert.infer_detector_config(vg).aspect_ratios == VG_RATIOS
    grouped = zeros(CONFIG.replace(backbone="tiny_resnext"))
    inferred = convert.infer_detector_config(grouped)  # the closest preset: Scene-Graph-Benchmark's
    assert inferred.backbone == BackboneConfig.tiny_resnext()
    assert (inferred.aspect_ratios, inferred.score_thresh) == ((0.5, 1.0, 2.0), 0.01)

    five = zeros(CONFIG.replace(aspect_ratios=(0.25, 0.5, 1.0, 2.0, 4.0)))
    with pytest.raises(DataError, match="5 anchors per location") as error:
        convert.infer_detector_config(five, path="x.pth")
    assert error.value.field == "rpn.head.cls_logits.weight"
    ratios = (0.25, 0.5, 1.0, 2.0, 4.0)
    assert convert.infer_detector_config(five, aspect_ratios=ratios).aspect_ratios == ratios


# ----------------------------------------------------------------------------------------------
# Semantics of the box head's layouts
# ----------------------------------------------------------------------------------------------


def test_fc6_reads_chw_flattened_pooling_and_bbox_pred_is_class_major(detector):
    model, _, state_dict, images, infer = detector
    converted = convert.convert_maskrcnn_benchmark_detector(state_dict, CONFIG)
    features = infer(converted, images)["features"]
    boxes = np.array([[[4, 6, 40, 50], [20, 10, 59, 30], [0, 0, 63, 63]]], np.float32)
    mask = np.ones((1, 3), bool)

    @fast_jit
    def box_head(variables, features, boxes, mask):
        def apply(method, *args):
            return model.apply(variables, *args, method=method)

        fc7 = apply(FasterRCNN.box_features, features, boxes, mask)
        pooled = multilevel_roi_align(
            {level: features[f"P{level}"] for level in CONFIG.pooler_levels},
            boxes,
            mask,
            output_size=CONFIG.pooler_resolution,
            sampling_ratio=CONFIG.pooler_sampling_ratio,
        )
        return (
            fc7,
            pooled,
            apply(FasterRCNN.box_regression, fc7),
            apply(FasterRCNN.object_logits, fc7),
        )

    fc7, pooled, regression, logits = jax.tree.map(
        np.asarray, box_head(converted, features, boxes, mask)
    )
    assert pooled.shape == (1, 3, 7, 7, 16)  # [B, R, PH, PW, C]

    # maskrcnn_benchmark: x = pooled [R, C, PH, PW].view(R, -1); relu(fc6(x)); relu(fc7(x)).
    def linear(x, name):
        return x @ state_dict[f"{name}.weight"].T + state_dict[f"{name}.bias"]

    pooled_chw = pooled[0].transpose(0, 3, 1, 2)
    x = pooled_chw.reshape(3, -1)
    hidden = np.maximum(linear(x, "roi_heads.box.feature_extractor.fc6"), 0)
    expected_fc7 = np.maximum(linear(hidden, "roi_heads.box.feature_extractor.fc7"), 0)
    np.testing.assert_allclose(fc7[0], expected_fc7, rtol=1e-4, atol=1e-5)
    assert np.all(np.any(expected_fc7 > 0, axis=1))

    # FPNPredictor: bbox_pred [R, 4 * classes], decoded as rel_codes[:, 0::4] = dx of every class.
    deltas = linear(expected_fc7, "roi_heads.box.predictor.bbox_pred")
    assert regression.shape == (1, 3, CONFIG.num_classes, 4)
    for k in range(4):
        np.testing.assert_allclose(regression[0, :, :, k], deltas[:, k::4], rtol=1e-4, atol=1e-5)
    scores = linear(expected_fc7, "roi_heads.box.predictor.cls_score")
    np.testing.assert_allclose(logits[0], scores, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_wrong_shape_names_the_key_and_both_shapes(detector):
    state_dict = dict(detector[2])
    state_dict["roi_heads.box.predictor.cls_score.weight"] = np.zeros((5, 32), np.float32)
    with pytest.raises(DataError) as error:
        convert.convert_maskrcnn_benchmark_detector(state_dict, CONFIG, path="x.pth")
    assert error.value.field == "roi_heads.box.predictor.cls_score.weight"
    message = str(error.value)
    assert message.startswith("x.pth: field 'roi_heads.box.predictor.cls_score.weight'")
    assert "(5, 32)" in message and "(4, 32)" in message


def test_missing_and_unexpected_keys(detector):
    _, _, full, _, _ = detector
    state_dict = checkpoint_of(full)
    del state_dict["module.rpn.head.conv.weight"]
    with pytest.raises(DataError, match="field 'rpn.head.conv.weight': missing") as error:
        convert.convert_maskrcnn_benchmark_detector(state_dict, CONFIG)
    assert error.value.field == "rpn.head.conv.weight"
    partial = convert.convert_maskrcnn_benchmark_detector(state_dict, CONFIG, strict=False)
    assert sorted(partial["params"]["rpn_head"]["conv"]) == ["bias"]
    assert "kernel" in partial["params"]["rpn_head"]["cls_logits"]

    for key in ("roi_heads.box.foo.weight", "rpn.head.extra.weight", "backbone.body.extra.weight"):
        state_dict = {**full, key: np.zeros((2, 2), np.float32)}
        with pytest.raises(DataError, match=f"field '{key}': unexpected key") as error:
            convert.convert_maskrcnn_benchmark_detector(state_dict, CONFIG)
        assert error.value.field == key
        lenient = convert.convert_maskrcnn_benchmark_detector(state_dict, CONFIG, strict=False)
        assert_trees_equal(lenient, detector[1])

    with pytest.raises(ConfigError, match="option 'config'"):
        convert.convert_maskrcnn_benchmark_detector(full, CONFIG.backbone)
    with pytest.raises(DataError, match="field 'roi_heads.box.predictor.cls_score.weight'"):
        convert.infer_detector_config({k: v for k, v in full.items() if "cls_score" not in k})
