"""Dataset registry and dataset summaries."""

import numpy as np
import pytest

from sgg_jax.data import datasets, summary
from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraph, Vocab


def test_synthetic_splits_share_train_counts():
    train, vocab = datasets.load("synthetic", "train", synthetic_images=50, seed=1)
    test, test_vocab = datasets.load("synthetic", "test", synthetic_images=50, seed=1)
    assert (len(train), len(test)) == (35, 10)
    assert test_vocab == vocab
    counted = vocab.with_counts_from(train)
    np.testing.assert_array_equal(counted.predicate_counts, vocab.predicate_counts)


def test_unknown_dataset_split_and_missing_paths():
    with pytest.raises(ConfigError, match="option 'dataset'"):
        datasets.load("coco", "train")
    with pytest.raises(ConfigError, match="option 'split'"):
        datasets.load("gqa200_mini", "dev")
    with pytest.raises(ConfigError, match="option 'vg150_h5'"):
        datasets.load("vg150", "train", paths={"dicts": "x"})


def test_summary_counts_and_tables():
    vocab = Vocab(("__background__", "a", "b"), ("__background__", "on", "has", "near"))
    graphs = [
        SceneGraph("1", 10, 10, np.zeros((3, 4)), [1, 2, 1], [[0, 1, 1], [1, 2, 1], [2, 0, 3]]),
        SceneGraph("2", 10, 10, np.zeros((1, 4)), [2], []),
    ]
    split = summary.summarize_split("test", graphs, vocab)
    assert (split.images, split.boxes, split.relations) == (2, 4, 3)
    assert (split.max_objects, split.images_without_relations) == (3, 1)
    np.testing.assert_array_equal(split.predicate_counts, [0, 2, 0, 1])
    assert summary.format_splits([split], with_report=False) == [
        "split  images  boxes  relations",
        "test        2      4          3",
        "total       2      4          3",
    ]
    lines = summary.format_predicate_histogram([split], vocab.predicate_names)
    assert lines[0] == "predicates: 3, 2 occur; all by total count"
    assert lines[2].split() == ["1", "on", "2", "2", "66.67%"]
    assert lines[4].split() == ["3", "has", "0", "0", "0.00%"]
