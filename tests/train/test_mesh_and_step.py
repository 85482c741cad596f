"""Mesh, sharded train step, train loop: device-count invariance, one trace, NaN stop, outputs."""

import dataclasses
import itertools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError
from sgg_jax.train import loop, mesh
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import create_train_state
from tests.train import graphs_and_vocab, make_model, make_train_loader, relation_cross_entropy

OPTIM = OptimConfig(learning_rate=0.1, warmup_steps=2, warmup_factor=0.5, clip_norm=5.0)


def _host(tree):
    """A copy off the devices (survives donation); key arrays are copied as keys."""

    def copy(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(np.asarray(jax.random.key_data(leaf)))
        return np.array(leaf, copy=True)

    return jax.tree.map(copy, tree)


def _run_steps(device_mesh, num_steps):
    model, loader = make_model(), make_train_loader()
    optimizer, schedule = make_optimizer(OPTIM, num_steps)
    state = create_train_state(model, optimizer, loader.dataset[0], seed=3, mesh=device_mesh)
    initial = _host(state)
    train_step = loop.make_train_step(
        model, relation_cross_entropy, optimizer, mesh=device_mesh, learning_rate_fn=schedule
    )
    metrics, batches = [], []
    for host_batch in itertools.islice(loader.iter_from(0), num_steps):
        batch = mesh.shard_batch(host_batch, device_mesh)
        previous_params = state.params
        state, step_metrics = train_step(state, batch)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous_params))  # donated
        metrics.append(_host(step_metrics))
        batches.append(host_batch)
    return initial, state, metrics, batches


def test_make_mesh_and_shardings():
    assert jax.device_count() == 4  # tests/conftest.py simulates 4 CPU devices
    single, full = mesh.make_mesh(jax.devices()[:1]), mesh.make_mesh()
    assert single.axis_names == full.axis_names == ("data",)
    assert single.devices.shape == (1,) and full.devices.shape == (4,)
    batch = next(iter(make_train_loader()))
    on_mesh = mesh.shard_batch(batch, full)
    assert on_mesh.boxes.sharding == mesh.batch_sharding(full)
    assert on_mesh.pairs.shape == batch.pairs.shape
    assert [shard.data.shape[0] for shard in on_mesh.labels.addressable_shards] == [1, 1, 1, 1]
    np.testing.assert_array_equal(np.asarray(on_mesh.pair_labels), batch.pair_labels)
    params = mesh.replicate({"w": np.arange(3.0)}, full)
    assert params["w"].sharding.is_fully_replicated
    assert len(params["w"].addressable_shards) == 4


def test_shard_batch_rejects_batch_not_divisible_by_devices():
    batch = next(iter(make_train_loader()))
    three_images = jax.tree.map(lambda leaf: leaf[:3], batch)
    with pytest.raises(ConfigError, match="option 'batch_size'.*4 devices"):
        mesh.shard_batch(three_images, mesh.make_mesh())
    assert mesh.shard_batch(three_images, mesh.make_mesh(jax.devices()[:1])).boxes.shape[0] == 3


def test_initialize_distributed_disabled_does_nothing():
    assert mesh.initialize_distributed(False) is False
    assert jax.process_count() == 1


def test_one_and_four_devices_give_the_same_loss_and_params():
    initial, state_1, metrics_1, batches = _run_steps(mesh.make_mesh(jax.devices()[:1]), 3)
    _, state_4, metrics_4, _ = _run_steps(mesh.make_mesh(), 3)

    for name in ("loss", "loss/relation_ce", "loss/foreground_ce", "grad_norm", "learning_rate"):
        np.testing.assert_allclose(
            [m[name] for m in metrics_1], [m[name] for m in metrics_4], rtol=1e-5, atol=1e-5
        )
    chex.assert_trees_all_close(_host(state_1.params), _host(state_4.params), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
        _host(state_1.collections), _host(state_4.collections), rtol=1e-5, atol=1e-5
    )
    assert int(state_1.step) == int(state_4.step) == 3
    assert state_4.params["Dense_0"]["kernel"].sharding.is_fully_replicated
    # The parameters moved and the batch statistics were updated in training.
    assert not np.allclose(
        _host(state_4.params)["Dense_2"]["kernel"], initial.params["Dense_2"]["kernel"]
    )
    assert not np.allclose(
        _host(state_4.collections)["batch_stats"]["BatchNorm_0"]["mean"],
        initial.collections["batch_stats"]["BatchNorm_0"]["mean"],
    )
    # Learning rate of updates 0, 1, 2: linear warmup from 0.5 * lr over 2 updates, then lr.
    np.testing.assert_allclose(
        [m["learning_rate"] for m in metrics_4], [0.05, 0.075, 0.1], rtol=1e-6
    )

    # Update 0 recomputed outside the train step: same dropout key (fold_in(rng, 0)), same loss
    # and gradient norm.
    model = make_model()
    first_batch = jax.tree.map(jnp.asarray, batches[0])

    def loss_of(params):
        (outputs, aux), _ = model.apply(
            {"params": params, **initial.collections},
            first_batch,
            train=True,
            rngs={"dropout": jax.random.fold_in(initial.rng, 0)},
            mutable=["batch_stats"],
        )
        return relation_cross_entropy(outputs, aux, first_batch)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_of))(initial.params)
    np.testing.assert_allclose(metrics_4[0]["loss"], float(loss), rtol=1e-5)
    np.testing.assert_allclose(metrics_4[0]["grad_norm"], float(optax.tree.norm(grads)), rtol=1e-5)


def test_train_step_traces_once_for_batches_of_different_graph_sizes():
    device_mesh = mesh.make_mesh()
    model, loader = make_model(), make_train_loader()
    optimizer, schedule = make_optimizer(OPTIM, 5)
    state = create_train_state(model, optimizer, loader.dataset[0], seed=3, mesh=device_mesh)
    counted_loss = chex.assert_max_traces(relation_cross_entropy, n=1)  # fails on a 2nd trace
    train_step = loop.make_train_step(
        model, counted_loss, optimizer, mesh=device_mesh, learning_rate_fn=schedule
    )
    compilations = []

    def on_event(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compilations.append(duration)

    batches = list(itertools.islice(loader.iter_from(0), 5))
    real_objects = {tuple(batch.object_mask.sum(axis=1)) for batch in batches}
    real_pairs = {int(batch.pair_mask.sum()) for batch in batches}
    assert len(real_objects) >= 3 and len(real_pairs) > 1  # the graphs really differ in size
    state, _ = train_step(state, mesh.shard_batch(batches[0], device_mesh))
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        for batch in batches[1:]:
            state, metrics = train_step(state, mesh.shard_batch(batch, device_mesh))
            assert np.isfinite(float(metrics["loss"]))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert compilations == []  # no recompilation after the first step
    assert int(state.step) == 5


def _train(workdir, loss_fn=relation_cross_entropy, **options):
    train_config = loop.TrainConfig(
        num_steps=options.pop("num_steps", 4),
        seed=1,
        checkpoint_every=options.pop("checkpoint_every", 2),
        progress=False,
        **options,
    )
    return loop.train(
        make_model(),
        loss_fn,
        make_train_loader(),
        workdir=workdir,
        train_config=train_config,
        optim_config=OPTIM,
    )


def test_nan_loss_stops_with_floating_point_error_naming_the_step(tmp_path):
    # Poison the loss on the batch of update 2: its images are not in the batch of update 1.
    poisoned_images = jnp.asarray(make_train_loader().dataset[1].image_index)

    def nan_on_second_batch(outputs, aux, batch):
        loss, terms = relation_cross_entropy(outputs, aux, batch)
        poisoned = jnp.isin(batch.image_index, poisoned_images).any()
        return jnp.where(poisoned, jnp.nan, loss), terms

    with pytest.raises(FloatingPointError, match=r"step 2: non-finite loss = nan"):
        _train(tmp_path, nan_on_second_batch, checkpoint_every=1)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # the NaN state is not saved
    assert [record["step"] for record in loop.read_metrics(tmp_path)] == [1]


def test_train_writes_metrics_tensorboard_eval_and_config(tmp_path):
    evaluated_steps = []

    def eval_fn(state, step):
        evaluated_steps.append(step)
        assert int(state.step) == step
        return {"param_norm": float(optax.tree.norm(state.params))}

    state, metrics = loop.train(
        make_model(),
        relation_cross_entropy,
        make_train_loader(),
        workdir=tmp_path,
        train_config=loop.TrainConfig(
            num_steps=5, seed=1, checkpoint_every=2, eval_every=2, log_every=2, progress=False
        ),
        optim_config=OPTIM,
        eval_fn=eval_fn,
        config={"experiment": "unit"},
    )
    assert int(state.step) == 5
    assert evaluated_steps == [2, 4, 5]
    records = loop.read_metrics(tmp_path)
    assert [(r["step"], r["kind"]) for r in records] == [
        (2, "train"),
        (2, "eval"),
        (4, "train"),
        (4, "eval"),
        (5, "train"),
        (5, "eval"),
    ]
    last_train = records[-2]
    for name in ("loss", "loss/relation_ce", "loss/foreground_ce", "grad_norm", "learning_rate"):
        assert last_train[name] == pytest.approx(metrics[name])
    assert last_train["perf/steps_per_sec"] > 0 and last_train["perf/relations_per_sec"] > 0
    assert metrics["eval/param_norm"] == pytest.approx(records[-1]["param_norm"])
    assert metrics["learning_rate"] == pytest.approx(0.1)
    events = os.listdir(tmp_path / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["2", "4", "5"]
    with open(tmp_path / "config.json") as handle:
        config = json.load(handle)
    assert config["experiment"] == "unit"
    assert config["train"]["num_steps"] == 5 and config["optim"]["learning_rate"] == 0.1
    assert config["pipeline"]["max_pairs"] == 24


def test_train_rejects_a_loader_shorter_than_the_run(tmp_path):
    graphs, _ = graphs_and_vocab()
    one_epoch = dataclasses.replace(make_train_loader().config, num_epochs=1)
    short = pipeline.make_loader(list(graphs[:8]), one_epoch)  # 2 batches
    with pytest.raises(ConfigError, match="option 'num_steps'.*only 2 batches"):
        loop.train(
            make_model(),
            relation_cross_entropy,
            short,
            workdir=tmp_path,
            train_config=loop.TrainConfig(num_steps=3, progress=False),
            optim_config=OPTIM,
        )
