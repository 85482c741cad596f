"""sgg_jax.experiment.relation: the data config's checks and the one evaluation loop."""

import dataclasses

import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.experiment import relation
from sgg_jax.experiment.relation import DataConfig


@pytest.fixture(scope="module")
def small():
    data = DataConfig(
        dataset="synthetic",
        synthetic_images=120,
        max_objects=12,
        max_pairs=64,
        max_fg=16,
        eval_max_pairs=132,
        eval_batch_size=4,
    )
    splits, vocab = relation.load_splits(data)
    return data, splits, vocab


def _frequency_scorer(splits, vocab):
    from sgg_jax.relation.frequency import FrequencyBaseline

    frequency = FrequencyBaseline.from_graphs(
        splits["train"], vocab.num_classes, vocab.num_predicates
    )
    return lambda batch: (frequency.predict_batch(batch), None, None)


def test_object_buckets_give_the_same_predictions_and_metrics(small):
    data, splits, vocab = small
    graphs = splits["test"]
    counts = np.minimum([g.num_objects for g in graphs], data.max_objects)
    assert (counts <= 5).any() and (counts > 8).any()  # the buckets below split the images
    scorer = _frequency_scorer(splits, vocab)
    scorers = lambda batch: {"a": scorer(batch), "b": scorer(batch)}  # noqa: E731
    full = relation.collect_predictions(scorers, graphs, vocab, data)
    bucketed = relation.collect_predictions(scorers, graphs, vocab, data, object_buckets=(5, 8))
    assert set(full) == set(bucketed) == {"a", "b"}
    for one, other in zip(full["a"], bucketed["a"], strict=True):
        order = np.lexsort(one.pairs.T[::-1])
        other_order = np.lexsort(other.pairs.T[::-1])
        np.testing.assert_array_equal(one.pairs[order], other.pairs[other_order])
        np.testing.assert_allclose(
            one.predicate_scores[order], other.predicate_scores[other_order], rtol=1e-6
        )
    metrics = relation.evaluate_scorers(scorers, graphs, vocab, data, mode="predcls")
    again = relation.evaluate_scorers(
        scorers, graphs, vocab, data, mode="predcls", object_buckets=(5, 8)
    )
    for key in ("R@20", "R@100", "mR@100", "mR@all"):
        assert metrics["a"][key] == pytest.approx(again["a"][key], abs=1e-12)
        assert metrics["a"][key] == metrics["b"][key]
    assert metrics["a"]["num_images_evaluated"] == len(graphs)
    single = relation.evaluate_scorer(scorer, graphs, vocab, data, mode="predcls")
    assert single["R@100"] == metrics["a"]["R@100"]


@pytest.mark.parametrize(
    "options, option, message",
    [
        ({"batch_size": 0}, "batch_size", "must be positive, got 0"),
        ({"max_fg": 300}, "max_fg", "300 exceeds max_pairs=256"),
        ({"eval_images": -1}, "eval_images", "must be >= 0, got -1"),
        ({"task": "sgdet"}, "task", "sgdet detects objects from pixels: it needs"),
        ({"dataset": "vg150"}, "vg150_h5", "is required with --dataset=vg150"),
        ({"detections_per_image": 1}, "detections_per_image", "must be 0 (the detector's) or >= 2"),
        ({"synthetic_context_bias": (0.6, 0.5)}, "synthetic_context_bias", "must be two numbers"),
        ({"synthetic_annotator_bias": 2.0}, "synthetic_annotator_bias", ""),
    ],
)
def test_data_config_names_the_flag_of_a_bad_value(options, option, message):
    with pytest.raises(ConfigError) as caught:
        DataConfig(**options)
    assert caught.value.option == option
    assert str(caught.value).startswith(f"option '{option}': {message}")
    # replace() checks again: a config is valid whenever it exists
    with pytest.raises(ConfigError):
        dataclasses.replace(DataConfig(), **options)


def test_sgcls_on_box_geometry_warns_in_one_line(capsys):
    data = relation.DataConfig(dataset="synthetic", synthetic_images=20, task="sgcls")
    relation.load_splits(data)
    lines = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert lines == [
        "warning: --task=sgcls with --feature_source=geometry classifies objects from box "
        "geometry alone (no pixels); the papers use --feature_source=roi (or precomputed)"
    ]
    relation.load_splits(relation.DataConfig(dataset="synthetic", synthetic_images=20))
    assert "warning" not in capsys.readouterr().out  # PredCls: the objects are given
