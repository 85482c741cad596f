"""train(batch_transform=...) and train(init_variables=...): what RA-SGG's phase 2 relies on."""

import chex
import jax
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.train import loop, mesh
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import create_train_state
from tests.train import make_model, make_train_loader, relation_cross_entropy

NO_DECAY = OptimConfig(learning_rate=0.1, weight_decay=0.0, warmup_steps=0, momentum=0.0)


def _host(tree):
    return jax.tree.map(lambda leaf: np.array(leaf, copy=True), tree)


def _config(num_steps):
    return loop.TrainConfig(
        num_steps=num_steps, seed=3, checkpoint_every=0, log_every=1, progress=False
    )


class Recorder:
    """Records the variables of each step and relabels every pair as background."""

    def __init__(self):
        self.seen = []

    def __call__(self, variables, step, batch):
        self.seen.append((step, _host(variables["params"])))
        background = np.zeros_like(batch.pair_labels)
        return batch.replace(pair_labels=background), {"probe/step": step}


def _train(workdir, num_steps, **options):
    return loop.train(
        make_model(),
        relation_cross_entropy,
        make_train_loader(),
        workdir=workdir,
        train_config=_config(num_steps),
        optim_config=NO_DECAY,
        **options,
    )


def test_the_transform_sees_each_step_with_the_variables_entering_it(tmp_path):
    recorder = Recorder()
    state, metrics = _train(tmp_path / "three", 3, batch_transform=recorder)
    assert [step for step, _ in recorder.seen] == [1, 2, 3]
    records = [r for r in loop.read_metrics(tmp_path / "three") if r["kind"] == "train"]
    assert [r["probe/step"] for r in records] == [1, 2, 3]
    # the steps trained on the transformed batches: no foreground left
    assert all(r["loss/foreground_ce"] == 0.0 and r["loss"] > 0 for r in records)
    assert metrics["probe/step"] == 3
    # step 1 sees the initialisation, step 3 the parameters after two updates
    optimizer, _ = make_optimizer(NO_DECAY, 3)
    initial = create_train_state(make_model(), optimizer, make_train_loader().dataset[0], seed=3)
    chex.assert_trees_all_close(recorder.seen[0][1], _host(initial.params))
    two, _ = _train(tmp_path / "two", 2, batch_transform=Recorder())
    chex.assert_trees_all_close(recorder.seen[2][1], _host(two.params), rtol=1e-6)
    assert not np.allclose(
        jax.tree.leaves(recorder.seen[2][1])[0], jax.tree.leaves(_host(state.params))[0]
    )


@pytest.mark.e2e
def test_a_fresh_run_starts_from_init_variables_and_leaves_them_intact(tmp_path):
    model, loader = make_model(), make_train_loader()
    optimizer, _ = make_optimizer(NO_DECAY, 2)
    donor = create_train_state(model, optimizer, loader.dataset[0], seed=11, mesh=mesh.make_mesh())
    shifted = jax.tree.map(lambda p: p + 0.5, donor.params)
    variables = {"params": shifted, **donor.collections}
    expected = _host(shifted)

    recorder = Recorder()
    state, _ = _train(tmp_path / "a", 2, batch_transform=recorder, init_variables=variables)
    chex.assert_trees_all_close(recorder.seen[0][1], expected)
    # the caller's arrays survive the donated train steps and can seed another run
    chex.assert_trees_all_close(_host(variables["params"]), expected)
    again = Recorder()
    _train(tmp_path / "b", 2, batch_transform=again, init_variables=variables)
    chex.assert_trees_all_close(again.seen[0][1], expected)

    # A run that resumes from its own checkpoint ignores init_variables.
    resumed, _ = _train(tmp_path / "a", 3, init_variables={"params": donor.params})
    assert int(resumed.step) == 3
    assert not np.allclose(
        jax.tree.leaves(_host(resumed.params))[0], jax.tree.leaves(_host(donor.params))[0]
    )


def test_init_variables_must_match_the_model(tmp_path):
    model, loader = make_model(), make_train_loader()
    optimizer, _ = make_optimizer(NO_DECAY, 1)
    donor = create_train_state(model, optimizer, loader.dataset[0], seed=0)
    wrong = jax.tree.map(lambda p: np.zeros((*np.shape(p), 2), np.float32), donor.params)
    for variables in ({"params": wrong}, {"batch_stats": donor.collections["batch_stats"]}):
        with pytest.raises(ConfigError, match="'init_variables'"):
            loop.train(
                model,
                relation_cross_entropy,
                loader,
                workdir=tmp_path,
                train_config=_config(1),
                optim_config=NO_DECAY,
                init_variables=variables,
            )


class KeyRecorder:
    """A transform that asks for the update's dropout key (RA-SGG's official variant does)."""

    wants_dropout_key = True

    def __init__(self):
        self.keys = []

    def __call__(self, variables, step, batch, dropout_key=None):
        self.keys.append((step, np.asarray(jax.random.key_data(dropout_key))))
        return batch, {}


def test_a_transform_asking_for_it_gets_the_dropout_key_of_its_update(tmp_path):
    recorder = KeyRecorder()
    state, _ = _train(tmp_path / "keys", 3, batch_transform=recorder)
    assert [step for step, _ in recorder.keys] == [1, 2, 3]
    # train_step of update t draws dropout from fold_in(rng, t - 1) (TrainState.step_key).
    for step, key in recorder.keys:
        expected = jax.random.key_data(state.step_key(step - 1))
        np.testing.assert_array_equal(key, np.asarray(expected))
    assert not np.array_equal(recorder.keys[0][1], recorder.keys[1][1])


def test_composed_transform_chains_batches_merges_metrics_and_routes_the_key():
    seen = []

    def add_one(variables, step, batch):
        seen.append(("add_one", batch))
        return batch + 1, {"a": 1.0, "shared": 1.0}

    class WithKey:
        wants_dropout_key = True

        def __call__(self, variables, step, batch, dropout_key=None):
            seen.append(("with_key", batch, dropout_key, step))
            return batch * 10, {"b": 2.0, "shared": 2.0}

    composed = loop.ComposedTransform(add_one, None, WithKey())
    assert composed.wants_dropout_key
    batch, metrics = composed({}, 7, 1, dropout_key="key")
    assert batch == 20 and metrics == {"a": 1.0, "b": 2.0, "shared": 2.0}
    assert seen == [("add_one", 1), ("with_key", 2, "key", 7)]
    plain = loop.ComposedTransform(add_one)
    assert not plain.wants_dropout_key and plain({}, 1, 5)[0] == 6
