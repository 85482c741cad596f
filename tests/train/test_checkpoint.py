"""Checkpoints: keep-last-k, restore onto another mesh, a killed run resumed to the same result."""

import json
import os

import chex
import jax
import numpy as np
import optax
import pytest

from sgg_jax.train import loop, mesh
from sgg_jax.train.checkpoint import Checkpointer
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import create_train_state
from tests.train import make_model, make_train_loader, relation_cross_entropy

OPTIM = OptimConfig(learning_rate=0.1, warmup_steps=2, decay_steps=(5,))


def _host(tree):
    def copy(leaf):
        if jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return np.array(jax.random.key_data(leaf))
        return np.array(leaf, copy=True)

    return jax.tree.map(copy, tree)


def test_checkpointer_keeps_last_k_and_restores_onto_another_mesh(tmp_path):
    model, loader = make_model(), make_train_loader()
    optimizer, _ = make_optimizer(OPTIM, 10)
    four_devices = mesh.make_mesh()
    state = create_train_state(model, optimizer, loader.dataset[0], seed=0, mesh=four_devices)
    config = {"experiment": "checkpoint-test", "budgets": (4, 12, 24)}
    saved = {}
    with Checkpointer(tmp_path, save_every=2, max_to_keep=2, config=config) as checkpointer:
        for step in range(1, 6):
            state = state.replace(
                step=state.step + 1,
                params=jax.tree.map(lambda p, s=step: p + s, state.params),
            )
            if checkpointer.maybe_save(step, state, final=step == 5):
                saved[step] = _host(state.params)
        assert sorted(saved) == [2, 4, 5]
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["4", "5"]
    with open(tmp_path / "config.json") as handle:
        assert json.load(handle) == {"experiment": "checkpoint-test", "budgets": [4, 12, 24]}

    one_device = mesh.make_mesh(jax.devices()[:1])
    template = create_train_state(model, optimizer, loader.dataset[0], seed=9, mesh=one_device)
    reader = Checkpointer(tmp_path, read_only=True)
    restored, step = reader.restore_latest(template)
    assert step == 5 and int(restored.step) == 5
    chex.assert_trees_all_equal(_host(restored.params), saved[5])
    np.testing.assert_array_equal(
        jax.random.key_data(restored.rng), jax.random.key_data(state.rng)
    )  # the seed-0 key, not the template's seed-9 key
    for leaf in jax.tree.leaves(restored.params):
        assert leaf.sharding == mesh.replicated(one_device)
    older = reader.restore(4, template)
    chex.assert_trees_all_equal(_host(older.params), saved[4])
    assert reader.restore_config(4) == {"experiment": "checkpoint-test", "budgets": [4, 12, 24]}
    variables = reader.restore_variables()  # no template needed
    chex.assert_trees_all_equal(_host(variables["params"]), saved[5])
    assert set(variables) == {"params", "batch_stats"}
    reader.close()


class SimulatedKill(Exception):
    """Stands for the process dying while it waits for the next batch."""


class RecordingLoader:
    """A real loader that records where each pass starts and can die before a given batch."""

    def __init__(self, loader, die_before_batch=None):
        self._loader = loader
        self.config = loader.config
        self.dataset = loader.dataset
        self.num_batches = loader.num_batches
        self.die_before_batch = die_before_batch
        self.started_at = []

    def iter_from(self, step):
        self.started_at.append(step)
        for index, batch in enumerate(self._loader.iter_from(step), start=step):
            if index == self.die_before_batch:
                raise SimulatedKill(f"killed before batch {index}")
            yield batch


def _eval_fn(state, step):
    return {"param_norm": float(optax.tree.norm(state.params)), "at": step}


def _train(workdir, loader):
    return loop.train(
        make_model(),
        relation_cross_entropy,
        loader,
        workdir=workdir,
        train_config=loop.TrainConfig(
            num_steps=7, seed=5, checkpoint_every=3, max_to_keep=3, eval_every=3, progress=False
        ),
        optim_config=OPTIM,
        eval_fn=_eval_fn,
        config={"experiment": "resume-test"},
    )


def _records(workdir):
    return [
        {name: value for name, value in record.items() if not name.startswith("perf/")}
        for record in loop.read_metrics(workdir)
    ]


@pytest.mark.e2e
def test_killed_run_resumes_to_the_same_params_and_metrics(tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_state, reference_metrics = _train(reference_dir, RecordingLoader(make_train_loader()))

    # Batch 5 feeds step 6: the process dies after step 5 was dispatched and after checkpoint 3.
    dying = RecordingLoader(make_train_loader(), die_before_batch=5)
    with pytest.raises(SimulatedKill):
        _train(resumed_dir, dying)
    assert dying.started_at == [0]
    assert sorted(os.listdir(resumed_dir / "checkpoints"), key=int) == ["3"]
    assert max(record["step"] for record in loop.read_metrics(resumed_dir)) == 4

    resuming = RecordingLoader(make_train_loader())
    resumed_state, resumed_metrics = _train(resumed_dir, resuming)
    assert resuming.started_at == [3]  # restored step 3, read the loader from batch 3 on

    assert int(resumed_state.step) == int(reference_state.step) == 7
    chex.assert_trees_all_equal(_host(resumed_state.params), _host(reference_state.params))
    chex.assert_trees_all_equal(
        _host(resumed_state.collections), _host(reference_state.collections)
    )
    chex.assert_trees_all_equal(_host(resumed_state.opt_state), _host(reference_state.opt_state))
    assert resumed_metrics == reference_metrics
    assert resumed_metrics["eval/at"] == 7
    # metrics.jsonl: the records of the dead run after its last checkpoint were dropped, so the
    # file reads like the uninterrupted run's (steps 1..7, evaluations at 3, 6, 7).
    assert _records(resumed_dir) == _records(reference_dir)
    assert [r["step"] for r in _records(resumed_dir) if r["kind"] == "eval"] == [3, 6, 7]
    assert sorted(os.listdir(resumed_dir / "checkpoints"), key=int) == ["3", "6", "7"]

    # A finished run called again trains nothing and reports the recorded metrics.
    again = RecordingLoader(make_train_loader())
    state, metrics = _train(resumed_dir, again)
    assert again.started_at == [] and int(state.step) == 7
    assert metrics == pytest.approx(reference_metrics)
