"""train(external_variables=...): a frozen subtree left out of the checkpoints, re-merged on resume."""

import chex
import jax
import numpy as np
import pytest

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.train import loop
from sgg_jax.train.checkpoint import Checkpointer, ExternalVariables
from sgg_jax.train.optim import OptimConfig
from tests.train import make_model, make_train_loader, relation_cross_entropy

SGD = OptimConfig(learning_rate=0.1, weight_decay=1e-4, warmup_steps=0, momentum=0.9)
FROZEN = ("Embed_0",)
SOURCE = "/weights/embedding.npy"


def _frozen_mask(params):
    mask = jax.tree.map(lambda _: True, params)
    return {**mask, "Embed_0": jax.tree.map(lambda _: False, params["Embed_0"])}


def _embedding(seed):
    return np.random.default_rng(seed).normal(size=(201, 16)).astype(np.float32)


def _train(workdir, num_steps, *, seed=0, frozen=True, trainable=_frozen_mask):
    """Trains with the embedding replaced by ``_embedding(seed)`` ("read from SOURCE")."""

    def with_embedding(fresh):
        params = dict(fresh["params"])
        params["Embed_0"] = {"embedding": _embedding(seed)}
        return {**fresh, "params": params}

    external = ExternalVariables(FROZEN, {"file": SOURCE}, SOURCE) if frozen else None
    return loop.train(
        make_model(),
        relation_cross_entropy,
        make_train_loader(),
        workdir=workdir,
        train_config=loop.TrainConfig(
            num_steps=num_steps, seed=1, checkpoint_every=1, log_every=1, progress=False
        ),
        optim_config=SGD,
        init_variables=with_embedding,
        trainable=trainable,
        external_variables=external,
    )


def _host(tree):
    return jax.tree.map(lambda leaf: np.array(leaf, copy=True), jax.device_get(tree))


@pytest.mark.e2e
def test_checkpoints_leave_the_frozen_subtree_out_and_resume_equals_uninterrupted(tmp_path):
    whole, _ = _train(tmp_path / "whole", 3)
    _train(tmp_path / "resumed", 2)  # "killed" after the checkpoint of step 2
    with Checkpointer(tmp_path / "resumed", read_only=True) as checkpointer:
        stored = checkpointer.restore_variables()
        reference = checkpointer.external_reference()
    assert "Embed_0" not in stored["params"] and "Dense_0" in stored["params"]
    assert reference["path"] == ["Embed_0"] and reference["source"] == {"file": SOURCE}
    assert len(reference["digest"]) == 64
    resumed, _ = _train(tmp_path / "resumed", 3)
    assert int(resumed.step) == 3
    chex.assert_trees_all_equal(_host(resumed.params), _host(whole.params))
    chex.assert_trees_all_equal(_host(resumed.opt_state), _host(whole.opt_state))
    np.testing.assert_array_equal(resumed.params["Embed_0"]["embedding"], _embedding(0))
    a = [r["loss"] for r in loop.read_metrics(tmp_path / "whole") if r["kind"] == "train"]
    b = [r["loss"] for r in loop.read_metrics(tmp_path / "resumed") if r["kind"] == "train"]
    assert a == b

    # Another source (the file changed) is refused in one line naming it, before any update.
    with pytest.raises(DataError) as caught:
        _train(tmp_path / "resumed", 4, seed=5)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: the variables under Embed_0 are not those checkpoint 3")
    assert "\n" not in message
    # Resuming without leaving it out (e.g. another freeze setting) is refused as well.
    with pytest.raises(DataError, match="checkpoint 3 leaves out the variables under Embed_0"):
        _train(tmp_path / "resumed", 4, frozen=False)
    assert max(r["step"] for r in loop.read_metrics(tmp_path / "resumed")) == 3
    # An export from the workdir would miss them: refused (exports are made from the state).
    from sgg_jax.train.export import export

    with pytest.raises(ConfigError, match="leave out the frozen variables under Embed_0"):
        export(tmp_path / "resumed", None, None)


def test_a_subtree_that_trains_cannot_be_left_out(tmp_path):
    with pytest.raises(ConfigError, match="changed during training"):
        _train(tmp_path / "run", 1, trainable=None)
