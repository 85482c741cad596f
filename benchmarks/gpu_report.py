"""Markdown section of the GPU rows run by ``benchmarks/gpu.sh``, appended to benchmarks/RESULTS.md.

    python benchmarks/gpu_report.py --manifest LOGS/manifest.tsv --results benchmarks/RESULTS.md \
        --device "NVIDIA H100 80GB HBM3" [--device_count 1] [--total_s 312]

The manifest has one tab-separated line per row of the script: ``name, status, seconds, command,
log file``. Every line of a log that is a JSON object (the benches print one per measurement) becomes
one table row, summarised by :func:`summarise`; a row whose log has none (it failed, timed out or was
not run) still gets one table row with its status and the last line of its log. Only the standard
library: it runs before anything else is imported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

HEADING = "## GPU rows (benchmarks/gpu.sh)"


def json_records(path: str) -> list[dict]:
    """The JSON objects printed one per line in ``path`` (other lines ignored)."""
    records = []
    if not path or not os.path.exists(path):
        return records
    with open(path, errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    return records


def last_line(path: str) -> str:
    """The last line of ``path`` that is not a logged warning (at most 160 characters)."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    lines = [line for line in lines if not line.startswith("WARNING:")]
    return lines[-1][:160] if lines else ""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def summarise(record: dict) -> str:
    """One cell describing a bench's JSON record (known benches by name; others: scalar fields)."""
    g = record.get
    if g("bench") == "penet_train_step":
        text = (
            f"PE-Net {g('size')} {g('dtype', 'float32')}, B={g('batch')} x P={g('pairs_per_image')}:"
            f" step {_fmt(g('step_ms'))} ms, {_fmt(g('relations_per_s'))} relations/s"
        )
        if g("achieved_gflop_per_s") is not None:
            text += (
                f", {_fmt(g('achieved_gflop_per_s'))} GFLOP/s = {_fmt(g('fraction_of_matmul'))}"
                f" of matmul ({_fmt(g('matmul_gflop_per_s'))} GFLOP/s)"
            )
        return text + f", last loss {_fmt(g('loss_last'))}"
    if g("bench") == "ra_sgg_phase2_step":
        return (
            f"RA-SGG phase 2 ({g('backend')}, {g('dtype', 'float32')}): step"
            f" {_fmt(g('phase2_step_ms'))} ms vs phase 1 {_fmt(g('phase1_step_ms'))} ms ="
            f" {_fmt(g('ratio_phase2_to_phase1'))}; transform {_fmt(g('transform_ms'))} ms;"
            f" bank of {_fmt(g('bank_entries'))} built in {_fmt(g('bank_build_s'))} s"
        )
    if "preset" in record and "ms_per_batch" in record:
        return (
            f"detector {g('preset')} {g('image_size')} px, batch {g('batch')}, {g('dtype')}:"
            f" {_fmt(g('ms_per_batch'))} ms/batch, {_fmt(g('images_per_s'))} images/s,"
            f" compile {_fmt(g('compile_s'))} s"
        )
    if g("benchmark") == "evaluator_speed":
        return (
            f"evaluator, {_fmt(g('images'))} GQA-200 test images (host numpy):"
            f" evaluate {_fmt(g('evaluate_s'))} s vs SGB loop {_fmt(g('reference_loop_s'))} s"
            f" ({_fmt(g('speedup'))}x), metrics equal to 1e-12"
        )
    scalars = [
        f"{key} {_fmt(value)}"
        for key, value in record.items()
        if isinstance(value, (int, float, str, bool)) and key != "machine"
    ]
    return ", ".join(scalars[:12])


def read_manifest(path: str) -> list[dict]:
    rows = []
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            name, status, seconds, command, log = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            rows.append(
                {"name": name, "status": status, "seconds": seconds, "command": command, "log": log}
            )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(rows: list[dict], device: str, device_count: str, total_s: str, when: str) -> str:
    """The markdown section: heading, one line of context, one table row per measurement."""
    lines = [
        HEADING,
        "",
        f"`bash benchmarks/gpu.sh` ({when}; device: {device}, {device_count} device(s);"
        f" rows run in {total_s} s in all; commands run from the repository root with"
        " `PYTHONPATH` set to it)",
        "",
        "| row | status | wall s | measurement | command |",
        "|---|---|---:|---|---|",
    ]
    for row in rows:
        records = json_records(row["log"])
        command = f"`{_cell(row['command'])}`" if row["command"] else "-"
        if not records:
            detail = last_line(row["log"]) or (
                "not run: total budget spent" if row["status"] == "budget" else "no measurement"
            )
            if row["status"].startswith("skipped"):
                detail = "not run"
            lines.append(
                f"| {row['name']} | {row['status']} | {row['seconds']} | {_cell(detail)} | {command} |"
            )
        for record in records:
            lines.append(
                f"| {row['name']} | {row['status']} | {row['seconds']} "
                f"| {_cell(summarise(record))} | {command} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--device", required=True, help="device name for the heading")
    parser.add_argument("--device_count", default="1")
    parser.add_argument("--total_s", default="?")
    args = parser.parse_args(argv)
    if not os.path.exists(args.manifest):
        print(f"gpu_report.py: no manifest at {args.manifest}", file=sys.stderr)
        return 2
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = section(read_manifest(args.manifest), args.device, args.device_count, args.total_s, when)
    existing = open(args.results).read() if os.path.exists(args.results) else ""
    separator = (
        ""
        if not existing or existing.endswith("\n\n")
        else "\n"
        if existing.endswith("\n")
        else "\n\n"
    )
    with open(args.results, "a") as handle:
        handle.write(separator + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
