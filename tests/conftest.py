"""Test configuration: 4 simulated CPU devices (set before jax is imported) and shared fixtures.

Tests compile many small programs and run each once or twice, so XLA's CPU backend optimisation
is lowered (``--xla_backend_optimization_level=0``, no expensive LLVM passes): about a third less
wall time for the suite, same operations and float semantics. Experiment subprocesses inherit it.
"""

import os

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
    """The real data folder ``../shared/data`` next to the checkout; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
