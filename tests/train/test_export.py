"""Export: the serialised predict function, loaded without the model code, equals the model."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgg_jax
from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError
from sgg_jax.train import export as export_lib
from sgg_jax.train import loop
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import create_train_state
from tests.train import (
    MAX_OBJECTS,
    MAX_PAIRS,
    graphs_and_vocab,
    make_model,
    make_train_loader,
    relation_cross_entropy,
)

INPUTS = ("boxes", "labels", "object_mask", "pairs", "pair_mask", "image_size")


def _predict(variables, batch):
    outputs, _ = make_model().apply(variables, batch, train=False)
    return outputs


def _evaluation_batch(batch_size, first_image=0):
    graphs, vocab = graphs_and_vocab()
    config = pipeline.PipelineConfig.evaluation(
        batch_size=batch_size, max_objects=MAX_OBJECTS, max_pairs=MAX_PAIRS, read_threads=0
    )
    return next(iter(pipeline.make_loader(list(graphs[first_image:]), config)))


def _reference_outputs(variables, batch):
    return jax.device_get(jax.jit(_predict)(variables, jax.tree.map(jnp.asarray, batch)))


STANDALONE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np

    spec = importlib.util.spec_from_file_location("standalone_export", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predictor = module.load_exported(sys.argv[2])
    inputs = dict(np.load(sys.argv[3]))
    outputs = predictor(inputs)
    np.savez(sys.argv[4], **{name: np.asarray(value) for name, value in outputs.items()})
    roots = ("sgg_jax", "flax", "tests")
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in roots)
    print(json.dumps({"loaded": loaded, "config": predictor.config, "budgets": predictor.budgets}))
    """
)


def test_export_from_workdir_round_trips_in_a_fresh_process(tmp_path):
    workdir = tmp_path / "run"
    state, _ = loop.train(
        make_model(),
        relation_cross_entropy,
        make_train_loader(),
        workdir=workdir,
        train_config=loop.TrainConfig(num_steps=2, checkpoint_every=0, progress=False),
        optim_config=OptimConfig(learning_rate=0.1),
    )
    batch = _evaluation_batch(4)
    out_dir = export_lib.export(
        str(workdir), _predict, batch, config={"model": "tiny", "num_predicates": 100}
    )
    assert out_dir == str(workdir / "export")
    with open(workdir / "export" / "manifest.json") as handle:
        manifest = json.load(handle)
    assert manifest["inputs"] == list(INPUTS)
    assert manifest["functions"] == [
        {
            "file": "predict_b4_n12_p24.jax_exported",
            "batch_size": 4,
            "max_objects": 12,
            "max_pairs": 24,
        }
    ]
    assert os.path.isdir(workdir / "export" / "params")

    inputs_path, outputs_path = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_path, **{name: getattr(batch, name) for name in INPUTS})
    script = tmp_path / "load_standalone.py"
    script.write_text(STANDALONE_SCRIPT)
    completed = subprocess.run(
        [
            sys.executable,
            str(script),
            export_lib.__file__,
            str(workdir / "export"),
            str(inputs_path),
            str(outputs_path),
        ],
        cwd=tmp_path,  # neither sgg_jax's checkout nor the tests are importable from here
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []  # no sgg_jax, no flax, no test model in the loading process
    assert report["config"] == {"model": "tiny", "num_predicates": 100}
    assert report["budgets"] == [[4, 12, 24]]

    expected = _reference_outputs(state.variables, batch)
    with np.load(outputs_path) as loaded:
        assert sorted(loaded.files) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(loaded[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    assert np.abs(expected["relation_logits"]).max() > 0.1  # a real, non-trivial output


def test_export_from_state_with_two_budgets_and_call_forms(tmp_path):
    model, loader = make_model(), make_train_loader()
    optimizer, _ = make_optimizer(OptimConfig(), 10)
    state = create_train_state(model, optimizer, loader.dataset[0], seed=4)
    out_dir = export_lib.export(
        state,
        _predict,
        _evaluation_batch(4),
        {"model": "tiny"},
        tmp_path / "export",
        budgets=[(4, MAX_OBJECTS, MAX_PAIRS), (2, MAX_OBJECTS, MAX_PAIRS)],
    )
    predictor = sgg_jax.load_exported(out_dir)
    assert predictor.budgets == ((4, 12, 24), (2, 12, 24))
    assert predictor.input_names == INPUTS

    small = _evaluation_batch(2, first_image=10)
    expected = _reference_outputs(state.variables, small)
    arrays = [getattr(small, name) for name in INPUTS]
    for outputs in (
        predictor(*arrays),
        predictor(**dict(zip(INPUTS, arrays, strict=True))),
        predictor(small),  # a SceneGraphBatch: its input fields are read
    ):
        for name, value in expected.items():
            np.testing.assert_allclose(np.asarray(outputs[name]), value, rtol=1e-6, atol=1e-6)

    odd = jax.tree.map(lambda leaf: leaf[:1], small)
    with pytest.raises(ValueError, match=r"budget \(B, N, P\) = \(1, 12, 24\)"):
        predictor(odd)
    with pytest.raises(ValueError, match="missing inputs \\['pair_mask'\\]"):
        predictor({name: getattr(small, name) for name in INPUTS if name != "pair_mask"})

    # Broken files: one line naming the file.
    function_file = os.path.join(out_dir, "predict_b2_n12_p24.jax_exported")
    with open(function_file, "wb") as handle:
        handle.write(b"not a function")
    with pytest.raises(export_lib.ExportError) as error:
        sgg_jax.load_exported(out_dir)
    assert str(error.value).startswith(f"{function_file}: SHA-256 differs from manifest.json")
    assert "\n" not in str(error.value)
    with pytest.raises(export_lib.ExportError) as error:
        export_lib.read_exported(function_file)
    assert str(error.value).startswith(f"{function_file}: not a serialised jax.export function")
    with open(os.path.join(out_dir, "manifest.json"), "w") as handle:
        handle.write("{")
    with pytest.raises(export_lib.ExportError, match=r"manifest\.json: not valid JSON"):
        sgg_jax.load_exported(out_dir)
    with pytest.raises(export_lib.ExportError, match=r"params: no saved variables"):
        export_lib.restore_variables(tmp_path / "params")


def test_export_config_mistakes(tmp_path):
    with pytest.raises(ConfigError, match="option 'source'.*no checkpoint"):
        export_lib.export(str(tmp_path), _predict, _evaluation_batch(4))
    variables = {"params": {}}
    with pytest.raises(ConfigError, match="option 'out_dir'"):
        export_lib.export(variables, _predict, _evaluation_batch(4))
    with pytest.raises(ConfigError, match="option 'example_inputs'.*pairs"):
        export_lib.export(variables, _predict, {"boxes": np.zeros((1, 2, 4))}, out_dir=tmp_path)
