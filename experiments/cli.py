"""What every command line of ``experiments/`` shares: the one-line error and exit status 2.

A main builds its typed config from the parsed flags and calls the library's ``run``; a bad flag
value (``ConfigError``, naming the flag) or bad input data (``DataError``, naming the file, record
and field) ends the command with one line ``error: ...`` on stderr and exit status 2, before any
traceback from deep inside numpy or JAX.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import logging

from sgg_jax import distributed
from sgg_jax.errors import ConfigError, DataError


def run_command(
    argv: list[str],
    body: Callable[[], object],
    *,
    extra_errors: tuple[type[BaseException], ...] = (),
    positional_ok: bool = False,
    quiet_logs: bool = True,
) -> int:
    """Runs ``body()`` as a command: returns its exit status (0, or 2 with one error line).

    Args:
      argv: what absl left of the command line (``argv[0]`` is the program); further words are an
        error unless ``positional_ok``.
      body: builds the config from the flags and runs the experiment.
      extra_errors: more exception types reported the same way (e.g. ``FloatingPointError`` of a
        diverging run, whose message names the step).
      positional_ok: the command takes positional arguments (e.g. image paths after ``--images``).
      quiet_logs: keep absl logging at WARNING (orbax logs every checkpoint save at INFO).
    """
    if quiet_logs:
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1 and not positional_ok:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        if distributed.launch_environment() is not None:  # started by python -m sgg_jax.launch
            distributed.initialize()
        body()
    except (DataError, ConfigError, *extra_errors) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
