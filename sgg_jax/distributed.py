"""Several processes, one job: JAX's multi-controller runtime and the host-side collectives sgg_jax uses.

A multi-process run is one Python process per host (or per GPU), all running the same program. They
are connected by ``jax.distributed.initialize`` and then see one set of global devices; every
``jax.jit`` over a mesh of those devices is a collective that every process must enter.

How the processes find each other (:func:`initialize`), first match wins:

* explicit arguments (``coordinator_address``, ``num_processes``, ``process_id``);
* the variables set by ``python -m sgg_jax.launch`` for every process it starts on this machine:
  ``SGG_JAX_COORDINATOR_ADDRESS`` (``host:port``), ``SGG_JAX_NUM_PROCESSES``,
  ``SGG_JAX_PROCESS_ID``;
* JAX's cluster detection (Slurm, Open MPI, Cloud TPU pods, GKE): ``jax.distributed.initialize()``
  with no argument reads the scheduler's environment.

On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``), set before
the runtime starts; GPUs use NCCL and TPUs their interconnect, whatever is set here.

Host-side collectives (numpy in, numpy out, the same call in every process):

* :func:`allgather_rows`: every process's rows concatenated in process order (variable row counts;
  any dtype, moved as raw bytes, so float64 sums stay bit-exact);
* :func:`barrier`; :func:`is_chief` (process 0 writes results, exports and plots).

With one process every function is a no-op returning its input, so library code calls them
unconditionally.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError

ENV_COORDINATOR = "SGG_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SGG_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SGG_JAX_PROCESS_ID"
ENV_TIMEOUT = "SGG_JAX_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 60

_LOG = logging.getLogger(__name__)
_INITIALIZED = False


def launch_environment(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The coordinator, process count and id set by ``sgg_jax.launch``; None when not set.

    Raises:
      ConfigError: a variable is set but malformed (names the variable).
    """
    environ = os.environ if environ is None else environ
    if ENV_COORDINATOR not in environ:
        return None
    address = environ[ENV_COORDINATOR]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(ENV_COORDINATOR, f"expected host:port, got {address!r}")
    values: dict[str, Any] = {"coordinator_address": address}
    for name, key in ((ENV_NUM_PROCESSES, "num_processes"), (ENV_PROCESS_ID, "process_id")):
        text = environ.get(name)
        if text is None or not text.isdigit():
            raise ConfigError(name, f"expected a non-negative integer, got {text!r}")
        values[key] = int(text)
    if values["num_processes"] < 1 or values["process_id"] >= values["num_processes"]:
        raise ConfigError(
            ENV_PROCESS_ID,
            f"process {values['process_id']} of {values['num_processes']} does not exist",
        )
    return values


def initialize(**options: Any) -> bool:
    """Connects this process to the others (``jax.distributed.initialize``).

    Must run before any other JAX call. Arguments override the launcher's variables; with neither,
    JAX detects the cluster (Slurm, MPI, TPU pods).

    Args:
      **options: passed to ``jax.distributed.initialize``. ``initialization_timeout`` defaults to
        ``SGG_JAX_DISTRIBUTED_TIMEOUT`` seconds (60): a process whose peers never come stops with
        an error after that long instead of waiting for ever.

    Returns:
      True (the runtime is initialised; a second call does nothing).
    """
    import jax

    global _INITIALIZED
    if _INITIALIZED:
        return True
    launched = launch_environment()
    if launched is not None:
        options = {**launched, **options}
    timeout = int(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    options.setdefault("initialization_timeout", timeout)
    options.setdefault("heartbeat_timeout_seconds", max(10, timeout))
    options.setdefault("shutdown_timeout_seconds", max(10, timeout))
    address, process_id = options.get("coordinator_address"), options.get("process_id")
    if address and process_id:  # not the coordinator: is anyone listening there?
        wait_for_coordinator(address, int(process_id), timeout)
    # CPU processes exchange arrays through gloo; harmless for GPU / TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**options)
    _INITIALIZED = True
    _LOG.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def wait_for_coordinator(address: str, process_id: int, timeout: float) -> None:
    """Waits until the coordinator at ``host:port`` accepts connections.

    JAX's own client aborts the process (a C++ fatal error and a stack dump) when the coordinator
    never answers; this check turns the common case (process 0 did not start, or listens
    elsewhere) into one line.

    Raises:
      ConfigError: nothing accepts connections at ``address`` within ``timeout`` seconds.
    """
    import socket
    import time

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    ENV_COORDINATOR,
                    f"process {process_id}: no coordinator accepts connections at {address} "
                    f"after {timeout:g} s (did process 0 start?)",
                ) from None
            time.sleep(0.2)


def process_index() -> int:
    """This process's index (0 without a distributed runtime)."""
    import jax

    return int(jax.process_index())


def process_count() -> int:
    """Number of processes of the job (1 without a distributed runtime)."""
    import jax

    return int(jax.process_count())


def is_chief() -> bool:
    """Whether this is process 0, the one that writes results, exports and plots."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (no-op with one process)."""
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def allgather_rows(array: Any) -> np.ndarray:
    """Every process's ``array`` concatenated along axis 0, in process order.

    The row counts may differ between processes; the trailing shape and the dtype must agree. The
    values travel as raw bytes, so every dtype (float64, int64, bool) arrives bit for bit.

    Args:
      array: ``[n_k, ...]`` on process ``k``.

    Returns:
      ``[sum_k n_k, ...]`` (the input itself with one process).
    """
    array = np.ascontiguousarray(array)
    if array.ndim == 0:
        raise ConfigError("array", "allgather_rows needs a leading axis")
    if process_count() == 1:
        return array
    from jax.experimental import multihost_utils

    row_shape, dtype = array.shape[1:], array.dtype
    signature = np.frombuffer(f"{dtype.str}{row_shape}".encode().ljust(64)[:64], np.uint8)
    signatures = np.asarray(multihost_utils.process_allgather(signature))
    if not (signatures == signatures[0]).all():
        raise ConfigError(
            "array", "processes gathered arrays of different dtypes or trailing shapes"
        )
    counts = np.asarray(multihost_utils.process_allgather(np.array([array.shape[0]], np.int32)))
    counts = counts.reshape(-1).astype(np.int64)
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    padded = np.zeros((int(counts.max()), max(row_bytes, 1)), np.uint8)
    if row_bytes and array.shape[0]:
        padded[: array.shape[0]] = array.reshape(array.shape[0], -1).view(np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    rows = np.concatenate([gathered[k, : counts[k], :row_bytes] for k in range(len(counts))])
    return np.ascontiguousarray(rows).view(dtype).reshape(-1, *row_shape)


__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "allgather_rows",
    "barrier",
    "initialize",
    "is_chief",
    "launch_environment",
    "process_count",
    "process_index",
]
