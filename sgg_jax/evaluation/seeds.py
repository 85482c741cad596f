"""Results over seeds: mean ± std per run and metric, and paired differences between runs.

Every experiment writes one ``results.json`` per seed with the schema of
:func:`sgg_jax.evaluation.report.results_document` (``{"experiment", "dataset", "task", "seed",
"runs": {"<run>": {"<metric>": float, ...}}}``). :func:`aggregate` reads several of them (one per
seed, the same experiment) and returns, for every run and every scalar metric present in all seeds,
the per-seed values, their mean and their sample standard deviation (``ddof=1``).
:func:`paired_difference` compares two runs seed by seed (both trained from the same seed share the
data order and, for phase-2 runs, the phase-1 model), which removes the variation they share.

An effect is called present when the mean paired difference exceeds two standard deviations of the
paired differences (``|mean| > 2·std``, :attr:`Difference.holds`): with three seeds a coarse test,
stated as such wherever it is used.

``python -m sgg_jax.evaluation.seeds results/ra_sgg_gqa200_mini --metrics R@100,mR@100
--baseline "PE-Net continued"`` prints the table and writes ``aggregate.json`` next to the seeds
(or to ``--out``). A ``--baseline`` run that is not in every seed's ``results.json`` and an
``--out`` that is a folder or cannot be written end it with one line ``error: ...`` and exit
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from sgg_jax.data.fileio import check_writable_file, load_json
from sgg_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Difference:
    """Run A − run B of one metric, seed by seed.

    Attributes:
      values: the per-seed differences, in seed order.
      mean, std: their mean and sample standard deviation (NaN std for one seed).
    """

    values: tuple[float, ...]
    mean: float
    std: float

    @property
    def holds(self) -> bool:
        """True when ``|mean| > 2·std`` (and std is defined): the difference is not seed noise."""
        return bool(math.isfinite(self.std) and abs(self.mean) > 2 * self.std)


def load_seed_results(paths: Sequence[str]) -> list[dict]:
    """The results documents of ``paths``, sorted by seed; one experiment and distinct seeds.

    Args:
      paths: ``results.json`` files, or folders holding ``seed*/results.json``.

    Returns:
      Documents sorted by their ``seed``.

    Raises:
      DataError: a file is missing or malformed, two seeds repeat, or experiments differ.
    """
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "seed*", "results.json")))
        else:
            files.append(path)
    if not files:
        raise DataError("no results.json found", path=", ".join(paths))
    documents = []
    for file in files:
        document = load_json(file)
        if not isinstance(document, dict) or not isinstance(document.get("runs"), dict):
            raise DataError("expected an object with 'runs'", path=file, field="runs")
        if not isinstance(document.get("seed"), int):
            raise DataError("expected an integer seed", path=file, field="seed")
        documents.append({**document, "_path": file})
    seeds = [d["seed"] for d in documents]
    if len(set(seeds)) != len(seeds):
        raise DataError(f"seeds repeat: {sorted(seeds)}", path=", ".join(files), field="seed")
    experiments = {(d.get("experiment"), d.get("dataset"), d.get("task")) for d in documents}
    if len(experiments) != 1:
        raise DataError(f"mixes experiments {sorted(map(str, experiments))}", path=files[0])
    return sorted(documents, key=lambda d: d["seed"])


def _scalar(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def aggregate(documents: Sequence[dict]) -> dict:
    """Per run and metric: ``{"values": [...], "mean": float, "std": float}`` over the seeds.

    Only runs present in every document and scalar metrics present in all of them are kept.

    Args:
      documents: from :func:`load_seed_results`.

    Returns:
      ``{"seeds": [...], "runs": {run: {metric: {"values", "mean", "std"}}}}``.
    """
    runs = set(documents[0]["runs"])
    for document in documents[1:]:
        runs &= set(document["runs"])
    out: dict = {"seeds": [d["seed"] for d in documents], "runs": {}}
    for run in sorted(runs, key=list(documents[0]["runs"]).index):
        metrics = {}
        for name, value in documents[0]["runs"][run].items():
            values = [d["runs"][run].get(name) for d in documents]
            if not all(_scalar(v) for v in values) or not _scalar(value):
                continue
            array = np.asarray(values, np.float64)
            std = float(array.std(ddof=1)) if array.size > 1 else float("nan")
            metrics[name] = {"values": array.tolist(), "mean": float(array.mean()), "std": std}
        out["runs"][run] = metrics
    return out


def paired_difference(documents: Sequence[dict], run_a: str, run_b: str, metric: str) -> Difference:
    """``run_a − run_b`` of ``metric`` in each seed's document.

    Raises:
      DataError: a run or the metric is missing in a seed.
    """
    values = []
    for document in documents:
        runs = document["runs"]
        for run in (run_a, run_b):
            if run not in runs or not _scalar(runs[run].get(metric)):
                raise DataError(
                    f"run {run!r} has no metric {metric!r}",
                    path=document.get("_path", "<results>"),
                    field="runs",
                )
        values.append(float(runs[run_a][metric]) - float(runs[run_b][metric]))
    array = np.asarray(values)
    std = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return Difference(values=tuple(values), mean=float(array.mean()), std=std)


def markdown_table(summary: dict, metrics: Sequence[str], scale: float = 100.0) -> str:
    """``| run | metric mean ± std | ...`` over the seeds (values × ``scale``, default %)."""
    header = "| run | " + " | ".join(metrics) + " |\n|---|" + "---:|" * len(metrics) + "\n"
    rows = []
    for run, values in summary["runs"].items():
        cells = []
        for metric in metrics:
            if metric not in values:
                cells.append("")
                continue
            entry = values[metric]
            std = entry["std"] * scale
            cells.append(
                f"{entry['mean'] * scale:.2f} ± {std:.2f}"
                if math.isfinite(std)
                else f"{entry['mean'] * scale:.2f}"
            )
        rows.append(f"| {run} | " + " | ".join(cells) + " |")
    return header + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mean ± std of results.json files over seeds.")
    parser.add_argument("paths", nargs="+", help="results.json files or folders of seed*/")
    parser.add_argument("--metrics", default="R@100,mR@100,F@100")
    parser.add_argument("--baseline", default=None, help="run the others are compared with")
    parser.add_argument("--out", default=None, help="aggregate.json (default: next to the seeds)")
    args = parser.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    out = args.out
    try:
        if out is not None:
            check_writable_file(out, "out")  # before any work
        documents = load_seed_results(args.paths)
        if out is None:
            first = args.paths[0]
            out = os.path.join(
                first if os.path.isdir(first) else os.path.dirname(first), "aggregate.json"
            )
            check_writable_file(out, "out")
        summary = aggregate(documents)
        if args.baseline is not None and args.baseline not in summary["runs"]:
            raise DataError(f"no run {args.baseline!r} in every seed", field="baseline")
        differences = {}
        if args.baseline is not None:
            for run in summary["runs"]:
                if run == args.baseline:
                    continue
                differences[run] = {
                    metric: dataclasses.asdict(
                        paired_difference(documents, run, args.baseline, metric)
                    )
                    for metric in metrics
                    if metric in summary["runs"][run]
                }
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"seeds {summary['seeds']} (mean ± sample std, %)")
    print(markdown_table(summary, metrics), end="")
    for run, entries in differences.items():
        described = ", ".join(
            f"{metric} {100 * d['mean']:+.2f} ± {100 * d['std']:.2f}"
            + (" (> 2 std)" if Difference(**{**d, "values": tuple(d["values"])}).holds else "")
            for metric, d in entries.items()
        )
        print(f"{run} − {args.baseline}: {described}")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {**summary, "baseline": args.baseline, "differences": differences}, handle, indent=2
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
