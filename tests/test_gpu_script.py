"""benchmarks/gpu.sh on a machine without a GPU: one line, exit 0, RESULTS.md untouched; its dry run
names existing benches with flags they accept; benchmarks/gpu_report.py's markdown section."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
DRY_LINE = re.compile(r"^gpu\.sh: dry run: (\w+) \(timeout (\d+)s\): (.+)$")


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env_extra}
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_gpu_prints_one_line_and_touches_nothing():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present: the script would run the rows")
    results_dir = ROOT / "benchmarks" / "results"
    listing = sorted(os.listdir(results_dir)) if results_dir.exists() else []
    digest = hashlib.sha256(RESULTS.read_bytes()).hexdigest()
    result = _run({"GPU_SH_DRY_RUN": "0"})
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == f"gpu.sh: no GPU found (jax backend: {jax.default_backend()}); nothing run\n"
    )
    assert result.stderr == ""
    assert hashlib.sha256(RESULTS.read_bytes()).hexdigest() == digest
    assert (sorted(os.listdir(results_dir)) if results_dir.exists() else []) == listing


def test_dry_run_names_existing_benches_with_accepted_flags():
    result = _run({"GPU_SH_DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [DRY_LINE.match(line) for line in lines if line.startswith("gpu.sh: dry run:")]
    assert rows and all(rows), lines
    names = [row.group(1) for row in rows]
    expected = {
        "train_small_float32",
        "train_small_bfloat16",
        "train_official_float32",
        "train_official_bfloat16",
        "detector_forward",
        "evaluator",
    }
    assert expected <= set(names), names
    skipped = any("in-step retrieval row skipped" in line for line in lines)
    assert skipped != ("in_step_retrieval" in names), lines
    # every row within its own timeout, all of them within the 465 s default budget: with the GPU
    # probe, the --help and the report (a few seconds), under 8 minutes
    assert sum(int(row.group(2)) for row in rows) <= 465

    for row in rows:
        words = row.group(3).split()
        assert os.path.basename(words[0]).startswith("python"), words
        script = ROOT / words[1]
        assert script.is_file(), f"{row.group(1)}: {words[1]} does not exist"
        accepted = _argparse_flags(script)
        arguments = [part for word in words[2:] for part in word.split("=", 1)]
        for index, word in enumerate(arguments):
            if not word.startswith("--"):
                continue
            assert word in accepted, f"{row.group(1)}: {script.name} has no flag {word}"
            following = arguments[index + 1 : index + 2]
            if accepted[word] is not None and following and not following[0].startswith("--"):
                assert following[0] in accepted[word], f"{word} {following[0]}: {accepted[word]}"


def _argparse_flags(script: pathlib.Path) -> dict[str, tuple | None]:
    """``{flag: choices or None}`` of every ``add_argument("--flag", ...)`` in ``script``'s source
    (what its argparse parser, and so its ``--help``, accepts), read without importing it."""
    flags = {}
    for node in ast.walk(ast.parse(script.read_text())):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            continue
        choices = next((k.value for k in node.keywords if k.arg == "choices"), None)
        choices = ast.literal_eval(choices) if choices is not None else None
        for argument in node.args:
            if isinstance(argument, ast.Constant) and str(argument.value).startswith("--"):
                flags[argument.value] = choices
    return flags


def _report_module():
    spec = importlib.util.spec_from_file_location(
        "gpu_report", ROOT / "benchmarks" / "gpu_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_appends_one_table_row_per_measurement(tmp_path):
    report = _report_module()
    train = {
        "bench": "penet_train_step",
        "size": "official",
        "dtype": "bfloat16",
        "batch": 8,
        "pairs_per_image": 512,
        "step_ms": 12.5,
        "relations_per_s": 250000.0,
        "achieved_gflop_per_s": 9000.0,
        "fraction_of_matmul": 0.31,
        "matmul_gflop_per_s": 29000.0,
        "loss_last": 7.25,
    }
    detector = [
        {"preset": "tiny", "image_size": 592, "batch": 2, "dtype": d, "ms_per_batch": 4.5}
        | {"images_per_s": 444.0, "compile_s": 12.0}
        for d in ("float32", "bfloat16")
    ]
    (tmp_path / "train.log").write_text(
        "WARNING:sgg_jax.data.pipeline:image 1 has 46 objects\n" + json.dumps(train) + "\n"
    )
    (tmp_path / "detector.log").write_text(
        "".join(json.dumps(r) + "\n" for r in detector) + "\n| preset | size |\n"
    )
    (tmp_path / "slow.log").write_text("WARNING:x\ncompiling\nWARNING:y\n")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        f"train_official_bfloat16\tok\t41\tpython benchmarks/bench_train_step.py --size official\t{tmp_path / 'train.log'}\n"
        f"detector_forward\ttimeout 120s\t120\tpython benchmarks/bench_detector.py --sizes=592\t{tmp_path / 'detector.log'}\n"
        f"evaluator\texit 1\t3\tpython benchmarks/bench_evaluator.py\t{tmp_path / 'slow.log'}\n"
        "in_step_retrieval\tbudget\t0\tpython benchmarks/bench_train_step.py --retrieval\t\n"
        "in_step_retrieval\tskipped: no in_step flag\t0\t\t\n"
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier rows\n")
    argv = ["--manifest", str(manifest), "--results", str(results)]
    assert report.main(argv + ["--device", "NVIDIA H100 80GB HBM3", "--total_s", "300"]) == 0
    text = results.read_text()
    assert text.startswith(
        "# Benchmark results\n\nearlier rows\n\n## GPU rows (benchmarks/gpu.sh)\n"
    )
    assert "device: NVIDIA H100 80GB HBM3, 1 device(s)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 1 + 2 + 1 + 2  # header, train, 2 detector, evaluator, 2 in-step
    assert table[1] == (
        "| train_official_bfloat16 | ok | 41 | PE-Net official bfloat16, B=8 x P=512: step 12.5 ms,"
        " 250,000 relations/s, 9,000 GFLOP/s = 0.31 of matmul (29,000 GFLOP/s), last loss 7.25"
        " | `python benchmarks/bench_train_step.py --size official` |"
    )
    assert "detector tiny 592 px, batch 2, bfloat16: 4.5 ms/batch" in table[3]
    assert table[3].split(" | ")[1] == "timeout 120s"
    assert table[4].startswith("| evaluator | exit 1 | 3 | compiling |")
    assert "not run: total budget spent" in table[5]
    assert table[6] == "| in_step_retrieval | skipped: no in_step flag | 0 | not run | - |"
