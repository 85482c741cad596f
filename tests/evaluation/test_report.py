"""Reports: markdown table, results.json schema, confusion counts, PNGs; predictions .npz round trip."""

import json

import numpy as np
import pytest

from sgg_jax.errors import DataError
from sgg_jax.evaluation import predictions_io, report
from sgg_jax.structures import Prediction, SceneGraph


def _prediction(num_objects, pairs, scores):
    return Prediction(
        boxes=np.arange(num_objects * 4, dtype=np.float32).reshape(num_objects, 4),
        labels=np.arange(1, num_objects + 1),
        object_scores=np.linspace(0.5, 1.0, num_objects),
        pairs=pairs,
        predicate_scores=scores,
    )


def test_metrics_table_orders_columns_and_formats_percent():
    table = report.metrics_table(
        {
            "base": {"mR@20": 0.05, "R@20": 0.1, "R@100": 0.3, "mR@all": 0.5, "num_images": 3},
            "ours": {"R@20": 0.125},
        }
    )
    lines = table.splitlines()
    assert lines[0] == "| run | R@20 | R@100 | mR@20 | mR@all |"
    assert lines[2] == "| base | 10.00 | 30.00 | 5.00 | 50.00 |"
    assert lines[3] == "| ours | 12.50 | – | – | – |"


def test_write_results_schema(tmp_path):
    document = report.write_results(
        tmp_path,
        experiment="ra_sgg",
        dataset="gqa200_mini",
        task="predcls",
        seed=3,
        runs={"PE-Net": {"R@20": np.float64(0.25), "per_predicate_R@20": np.array([0.5, 0.0])}},
    )
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded == document
    assert loaded == {
        "experiment": "ra_sgg",
        "dataset": "gqa200_mini",
        "task": "predcls",
        "seed": 3,
        "runs": {"PE-Net": {"R@20": 0.25, "per_predicate_R@20": [0.5, 0.0]}},
    }
    assert "| PE-Net | 25.00 |" in (tmp_path / "results.md").read_text()


def test_predicate_confusion_counts_gt_pairs():
    graph = SceneGraph("1", 10, 10, np.zeros((3, 4)), [1, 1, 1], [[0, 1, 2], [0, 1, 1], [2, 0, 3]])
    scores = np.array([[0.9, 0.05, 0.03, 0.02], [0.1, 0.1, 0.1, 0.7]])
    prediction = _prediction(3, [[0, 1], [1, 2]], scores)
    confusion = report.predicate_confusion([graph], [prediction], 3)
    expected = np.zeros((4, 4), np.int64)
    expected[2, 1] = 1  # pair (0,1): best non-background predicate is 1 although background wins
    expected[1, 1] = 1
    expected[3, 0] = 1  # pair (2,0) was not scored
    np.testing.assert_array_equal(confusion, expected)


def test_plots_write_pngs(tmp_path):
    names = ["__background__", "on", "has", "near"]
    counts = [0, 10, 30, 5]
    report.plot_per_predicate_recall(
        tmp_path / "recall.png", [0.2, 0.5, 0.1], names, counts, baseline=[0.3, 0.4, 0.1]
    )
    report.plot_confusion(tmp_path / "confusion.png", np.eye(4, dtype=np.int64), names, counts)
    for name in ("recall.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictions_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    predictions = [
        _prediction(3, [[0, 1], [2, 0]], rng.dirichlet(np.ones(5), 2)),
        _prediction(1, np.zeros((0, 2)), np.zeros((0, 5))),
        _prediction(2, [[1, 0]], rng.dirichlet(np.ones(5), 1)),
    ]
    path = tmp_path / "preds.npz"
    predictions_io.save_predictions(path, ["a", "b", "c"], predictions)
    image_ids, loaded = predictions_io.load_predictions(path)
    assert image_ids == ["a", "b", "c"]
    for original, back in zip(predictions, loaded, strict=True):
        for field in ("boxes", "labels", "object_scores", "pairs", "predicate_scores"):
            np.testing.assert_array_equal(getattr(original, field), getattr(back, field))


def test_predictions_npz_bad_files(tmp_path):
    path = tmp_path / "preds.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="preds.npz: not a readable .npz"):
        predictions_io.load_predictions(path)
    np.savez(path, image_ids=np.array(["a"]))
    with pytest.raises(DataError, match="field 'box_offsets': missing array"):
        predictions_io.load_predictions(path)
    predictions_io.save_predictions(path, ["a"], [_prediction(2, [[0, 1]], np.ones((1, 3)) / 3)])
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["pair_offsets"] = np.array([0, 5])
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="field 'pair_offsets'"):
        predictions_io.load_predictions(path)


def test_frequency_groups_thresholds():
    from sgg_jax.evaluation import frequency_groups

    groups = frequency_groups([0, 20_000, 10_001, 10_000, 500, 499, 3])
    assert groups == {"head": [1, 2], "body": [3, 4], "tail": [5, 6]}
    assert frequency_groups([0, 50, 5, 1], thresholds=(10, 2)) == {
        "head": [1],
        "body": [2],
        "tail": [3],
    }
