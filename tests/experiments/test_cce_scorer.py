"""``experiments.cce_scorer`` end to end on the smoke flagfile; flag errors in-process and once on
the command line.

The subprocesses compile with XLA's cheaper CPU optimisation level on one CPU device (not the 4
simulated devices of the in-process tests): compiling (one init, one train step and one predict per
row) is what the smoke run spends its time on, not running, and one device compiles about a quarter
faster.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from experiments import cce_scorer
from tests.experiments import ROOT, config_error, config_of, error_line

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = FAST_COMPILE
    return subprocess.run(
        [sys.executable, "-m", "experiments.cce_scorer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.e2e
def test_smoke_runs_the_rows_and_writes_the_table(tmp_path):
    # MotifNet end to end; PE-Net with CCE and the Scorer is covered by
    # tests/projects/cce_scorer/test_model.py and tests/projects/cce_scorer/test_cce_scorer_loss.py
    # (a second base model would double this test's compiles).
    result = _run("--flagfile=experiments/flags/cce_scorer_smoke.flags", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["experiment"] == "cce_scorer" and document["task"] == "predcls"
    expected = {
        f"{base}/{row}"
        for base in ("motifs",)
        for row in ("ce", "cce_scorer", "cce_scorer/scorer_x_predicate")
    }
    assert set(document["runs"]) == expected
    block = document["cce_scorer"]
    assert block["cce_variant"] == "official" and block["cce_background"] == "include"
    assert block["lambda_focal"] == 100.0
    # the headline Scorer row is ranked by the Scorer alone, predicate × Scorer an extra row
    assert block["ranking"] == "scorer" and block["extra_rankings"] == ["scorer_x_predicate"]
    assert block["runs"]["motifs/cce_scorer"] == {
        "row": "cce_scorer",
        "ranking": "scorer",
        "label": "+CCE+Scorer",
        "scorer_detach": True,
    }
    assert block["runs"]["motifs/cce_scorer/scorer_x_predicate"]["ranking"] == (
        "scorer_x_predicate"
    )
    assert block["runs"]["motifs/ce"]["ranking"] == "predicate"
    for name, metrics in document["runs"].items():
        for key in ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "mR@all", "ngmR@100"):
            assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["R@20"] <= metrics["R@50"] <= metrics["R@100"]
        assert metrics["num_images_evaluated"] == 80
    for base in ("motifs",):
        runs = document["runs"]
        # the rankings rescale, never reorder, a pair's predicates; mR@all ignores the order of pairs
        assert runs[f"{base}/cce_scorer/scorer_x_predicate"]["mR@all"] == pytest.approx(
            runs[f"{base}/cce_scorer"]["mR@all"], abs=1e-12
        )
        delta = document["cce_scorer"]["delta_vs_ce"][f"{base}/cce_scorer"]
        assert delta["mR@100"] == pytest.approx(
            runs[f"{base}/cce_scorer"]["mR@100"] - runs[f"{base}/ce"]["mR@100"]
        )
        assert (tmp_path / "plots" / f"per_predicate_recall_{base}.png").exists()
        assert (tmp_path / "plots" / f"confusion_train_{base}_ce.png").exists()
        assert (tmp_path / base / "cce_scorer" / "metrics.jsonl").exists()
    markdown = (tmp_path / "results.md").read_text()
    assert "## MotifNet" in markdown and "## PE-Net" not in markdown
    assert "| +CCE+Scorer |" in markdown
    assert "| +CCE+Scorer [ranked by predicate × Scorer] |" in markdown


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lambda_cce=-1"], "error: option 'lambda_cce': must be a finite number >= 0, got -1.0"),
        (["--lambda_bce=nan"], "error: option 'lambda_bce': must be a finite number >= 0, got nan"),
        (
            ["--rows=ce,cce,bogus"],
            "error: option 'rows': unknown ['bogus']; expected some of "
            "['ce', 'cce', 'scorer', 'cce_scorer', 'cce_scorer_no_sa', 'cce_scorer_joint', 'focal']",
        ),
        (
            ["--cce_variant=authors"],
            "error: option 'cce_variant': must be one of ['official', 'paper'], got 'authors'",
        ),
        (
            ["--ranking=score"],
            "error: option 'ranking': must be one of "
            "['predicate', 'scorer_x_predicate', 'scorer'], got 'score'",
        ),
        (
            ["--cce_background=skip"],
            "error: option 'cce_background': 'skip' needs --cce_variant=paper: the official CCE "
            "averages over every relation, background included",
        ),
    ],
)
def test_bad_flags_fail_in_one_line_before_loading_data(args, message):
    # config_from_flags is all the main runs before loading data: the error comes before any read
    error = config_error(
        cce_scorer, "--flagfile=experiments/flags/cce_scorer_gqa200_mini.flags", *args
    )
    assert error_line(error) == message
    assert error.option == message.split("'")[1]


def test_a_bad_flag_exits_2_with_one_line_on_stderr_and_no_output(tmp_path):
    """The command line end to end: exit status 2, stderr exactly the error line, no files.

    gqa200_mini logs a line when it is read: stderr holding only the error proves it was not.
    """
    result = _run(
        "--flagfile=experiments/flags/cce_scorer_gqa200_mini.flags",
        f"--workdir={tmp_path}",
        "--cce_background=skip",
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: option 'cce_background': 'skip' needs --cce_variant=paper: the official CCE "
        "averages over every relation, background included"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("task", ["predcls", "sgcls", "sgdet"])
def test_pixel_flagfiles_build_roi_configs_and_ask_for_the_detector_run(task, tmp_path):
    flagfile = f"--flagfile=experiments/flags/cce_scorer_synthetic_{task}.flags"
    error = config_error(cce_scorer, flagfile, f"--detector_workdir={tmp_path}")
    assert error_line(error) == (
        f"error: option 'detector_workdir': {tmp_path} has no config.json "
        "(not an experiments.detector run)"
    )
    (tmp_path / "config.json").write_text("{}")
    config = config_of(cce_scorer, flagfile, f"--detector_workdir={tmp_path}")
    assert config.data.feature_source == "roi" and config.data.task == task
    assert config.base_models == ("motifs", "penet")
    # SGDet compares CE with CCE + Scorer (the README's table); the others add the CCE row.
    assert config.rows == (("ce", "cce_scorer") if task == "sgdet" else ("ce", "cce", "cce_scorer"))
