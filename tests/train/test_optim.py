"""Optimizer: SGB WarmupMultiStepLR values, gradient clipping, SGD / AdamW updates, SGB's
learning-rate x IMS_PER_BATCH and bias rules, bad configs."""

import bisect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.train.optim import OptimConfig, bias_mask, freeze, make_optimizer


def sgb_warmup_multistep_lr(base_lr, step, milestones, gamma, warmup_factor, warmup_iters):
    """maskrcnn_benchmark WarmupMultiStepLR.get_lr (warmup_method="linear"), last_epoch=step."""
    factor = 1.0
    if step < warmup_iters:
        alpha = float(step) / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** bisect.bisect_right(milestones, step)


def test_schedule_matches_sgb_warmup_multistep_lr():
    config = OptimConfig(
        learning_rate=0.08,
        warmup_steps=500,
        warmup_factor=0.1,
        decay_steps=(10_000, 16_000),
        decay_gamma=0.1,
    )
    _, schedule = make_optimizer(config, num_steps=20_000)
    steps = [0, 1, 100, 250, 499, 500, 501, 9_999, 10_000, 10_001, 15_999, 16_000, 19_999]
    expected = [sgb_warmup_multistep_lr(0.08, s, [10_000, 16_000], 0.1, 0.1, 500) for s in steps]
    got = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Hand-checked points: the ramp starts at warmup_factor * lr, halfway is the midpoint, each
    # milestone divides by 10 from the milestone update on.
    assert got[0] == pytest.approx(0.008)
    assert got[3] == pytest.approx(0.08 * (0.1 * 0.5 + 0.5))
    assert got[5] == pytest.approx(0.08) and got[7] == pytest.approx(0.08)
    assert got[8] == pytest.approx(0.008) and got[11] == pytest.approx(0.0008)


def test_schedule_without_warmup_or_milestones_is_constant():
    _, schedule = make_optimizer(OptimConfig(learning_rate=0.3), num_steps=10)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 9)], [0.3] * 3, rtol=1e-7)


def test_multistep_schedule_values_by_hand():
    # lr 1, warmup 4 updates from 0.2, milestones 6 and 8 with gamma 0.5:
    # t = 0..3: 0.2 * (1 - t / 4) + t / 4 = 0.2, 0.4, 0.6, 0.8; t = 4, 5: 1; t = 6, 7: 0.5;
    # t = 8, 9: 0.25.
    config = OptimConfig(
        learning_rate=1.0, warmup_steps=4, warmup_factor=0.2, decay_steps=(6, 8), decay_gamma=0.5
    )
    _, schedule = make_optimizer(config, num_steps=10)
    got = [float(schedule(t)) for t in range(10)]
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cosine_schedule_values_by_hand():
    # lr 2, warmup 2 updates from 0.1 x, then cosine over updates 2..6 down to 0.01 x = 0.02:
    # t = 0, 1: 0.2, 1.1; t = 2 + k: 0.02 + 1.98 * (1 + cos(pi k / 4)) / 2.
    config = OptimConfig(learning_rate=2.0, schedule="cosine", warmup_steps=2, warmup_factor=0.1)
    _, schedule = make_optimizer(config, num_steps=6)
    got = [float(schedule(t)) for t in range(7)]
    cosine = [0.02 + 1.98 * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(5)]
    np.testing.assert_allclose(got, [0.2, 1.1, *cosine], rtol=1e-6, atol=1e-7)
    assert got[2] == pytest.approx(2.0) and got[-1] == pytest.approx(0.02)
    # Without warmup the cosine starts at the peak; a warmup as long as the run still decays
    # over two updates (the detector's end of schedule).
    _, no_warmup = make_optimizer(OptimConfig(learning_rate=1.0, schedule="cosine"), 4)
    assert float(no_warmup(0)) == pytest.approx(1.0)
    assert float(no_warmup(2)) == pytest.approx(0.01 + 0.99 * 0.5)
    _, late = make_optimizer(
        OptimConfig(learning_rate=1.0, schedule="cosine", warmup_steps=3), num_steps=4
    )
    assert float(late(3)) == pytest.approx(1.0) and float(late(4)) == pytest.approx(0.505)


def test_adamw_without_decay_is_adam_bit_for_bit():
    # The embedder's optimizer: Adam at a constant rate through the shared builder.
    params = {"w": jnp.asarray([0.3, -1.2, 2.0]), "b": jnp.asarray([0.1])}
    grads = [
        {"w": jnp.asarray([0.5, -0.25, 1.0]), "b": jnp.asarray([2.0])},
        {"w": jnp.asarray([-0.1, 0.3, 0.2]), "b": jnp.asarray([-1.0])},
    ]
    shared, _ = make_optimizer(
        OptimConfig(optimizer="adamw", learning_rate=1e-3, weight_decay=0.0, clip_norm=0.0), 2
    )
    reference = optax.adam(1e-3)
    outputs = []
    for optimizer in (shared, reference):
        state, current = optimizer.init(params), params
        for grad in grads:
            updates, state = optimizer.update(grad, state, current)
            current = optax.apply_updates(current, updates)
        outputs.append(current)
    for a, b in zip(jax.tree.leaves(outputs[0]), jax.tree.leaves(outputs[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_clipping_bounds_the_global_norm_and_zero_disables_it():
    params = {"a": jnp.ones((3,)), "b": jnp.ones((4,))}
    grads = {"a": jnp.full((3,), 4.0), "b": jnp.full((4,), 3.0)}  # global norm sqrt(48 + 36)
    plain = OptimConfig(learning_rate=1.0, momentum=0.0, weight_decay=0.0, clip_norm=2.0)
    optimizer, _ = make_optimizer(plain, num_steps=1)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    scale = 2.0 / np.sqrt(84.0)
    np.testing.assert_allclose(updates["a"], -4.0 * scale * np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -3.0 * scale * np.ones(4), rtol=1e-6)

    unclipped, _ = make_optimizer(
        OptimConfig(learning_rate=1.0, momentum=0.0, weight_decay=0.0, clip_norm=0.0), 1
    )
    updates, _ = unclipped.update(grads, unclipped.init(params), params)
    np.testing.assert_allclose(updates["a"], -4.0 * np.ones(3), rtol=1e-6)

    # A gradient already inside the bound is left unchanged.
    small = {"a": jnp.full((3,), 0.1), "b": jnp.zeros((4,))}
    updates, _ = optimizer.update(small, optimizer.init(params), params)
    np.testing.assert_allclose(updates["a"], -0.1 * np.ones(3), rtol=1e-6)


def test_sgd_is_torch_sgd_with_momentum_and_coupled_weight_decay():
    config = OptimConfig(
        learning_rate=0.5, momentum=0.9, weight_decay=0.1, warmup_steps=0, clip_norm=0.0
    )
    optimizer, _ = make_optimizer(config, num_steps=2)
    param = np.array([2.0, -1.0], np.float32)
    grads = [np.array([1.0, 3.0], np.float32), np.array([-2.0, 0.5], np.float32)]
    opt_state = optimizer.init({"w": jnp.asarray(param)})
    buffer = np.zeros(2, np.float32)
    for grad in grads:
        updates, opt_state = optimizer.update({"w": jnp.asarray(grad)}, opt_state, {"w": param})
        # torch.optim.SGD: d = g + wd * p; buf = momentum * buf + d; p -= lr * buf
        buffer = 0.9 * buffer + (grad + 0.1 * param)
        np.testing.assert_allclose(updates["w"], -0.5 * buffer, rtol=1e-6)
        param = param + np.asarray(updates["w"])


def test_adamw_first_update_is_sign_plus_decoupled_decay():
    config = OptimConfig(optimizer="adamw", learning_rate=0.01, weight_decay=0.5, clip_norm=0.0)
    optimizer, _ = make_optimizer(config, num_steps=1)
    params = {"w": jnp.array([2.0, -4.0])}
    grads = {"w": jnp.array([3.0, 0.2])}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # Bias-corrected first Adam step is g / (|g| + eps); AdamW adds lr * wd * p.
    expected = -0.01 * (np.sign([3.0, 0.2]) + 0.5 * np.array([2.0, -4.0]))
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def torch_sgd_param_groups(params, grad_steps, groups, momentum):
    """torch.optim.SGD over one group per leaf (SGB make_optimizer), as numpy.

    ``groups[name] = (lr, weight_decay)``; per step: ``d = g + wd * p``, ``buf = momentum * buf +
    d`` (``buf = d`` at the first step), ``p -= lr * buf``. Returns the parameters after each step.
    """
    params = {name: np.array(value, np.float64) for name, value in params.items()}
    buffers = {}
    history = []
    for grads in grad_steps:
        for name, grad in grads.items():
            lr, weight_decay = groups[name]
            direction = np.asarray(grad, np.float64) + weight_decay * params[name]
            buffers[name] = (
                direction if name not in buffers else momentum * buffers[name] + direction
            )
            params[name] = params[name] - lr * buffers[name]
        history.append({name: value.copy() for name, value in params.items()})
    return history


def flat(tree):
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def apply_steps(optimizer, params, grad_steps):
    """Parameters after each of ``grad_steps`` (optax.apply_updates)."""
    state = optimizer.init(params)
    history = []
    for grads in grad_steps:
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def two_group_tree(values):
    """A Flax-shaped tree: a Dense (kernel, bias) and a LayerNorm (scale, bias)."""
    return {
        "params": {
            "dense": {"kernel": jnp.asarray(values[0]), "bias": jnp.asarray(values[1])},
            "norm": {"scale": jnp.asarray(values[2]), "bias": jnp.asarray(values[3])},
        }
    }


PARAMS = two_group_tree([[[1.0, -2.0], [0.5, 3.0]], [0.5, -1.0], [1.0, 2.0], [-0.25, 4.0]])
GRAD_STEPS = [
    two_group_tree([[[0.2, -0.4], [1.0, 0.0]], [1.0, -3.0], [0.5, 0.5], [2.0, -1.0]]),
    two_group_tree([[[-1.0, 0.3], [0.0, 2.0]], [-0.5, 0.25], [1.5, -2.0], [0.0, 1.0]]),
]


def test_bias_mask_follows_sgb_name_rule_on_flax_paths():
    dense = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))
    norm = nn.LayerNorm().init(jax.random.key(0), jnp.ones((1, 2)))
    tree = {
        "dense": dense["params"],
        "norm": norm["params"],
        "relation": {"frequency_bias": jnp.zeros((4, 3)), "embedding": jnp.zeros((4, 3))},
    }
    assert flat(bias_mask(tree)) == {
        "dense/bias": True,
        "dense/kernel": False,
        "norm/bias": True,
        "norm/scale": False,
        "relation/embedding": False,
        "relation/frequency_bias": True,  # SGB: "bias" in "freq_bias.obj_baseline.weight"
    }


def test_sgb_bias_rules_one_sgd_step_values():
    config = OptimConfig(
        learning_rate=0.5,
        momentum=0.9,
        weight_decay=0.1,
        clip_norm=0.0,
        bias_rules="sgb",
        bias_lr_factor=2.0,
    )
    optimizer, _ = make_optimizer(config, num_steps=2)
    updates, _ = optimizer.update(GRAD_STEPS[0], optimizer.init(PARAMS), PARAMS)
    got = flat(updates)
    # Weights: lr * (g + wd * p). Biases: 2 * lr * g, no decay.
    np.testing.assert_allclose(
        got["params/dense/kernel"],
        -0.5 * (np.array([[0.2, -0.4], [1.0, 0.0]]) + 0.1 * np.array([[1.0, -2.0], [0.5, 3.0]])),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        got["params/dense/kernel"], [[-0.15, 0.3], [-0.525, -0.15]], rtol=1e-6
    )
    np.testing.assert_allclose(got["params/dense/bias"], [-1.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(got["params/norm/scale"], [-0.3, -0.35], rtol=1e-6)
    np.testing.assert_allclose(got["params/norm/bias"], [-2.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("bias_lr_factor", [2.0, 1.0])
def test_sgb_rules_match_torch_sgd_param_groups_with_momentum(bias_lr_factor):
    config = OptimConfig(
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=0.1,
        clip_norm=0.0,
        scale_lr_by_batch=True,
        images_per_batch=6,
        bias_rules="sgb",
        bias_lr_factor=bias_lr_factor,
    )
    optimizer, _ = make_optimizer(config, num_steps=2)
    history = apply_steps(optimizer, PARAMS, GRAD_STEPS)
    # SGB build.py: lr = BASE_LR (x BIAS_LR_FACTOR for biases) x rl_factor (= IMS_PER_BATCH),
    # weight_decay = WEIGHT_DECAY (WEIGHT_DECAY_BIAS = 0 for biases).
    groups = {
        name: (0.05 * 6 * bias_lr_factor, 0.0) if name.endswith("bias") else (0.05 * 6, 0.1)
        for name in flat(PARAMS)
    }
    expected = torch_sgd_param_groups(
        flat(PARAMS), [flat(grads) for grads in GRAD_STEPS], groups, momentum=0.9
    )
    for got, want in zip(history, expected, strict=True):
        got = flat(got)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_sgb_bias_rules_one_adamw_step_values():
    config = OptimConfig(
        optimizer="adamw",
        learning_rate=0.01,
        weight_decay=0.5,
        clip_norm=0.0,
        bias_rules="sgb",
        bias_lr_factor=2.0,
    )
    optimizer, _ = make_optimizer(config, num_steps=1)
    updates, _ = optimizer.update(GRAD_STEPS[0], optimizer.init(PARAMS), PARAMS)
    got = flat(updates)
    # First Adam step is sign(g); weights add the decoupled lr * wd * p, biases take 2 * lr.
    np.testing.assert_allclose(
        got["params/dense/kernel"], [[-0.015, 0.02], [-0.0125, -0.015]], rtol=1e-5
    )
    np.testing.assert_allclose(got["params/norm/scale"], [-0.015, -0.02], rtol=1e-5)
    np.testing.assert_allclose(got["params/dense/bias"], [-0.02, 0.02], rtol=1e-5)
    np.testing.assert_allclose(got["params/norm/bias"], [-0.02, 0.02], rtol=1e-5)


def test_scaling_multiplies_the_rate_and_the_schedule_by_the_batch():
    common = dict(
        learning_rate=1e-3, warmup_steps=500, warmup_factor=0.1, decay_steps=(28_000, 48_000)
    )
    scaled = OptimConfig(scale_lr_by_batch=True, images_per_batch=8, **common)
    assert scaled.effective_learning_rate == pytest.approx(8e-3)
    assert OptimConfig(images_per_batch=8, **common).effective_learning_rate == 1e-3
    _, schedule = make_optimizer(scaled, num_steps=60_000)
    steps = [0, 250, 500, 27_999, 28_000, 48_000]
    expected = [sgb_warmup_multistep_lr(8e-3, s, [28_000, 48_000], 0.1, 0.1, 500) for s in steps]
    np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-6)
    assert float(schedule(0)) == pytest.approx(8e-4)

    # The updates are those of the unscaled optimizer at learning_rate x batch.
    optimizer, _ = make_optimizer(scaled, num_steps=60_000)
    reference, _ = make_optimizer(
        OptimConfig(**{**common, "learning_rate": 8e-3}), num_steps=60_000
    )
    for got, want in zip(
        apply_steps(optimizer, PARAMS, GRAD_STEPS),
        apply_steps(reference, PARAMS, GRAD_STEPS),
        strict=True,
    ):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_defaults_are_plain_optax_and_ignore_the_batch(optimizer_name):
    """Without scaling and with bias_rules="none" the chain is today's, biases included."""
    config = OptimConfig(optimizer=optimizer_name, warmup_steps=0, images_per_batch=12)
    assert (config.scale_lr_by_batch, config.bias_rules) == (False, "none")
    optimizer, _ = make_optimizer(config, num_steps=10)
    rate = optax.constant_schedule(0.01)
    if optimizer_name == "sgd":
        reference = optax.chain(
            optax.clip_by_global_norm(5.0),
            optax.add_decayed_weights(1e-4),
            optax.sgd(rate, momentum=0.9),
        )
    else:
        reference = optax.chain(
            optax.clip_by_global_norm(5.0), optax.adamw(rate, weight_decay=1e-4)
        )
    got_state, want_state = optimizer.init(PARAMS), reference.init(PARAMS)
    assert jax.tree.structure(got_state) == jax.tree.structure(want_state)
    for grads in GRAD_STEPS:
        got, got_state = optimizer.update(grads, got_state, PARAMS)
        want, want_state = reference.update(grads, want_state, PARAMS)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_sgb_bias_rules_compose_with_frozen_parameters():
    config = OptimConfig(
        learning_rate=0.5, momentum=0.0, weight_decay=0.1, clip_norm=0.0, bias_rules="sgb"
    )
    optimizer, _ = make_optimizer(config, num_steps=1)

    def trainable(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: "dense" in str(path), params)

    frozen = freeze(optimizer, trainable)
    updates, _ = frozen.update(GRAD_STEPS[0], frozen.init(PARAMS), PARAMS)
    got = flat(updates)
    np.testing.assert_allclose(got["params/dense/bias"], [-1.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(
        got["params/dense/kernel"], [[-0.15, 0.3], [-0.525, -0.15]], rtol=1e-6
    )
    np.testing.assert_array_equal(got["params/norm/bias"], [0.0, 0.0])
    np.testing.assert_array_equal(got["params/norm/scale"], [0.0, 0.0])


def test_optim_flags_build_the_config_and_name_bad_flags():
    """experiments.common flags -> OptimConfig, parsed by a fresh FlagValues."""
    from absl import flags

    from experiments import common
    from sgg_jax.errors import ConfigError

    flag_values = flags.FlagValues()
    common.define_data_flags(flag_values)
    common.define_optim_flags(1e-3, flag_values)
    cases = {
        "defaults": ["--batch_size=8"],
        "official": [
            "--batch_size=8",
            "--scale_lr_by_batch",
            "--bias_rules=sgb",
            "--bias_lr_factor=1",
        ],
        "no_images": ["--batch_size=0", "--scale_lr_by_batch"],
        "zero_factor": ["--bias_lr_factor=0"],
        "negative_factor": ["--bias_lr_factor=-2", "--bias_rules=sgb"],
    }
    out = {}
    for name, argv in cases.items():
        flag_values.unparse_flags()
        flag_values(["prog", *argv])
        try:
            config = common.optim_config_from_flags(flag_values)
            out[name] = [
                config.effective_learning_rate,
                config.images_per_batch,
                config.scale_lr_by_batch,
                config.bias_rules,
                config.bias_lr_factor,
            ]
        except ConfigError as error:
            out[name] = str(error)
    assert out["defaults"] == [1e-3, 8, False, "none", 2.0]
    assert out["official"][1:] == [8, True, "sgb", 1.0]
    assert out["official"][0] == pytest.approx(8e-3)
    assert out["no_images"].startswith("option 'batch_size': must be >= 1")
    assert out["zero_factor"].startswith("option 'bias_lr_factor': must be a finite positive")
    assert out["negative_factor"].startswith("option 'bias_lr_factor'")
    assert all("\n" not in value for value in out.values() if isinstance(value, str))


@pytest.mark.parametrize(
    ("options", "num_steps", "option"),
    [
        ({"optimizer": "adam"}, 10, "optimizer"),
        ({"learning_rate": 0.0}, 10, "learning_rate"),
        ({"momentum": 1.0}, 10, "momentum"),
        ({"warmup_steps": -1}, 10, "warmup_steps"),
        ({"warmup_factor": 2.0}, 10, "warmup_factor"),
        ({"decay_steps": (5, 5)}, 10, "decay_steps"),
        ({"decay_steps": (5, 12)}, 10, "decay_steps"),
        ({"clip_norm": float("nan")}, 10, "clip_norm"),
        ({}, 0, "num_steps"),
        ({"bias_lr_factor": 0.0}, 10, "bias_lr_factor"),
        ({"bias_lr_factor": -2.0, "bias_rules": "sgb"}, 10, "bias_lr_factor"),
        ({"bias_rules": "torch"}, 10, "bias_rules"),
        ({"scale_lr_by_batch": True, "images_per_batch": 0}, 10, "images_per_batch"),
        ({"images_per_batch": 2.5}, 10, "images_per_batch"),
        ({"scale_lr_by_batch": "yes"}, 10, "scale_lr_by_batch"),
        ({"schedule": "linear"}, 10, "schedule"),
        ({"schedule": "cosine", "decay_steps": (5,)}, 10, "decay_steps"),
        ({"schedule": "cosine", "cosine_end_factor": 1.5}, 10, "cosine_end_factor"),
    ],
)
def test_config_mistakes_name_the_option(options, num_steps, option):
    with pytest.raises(ConfigError, match=f"option '{option}'"):
        make_optimizer(OptimConfig(**options), num_steps=num_steps)
