"""Several processes: the launcher, the host collectives, and 2 processes x 2 devices == 1 x 4.

The e2e tests start real processes on 127.0.0.1 with ``python -m sgg_jax.launch`` (gloo collectives
on CPU) and compare them with one process holding 4 simulated devices.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from sgg_jax import distributed
from sgg_jax.errors import ConfigError
from sgg_jax.evaluation import sgg as sgg_eval
from sgg_jax.structures import Prediction, SceneGraph
from tests.experiments import ROOT


def _launch(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "sgg_jax.launch", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sgg_jax.launch:")]


# -- fast: the launcher's own failures, the variables, one-process collectives -------------------


def test_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _launch("--num_processes=2", f"--port={port}", "--", sys.executable, "-c", "0")
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        f"sgg_jax.launch: coordinator port 127.0.0.1:{port} is in use; choose another --port or "
        "leave it out (a free one is picked)"
    ]


def test_process_that_cannot_start_is_named():
    result = _launch("--num_processes=2", "--", "/nonexistent/program")
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert line.startswith("sgg_jax.launch: process 0 failed to start: ")
    assert "/nonexistent/program" in line and line.endswith("stopping the others")


def test_failing_process_stops_the_others_in_bounded_time():
    code = (
        "import os, sys, time\n"
        "if os.environ['SGG_JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    result = _launch("--num_processes=2", "--grace_seconds=2", "--", sys.executable, "-c", code)
    assert result.returncode == 3
    assert time.monotonic() - start < 30
    (line,) = _error_lines(result.stderr)
    assert line.startswith("sgg_jax.launch: process 1 (pid ") and "exited with status 3" in line


def test_every_process_gets_its_variables_and_prefix():
    code = (
        "import os; print(os.environ['SGG_JAX_PROCESS_ID'], os.environ['SGG_JAX_NUM_PROCESSES'],"
        " os.environ['SGG_JAX_COORDINATOR_ADDRESS'].startswith('127.0.0.1:'),"
        " os.environ['XLA_FLAGS'])"
    )
    result = _launch(
        "--num_processes=3", "--cpu_devices_per_process=2", "--", sys.executable, "-c", code
    )
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert [line.split()[:4] for line in lines] == [
        [f"[p{k}]", str(k), "3", "True"] for k in range(3)
    ]
    for line in lines:  # the device count replaces any earlier one, other XLA flags stay
        counts = [f for f in line.split() if f.startswith("--xla_force_host_platform_device_count")]
        assert counts == ["--xla_force_host_platform_device_count=2"]


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SGG_JAX_COORDINATOR_ADDRESS": "nohost"}, "expected host:port"),
        (
            {"SGG_JAX_COORDINATOR_ADDRESS": "127.0.0.1:5", "SGG_JAX_NUM_PROCESSES": "2"},
            "SGG_JAX_PROCESS_ID",
        ),
        (
            {
                "SGG_JAX_COORDINATOR_ADDRESS": "127.0.0.1:5",
                "SGG_JAX_NUM_PROCESSES": "2",
                "SGG_JAX_PROCESS_ID": "2",
            },
            "process 2 of 2 does not exist",
        ),
    ],
)
def test_malformed_launch_variables(environ, message):
    with pytest.raises(ConfigError, match=message):
        distributed.launch_environment(environ)


def test_launch_variables_parsed():
    environ = {
        "SGG_JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "SGG_JAX_NUM_PROCESSES": "4",
        "SGG_JAX_PROCESS_ID": "3",
    }
    assert distributed.launch_environment(environ) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert distributed.launch_environment({}) is None


def test_coordinator_that_never_listens_is_one_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConfigError, match=r"process 1: no coordinator accepts connections at"):
        distributed.wait_for_coordinator(f"127.0.0.1:{port}", 1, timeout=0.5)


def test_one_process_collectives_return_their_input():
    rows = np.arange(6, dtype=np.float64).reshape(3, 2) / 7
    assert distributed.allgather_rows(rows) is not None
    np.testing.assert_array_equal(distributed.allgather_rows(rows), rows)
    assert distributed.is_chief() and distributed.process_count() == 1
    distributed.barrier("nothing to wait for")


def _graphs_and_predictions(num_images=12, seed=0):
    rng = np.random.default_rng(seed)
    graphs, predictions = [], []
    for index in range(num_images):
        n = int(rng.integers(2, 6))
        xy = rng.uniform(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)
        labels = rng.integers(1, 4, n).astype(np.int32)
        pairs = np.array([(i, j) for i in range(n) for j in range(n) if i != j], np.int64)
        chosen = pairs[rng.choice(len(pairs), size=min(3, len(pairs)), replace=False)]
        relations = np.concatenate([chosen, rng.integers(1, 5, (len(chosen), 1))], 1)
        graphs.append(
            SceneGraph(
                image_id=str(index),
                width=100,
                height=100,
                boxes=boxes,
                labels=labels,
                relations=relations.astype(np.int32),
            )
        )
        scores = rng.dirichlet(np.ones(5), len(pairs)).astype(np.float32)
        predictions.append(
            Prediction(
                boxes=boxes,
                labels=labels,
                object_scores=np.ones(n, np.float32),
                pairs=pairs,
                predicate_scores=scores,
            )
        )
    return graphs, predictions


def test_evaluation_of_shards_equals_one_evaluation(monkeypatch):
    """Two shards evaluated apart and their per-image terms joined (what allgather_rows does
    between processes) give exactly the one-process metrics."""
    graphs, predictions = _graphs_and_predictions()
    options = dict(mode="sgcls", num_predicates=4, zeroshot_triplets=np.array([[1, 2, 3]]))
    whole = sgg_eval.evaluate(graphs, predictions, **options)
    assert sgg_eval.evaluate(graphs, predictions, images=range(12), **options) == whole

    first, second = np.arange(0, 12, 2), np.arange(1, 12, 2)
    recorded = []
    monkeypatch.setattr(sgg_eval, "allgather_rows", lambda rows: recorded.append(rows) or rows)
    hidden = [p if i in first else None for i, p in enumerate(predictions)]
    part = sgg_eval.evaluate(graphs, hidden, images=first, **options)
    assert part["num_images_evaluated"] == 6
    replay = iter(recorded)
    monkeypatch.setattr(
        sgg_eval, "allgather_rows", lambda rows: np.concatenate([next(replay), rows])
    )
    hidden = [p if i in second else None for i, p in enumerate(predictions)]
    joined = sgg_eval.evaluate(graphs, hidden, images=second, **options)
    assert joined == whole


# -- e2e: real processes --------------------------------------------------------------------------

# RA-SGG: PE-Net phase 1, the official bank (sharded over the processes), phase 2. With SGD (the
# official solver): AdamW divides by sqrt(v), which turns float-rounding differences of near-zero
# gradients into visible steps (with it, 1 of 32,768 weights differed by 3e-5 after phase 2).
SMOKE = (
    "--flagfile=experiments/flags/ra_sgg_smoke.flags",
    "--optimizer=sgd",
    "--learning_rate=1e-2",
    "--ablations=",
    "--num_steps=6",
    "--phase2_steps=4",
    "--eval_every=0",
    "--log_every=1",
)
PHASES = ("phase1", "phase2")


def _one_process(workdir, *extra):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.ra_sgg", *SMOKE, f"--workdir={workdir}", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _two_processes(workdir, *extra):
    return _launch(
        "--num_processes=2",
        "--cpu_devices_per_process=2",
        "--",
        sys.executable,
        "-m",
        "experiments.ra_sgg",
        *SMOKE,
        f"--workdir={workdir}",
        *extra,
    )


def _records(workdir, kind="train"):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _scalars(workdir):
    runs = json.loads((workdir / "results.json").read_text())["runs"]
    return {
        (run, name): value
        for run, metrics in runs.items()
        for name, value in metrics.items()
        if not isinstance(value, list)
    }


def _final_params(workdir):
    import jax

    from sgg_jax.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        variables = checkpointer.restore_variables()
    finally:
        checkpointer.close()
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }


@pytest.mark.e2e
def test_two_processes_train_and_evaluate_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = _one_process(one)
    assert result.returncode == 0, result.stderr[-3000:]
    result = _two_processes(two)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[p0] results:" in result.stdout
    assert "[p1] results:" not in result.stdout  # only process 0 reports and writes
    import sgg_jax

    sgg_jax.load_exported(two / "export")  # every file's sha256 checked: written once, intact

    # Same updates in both phases: losses, gradient norms and RA-SGG's selections of every
    # logged step, and the final parameters.
    for phase in PHASES:
        records_one, records_two = _records(one / phase), _records(two / phase)
        assert [r["step"] for r in records_one] == [r["step"] for r in records_two]
        for a, b in zip(records_one, records_two, strict=True):
            for name in ("loss", "grad_norm"):
                assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6)
            for name in ("ra/selected_fraction", "ra/augmented_fraction"):
                assert b.get(name) == a.get(name)
        params_one, params_two = _final_params(one / phase), _final_params(two / phase)
        assert params_one.keys() == params_two.keys() and params_one
        for name, value in params_one.items():
            np.testing.assert_allclose(
                params_two[name], value, rtol=1e-5, atol=1e-5, err_msg=f"{phase} {name}"
            )
    assert "ra/selected_fraction" in _records(one / "phase2")[-1]
    # Evaluation of (almost) the same parameters: the metrics agree to the same tolerance.
    scalars_one, scalars_two = _scalars(one), _scalars(two)
    assert scalars_one.keys() == scalars_two.keys()
    for key, value in scalars_one.items():
        assert scalars_two[key] == pytest.approx(value, abs=1e-5), key

    # Checkpoints move between layouts: 2 processes restore the 1-process run and evaluate it
    # to exactly its metrics, and 1 process restores the 2-process run likewise.
    for source, runner in ((one, _two_processes), (two, _one_process)):
        copy = tmp_path / f"{source.name}_restored"
        shutil.copytree(source, copy)
        (copy / "results.json").unlink()
        result = runner(copy)
        assert result.returncode == 0, result.stderr[-3000:]
        for phase in PHASES:  # nothing retrained, nothing written twice
            assert _records(copy / phase) == _records(source / phase)
        assert _scalars(copy) == _scalars(source)


@pytest.mark.e2e
def test_a_process_dying_inside_a_job_stops_the_other_in_bounded_time():
    """Process 1 dies after connecting; process 0 waits in a collective and is stopped."""
    code = (
        "import os, sys\n"
        "import numpy as np\n"
        "from sgg_jax import distributed\n"
        "distributed.initialize()\n"
        "distributed.allgather_rows(np.ones((2, 3)))\n"
        "if distributed.process_index() == 1:\n"
        "    os._exit(7)\n"
        "distributed.allgather_rows(np.ones((2, 3)))\n"
        "print('never reached')\n"
    )
    start = time.monotonic()
    result = _launch(
        "--num_processes=2",
        "--cpu_devices_per_process=1",
        "--grace_seconds=5",
        "--",
        sys.executable,
        "-c",
        code,
        timeout=120,
    )
    assert time.monotonic() - start < 90
    assert "never reached" not in result.stdout
    (line,) = _error_lines(result.stderr)
    assert line.startswith("sgg_jax.launch: process 1 (pid ") and "exited with status 7" in line
    assert result.returncode == 7
