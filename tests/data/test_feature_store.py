"""Precomputed object features: the .npz store and their padding into batches."""

import numpy as np
import pytest

from sgg_jax.data import feature_store, pipeline
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph


def _graphs():
    return [
        SceneGraph(str(i), 50, 50, np.tile([[0, 0, 10, 10]], (n, 1)), [1] * n, [[0, 1, 1]])
        for i, n in enumerate((2, 3, 5))
    ]


def test_store_round_trip_and_alignment(tmp_path):
    graphs = _graphs()
    features = [np.full((g.num_objects, 4), i, np.float32) for i, g in enumerate(graphs)]
    path = tmp_path / "feats.npz"
    feature_store.save_object_features(path, [g.image_id for g in graphs][::-1], features[::-1])
    table = feature_store.load_object_features(path)
    aligned = feature_store.features_for(graphs, table, path=str(path))
    for original, back in zip(features, aligned, strict=True):
        np.testing.assert_array_equal(original, back)
    table["1"] = table["1"][:2]
    with pytest.raises(DataError, match=r"image 1: field 'features': 2 feature rows for 3"):
        feature_store.features_for(graphs, table)
    del table["0"]
    with pytest.raises(DataError, match=r"image 0: no features"):
        feature_store.features_for(graphs, table)


def test_batches_carry_padded_object_features_with_truncation():
    graphs = _graphs()
    features = [np.arange(g.num_objects * 2, dtype=np.float32).reshape(-1, 2) + 1 for g in graphs]
    config = pipeline.PipelineConfig.evaluation(batch_size=2, max_objects=4, max_pairs=12)
    batches = list(pipeline.make_loader(graphs, config, object_features=features))
    assert len(batches) == 2
    first, second = batches
    np.testing.assert_array_equal(first.object_features[0, :2], features[0])
    np.testing.assert_array_equal(first.object_features[0, 2:], 0)
    np.testing.assert_array_equal(second.object_features[0], features[2][:4])  # truncated to 4
    np.testing.assert_array_equal(second.object_features[1], 0)  # padding image
    with pytest.raises(ConfigError, match="option 'object_features'"):
        pipeline.make_loader(graphs, config, object_features=features[:2])
    features[1] = features[1][:2]
    with pytest.raises(DataError, match=r"image 1: field 'object_features'"):
        list(pipeline.make_loader(graphs, config, object_features=features))
