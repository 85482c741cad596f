"""Damaged checkpoints, damaged or tampered exports and a rerun with other settings: each is named in
one line and never silently used."""

import hashlib
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sgg_jax
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.train import export as export_lib
from sgg_jax.train import loop
from sgg_jax.train import mesh as mesh_lib
from sgg_jax.train.loaders import EpochBatches
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import TrainState

NUM_EXAMPLES, BATCH_SIZE = 8, 4


def _loader():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    return EpochBatches(NUM_EXAMPLES, BATCH_SIZE, lambda index: {"x": x[index], "y": y[index]}, 7)


def _squared_error(params, collections, batch, dropout_key):
    del dropout_key
    residual = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(residual**2), ({}, collections)


def _fit(workdir, num_steps=4, learning_rate=0.1, **train_options):
    mesh = mesh_lib.make_mesh()
    optim = OptimConfig(
        optimizer="sgd", learning_rate=learning_rate, momentum=0.9, clip_norm=0.0, weight_decay=0.0
    )
    optimizer, schedule = make_optimizer(optim, num_steps)
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
    step = loop.make_step(_squared_error, optimizer, mesh=mesh, learning_rate_fn=schedule)
    options = dict(checkpoint_every=2, max_to_keep=5, async_checkpointing=False, progress=False)
    options.update(train_options)
    state, _ = loop.fit(
        state,
        step,
        _loader(),
        workdir=workdir,
        train_config=loop.TrainConfig(num_steps=num_steps, **options),
        mesh=mesh,
        config={"optim": {"learning_rate": learning_rate}},
    )
    return np.asarray(jax.device_get(state.params["w"]))


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def _state_files(step_dir):
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for name in names
    )


def _tree(directory):
    """{relative path: bytes} of every file under ``directory``."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = handle.read()
    return out


# ----------------------------------------------------------------------------------------------
# 1. A broken newest checkpoint
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["data", "metadata"])
def test_a_broken_newest_checkpoint_is_named_and_the_run_resumes_from_the_intact_one(
    tmp_path, caplog, damage
):
    uninterrupted = _fit(tmp_path / "reference", num_steps=6)
    workdir = tmp_path / "run"
    _fit(workdir, num_steps=4)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    step4 = workdir / "checkpoints" / "4"
    files = _state_files(step4)
    targets = [f for f in files if os.path.basename(f) == "_METADATA"]
    if damage == "data":
        targets = [f for f in files if "/d/" in f or os.path.basename(f).startswith("ocdbt")]
        targets = targets or [f for f in files if os.path.basename(f) != "_METADATA"]
    assert targets
    for path in targets:
        _truncate(path)
    damaged = _tree(step4)

    with caplog.at_level(logging.WARNING):
        resumed = _fit(workdir, num_steps=6)
    broken = [r.getMessage() for r in caplog.records if "is broken, skipping it" in r.getMessage()]
    assert len(broken) == 1 and str(step4) in broken[0] and "\n" not in broken[0]
    kept = [r.getMessage() for r in caplog.records if "kept as it is" in r.getMessage()]
    assert len(kept) == 1 and str(step4) in kept[0]
    np.testing.assert_array_equal(resumed, uninterrupted)
    # The broken folder is left exactly as found; the later steps are saved.
    assert _tree(step4) == damaged
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    records = loop.read_metrics(workdir)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_one_data_error_naming_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    _fit(workdir, num_steps=4)
    for step in ("2", "4"):
        for path in _state_files(workdir / "checkpoints" / step):
            if os.path.basename(path) == "_METADATA":
                _truncate(path)
    with pytest.raises(DataError) as raised:
        _fit(workdir, num_steps=6)
    message = str(raised.value)
    assert message.startswith(str(workdir / "checkpoints") + ": no intact checkpoint")
    assert "broken steps: 2, 4" in message and "\n" not in message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


# ----------------------------------------------------------------------------------------------
# 3. A rerun with other settings
# ----------------------------------------------------------------------------------------------


def test_a_rerun_with_another_config_stops_naming_the_keys_and_keeps_the_record(tmp_path):
    workdir = tmp_path / "run"
    trained = _fit(workdir, num_steps=4)
    recorded = (workdir / "config.json").read_text()
    with pytest.raises(ConfigError) as raised:
        _fit(workdir, num_steps=4, learning_rate=0.5, seed=3)
    message = str(raised.value)
    assert "differing: optim.learning_rate, train.seed" in message and "\n" not in message
    assert str(workdir) in message
    assert (workdir / "config.json").read_text() == recorded
    assert not (workdir / "config_history.jsonl").exists()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

    # Operational keys and a longer run are no change of what is trained.
    extended = _fit(workdir, num_steps=6, log_every=3, eval_every=2, checkpoint_every=3)
    np.testing.assert_array_equal(extended, _fit(tmp_path / "reference", num_steps=6))
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 6
    assert not (workdir / "config_history.jsonl").exists()
    with pytest.raises(ConfigError, match=r"differing: train\.num_steps\)"):
        _fit(workdir, num_steps=5)

    # Allowed: the run goes on with the new settings and the old ones are kept in the history.
    again = _fit(workdir, num_steps=6, learning_rate=0.5, allow_config_change=True)
    np.testing.assert_array_equal(again, extended)  # already at step 6: nothing more to train
    config = json.loads((workdir / "config.json").read_text())
    assert config["optim"]["learning_rate"] == 0.5 and "allow_config_change" not in config["train"]
    (history,) = [json.loads(line) for line in open(workdir / "config_history.jsonl")]
    assert history["step"] == 6 and history["changed"] == ["optim.learning_rate"]
    assert history["config"]["optim"]["learning_rate"] == 0.1
    assert trained.shape == (3,)


def test_allow_config_change_is_a_shared_relation_flag():
    from absl import flags

    from experiments import common

    flag_values = flags.FlagValues()
    common.define_data_flags(flag_values)
    flag_values(["prog", "--allow_config_change"])
    assert common.data_config_from_flags(flag_values).allow_config_change is True
    flag_values = flags.FlagValues()
    common.define_data_flags(flag_values)
    flag_values(["prog"])
    assert common.data_config_from_flags(flag_values).allow_config_change is False


# ----------------------------------------------------------------------------------------------
# 2. Damaged, tampered and unverified exports
# ----------------------------------------------------------------------------------------------

SIDE = 8


def _export_inputs():
    batch = 2
    inputs = {
        "boxes": np.tile(np.array([[0, 0, 4, 4], [2, 2, 6, 7]], np.float32), (batch, 1, 1)),
        "labels": np.ones((batch, 2), np.int32),
        "object_mask": np.ones((batch, 2), bool),
        "pairs": np.tile(np.array([[0, 1], [1, 0], [0, 0]], np.int32), (batch, 1, 1)),
        "pair_mask": np.array([[True, True, False]] * batch),
        "image_size": np.full((batch, 2), SIDE, np.int32),
        "images": np.zeros((batch, SIDE, SIDE, 3), np.float32),
    }
    return inputs


def _predict(variables, batch):
    weights = variables["params"]["w"]
    geometry = batch.boxes[:, :, None, :].sum(-1) * weights  # [B, N, 3]
    pair_logits = jnp.take_along_axis(geometry, batch.pairs[..., :1], axis=1)  # [B, P, 3]
    return {"predicate_scores": jax.nn.softmax(pair_logits, axis=-1)}


SGDET_CONFIG = {
    "task": "sgdet",
    "vocab": {"object_names": ["__background__", "a", "b"], "predicate_names": ["__bg__", "on"]},
    "image_transform": {
        "image_size": SIDE,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "scale_255": True,
        "bgr": False,
    },
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "export"
    variables = {"params": {"w": np.linspace(-1.0, 1.0, 3 * 512, dtype=np.float32)[:3]}}
    export_lib.export(variables, _predict, _export_inputs(), SGDET_CONFIG, out)
    return str(out)


def _copy(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "copy")


def _manifest(directory):
    return json.loads((directory / export_lib.MANIFEST_FILE).read_text())


def _write_manifest(directory, manifest):
    (directory / export_lib.MANIFEST_FILE).write_text(json.dumps(manifest))


def _params_data_file(directory):
    files = _tree(directory / export_lib.PARAMS_DIR)
    name = max((n for n in files if "/d/" in n), key=lambda n: len(files[n]))
    return str(directory / export_lib.PARAMS_DIR / name)


def _load_error(directory):
    with pytest.raises(export_lib.ExportError) as raised:
        sgg_jax.load_exported(directory)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_the_manifest_records_the_sha256_of_every_other_file(exported):
    directory = os.path.abspath(exported)
    recorded = _manifest(__import__("pathlib").Path(directory))["files"]
    files = _tree(directory)
    del files[export_lib.MANIFEST_FILE]
    assert set(recorded) == set(files) and len(recorded) > 3
    assert all(recorded[name] == hashlib.sha256(data).hexdigest() for name, data in files.items())
    outputs = sgg_jax.load_exported(exported)(_export_inputs())
    assert np.asarray(outputs["predicate_scores"]).shape == (2, 3, 3)


def test_flipped_bytes_in_the_params_are_named_not_loaded(exported, tmp_path):
    directory = _copy(exported, tmp_path)
    path = _params_data_file(directory)
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        start = len(data) // 2 - 32
        data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
        handle.seek(0)
        handle.write(data)
    message = _load_error(directory)
    assert message.startswith(f"{path}: SHA-256 differs from manifest.json")


@pytest.mark.parametrize("target", ["function", "config", "metadata"])
def test_a_truncated_file_is_named(exported, tmp_path, target):
    directory = _copy(exported, tmp_path)
    if target == "function":
        path = str(directory / _manifest(directory)["functions"][0]["file"])
    elif target == "config":
        path = str(directory / export_lib.CONFIG_FILE)
    else:
        path = str(directory / export_lib.PARAMS_DIR / "_METADATA")
    _truncate(path)
    assert _load_error(directory).startswith(f"{path}: SHA-256 differs")


def test_a_missing_or_added_file_is_named(exported, tmp_path):
    directory = _copy(exported, tmp_path)
    path = directory / export_lib.CONFIG_FILE
    path.unlink()
    assert _load_error(directory) == f"{path}: missing (listed in manifest.json)"
    directory = shutil.copytree(exported, tmp_path / "added")
    extra = directory / export_lib.PARAMS_DIR / "extra"
    extra.write_text("x")
    assert _load_error(directory).startswith(f"{extra}: not listed in manifest.json")


@pytest.mark.parametrize(
    "field, value",
    [
        ("params", "/etc"),
        ("params", "../copy"),
        ("params", "params/../../copy/params"),
        ("function", "/etc/passwd"),
        ("function", "../../outside.jax_exported"),
        ("files", {"../outside": "0" * 64}),
    ],
)
def test_a_manifest_path_out_of_the_export_is_refused(exported, tmp_path, field, value):
    directory = _copy(exported, tmp_path)
    manifest = _manifest(directory)
    if field == "function":
        manifest["functions"][0]["file"] = value
    else:
        manifest[field] = value
    _write_manifest(directory, manifest)
    message = _load_error(directory)
    assert message.startswith(f"{directory / export_lib.MANIFEST_FILE}: path ")
    assert message.endswith("leads out of the export folder")


def test_a_link_out_of_the_export_is_refused(exported, tmp_path):
    directory = _copy(exported, tmp_path)
    outside = shutil.copytree(directory / export_lib.PARAMS_DIR, tmp_path / "outside")
    shutil.rmtree(directory / export_lib.PARAMS_DIR)
    os.symlink(outside, directory / export_lib.PARAMS_DIR)
    assert _load_error(directory).endswith("leads out of the export folder")


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m.pop("functions"), "field 'functions': missing"),
        (lambda m: m.pop("input_dtypes"), "field 'input_dtypes': missing"),
        (lambda m: m.update(inputs=["boxes"]), "field 'inputs': must list each of"),
        (lambda m: m["input_dtypes"].update(boxes="float99"), "field 'input_dtypes': boxes"),
        (lambda m: m["functions"][0].pop("file"), "field 'functions[0]': must be an object"),
        (lambda m: m["functions"][0].update(batch_size="2"), "must be positive integers"),
        (lambda m: m.update(files=[]), "field 'files': must map file names"),
        (lambda m: m["files"].update({"config.json": "abc"}), "has no SHA-256 digest"),
        (lambda m: m.update(version="1"), "field 'version': not an integer"),
    ],
)
def test_a_malformed_manifest_is_one_line_naming_it_and_the_field(
    exported, tmp_path, change, reason
):
    directory = _copy(exported, tmp_path)
    manifest = _manifest(directory)
    change(manifest)
    _write_manifest(directory, manifest)
    message = _load_error(directory)
    assert message.startswith(f"{directory / export_lib.MANIFEST_FILE}: ") and reason in message


def test_a_manifest_that_is_not_json_is_named(exported, tmp_path):
    directory = _copy(exported, tmp_path)
    (directory / export_lib.MANIFEST_FILE).write_text('{"format": "sgg_jax.export", ')
    message = _load_error(directory)
    assert message.startswith(f"{directory / export_lib.MANIFEST_FILE}: not valid JSON")


def test_an_export_without_checksums_loads_with_one_warning(exported, tmp_path, caplog):
    directory = _copy(exported, tmp_path)
    manifest = _manifest(directory)
    del manifest["files"]
    _write_manifest(directory, manifest)
    with caplog.at_level(logging.WARNING):
        predictor = sgg_jax.load_exported(directory)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"{directory}: export written without checksums; loaded unverified "
        "(export it again to verify it)"
    ]
    expected = sgg_jax.load_exported(exported)(_export_inputs())["predicate_scores"]
    np.testing.assert_array_equal(predictor(_export_inputs())["predicate_scores"], expected)


def test_predict_command_reports_a_damaged_export_in_one_line(exported, tmp_path, capsys):
    from absl import flags
    from PIL import Image

    from experiments import predict

    directory = _copy(exported, tmp_path)
    path = _params_data_file(directory)
    _truncate(path)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(image)
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    argv = flag_values(
        ["predict", f"--export_dir={directory}", f"--images={image}", f"--out={tmp_path / 'out'}"]
    )
    assert predict.main(argv, flag_values) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"{path}: SHA-256 differs" in err[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# 2b. Saved scene-graph embedders carry the same checksums
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    from sgg_jax.projects.sg_embed import train as sg_embed
    from sgg_jax.projects.sg_embed.sg_gcn import SGGCNConfig

    config = SGGCNConfig(num_object_classes=4, num_predicates=3, embed_dim=8, hidden_dim=8)
    embedder = sg_embed.initial_embedder(config, max_nodes=4, max_edges=3, batch_size=2)
    return sg_embed.save_embedder(embedder, tmp_path_factory.mktemp("embedders") / "embedder")


def test_a_damaged_embedder_is_named_and_an_unverified_one_warned(embedder_dir, tmp_path, caplog):
    from sgg_jax.projects.sg_embed import train as sg_embed

    document = json.loads(open(os.path.join(embedder_dir, sg_embed.EMBEDDER_CONFIG)).read())
    files = _tree(embedder_dir)
    del files[sg_embed.EMBEDDER_CONFIG]
    assert set(document["files"]) == set(files)
    assert sg_embed.EMBEDDER_FUNCTION in document["files"]

    directory = shutil.copytree(embedder_dir, tmp_path / "damaged")
    path = directory / sg_embed.EMBEDDER_FUNCTION
    _truncate(path)
    for load in (sg_embed.load_embedder, sg_embed.load_exported_embed_function):
        with pytest.raises(DataError) as raised:
            load(directory)
        assert str(raised.value).startswith(f"{path}: SHA-256 differs from embedder.json")

    legacy = shutil.copytree(embedder_dir, tmp_path / "legacy")
    del document["files"]
    (legacy / sg_embed.EMBEDDER_CONFIG).write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING):
        loaded = sg_embed.load_embedder(legacy)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"{legacy}: embedder saved without checksums; loaded unverified "
        "(save it again to verify it)"
    ]
    reference = sg_embed.load_embedder(embedder_dir)
    np.testing.assert_array_equal(
        jax.tree.leaves(loaded.variables)[0], jax.tree.leaves(reference.variables)[0]
    )
