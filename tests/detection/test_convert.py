"""Tests of the PyTorch weight conversion: key names, round trips, errors, NCHW numerics."""

import importlib.util

import jax
import numpy as np
import pytest
from flax import traverse_util

from sgg_jax.detection import convert
from sgg_jax.detection.backbone import BackboneConfig, Bottleneck, Stem, build_backbone
from sgg_jax.detection.fpn import FPN
from sgg_jax.errors import ConfigError, DataError
from tests.detection.test_backbone import images, random_variables

HAS_TORCH = importlib.util.find_spec("torch") is not None


def assert_trees_equal(actual, expected):
    flat_actual = traverse_util.flatten_dict(dict(actual))
    flat_expected = traverse_util.flatten_dict(dict(expected))
    assert set(flat_actual) == set(flat_expected)
    for path, value in flat_expected.items():
        np.testing.assert_array_equal(flat_actual[path], value, err_msg="/".join(path))


def random_state_dict(config: BackboneConfig, style: str, seed=0, **kwargs):
    """A state dict with PyTorch names and shapes (positive running variances)."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for key, shape in convert.torch_shapes(config, style, **kwargs).items():
        if key.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight")):
            state_dict[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) == 4:
            fan_in = np.prod(shape[1:])
            state_dict[key] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
        else:
            state_dict[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    return state_dict


# ----------------------------------------------------------------------------------------------
# Key names and shapes of the real architectures
# ----------------------------------------------------------------------------------------------


def test_torchvision_resnet50_keys():
    shapes = convert.torch_shapes(BackboneConfig.resnet50(), "torchvision")
    # torchvision resnet50 has 320 entries: 53 convs, 53 BNs x 5 (with num_batches_tracked), fc x 2
    assert len(shapes) == 320 - 53 - 2
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert shapes[f"bn1.{name}"] == (64,)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.1.running_var"] == (256,)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer3.5.bn2.bias"] == (256,)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert "layer1.1.downsample.0.weight" not in shapes
    assert "layer3.6.conv1.weight" not in shapes


def test_maskrcnn_benchmark_resnext101_fpn_keys():
    config = BackboneConfig.resnext101_32x8d()
    shapes = convert.torch_shapes(config, "maskrcnn_benchmark", fpn_channels=256)
    assert len(shapes) == 104 * 5 + 16  # 104 convs + 104 frozen BNs x 4 buffers; FPN 8 convs
    assert shapes["backbone.body.stem.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.body.stem.bn1.running_mean"] == (64,)
    assert shapes["backbone.body.layer1.0.conv2.weight"] == (256, 8, 3, 3)  # 32 groups x 8
    assert shapes["backbone.body.layer3.22.bn3.weight"] == (1024,)
    assert shapes["backbone.body.layer4.0.downsample.1.weight"] == (2048,)
    assert shapes["backbone.fpn.fpn_inner1.weight"] == (256, 256, 1, 1)  # on C2
    assert shapes["backbone.fpn.fpn_inner4.weight"] == (256, 2048, 1, 1)  # on C5
    assert shapes["backbone.fpn.fpn_layer4.weight"] == (256, 256, 3, 3)
    assert shapes["backbone.fpn.fpn_layer1.bias"] == (256,)
    assert "backbone.fpn.fpn_inner5.weight" not in shapes


def test_vgg16_keys():
    shapes = convert.torch_shapes(BackboneConfig.vgg16(), "torchvision")
    assert len(shapes) == 26
    conv_indices = sorted(int(k.split(".")[1]) for k in shapes if k.endswith("weight"))
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["features.28.weight"] == (512, 512, 3, 3)
    mrcnn = convert.torch_shapes(BackboneConfig.vgg16(), "maskrcnn_benchmark")
    assert mrcnn["backbone.body.conv_body.28.bias"] == (512,)


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


def test_torchvision_resnext_round_trip_through_npz(tmp_path):
    config = BackboneConfig.tiny_resnext()
    model = build_backbone(config)
    variables = random_variables(model, seed=3)
    state_dict = convert.to_torchvision(variables, config)
    assert state_dict["layer1.0.conv2.weight"].shape == (4, 2, 3, 3)  # OIHW, 2 groups
    state_dict["fc.weight"] = np.zeros((10, 128), np.float32)  # skipped
    state_dict["fc.bias"] = np.zeros((10,), np.float32)
    state_dict["bn1.num_batches_tracked"] = np.array(7)  # skipped
    path = tmp_path / "resnext.npz"
    convert.save_npz(state_dict, path)
    loaded = convert.load_state_dict(path)
    assert set(loaded) == set(state_dict)

    assert convert.infer_resnet_config(loaded, "torchvision") == config
    converted = convert.convert_torchvision_resnet(loaded, path=str(path))
    assert_trees_equal(converted, variables)
    x = images(4)
    apply = jax.jit(model.apply)
    for name, output in apply(converted, x).items():
        np.testing.assert_array_equal(output, apply(variables, x)[name], err_msg=name)


def test_maskrcnn_benchmark_round_trip_with_fpn():
    config = BackboneConfig.tiny()
    backbone = build_backbone(config)
    fpn = FPN(out_channels=8)
    variables = random_variables(backbone, seed=5)
    features = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype)
        for k, v in jax.eval_shape(backbone.apply, variables, images()).items()
    }
    fpn_shapes = jax.eval_shape(fpn.init, jax.random.key(0), features)
    rng = np.random.default_rng(6)
    fpn_variables = jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(np.float32), dict(fpn_shapes)
    )
    state_dict = convert.to_maskrcnn_benchmark(variables, config, fpn_variables)
    assert state_dict["backbone.fpn.fpn_inner1.weight"].shape == (8, 16, 1, 1)
    checkpoint = {f"module.{k}": v for k, v in state_dict.items()}
    checkpoint["module.rpn.head.conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)  # ignored
    checkpoint["module.roi_heads.box.predictor.cls_score.bias"] = np.zeros(5, np.float32)

    # A plain ResNet in maskrcnn_benchmark defaults to the MSRA stride placement.
    inferred = convert.convert_maskrcnn_benchmark(checkpoint)
    assert_trees_equal(inferred["backbone"], variables)
    assert convert.infer_resnet_config(
        convert._strip_module_prefix(checkpoint), "maskrcnn_benchmark"
    ) == config.replace(stride_in_1x1=True)

    converted = convert.convert_maskrcnn_benchmark(checkpoint, config)
    assert_trees_equal(converted["backbone"], variables)
    assert_trees_equal(converted["fpn"], fpn_variables)

    @jax.jit
    def pyramid(backbone_variables, fpn_variables, x):
        return fpn.apply(fpn_variables, backbone.apply(backbone_variables, x))

    x = images(7)
    expected = pyramid(variables, fpn_variables, x)
    actual = pyramid(converted["backbone"], converted["fpn"], x)
    assert list(actual) == ["P2", "P3", "P4", "P5", "P6"]
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.mark.parametrize("style", convert.STYLES)
def test_vgg_round_trip(style):
    config = BackboneConfig.tiny_vgg()
    variables = random_variables(build_backbone(config), seed=8)
    if style == "torchvision":
        state_dict = convert.to_torchvision(variables, config)
        assert sorted(state_dict)[:2] == ["features.0.bias", "features.0.weight"]
        state_dict["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # skipped
        assert convert.infer_vgg_config(state_dict, style) == config
        converted = convert.convert_torchvision_vgg16(state_dict)
    else:
        state_dict = convert.to_maskrcnn_benchmark(variables, config)
        assert "backbone.body.conv_body.3.weight" in state_dict  # conv2_1 after conv, relu, pool
        result = convert.convert_maskrcnn_benchmark(state_dict)
        assert result["fpn"] is None
        converted = result["backbone"]
    assert_trees_equal(converted, variables)


def test_regular_batch_norm_goes_to_params_and_batch_stats():
    config = BackboneConfig.tiny(norm="bn")
    state_dict = random_state_dict(config, "torchvision")
    state_dict["bn1.num_batches_tracked"] = np.array(3)
    variables = convert.convert_torchvision_resnet(state_dict, config)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_array_equal(
        variables["params"]["stem"]["bn1"]["scale"], state_dict["bn1.weight"]
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer2"]["block0"]["downsample_bn"]["var"],
        state_dict["layer2.0.downsample.1.running_var"],
    )
    frozen = convert.convert_torchvision_resnet(state_dict)  # inferred: frozen_bn by default
    np.testing.assert_array_equal(
        frozen["constants"]["stem"]["bn1"]["mean"], state_dict["bn1.running_mean"]
    )


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_wrong_shape_names_key_and_both_shapes():
    config = BackboneConfig.tiny_resnext()
    state_dict = random_state_dict(config, "torchvision")
    state_dict["layer1.0.conv2.weight"] = np.zeros((4, 4, 3, 3), np.float32)  # ungrouped
    with pytest.raises(DataError) as error:
        convert.convert_torchvision_resnet(state_dict, config, path="x.npz")
    message = str(error.value)
    assert error.value.field == "layer1.0.conv2.weight"
    assert message.startswith("x.npz: field 'layer1.0.conv2.weight'")
    assert "(4, 4, 3, 3)" in message and "(4, 2, 3, 3)" in message


def test_missing_and_unexpected_keys():
    config = BackboneConfig.tiny()
    state_dict = random_state_dict(config, "torchvision")
    del state_dict["layer3.0.bn2.running_var"]
    with pytest.raises(DataError, match="field 'layer3.0.bn2.running_var': missing") as error:
        convert.convert_torchvision_resnet(state_dict, config)
    assert error.value.field == "layer3.0.bn2.running_var"
    partial = convert.convert_torchvision_resnet(state_dict, config, strict=False)
    assert "var" not in partial["constants"]["layer3"]["block0"]["bn2"]

    state_dict = random_state_dict(config, "torchvision")
    state_dict["layer4.1.conv1.weight"] = np.zeros((32, 128, 1, 1), np.float32)
    with pytest.raises(DataError, match="field 'layer4.1.conv1.weight': unexpected key"):
        convert.convert_torchvision_resnet(state_dict, config)
    lenient = convert.convert_torchvision_resnet(state_dict, config, strict=False)
    assert "block1" not in lenient["params"]["layer4"]

    fpn_state = random_state_dict(config, "maskrcnn_benchmark", fpn_channels=8)
    del fpn_state["backbone.fpn.fpn_layer3.bias"]
    with pytest.raises(DataError, match="field 'backbone.fpn.fpn_layer3.bias': missing"):
        convert.convert_maskrcnn_benchmark(fpn_state, config)


def test_inference_needs_its_keys_and_the_right_converter():
    with pytest.raises(DataError, match="field 'conv1.weight': missing"):
        convert.convert_torchvision_resnet({"fc.weight": np.zeros((2, 2))})
    with pytest.raises(ConfigError, match="option 'arch'"):
        convert.convert_torchvision_resnet({}, BackboneConfig.tiny_vgg())


def test_load_state_dict_errors(tmp_path):
    with pytest.raises(ConfigError, match="option 'path'"):
        convert.load_state_dict(tmp_path / "weights.pkl")
    with pytest.raises(DataError, match="file not found"):
        convert.load_state_dict(tmp_path / "absent.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz: not a readable .npz"):
        convert.load_state_dict(broken)
    if not HAS_TORCH:  # read without torch: a file that is not a torch zip is refused
        pth = tmp_path / "model.pth"
        pth.write_bytes(b"")
        with pytest.raises(DataError, match="model.pth: not a PyTorch zip file"):
            convert.load_state_dict(pth)


# ----------------------------------------------------------------------------------------------
# Numerics: PyTorch NCHW semantics in numpy vs our NHWC modules
# ----------------------------------------------------------------------------------------------


def conv2d_nchw(x, weight, stride=1, padding=0, groups=1):
    """``torch.nn.functional.conv2d`` in numpy: x [N, C, H, W], weight [O, C / groups, kh, kw]."""
    n, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    out = np.zeros((n, out_channels, out_h, out_w), np.float64)
    per_group = out_channels // groups
    for g in range(groups):
        xs = x[:, g * group_channels : (g + 1) * group_channels]
        ws = weight[g * per_group : (g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
                out[:, g * per_group : (g + 1) * per_group] += np.einsum(
                    "nchw,oc->nohw", patch, ws[:, :, i, j]
                )
    return out


def frozen_bn_nchw(x, state_dict, prefix, eps=1e-5):
    """maskrcnn_benchmark's FrozenBatchNorm2d (eval mode = ``F.batch_norm``) on NCHW."""

    def vector(name):
        return state_dict[f"{prefix}.{name}"][None, :, None, None].astype(np.float64)

    scale = vector("weight") / np.sqrt(vector("running_var") + eps)
    return (x - vector("running_mean")) * scale + vector("bias")


def max_pool_nchw(x, kernel=3, stride=2, padding=1):
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    out_h = (x.shape[2] - kernel) // stride + 1
    out_w = (x.shape[3] - kernel) // stride + 1
    windows = [
        x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
        for i in range(kernel)
        for j in range(kernel)
    ]
    return np.max(windows, axis=0)


def relu(x):
    return np.maximum(x, 0.0)


def nhwc(x):
    return x.transpose(0, 2, 3, 1)


def test_stem_and_grouped_bottleneck_match_pytorch_semantics():
    config = BackboneConfig.tiny_resnext(bn_epsilon=1e-5)
    state_dict = random_state_dict(config, "torchvision", seed=11)
    variables = convert.convert_torchvision_resnet(state_dict, config)
    params, constants = variables["params"], variables["constants"]
    sd = state_dict

    # Stem: conv 7x7 / 2 pad 3, frozen BN, ReLU, max-pool 3x3 / 2 pad 1 on an odd-sized image.
    x = np.random.default_rng(12).normal(size=(2, 3, 21, 18))
    expected = conv2d_nchw(x, sd["conv1.weight"], stride=2, padding=3)
    expected = max_pool_nchw(relu(frozen_bn_nchw(expected, sd, "bn1")))
    stem = Stem(config)
    actual = jax.jit(stem.apply, static_argnames="train")(
        {"params": params["stem"], "constants": constants["stem"]},
        nhwc(x).astype(np.float32),
        train=False,
    )
    np.testing.assert_allclose(actual, nhwc(expected), rtol=1e-4, atol=1e-4)

    # layer2.0: stride 2 on the grouped 3x3 conv, projection shortcut.
    x = np.random.default_rng(13).normal(size=(1, 16, 10, 10))
    p = "layer2.0"
    y = relu(frozen_bn_nchw(conv2d_nchw(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    y = conv2d_nchw(y, sd[f"{p}.conv2.weight"], stride=2, padding=1, groups=2)
    y = relu(frozen_bn_nchw(y, sd, f"{p}.bn2"))
    y = frozen_bn_nchw(conv2d_nchw(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    shortcut = conv2d_nchw(x, sd[f"{p}.downsample.0.weight"], stride=2)
    expected = relu(y + frozen_bn_nchw(shortcut, sd, f"{p}.downsample.1"))
    block = Bottleneck(
        config, bottleneck_channels=config.bottleneck_channels(1), out_channels=32, stride=2
    )
    actual = jax.jit(block.apply, static_argnames="train")(
        {
            "params": params["layer2"]["block0"],
            "constants": constants["layer2"]["block0"],
        },
        nhwc(x).astype(np.float32),
        train=False,
    )
    assert actual.shape == (1, 5, 5, 32)
    np.testing.assert_allclose(actual, nhwc(expected), rtol=1e-4, atol=1e-4)
