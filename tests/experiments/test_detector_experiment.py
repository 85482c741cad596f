"""The detector experiment runs end to end (smoke flags) and rejects bad flags in one line."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*flags, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "experiments.detector", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_smoke_run_writes_results(tmp_path):
    result = _run("--flagfile=experiments/flags/detector_smoke.flags", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["experiment"] == "detector"
    assert results["dataset"] == "synthetic"
    runs = results["runs"]
    assert set(runs) == {
        "Faster R-CNN (tiny)",
        "chance: random boxes",
        "chance: GT boxes, random labels",
    }
    for row in runs.values():
        assert math.isfinite(row["mAP@0.5"]) and 0.0 <= row["mAP@0.5"] <= 1.0
    assert len(results["data"]["classes"]) == 5
    assert results["timing"]["steps"] == 6
    losses = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses] == [3, 6]
    assert all(math.isfinite(m["total"]) for m in losses)
    assert (tmp_path / "results.md").read_text().count("| chance") == 2
    assert (tmp_path / "plots" / "detections_0.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
    assert len(list((tmp_path / "images").glob("*.png"))) == sum(results["data"]["images"].values())


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--learning_rate=-0.1", "error: option 'learning_rate': must be positive, got -0.1"),
        (
            "--preset=resnet9000",
            "error: option 'preset': must be one of ('tiny', 'resnet50_fpn', 'resnext101_fpn', "
            "'vgg16'), got 'resnet9000'",
        ),
        (
            "--num_classes=151",
            "error: option 'num_classes': must be <= 150 (VG150 classes), got 151",
        ),
    ],
)
def test_bad_flags_exit_2_in_one_line(tmp_path, flag, message):
    result = _run(
        "--flagfile=experiments/flags/detector_smoke.flags", f"--workdir={tmp_path}", flag
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines == [message]
    assert not (tmp_path / "images").exists()  # nothing generated, nothing compiled
