"""Tests of the backbones and the FPN: shapes of every preset, grouping, freezing, norms, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sgg_jax.detection.backbone import (
    BackboneConfig,
    FrozenBatchNorm,
    build_backbone,
    frozen_module_names,
    pad_to_multiple,
    trainable_mask,
)
from sgg_jax.detection.fpn import FPN
from sgg_jax.errors import ConfigError

IMAGE = (1, 64, 64, 3)


def variable_shapes(model: nn.Module, image_shape=IMAGE):
    """Traced ``(outputs, variables)`` of ``model.init_with_output`` (no compute)."""
    images = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    return jax.eval_shape(model.init_with_output, jax.random.key(0), images)


def random_variables(model: nn.Module, seed: int = 0, image_shape=IMAGE):
    """Variables of ``model`` filled on the host (much cheaper than a jitted ``init`` on CPU).

    Kernels are He-normal, biases / BN shifts small normals, BN scales and variances positive, so
    frozen batch norms do real work.
    """
    _, shapes = variable_shapes(model, image_shape)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(dict(shapes)).items():
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = rng.normal(0.0, 0.1, shape)
        flat[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def images(seed: int = 0, shape=IMAGE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Full-size presets, traced only
# ----------------------------------------------------------------------------------------------

# Trainable parameters of torchvision's models without the classifier (fc / classifier), which
# equal ours with norm="bn" (conv kernels + BN scale/bias; VGG conv kernels + biases).
TORCHVISION_PARAMETERS = {
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
    "resnext101_32x8d": 88_791_336 - 2_049_000,
    "vgg16": 14_714_688,
}


@pytest.mark.parametrize("preset", sorted(TORCHVISION_PARAMETERS))
def test_presets_output_strides_channels_and_parameter_counts(preset):
    config = BackboneConfig.preset(preset, norm="bn")
    outputs, variables = variable_shapes(build_backbone(config), (2, 224, 320, 3))
    assert list(outputs) == list(config.out_strides)
    for name, output in outputs.items():
        stride = config.out_strides[name]
        assert output.shape == (2, 224 // stride, 320 // stride, config.out_channels[name])
        assert output.dtype == jnp.float32
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    assert count == TORCHVISION_PARAMETERS[preset]
    if config.arch == "resnet":
        assert outputs["C5"].shape[-1] == 2048
    else:
        assert outputs["C4"].shape[-1] == 512 and "C5" not in outputs


def test_resnext_grouped_conv_kernels():
    _, variables = variable_shapes(build_backbone(BackboneConfig.resnext101_32x8d()))
    params = variables["params"]
    # feature_group_count=32: kernel [3, 3, in / 32, out]; 8 channels per group in stage 2.
    assert params["layer1"]["block0"]["conv2"]["kernel"].shape == (3, 3, 8, 256)
    assert params["layer4"]["block2"]["conv2"]["kernel"].shape == (3, 3, 64, 2048)
    assert params["layer1"]["block0"]["conv1"]["kernel"].shape == (1, 1, 64, 256)
    assert len(params["layer3"]) == 23
    _, resnet = variable_shapes(build_backbone(BackboneConfig.resnet101()))
    assert resnet["params"]["layer1"]["block0"]["conv2"]["kernel"].shape == (3, 3, 64, 64)


@pytest.mark.parametrize("stride_in_1x1, conv1_size", [(False, 16), (True, 8)])
def test_stride_placement(stride_in_1x1, conv1_size):
    model = build_backbone(BackboneConfig.tiny(stride_in_1x1=stride_in_1x1))
    variables = random_variables(model)

    def intermediates(x):
        _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["layer2"]["block0"]

    block = jax.eval_shape(intermediates, jax.ShapeDtypeStruct(IMAGE, jnp.float32))
    # layer2 input is 16 x 16; its first block halves it in conv1 (MSRA) or conv2 (v1.5).
    assert block["conv1"]["__call__"][0].shape[1] == conv1_size
    assert block["conv2"]["__call__"][0].shape[1] == 8


def test_bfloat16_compute_keeps_float32_params():
    outputs, variables = variable_shapes(build_backbone(BackboneConfig.tiny(dtype="bfloat16")))
    assert {o.dtype for o in outputs.values()} == {jnp.dtype(jnp.bfloat16)}
    leaves = jax.tree.leaves(variables)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------------------------
# Tiny models, computed
# ----------------------------------------------------------------------------------------------


def test_frozen_bn_lives_in_constants_and_frozen_stages_get_zero_gradients():
    config = BackboneConfig.tiny(freeze_at=2)
    model = build_backbone(config)
    variables = random_variables(model)
    assert set(variables) == {"params", "constants"}
    param_leaves = {path[-1] for path in traverse_util.flatten_dict(variables["params"])}
    assert param_leaves == {"kernel"}  # no BN scale / bias / mean / var among the params
    assert set(variables["constants"]["stem"]["bn1"]) == {"scale", "bias", "mean", "var"}

    x = images()

    def loss(params, constants, x):
        # Only C3 (layer2's output): its backward pass is all that is needed and compiles fast.
        outputs = model.apply({"params": params, "constants": constants}, x)
        return jnp.sum(jnp.square(outputs["C3"]))

    grads = jax.jit(jax.grad(loss))(variables["params"], variables["constants"], x)
    assert frozen_module_names(config) == ("stem", "layer1")
    for name, subtree in grads.items():
        norms = [float(np.abs(g).sum()) for g in jax.tree.leaves(subtree)]
        if name == "layer2":
            assert min(norms) > 0.0, name
        else:  # frozen (stem, layer1) or after C3 (layer3, layer4)
            assert max(norms) == 0.0, name
    mask = trainable_mask(config, variables["params"])
    assert mask["stem"]["conv1"]["kernel"] is False
    assert mask["layer1"]["block0"]["conv2"]["kernel"] is False
    assert mask["layer2"]["block0"]["conv2"]["kernel"] is True


def test_vgg_outputs_and_freezing():
    config = BackboneConfig.tiny_vgg(freeze_at=2)
    model = build_backbone(config)
    variables = random_variables(model)
    x = images()

    def loss(params, x):
        outputs = model.apply({"params": params}, x)
        return jnp.sum(outputs["C2"]), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"], x)
    assert {k: v.shape for k, v in outputs.items()} == {
        "C2": (1, 16, 16, 16),
        "C3": (1, 8, 8, 32),
        "C4": (1, 4, 4, 32),
    }
    assert float(np.min(outputs["C4"])) >= 0.0  # conv5_3 after its ReLU
    assert frozen_module_names(config) == ("conv1_1", "conv2_1")
    assert float(np.abs(grads["conv1_1"]["kernel"]).max()) == 0.0
    assert float(np.abs(grads["conv2_1"]["kernel"]).max()) == 0.0
    assert float(np.abs(grads["conv3_1"]["kernel"]).max()) > 0.0


def test_regular_batch_norm_updates_statistics_outside_frozen_stages():
    config = BackboneConfig.tiny(norm="bn", freeze_at=2)
    model = build_backbone(config)
    variables = random_variables(model)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]["layer2"]["block0"]["bn1"]) == {"scale", "bias"}
    x = images(shape=(2, 64, 64, 3))

    @jax.jit
    def train_and_eval(variables, x):
        train_out, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return train_out, state, model.apply(variables, x)

    train_out, state, eval_out = train_and_eval(variables, x)
    old, new = variables["batch_stats"], state["batch_stats"]
    np.testing.assert_array_equal(new["stem"]["bn1"]["mean"], old["stem"]["bn1"]["mean"])
    np.testing.assert_array_equal(
        new["layer1"]["block0"]["bn3"]["var"], old["layer1"]["block0"]["bn3"]["var"]
    )
    assert not np.allclose(
        new["layer3"]["block0"]["bn1"]["mean"], old["layer3"]["block0"]["bn1"]["mean"]
    )
    # Batch statistics in training: C5 of each image is normalised with the batch's statistics.
    np.testing.assert_allclose(train_out["C2"], eval_out["C2"], rtol=1e-5, atol=1e-5)  # frozen
    assert not np.allclose(train_out["C5"], eval_out["C5"], atol=1e-3)


def test_frozen_batch_norm_formula_and_initial_values():
    module = FrozenBatchNorm(epsilon=1e-3)
    x = images(shape=(2, 3, 3, 5))
    variables = module.init(jax.random.key(0), x)
    assert "params" not in variables
    constants = variables["constants"]
    np.testing.assert_array_equal(constants["scale"], np.ones(5))
    np.testing.assert_array_equal(constants["var"], np.ones(5))
    np.testing.assert_array_equal(constants["mean"], np.zeros(5))
    rng = np.random.default_rng(1)
    scale, bias, mean = (rng.normal(size=5).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.1, 2.0, 5).astype(np.float32)
    out = module.apply({"constants": {"scale": scale, "bias": bias, "mean": mean, "var": var}}, x)
    np.testing.assert_allclose(
        out, (x - mean) / np.sqrt(var + 1e-3) * scale + bias, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"arch": "vit"}, "arch"),
        ({"norm": "gn"}, "norm"),
        ({"dtype": "float64"}, "dtype"),
        ({"stage_blocks": (3, 4, 6)}, "stage_blocks"),
        ({"stage_blocks": (3, 0, 6, 3)}, "stage_blocks"),
        ({"num_groups": 0}, "num_groups"),
        ({"freeze_at": 6}, "freeze_at"),
        ({"stride_in_1x1": 1}, "stride_in_1x1"),
        ({"bn_epsilon": -1.0}, "bn_epsilon"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"option '{field}'"):
        BackboneConfig(**overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="option 'backbone'"):
        BackboneConfig.preset("resnet18")


# ----------------------------------------------------------------------------------------------
# FPN
# ----------------------------------------------------------------------------------------------


def fake_features(height=64, width=64, channels=(16, 32, 64, 128), seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"C{level}": rng.normal(size=(1, height // 2**level, width // 2**level, c)).astype(
            np.float32
        )
        for level, c in zip((2, 3, 4, 5), channels, strict=True)
    }


def test_fpn_shapes_default_channels():
    features = {
        k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in fake_features(256, 320).items()
    }
    pyramid, variables = jax.eval_shape(FPN().init_with_output, jax.random.key(0), features)
    assert {k: v.shape for k, v in pyramid.items()} == {
        "P2": (1, 64, 80, 256),
        "P3": (1, 32, 40, 256),
        "P4": (1, 16, 20, 256),
        "P5": (1, 8, 10, 256),
        "P6": (1, 4, 5, 256),
    }
    assert variables["params"]["lateral5"]["kernel"].shape == (1, 1, 128, 256)
    assert variables["params"]["output2"]["kernel"].shape == (3, 3, 256, 256)


def test_fpn_values_against_numpy():
    """Output convs set to identity: P_k = lateral_k(C_k) + upsample(inner_{k+1})."""
    features = fake_features()
    fpn = FPN(out_channels=8)
    _, shapes = jax.eval_shape(fpn.init_with_output, jax.random.key(0), features)
    rng = np.random.default_rng(2)
    params, laterals = {}, {}
    identity = np.zeros((3, 3, 8, 8), np.float32)
    identity[1, 1] = np.eye(8)
    for level in (2, 3, 4, 5):
        c = features[f"C{level}"].shape[-1]
        laterals[level] = (
            rng.normal(size=(c, 8)).astype(np.float32),
            rng.normal(size=8).astype(np.float32),
        )
        params[f"lateral{level}"] = {
            "kernel": laterals[level][0][None, None],
            "bias": laterals[level][1],
        }
        params[f"output{level}"] = {"kernel": identity, "bias": np.zeros(8, np.float32)}
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(
        lambda a: a.shape, shapes["params"]
    )
    pyramid = jax.jit(fpn.apply)({"params": params}, features)

    inner = None
    for level in (5, 4, 3, 2):
        kernel, bias = laterals[level]
        lateral = features[f"C{level}"] @ kernel + bias
        if inner is not None:
            lateral = lateral + inner.repeat(2, axis=1).repeat(2, axis=2)
        inner = lateral
        np.testing.assert_allclose(pyramid[f"P{level}"], inner, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(pyramid["P6"], np.asarray(pyramid["P5"])[:, ::2, ::2])


def test_fpn_rejects_sizes_not_divisible_by_32_and_padding_fixes_them():
    config = BackboneConfig.tiny()
    model = build_backbone(config)
    shapes, _ = variable_shapes(model, (1, 48, 48, 3))
    assert shapes["C5"].shape[1:3] == (2, 2) and shapes["C4"].shape[1:3] == (3, 3)
    features = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in shapes.items()}
    with pytest.raises(ConfigError, match="option 'image_size'.*divisible by 32"):
        jax.eval_shape(FPN(out_channels=8).init, jax.random.key(0), features)
    padded = pad_to_multiple(jnp.ones((1, 48, 40, 3)))
    assert padded.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(padded[:, 48:], 0.0)
    np.testing.assert_array_equal(padded[:, :48, :40], 1.0)


def test_fpn_on_backbone_outputs():
    config = BackboneConfig.tiny()
    shapes, _ = variable_shapes(build_backbone(config))
    features = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in shapes.items()}
    pyramid, _ = jax.eval_shape(FPN(out_channels=32).init_with_output, jax.random.key(0), features)
    assert [p.shape for p in pyramid.values()] == [
        (1, 64 // 2**k, 64 // 2**k, 32) for k in range(2, 7)
    ]
