"""Tests of the frequency baseline and bias: table values on a hand-built dataset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.data import pipeline
from sgg_jax.errors import DataError
from sgg_jax.relation.frequency import FrequencyBaseline, FrequencyBias
from sgg_jax.structures import SceneGraph

NUM_CLASSES = 3
NUM_PREDICATES = 2


@pytest.fixture(scope="module")
def graphs():
    # Image 1: objects 0 (class 1) and 1 (class 2) overlap, object 2 (class 3) is apart.
    first = SceneGraph(
        "1",
        100,
        100,
        boxes=[[0, 0, 10, 10], [5, 5, 15, 15], [50, 50, 60, 60]],
        labels=[1, 2, 3],
        relations=[[0, 1, 1], [0, 1, 1], [0, 2, 2], [1, 0, 2]],
    )
    # Image 2: no overlapping boxes, so every ordered pair is a background candidate.
    second = SceneGraph(
        "2",
        100,
        100,
        boxes=[[0, 0, 10, 10], [20, 20, 30, 30]],
        labels=[1, 2],
        relations=[[0, 1, 2]],
    )
    return [first, second]


def test_counts_follow_motifs_statistics(graphs):
    baseline = FrequencyBaseline.from_graphs(graphs, NUM_CLASSES, NUM_PREDICATES)
    counts = baseline.counts
    assert counts.shape == (4, 4, 3)
    # Foreground: every relation row, duplicates included.
    assert counts[1, 2, 1] == 2 and counts[1, 2, 2] == 1
    assert counts[1, 3, 2] == 1 and counts[2, 1, 2] == 1
    assert counts[:, :, 1:].sum() == 5
    # Background: image 1 counts its overlapping pairs (0,1), (1,0); image 2 all pairs
    # (0,1), (1,0); then +1 everywhere.
    expected_background = np.ones((4, 4), np.int64)
    expected_background[1, 2] += 2
    expected_background[2, 1] += 2
    np.testing.assert_array_equal(counts[:, :, 0], expected_background)
    everything = FrequencyBaseline.from_graphs(
        graphs, NUM_CLASSES, NUM_PREDICATES, must_overlap=False
    )
    assert everything.counts[1, 3, 0] == 2 and everything.counts[3, 2, 0] == 2

    # log_bias = log(counts / Σ counts + 1e-3).
    np.testing.assert_allclose(
        baseline.log_bias[1, 2], np.log(np.array([3, 2, 1]) / 6 + 1e-3), rtol=1e-6
    )
    np.testing.assert_allclose(
        baseline.log_bias[3, 3], np.log(np.array([1, 0, 0]) + 1e-3), rtol=1e-6
    )


def test_predict_scores_and_batches(graphs):
    baseline = FrequencyBaseline.from_graphs(graphs, NUM_CLASSES, NUM_PREDICATES)
    scores = baseline.predict_scores(np.array([1, 2]), np.array([2, 1]))
    assert scores.shape == (2, 3) and scores.dtype == np.float32
    expected = np.array([3, 2, 1]) / 6 + 1e-3
    np.testing.assert_allclose(scores[0], expected / expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-6)
    assert scores[1].argmax() == 0  # (2, 1): 3 background vs 1 "predicate 2"

    config = pipeline.PipelineConfig.evaluation(batch_size=2, max_objects=3, max_pairs=6)
    batch = pipeline.collate(
        [
            pipeline.prepare_example(graph, image_index=i, epoch=0, config=config)
            for i, graph in enumerate(graphs)
        ]
    )
    batch_scores = baseline.predict_batch(batch)
    assert batch_scores.shape == (2, 6, 3)
    for row, graph in enumerate(graphs):
        for slot in np.flatnonzero(batch.pair_mask[row]):
            subject, object_ = batch.pairs[row, slot]
            np.testing.assert_allclose(
                batch_scores[row, slot],
                baseline.predict_scores(graph.labels[subject], graph.labels[object_]),
            )


def test_out_of_range_labels_name_the_image(graphs):
    with pytest.raises(DataError, match="image 1.*'labels'"):
        FrequencyBaseline.from_graphs(graphs, 2, NUM_PREDICATES)
    with pytest.raises(DataError, match="image 1.*'relations'"):
        FrequencyBaseline.from_graphs(graphs, NUM_CLASSES, 1)


def test_frequency_bias_module_starts_from_the_table(graphs):
    baseline = FrequencyBaseline.from_graphs(graphs, NUM_CLASSES, NUM_PREDICATES)
    module = FrequencyBias(baseline)
    subjects = jnp.array([[1, 3], [2, 0]])
    objects = jnp.array([[2, 1], [1, 0]])
    variables = module.init(jax.random.key(0), subjects, objects)
    assert variables["params"]["log_bias"].shape == (16, 3)
    bias = module.apply(variables, subjects, objects)
    assert bias.shape == (2, 2, 3)
    np.testing.assert_allclose(
        bias, baseline.log_bias[np.asarray(subjects), np.asarray(objects)], rtol=1e-6
    )
    grads = jax.grad(lambda v: module.apply(v, subjects, objects)[0, 0, 1])(variables)
    assert float(grads["params"]["log_bias"][1 * 4 + 2, 1]) == 1.0
