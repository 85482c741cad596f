"""The main command runs its data stage end to end on the bundled dataset, as the README says."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_ra_sgg_data_stage_on_gqa200_mini(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.ra_sgg",
            "--flagfile=experiments/flags/data_gqa200_mini.flags",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train    5741   85505      27044" in result.stdout
    assert "Data stage done" in result.stdout
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    splits = summary["splits"]
    assert [splits[s]["images"] for s in ("train", "val", "test")] == [5741, 791, 1677]
    # evaluation passes visit every image exactly once; training drops the last partial batch
    assert splits["test"]["pipeline"]["images"] == 1677
    assert splits["train"]["pipeline"]["images"] == 5741 // 8 * 8
    # test-time foreground pairs: distinct annotated non-self pairs of the kept objects
    assert 0 < splits["test"]["pipeline"]["foreground_pairs"] <= 7498
    assert sum(splits["train"]["predicate_counts"]) == 27044


def test_ra_sgg_reports_bad_config_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.ra_sgg",
            "--dataset=gqa200",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: option 'gqa200_train': is required with --dataset=gqa200"
    )
