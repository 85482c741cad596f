"""Shared helpers of the experiment tests: run a main in a subprocess, or parse its flags in-process."""

import contextlib
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from sgg_jax.errors import ConfigError

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


def parse_flags(main_module, *args: str) -> flags.FlagValues:
    """``args`` parsed by a fresh ``FlagValues`` holding the flags of ``main_module``.

    Parsed in the repository root, as on the command line: flagfile paths (and the base flagfiles
    they include) are relative to it.
    """
    flag_values = flags.FlagValues()
    main_module.define_flags(flag_values)
    with contextlib.chdir(ROOT):
        flag_values(["prog", *args])
    return flag_values


def config_of(main_module, *args: str):
    """The experiment config ``main_module.config_from_flags`` builds from ``args``."""
    return main_module.config_from_flags(parse_flags(main_module, *args))


def config_error(main_module, *args: str) -> ConfigError:
    """The ConfigError ``main_module.config_from_flags`` raises for ``args`` (fails without one)."""
    with pytest.raises(ConfigError) as caught:
        config_of(main_module, *args)
    return caught.value


def error_line(error: ConfigError) -> str:
    """The line the main prints on stderr for ``error``."""
    return f"error: {error}"
