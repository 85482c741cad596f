"""Batch outputs back to per-image predictions, including truncated objects."""

import numpy as np

from sgg_jax.data import pipeline
from sgg_jax.evaluation import evaluate
from sgg_jax.evaluation.collect import batch_predictions
from sgg_jax.structures import SceneGraph


def _graphs():
    rng = np.random.default_rng(0)
    graphs = []
    for index, num_objects in enumerate((3, 6, 2)):
        corners = rng.uniform(0, 50, (num_objects, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (num_objects, 2))], 1)
        graphs.append(
            SceneGraph(
                str(index),
                100,
                100,
                boxes,
                rng.integers(1, 4, num_objects),
                [[0, 1, 2], [1, 0, 1], [num_objects - 1, 0, 3]],
            )
        )
    return graphs


def test_oracle_scores_through_batches_give_full_recall_except_truncated():
    graphs = _graphs()
    config = pipeline.PipelineConfig.evaluation(batch_size=2, max_objects=4, max_pairs=12)
    predictions = {}
    for batch in pipeline.make_loader(graphs, config):
        scores = np.full(batch.pair_labels.shape + (4,), 0.01, np.float32)
        for row in range(batch.batch_size):
            if not batch.graph_mask[row]:
                continue
            graph = graphs[batch.image_index[row]]
            for s, o, p in graph.relations:
                hit = (batch.pairs[row, :, 0] == s) & (batch.pairs[row, :, 1] == o)
                scores[row, hit & batch.pair_mask[row], p] = 1.0
        predictions.update(batch_predictions(graphs, batch, scores))
    assert sorted(predictions) == [0, 1, 2]
    ordered = [predictions[i] for i in range(3)]
    assert ordered[1].num_objects == 6 and ordered[1].num_pairs == 12  # 4 kept objects: 12 pairs
    np.testing.assert_array_equal(ordered[1].object_scores, [1, 1, 1, 1, 0, 0])
    metrics = evaluate(graphs, ordered, mode="predcls", num_predicates=3, ks=(20,))
    # image 1 loses its relation (5, 0) to truncation: 2/3. Image 2 (2 objects) holds predicates 1
    # and 3 on the same pair (1, 0); the graph constraint keeps one predicate per pair: 2/3.
    np.testing.assert_allclose(metrics["R@20"], (1 + 2 / 3 + 2 / 3) / 3)
    np.testing.assert_allclose(metrics["ngR@20"], (1 + 2 / 3 + 1) / 3)
