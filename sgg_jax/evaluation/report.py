"""Reports of SGG results: tables, ``results.json``, per-predicate recall charts, confusion matrices.

* :func:`metrics_table` — a markdown table of several runs (values shown in %).
* :func:`write_results` — ``results.json`` in the project's one schema
  ``{"experiment", "dataset", "task", "seed", "runs": {row: {metric: fraction}}}`` plus
  ``results.md`` with the same numbers as a table.
* :func:`plot_per_predicate_recall` — per-predicate R@K bars sorted by training frequency, with the
  change against a baseline run (the style of Fig. 4 of Huang et al., "Learning to Contrast and Score").
* :func:`predicate_confusion` / :func:`plot_confusion` — which predicate the model predicts on the
  ground-truth pairs, row-normalised (their Fig. 5 style).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sgg_jax.structures import Prediction, SceneGraph  # noqa: E402

_METRIC_ORDER = ("R", "ngR", "mR", "ngmR", "zR", "ngzR", "A", "F")


def _is_scalar_metric(name: str, value) -> bool:
    return isinstance(value, int | float) and "@" in name and not name.startswith("num_")


def _metric_sort_key(name: str):
    family, _, cut = name.partition("@")
    cut, _, group = cut.partition("/")
    family_rank = _METRIC_ORDER.index(family) if family in _METRIC_ORDER else len(_METRIC_ORDER)
    cut_rank = 10**9 if cut == "all" else int(cut) if cut.isdigit() else 10**9 + 1
    return (bool(group), family_rank, family, cut_rank, group)


def metrics_table(
    runs: Mapping[str, Mapping[str, object]], columns: Sequence[str] | None = None
) -> str:
    """Markdown table with one row per run; values are fractions shown as percentages.

    Args:
      runs: row name -> metrics dict (as returned by :func:`sgg_jax.evaluation.sgg.evaluate`).
      columns: metric names to show; by default every scalar ``X@K`` metric of any run, in the order
        R, ngR, mR, ngmR, zR, ngzR, A, F, then per-group mean recalls.

    Returns:
      The table as a string (header, separator, one line per run).
    """
    if columns is None:
        names = {
            n for metrics in runs.values() for n, v in metrics.items() if _is_scalar_metric(n, v)
        }
        columns = sorted(names, key=_metric_sort_key)
    lines = [
        "| run | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for run, metrics in runs.items():
        cells = []
        for column in columns:
            value = metrics.get(column)
            cells.append("–" if value is None else f"{100.0 * float(value):.2f}")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_document(
    *, experiment: str, dataset: str, task: str, seed: int, runs: Mapping[str, Mapping[str, object]]
) -> dict:
    """The ``results.json`` document: scalar metrics as floats, per-predicate lists kept as lists.

    Numbers become JSON floats (ints and bools stay as they are), lists of numbers lists of floats,
    lists of names (e.g. ``predicate_names``) lists of strings; other values are left out.
    """
    clean_runs = {}
    for run, metrics in runs.items():
        clean = {}
        for name, value in metrics.items():
            if isinstance(value, np.ndarray | list | tuple):
                clean[name] = [v if isinstance(v, str) else float(v) for v in value]
            elif isinstance(value, bool | int | float | np.integer | np.floating):
                clean[name] = value if isinstance(value, bool | int) else float(value)
        clean_runs[run] = clean
    return {
        "experiment": experiment,
        "dataset": dataset,
        "task": task,
        "seed": int(seed),
        "runs": clean_runs,
    }


def write_results(
    workdir: str | os.PathLike,
    *,
    experiment: str,
    dataset: str,
    task: str,
    seed: int,
    runs: Mapping[str, Mapping[str, object]],
) -> dict:
    """Writes ``results.json`` and ``results.md`` into ``workdir`` and returns the document."""
    os.makedirs(workdir, exist_ok=True)
    document = results_document(
        experiment=experiment, dataset=dataset, task=task, seed=seed, runs=runs
    )
    with open(os.path.join(workdir, "results.json"), "w") as handle:
        json.dump(document, handle, indent=2, sort_keys=False)
    with open(os.path.join(workdir, "results.md"), "w") as handle:
        handle.write(f"# {experiment} — {dataset}, {task}, seed {seed}\n\n")
        handle.write(metrics_table(runs))
    return document


def plot_per_predicate_recall(
    path: str | os.PathLike,
    recalls: Sequence[float],
    predicate_names: Sequence[str],
    train_counts: Sequence[int],
    *,
    baseline: Sequence[float] | None = None,
    k: int = 100,
    label: str = "model",
    baseline_label: str = "baseline",
    num_images: Sequence[int] | None = None,
) -> None:
    """Bar chart of per-predicate recall, predicates sorted by training frequency (head → tail).

    Args:
      path: output PNG.
      recalls: float[P] R@K of predicates 1..P.
      predicate_names: P+1 names (index 0 = background) or P names.
      train_counts: P+1 or P training counts.
      baseline: optional float[P] recalls of a baseline; the change is drawn as a second panel
        (green = better than the baseline, red = worse).
      k: the K of R@K, for the title.
      label, baseline_label: legend names.
      num_images: float[P] images holding each predicate in the evaluated split (the evaluator's
        ``per_predicate_num_images``); predicates absent from it are marked with a grey ``x`` so a
        missing predicate is not mistaken for a recall of 0.
    """
    recalls = np.asarray(recalls, np.float64)
    num_predicates = recalls.shape[0]
    names = list(predicate_names)[-num_predicates:]
    counts = np.asarray(train_counts, np.int64)[-num_predicates:]
    order = np.argsort(-counts, kind="stable")
    positions = np.arange(num_predicates)
    panels = 2 if baseline is not None else 1
    width = max(8.0, 0.22 * num_predicates)
    figure, axes = plt.subplots(
        panels, 1, figsize=(width, 3.2 * panels + 1.2), squeeze=False, sharex=True
    )
    top = axes[0, 0]
    if baseline is not None:
        baseline = np.asarray(baseline, np.float64)
        top.bar(positions - 0.2, baseline[order], 0.4, label=baseline_label, color="#999999")
        top.bar(positions + 0.2, recalls[order], 0.4, label=label, color="#1f77b4")
        top.legend(loc="upper right")
        delta = (recalls - baseline)[order]
        bottom = axes[1, 0]
        bottom.bar(positions, delta, 0.8, color=np.where(delta >= 0, "#2ca02c", "#d62728"))
        bottom.axhline(0.0, color="black", linewidth=0.6)
        bottom.set_ylabel(f"Δ R@{k}")
    else:
        top.bar(positions, recalls[order], 0.8, color="#1f77b4")
    if num_images is not None:
        absent = np.flatnonzero(np.asarray(num_images)[-num_predicates:][order] == 0)
        if absent.size:
            top.scatter(
                absent,
                np.full(absent.size, 0.03),
                marker="x",
                color="#777777",
                label="not in the evaluated split",
                zorder=3,
            )
            top.legend(loc="upper right")
    top.set_ylabel(f"R@{k}")
    top.set_ylim(0, 1)
    top.set_title(f"Per-predicate R@{k}, predicates by training frequency (head → tail)")
    last = axes[-1, 0]
    last.set_xticks(positions)
    last.set_xticklabels([names[i] for i in order], rotation=90, fontsize=7)
    last.set_xlim(-0.7, num_predicates - 0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def predicate_confusion(
    groundtruths: Sequence[SceneGraph], predictions: Sequence[Prediction], num_predicates: int
) -> np.ndarray:
    """Counts of (ground-truth predicate, predicted predicate) over the ground-truth pairs.

    For every ground-truth relation ``(s, o, p)`` the prediction's pair ``(s, o)`` is looked up (pairs
    index the ground-truth objects in PredCls and SGCls) and its best non-background predicate is
    counted in column ``argmax``; a pair the prediction does not score is counted in column 0.

    Args:
      groundtruths: ground-truth graphs.
      predictions: predictions in the same order.
      num_predicates: P.

    Returns:
      int64[P+1, P+1]; row = ground-truth predicate (row 0 unused), column = predicted predicate.
    """
    confusion = np.zeros((num_predicates + 1, num_predicates + 1), np.int64)
    for graph, prediction in zip(groundtruths, predictions, strict=True):
        if graph.num_relations == 0:
            continue
        predicted_for_pair = {}
        if prediction.num_pairs:
            best = 1 + np.argmax(prediction.predicate_scores[:, 1:], axis=1)
            for (subject, obj), predicate in zip(
                prediction.pairs.tolist(), best.tolist(), strict=True
            ):
                predicted_for_pair.setdefault((subject, obj), predicate)
        for subject, obj, predicate in graph.relations.tolist():
            confusion[predicate, predicted_for_pair.get((subject, obj), 0)] += 1
    return confusion


def plot_confusion(
    path: str | os.PathLike,
    confusion: np.ndarray,
    predicate_names: Sequence[str],
    train_counts: Sequence[int] | None = None,
    *,
    max_predicates: int = 50,
) -> None:
    """Row-normalised predicate confusion matrix as a heat map.

    Args:
      path: output PNG.
      confusion: [P+1, P+1] from :func:`predicate_confusion`.
      predicate_names: P+1 names.
      train_counts: P+1 training counts; predicates are ordered head → tail when given.
      max_predicates: show at most this many (the most frequent) predicates.
    """
    confusion = np.asarray(confusion, np.float64)
    num_predicates = confusion.shape[0] - 1
    if train_counts is None:
        order = np.arange(1, num_predicates + 1)
    else:
        order = 1 + np.argsort(-np.asarray(train_counts)[1:], kind="stable")
    order = order[:max_predicates]
    block = confusion[np.ix_(order, order)]
    rows = confusion[order].sum(axis=1, keepdims=True)
    normalised = np.divide(block, rows, out=np.zeros_like(block), where=rows > 0)
    size = max(6.0, 0.18 * len(order) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    names = [predicate_names[i] for i in order]
    axis.set_xticks(range(len(order)))
    axis.set_yticks(range(len(order)))
    axis.set_xticklabels(names, rotation=90, fontsize=6)
    axis.set_yticklabels(names, fontsize=6)
    axis.set_xlabel("predicted predicate")
    axis.set_ylabel("ground-truth predicate")
    axis.set_title("Predicate confusion on ground-truth pairs (row-normalised)")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
