"""Starts a multi-process job on this machine, exactly as a multi-host job runs.

    python -m sgg_jax.launch --num_processes=2 --cpu_devices_per_process=2 -- \\
        python -m experiments.ra_sgg --flagfile=experiments/flags/ra_sgg_gqa200_mini.flags \\
        --workdir=/tmp/sgg_jax/ra_sgg_2proc

Every process gets the coordinator (``127.0.0.1:<free port>``), the process count and its id in
``SGG_JAX_COORDINATOR_ADDRESS`` / ``SGG_JAX_NUM_PROCESSES`` / ``SGG_JAX_PROCESS_ID``;
:func:`sgg_jax.distributed.initialize` (called by every ``experiments`` command when they are set)
reads them. ``--cpu_devices_per_process`` simulates that many CPU devices in each process
(``XLA_FLAGS=--xla_force_host_platform_device_count``); ``--gpus_per_process`` gives process ``k``
the GPUs ``k·g … k·g+g−1`` (``CUDA_VISIBLE_DEVICES``). Each output line is prefixed ``[p<k>]``.

Failures end the whole job within a bounded time, with one line naming the process:

* a process that cannot be started (``process 1 failed to start: ...``);
* a coordinator port in use (``--port`` given and taken);
* a process that exits with a non-zero status or is killed mid-run: the others get SIGTERM, then
  SIGKILL after ``--grace_seconds``; the launcher exits with the failed process's status.

On a cluster the scheduler starts the processes instead (no launcher), and
``jax.distributed.initialize()`` reads its environment (README, "Several processes").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from sgg_jax.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, ENV_TIMEOUT

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something already listens on (or holds) 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m sgg_jax.launch",
        description="Run COMMAND as NUM_PROCESSES connected JAX processes on this machine.",
        usage="%(prog)s --num_processes=N [options] -- COMMAND ...",
    )
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument(
        "--cpu_devices_per_process",
        type=int,
        default=None,
        help="simulated CPU devices per process (XLA_FLAGS)",
    )
    parser.add_argument(
        "--gpus_per_process", type=int, default=None, help="GPUs per process (CUDA_VISIBLE_DEVICES)"
    )
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = a free one)")
    parser.add_argument(
        "--timeout_seconds",
        type=int,
        default=60,
        help="how long a process waits for its peers to connect",
    )
    parser.add_argument(
        "--grace_seconds",
        type=float,
        default=10.0,
        help="after a failure, SIGTERM to SIGKILL delay for the other processes",
    )
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1 :]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command:
        parser.error("no command after --")
    if args.num_processes < 1:
        parser.error("--num_processes must be at least 1")
    for name in ("cpu_devices_per_process", "gpus_per_process"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 <= args.port < 65536:
        parser.error("--port must be in [0, 65535]")
    return args, command


def _environment(args: argparse.Namespace, address: str, index: int) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_COORDINATOR] = address
    env[ENV_NUM_PROCESSES] = str(args.num_processes)
    env[ENV_PROCESS_ID] = str(index)
    env[ENV_TIMEOUT] = str(args.timeout_seconds)
    env["PYTHONUNBUFFERED"] = "1"
    if args.cpu_devices_per_process is not None:
        flags = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        flags.append(f"--xla_force_host_platform_device_count={args.cpu_devices_per_process}")
        env["XLA_FLAGS"] = " ".join(flags)
        env.setdefault("JAX_PLATFORMS", "cpu")
    if args.gpus_per_process is not None:
        first = index * args.gpus_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(g) for g in range(first, first + args.gpus_per_process)
        )
    return env


def _relay(stream, prefix: str, sink) -> None:
    for line in iter(stream.readline, b""):
        sink.write(prefix + line.decode(errors="replace"))
        sink.flush()
    stream.close()


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _stop(processes: list[subprocess.Popen | None], grace: float) -> None:
    alive = [p for p in processes if p is not None and p.poll() is None]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in alive:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    """Runs the job; returns 0 when every process exits with 0, else the first failure's status."""
    args, command = _parse(sys.argv[1:] if argv is None else argv)
    if args.port:
        if port_in_use(args.port):
            print(
                f"sgg_jax.launch: coordinator port {HOST}:{args.port} is in use; choose another "
                "--port or leave it out (a free one is picked)",
                file=sys.stderr,
            )
            return 2
        port = args.port
    else:
        port = free_port()
    address = f"{HOST}:{port}"
    processes: list[subprocess.Popen | None] = [None] * args.num_processes
    relays: list[threading.Thread] = []
    for index in range(args.num_processes):
        try:
            process = subprocess.Popen(
                command,
                env=_environment(args, address, index),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            print(
                f"sgg_jax.launch: process {index} failed to start: {error}; stopping the others",
                file=sys.stderr,
            )
            _stop(processes, args.grace_seconds)
            return 2
        processes[index] = process
        for stream, sink in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
            relay = threading.Thread(target=_relay, args=(stream, f"[p{index}] ", sink))
            relay.daemon = True
            relay.start()
            relays.append(relay)
    status = 0
    try:
        while True:
            running = False
            for index, process in enumerate(processes):
                code = process.poll()
                if code is None:
                    running = True
                elif code != 0:
                    print(
                        f"sgg_jax.launch: process {index} (pid {process.pid}) {_describe(code)}; "
                        "stopping the others",
                        file=sys.stderr,
                    )
                    _stop(processes, args.grace_seconds)
                    status = code if code > 0 else 128 - code
                    running = False
                    break
            if not running:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(processes, args.grace_seconds)
        status = 130
    for relay in relays:
        relay.join(timeout=5)
    return status


if __name__ == "__main__":
    sys.exit(main())
