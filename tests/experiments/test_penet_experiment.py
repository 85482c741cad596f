"""``experiments.ra_sgg --method=penet`` end to end on the smoke flagfile; its flag errors in-process."""

import json

import numpy as np
import pytest

from experiments import ra_sgg
from tests.experiments import config_error, error_line
from tests.experiments import run_ra_sgg as _run


@pytest.mark.e2e
def test_smoke_trains_evaluates_exports_and_resumes(tmp_path):
    result = _run("--flagfile=experiments/flags/smoke.flags", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["experiment"] == "ra_sgg" and document["task"] == "predcls"
    assert set(document["runs"]) == {"FREQ (predcls)", "PE-Net"}
    penet = document["runs"]["PE-Net"]
    for key in ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "F@100", "mR@all"):
        assert 0.0 <= penet[key] <= 1.0
    assert penet["R@20"] <= penet["R@50"] <= penet["R@100"]
    assert penet["num_images_evaluated"] == 80
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r.get("kind") == "train"]
    assert train_steps[-1] == 10 and all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert (tmp_path / "plots" / "per_predicate_recall.png").exists()

    import sgg_jax

    predictor = sgg_jax.load_exported(tmp_path / "export")
    inputs = {
        "boxes": np.tile(np.array([[10, 10, 50, 60], [30, 20, 90, 80]], np.float32), (8, 8, 1)),
        "labels": np.ones((8, 16), np.int32),
        "object_mask": np.zeros((8, 16), bool),
        "pairs": np.zeros((8, 240, 2), np.int32),
        "pair_mask": np.zeros((8, 240), bool),
        "image_size": np.full((8, 2), 100, np.int32),
    }
    inputs["object_mask"][:, :2] = True
    inputs["pairs"][:, 0] = (0, 1)
    inputs["pairs"][:, 1] = (1, 0)
    inputs["pair_mask"][:, :2] = True
    outputs = predictor(inputs)
    scores = np.asarray(outputs["predicate_scores"])
    assert scores.shape == (8, 240, 51)
    np.testing.assert_allclose(scores[:, :2].sum(-1), 1.0, rtol=1e-5)

    again = _run("--flagfile=experiments/flags/smoke.flags", f"--workdir={tmp_path}")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert resumed["runs"]["PE-Net"]["R@100"] == pytest.approx(penet["R@100"], abs=1e-12)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size=0"], "error: option 'batch_size': must be positive, got 0"),
        (["--num_steps=0"], "error: option 'num_steps': must be positive, got 0"),
        (["--max_fg=300"], "error: option 'max_fg': 300 exceeds max_pairs=64"),
        (["--decay_steps=a"], "error: option 'decay_steps': expected integers, got ['a']"),
        (
            ["--feature_source=precomputed"],
            "error: option 'object_features': is required with --feature_source=precomputed",
        ),
    ],
)
def test_bad_flags_are_one_line_errors_before_any_work(args, message):
    # config_from_flags is all the main runs before loading data: the error comes before any work
    error = config_error(ra_sgg, "--flagfile=experiments/flags/smoke.flags", *args)
    assert error_line(error) == message
    assert error.option == message.split("'")[1]


def test_official_flagfiles_ask_for_their_data():
    for name, option in (
        ("penet_vg150_predcls", "vg150_h5"),
        ("penet_gqa200_predcls", "gqa200_train"),
    ):
        error = config_error(ra_sgg, f"--flagfile=experiments/flags/{name}.flags")
        assert error_line(error) == (
            f"error: option '{option}': is required with --dataset={name.split('_')[1]}"
        )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--feature_source=geometry", "--dataset=synthetic"],
            "error: option 'task': sgdet detects objects from pixels: it needs "
            "--feature_source=roi",
        ),
    ],
)
def test_pixel_flags_are_checked_before_any_work(flags, message, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    flags = [f.replace("=.", f"={tmp_path}") for f in flags]
    error = config_error(ra_sgg, "--flagfile=experiments/flags/penet_pixels_smoke.flags", *flags)
    assert error_line(error) == message


@pytest.mark.e2e
def test_sgcls_smoke_runs_end_to_end(tmp_path):
    result = _run(
        "--flagfile=experiments/flags/smoke.flags",
        f"--workdir={tmp_path}",
        "--task=sgcls",
        "--num_steps=4",
        "--checkpoint_every=0",
        "--noexport",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["task"] == "sgcls"
    assert document["runs"]["PE-Net"]["num_images_evaluated"] == 80
    assert "A@100" in document["runs"]["PE-Net"]
