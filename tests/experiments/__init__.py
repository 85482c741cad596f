"""Shared helper of the experiment tests: run ``python -m experiments.ra_sgg`` in a subprocess."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_ra_sgg(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs the experiment from the repository root with ``args``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.ra_sgg", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
