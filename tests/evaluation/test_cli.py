"""``python -m sgg_jax.evaluation`` on saved predictions: oracle and chance predictions, bad input."""

import json
import pathlib
import subprocess
import sys

import numpy as np

from sgg_jax.data import datasets
from sgg_jax.evaluation import predictions_io
from sgg_jax.structures import Prediction

ROOT = pathlib.Path(__file__).resolve().parents[2]
GROUNDTRUTH = ["--groundtruth=synthetic:test", "--synthetic_images=60", "--seed=3"]


def _predictions(oracle: bool):
    graphs, vocab = datasets.load("synthetic", "test", synthetic_images=60, seed=3)
    rng = np.random.default_rng(0)
    predictions = []
    for graph in graphs:
        n = graph.num_objects
        subject, obj = np.nonzero(~np.eye(n, dtype=bool))
        scores = rng.dirichlet(np.ones(vocab.num_predicates + 1), subject.shape[0])
        if oracle:
            scores = np.full_like(scores, 1e-3)
            for s, o, p in graph.relations:
                scores[(subject == s) & (obj == o), p] = 1.0
        predictions.append(
            Prediction(graph.boxes, graph.labels, np.ones(n), np.stack([subject, obj], 1), scores)
        )
    return graphs, predictions


def _run(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "sgg_jax.evaluation", *GROUNDTRUTH, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_oracle_predictions_reach_full_recall(tmp_path):
    graphs, predictions = _predictions(oracle=True)
    path = tmp_path / "preds.npz"
    # stored in reverse order: the command matches images by id
    predictions_io.save_predictions(path, [g.image_id for g in graphs][::-1], predictions[::-1])
    out = tmp_path / "out"
    result = _run(tmp_path, f"--predictions={path}", f"--out={out}", "--name=oracle")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(graphs)} images, {len(graphs)} evaluated" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| oracle"))
    header = next(line for line in result.stdout.splitlines() if line.startswith("| run"))
    values = dict(zip(header.split("|")[2:-1], row.split("|")[2:-1], strict=True))
    assert values[" R@20 "].strip() == "100.00" and values[" A@100 "].strip() == "100.00"
    document = json.loads((out / "results.json").read_text())
    assert document["task"] == "predcls" and document["runs"]["oracle"]["R@100"] == 1.0
    for png in ("per_predicate_recall.png", "predicate_confusion.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_chance_predictions_are_far_from_oracle(tmp_path):
    graphs, predictions = _predictions(oracle=False)
    path = tmp_path / "preds.npz"
    predictions_io.save_predictions(path, [g.image_id for g in graphs], predictions)
    result = _run(tmp_path, f"--predictions={path}")
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| predictions"))
    recall_at_20 = float(row.split("|")[2])
    assert recall_at_20 < 50.0


def test_missing_image_and_bad_groundtruth_are_one_line_errors(tmp_path):
    graphs, predictions = _predictions(oracle=True)
    path = tmp_path / "preds.npz"
    ids = [g.image_id for g in graphs]
    ids[0] = "not-an-image"
    predictions_io.save_predictions(path, ids, predictions)
    result = _run(tmp_path, f"--predictions={path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: image {graphs[0].image_id}: field 'image_ids': "
        "ground-truth image has no prediction"
    )
    result = subprocess.run(
        [sys.executable, "-m", "sgg_jax.evaluation", "--groundtruth=coco", f"--predictions={path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "option 'groundtruth'" in result.stderr.splitlines()[-1]
