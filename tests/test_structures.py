"""SceneGraph / Vocab / Prediction / SceneGraphBatch behave as the data contract says."""

import jax
import numpy as np
import pytest

from sgg_jax.structures import Prediction, SceneGraph, SceneGraphBatch, Vocab


def _graph(**changes):
    fields = dict(
        image_id=7,
        width=100,
        height=50,
        boxes=[[0, 0, 10, 10], [5, 5, 20, 30]],
        labels=[1, 2],
        relations=[[0, 1, 3], [0, 1, 4]],
    )
    fields.update(changes)
    return SceneGraph(**fields)


def test_scene_graph_normalises_types_and_keeps_duplicate_relations():
    graph = _graph()
    assert graph.image_id == "7"
    assert graph.boxes.dtype == np.float32 and graph.labels.dtype == np.int32
    assert graph.relations.dtype == np.int32
    assert graph.num_objects == 2 and graph.num_relations == 2
    np.testing.assert_array_equal(graph.relations[:, :2], [[0, 1], [0, 1]])


def test_scene_graph_empty_relations_have_shape_r_by_3():
    graph = _graph(relations=[])
    assert graph.relations.shape == (0, 3)


def test_scene_graph_equality_is_by_value():
    assert _graph() == _graph()
    assert _graph() != _graph(relations=[[0, 1, 3]])
    assert _graph() != _graph(captions=("a cat",))
    with pytest.raises(TypeError):
        hash(_graph())


def test_scene_graph_rejects_label_count_mismatch():
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        _graph(labels=[1])


def test_vocab_counts_recomputed_from_graphs():
    vocab = Vocab(("__background__", "a", "b"), ("__background__", "x", "y", "z", "w"))
    counted = vocab.with_counts_from([_graph(), _graph(labels=[2, 2], relations=[[1, 0, 4]])])
    np.testing.assert_array_equal(counted.object_counts, [0, 1, 3])
    np.testing.assert_array_equal(counted.predicate_counts, [0, 0, 0, 1, 2])
    assert counted.num_classes == 2 and counted.num_predicates == 4


def test_vocab_requires_background_first():
    with pytest.raises(ValueError, match="__background__"):
        Vocab(("a",), ("__background__",))


def test_prediction_shapes():
    prediction = Prediction(
        boxes=[[0, 0, 1, 1]] * 2,
        labels=[1, 2],
        object_scores=[1, 1],
        pairs=[[0, 1], [1, 0]],
        predicate_scores=np.full((2, 4), 0.25),
    )
    assert prediction.num_pairs == 2 and prediction.predicate_scores.shape == (2, 4)


def test_batch_is_a_pytree_with_optional_fields():
    batch_size, objects, pairs = 2, 3, 4
    batch = SceneGraphBatch(
        boxes=np.zeros((batch_size, objects, 4), np.float32),
        labels=np.zeros((batch_size, objects), np.int32),
        object_mask=np.zeros((batch_size, objects), bool),
        pairs=np.zeros((batch_size, pairs, 2), np.int32),
        pair_labels=np.zeros((batch_size, pairs), np.int32),
        pair_mask=np.zeros((batch_size, pairs), bool),
        image_size=np.ones((batch_size, 2), np.int32),
        graph_mask=np.ones(batch_size, bool),
        image_index=np.arange(batch_size, dtype=np.int32),
        num_truncated_objects=np.zeros(batch_size, np.int32),
        num_truncated_pairs=np.zeros(batch_size, np.int32),
    )
    leaves = jax.tree.leaves(batch)
    assert len(leaves) == 11  # optional images / soft_targets are None, not leaves
    doubled = jax.tree.map(lambda x: x * 2, batch)
    np.testing.assert_array_equal(doubled.image_index, [0, 2])
    assert batch.batch_size == 2 and batch.max_objects == 3 and batch.max_pairs == 4
