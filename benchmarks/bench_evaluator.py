"""Evaluator speed and memory on the real GQA-200 graphs: vectorised ``evaluate`` vs the SGB loop.

Speed. The 8,209 GQA-200 test graphs bundled with the package get seeded random PredCls predictions
(every ordered pair ``i != j`` of ground-truth objects, 101 predicate scores per pair from a softmax
of standard normals). The same inputs are evaluated by :func:`sgg_jax.evaluation.evaluate` and by the
per-image reference loop that re-states Scene-Graph-Benchmark's evaluator
(:mod:`sgg_jax.evaluation._reference`); the metrics must agree to 1e-12 (asserted) and the wall
times and their ratio are printed. Zero-shot triplets are those of the GQA-200-mini test part that
never occur in its train part.

Memory. A fresh process evaluates many images (the graphs repeated) whose predictions are generated
lazily on access, so only the evaluator's own working set is measured: the peak resident set size
during ``evaluate`` (``VmHWM`` after resetting it; ``ru_maxrss`` where that is not possible) for a
small and a large number of images. Chunking keeps it flat.

    python benchmarks/bench_evaluator.py [--num_images 8209] [--memory_images 3000 30000]

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from sgg_jax.data import gqa200
from sgg_jax.evaluation import evaluate
from sgg_jax.evaluation._reference import reference_evaluate
from sgg_jax.structures import Prediction, SceneGraph

SEED = 0
KEY_METRICS = ("R@20", "R@50", "R@100", "ngR@20", "ngR@50", "ngR@100", "mR@20", "mR@50", "mR@100")
KEY_METRICS += ("ngmR@100", "zR@100", "ngzR@100", "A@20", "A@100", "mR@all")


def random_predcls_prediction(graph: SceneGraph, index: int, num_predicates: int) -> Prediction:
    """Seeded PredCls prediction for one graph: all ordered pairs, softmax(normal) scores."""
    rng = np.random.default_rng([SEED, index])
    num_objects = graph.num_objects
    subject, object_ = np.nonzero(~np.eye(num_objects, dtype=bool))
    logits = rng.standard_normal((subject.size, num_predicates + 1), dtype=np.float32)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return Prediction(
        boxes=graph.boxes,
        labels=graph.labels,
        object_scores=np.ones(num_objects, np.float32),
        pairs=np.stack([subject, object_], axis=1),
        predicate_scores=probabilities,
    )


class RepeatedGraphs(Sequence):
    """The graphs repeated cyclically up to ``length`` images (no copies)."""

    def __init__(self, graphs, length):
        self.graphs, self.length = graphs, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.graphs[index % len(self.graphs)]


class LazyPredictions(Sequence):
    """Predictions made on access (never stored), so memory measures the evaluator alone."""

    def __init__(self, graphs, num_predicates):
        self.graphs, self.num_predicates = graphs, num_predicates

    def __len__(self):
        return len(self.graphs)

    def __getitem__(self, index):
        return random_predcls_prediction(self.graphs[index], index, self.num_predicates)


def zeroshot_triplets_of_mini_split(graphs) -> np.ndarray:
    """(subject class, object class, predicate) of GQA-200-mini test relations absent from train."""

    def triplets(split):
        rows = [
            np.stack([g.labels[g.relations[:, 0]], g.labels[g.relations[:, 1]], g.relations[:, 2]])
            for g in graphs
            if gqa200.split_of(g.image_id) == split and g.num_relations
        ]
        return {tuple(t) for t in np.concatenate(rows, axis=1).T.tolist()}

    unseen = sorted(triplets("test") - triplets("train"))
    return np.array(unseen, np.int64).reshape(-1, 3)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"


def speed(num_images: int) -> None:
    graphs, vocab = gqa200.load_bundled("all")
    graphs = graphs[:num_images]
    num_predicates = vocab.num_predicates
    zeroshot = zeroshot_triplets_of_mini_split(gqa200.load_bundled("all")[0])
    predictions = [
        random_predcls_prediction(graph, index, num_predicates)
        for index, graph in enumerate(graphs)
    ]
    options = dict(mode="predcls", num_predicates=num_predicates, zeroshot_triplets=zeroshot)
    evaluate(graphs[:50], predictions[:50], **options)  # warm-up (imports, first allocations)
    ours_times = []
    for _ in range(3):
        start = time.perf_counter()
        ours = evaluate(graphs, predictions, **options)
        ours_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    reference = reference_evaluate(graphs, predictions, **options)
    reference_time = time.perf_counter() - start

    mismatches = []
    for key, value in reference.items():
        if isinstance(value, list):
            if not np.allclose(ours[key], value, rtol=0, atol=1e-12):
                mismatches.append(key)
        elif abs(ours[key] - value) > 1e-12:
            mismatches.append(key)
    assert not mismatches, f"evaluate and the reference loop disagree on {mismatches}"

    ours_time = min(ours_times)
    print(
        json.dumps(
            {
                "benchmark": "evaluator_speed",
                "dataset": "GQA-200 test (bundled)",
                "mode": "predcls",
                "images": len(graphs),
                "images_evaluated": ours["num_images_evaluated"],
                "predicted_pairs": int(sum(p.num_pairs for p in predictions)),
                "zeroshot_triplets": int(zeroshot.shape[0]),
                "evaluate_s": round(ours_time, 3),
                "evaluate_s_runs": [round(t, 3) for t in ours_times],
                "reference_loop_s": round(reference_time, 3),
                "speedup": round(reference_time / ours_time, 1),
                "metrics_equal_to_1e-12": True,
                "metrics": {key: ours[key] for key in KEY_METRICS},
                "reference_metrics": {key: reference[key] for key in KEY_METRICS},
                "machine": machine(),
            }
        ),
        flush=True,
    )


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_run(num_images: int, chunk_size: int | None) -> None:
    """One evaluation of ``num_images`` lazily predicted images; prints its peak RSS."""
    graphs, vocab = gqa200.load_bundled("all")
    groundtruths = RepeatedGraphs(graphs, num_images)
    predictions = LazyPredictions(groundtruths, vocab.num_predicates)
    options = {} if chunk_size is None else {"chunk_size": chunk_size}
    baseline = _rss_mib("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    result = evaluate(
        groundtruths, predictions, mode="predcls", num_predicates=vocab.num_predicates, **options
    )
    elapsed = time.perf_counter() - start
    peak = _rss_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = sum(
        g.num_objects * (g.num_objects - 1) for g in (groundtruths[i] for i in range(num_images))
    )
    print(
        json.dumps(
            {
                "benchmark": "evaluator_memory",
                "images": num_images,
                "images_evaluated": result["num_images_evaluated"],
                "predicted_pairs": int(pairs),
                "predictions_if_stored_mib": round(
                    pairs * (vocab.num_predicates + 1) * 4 / 2**20, 1
                ),
                "rss_before_mib": round(baseline, 1),
                "peak_rss_mib": round(peak, 1),
                "peak_over_baseline_mib": round(peak - baseline, 1),
                "peak_measure": "VmHWM (reset before evaluate)" if reset else "ru_maxrss",
                "wall_s_incl_generating_predictions": round(elapsed, 1),
                "R@100": result["R@100"],
                "machine": machine(),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=8209, help="images for the speed run")
    parser.add_argument(
        "--memory_images",
        type=int,
        nargs="*",
        default=[3000, 30000],
        help="image counts of the memory runs (each in a fresh process); none to skip",
    )
    parser.add_argument("--memory_run", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--chunk_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip_speed", action="store_true")
    args = parser.parse_args()
    if args.memory_run is not None:
        memory_run(args.memory_run, args.chunk_size)
        return
    if not args.skip_speed:
        speed(args.num_images)
    for num_images in args.memory_images:
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--memory_run", str(num_images)],
            check=True,
        )


if __name__ == "__main__":
    main()
