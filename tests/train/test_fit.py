"""The generic trainer (loop.fit + make_step) on a batch that is a plain dict, not a SceneGraphBatch:
SGD values by hand, hooks, NaN stop naming the step, and the EpochBatches loader."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.train import loop
from sgg_jax.train import mesh as mesh_lib
from sgg_jax.train.loaders import EpochBatches
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import TrainState

NUM_EXAMPLES, BATCH_SIZE, LEARNING_RATE = 8, 4, 0.1


def _examples(poison: int | None = None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    if poison is not None:
        y[poison] = np.nan
    return x, y


def _loader(x, y):
    return EpochBatches(NUM_EXAMPLES, BATCH_SIZE, lambda index: {"x": x[index], "y": y[index]}, 7)


def squared_error(params, collections, batch, dropout_key):
    del dropout_key
    residual = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(residual**2), ({"mean_residual": jnp.mean(residual)}, collections)


def _setup(num_steps):
    mesh = mesh_lib.make_mesh()  # 4 devices: the dict batch is split over them
    optimizer, schedule = make_optimizer(
        OptimConfig(
            optimizer="sgd",
            learning_rate=LEARNING_RATE,
            momentum=0.0,
            clip_norm=0.0,
            weight_decay=0.0,
        ),
        num_steps,
    )
    params = {"w": jnp.zeros((3,), jnp.float32)}
    state = mesh_lib.replicate(
        TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            collections={},
            rng=jax.random.key(0),
        ),
        mesh,
    )
    step = loop.make_step(squared_error, optimizer, mesh=mesh, learning_rate_fn=schedule)
    return state, step, mesh


def test_epoch_batches_are_seeded_per_epoch_and_random_access():
    loader = EpochBatches(10, 4, lambda index: index, seed=3)
    assert loader.steps_per_epoch == 2 and loader.num_batches is None
    iterator = loader.iter_from(0)
    batches = [next(iterator) for _ in range(5)]
    epoch0 = np.random.default_rng([3, 0]).permutation(10)
    epoch1 = np.random.default_rng([3, 1]).permutation(10)
    np.testing.assert_array_equal(batches[0], epoch0[:4])
    np.testing.assert_array_equal(batches[1], epoch0[4:8])  # examples epoch0[8:] are dropped
    np.testing.assert_array_equal(batches[2], epoch1[:4])
    resumed = loader.iter_from(3)
    for expected in batches[3:]:
        np.testing.assert_array_equal(next(resumed), expected)


def test_fit_runs_plain_sgd_on_a_dict_batch_with_hooks(tmp_path):
    x, y = _examples()
    state, step, mesh = _setup(num_steps=3)
    logged, stepped, exported = [], [], []

    def eval_fn(state, step):
        return {"w0": float(state.params["w"][0])}

    state, metrics = loop.fit(
        state,
        step,
        _loader(x, y),
        workdir=None,
        train_config=loop.TrainConfig(num_steps=3, log_every=2, eval_every=2, progress=False),
        mesh=mesh,
        eval_fn=eval_fn,
        throughput=("examples", lambda batch: len(batch["x"])),
        on_log=lambda step, metrics: logged.append((step, sorted(metrics))),
        on_step=lambda step, state, metrics, ev: stepped.append((step, ev)),
        export_fn=lambda state: exported.append(int(state.step)),
    )
    # The same three updates in numpy: w <- w - lr * d/dw mean((x w - y)^2).
    w = np.zeros(3, np.float64)
    iterator = _loader(x, y).iter_from(0)
    for _ in range(3):
        batch = next(iterator)
        residual = batch["x"] @ w - batch["y"]
        loss = np.mean(residual**2)
        w = w - LEARNING_RATE * 2 * batch["x"].T @ residual / BATCH_SIZE
    np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-5)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["learning_rate"] == pytest.approx(LEARNING_RATE)
    assert metrics["eval/w0"] == pytest.approx(w[0], rel=1e-5)
    assert [s for s, _ in logged] == [2, 3]
    assert "perf/examples_per_sec" in logged[0][1] and "loss/mean_residual" in logged[0][1]
    assert [s for s, _ in stepped] == [1, 2, 3]
    assert stepped[0][1] is None and stepped[1][1] is not None and stepped[2][1] is not None
    assert exported == [3]
    assert os.listdir(tmp_path) == []  # no workdir: nothing written


def test_nan_stop_names_the_step_for_a_dict_batch(tmp_path):
    # Poison the first example of batch 1, which feeds update 2.
    poisoned = int(np.random.default_rng([7, 0]).permutation(NUM_EXAMPLES)[BATCH_SIZE])
    x, y = _examples(poison=poisoned)
    state, step, mesh = _setup(num_steps=4)
    with pytest.raises(FloatingPointError, match=r"^step 2: non-finite loss = nan"):
        loop.fit(
            state,
            step,
            _loader(x, y),
            workdir=tmp_path,
            train_config=loop.TrainConfig(num_steps=4, checkpoint_every=1, progress=False),
            mesh=mesh,
        )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # the NaN state is not saved
    assert [record["step"] for record in loop.read_metrics(tmp_path)] == [1]
