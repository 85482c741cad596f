"""Optimizer: SGB WarmupMultiStepLR values, gradient clipping, SGD / AdamW updates, bad configs."""

import bisect

import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.train.optim import OptimConfig, make_optimizer


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
    ],
)
def test_config_mistakes_name_the_option(options, num_steps, option):
    with pytest.raises(ConfigError, match=f"option '{option}'"):
        make_optimizer(OptimConfig(**options), num_steps=num_steps)
