"""Tests of the input pipeline: determinism, coverage, sharding, pair sampling, padding, masks."""

import itertools
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.data import pipeline
from sgg_jax.data.pipeline import PipelineConfig, make_loader, masked_mean, sample_pairs
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph

NUM_PREDICATES = 5


def random_graph(rng: np.random.Generator, image_id: str, num_objects: int, num_relations: int):
    corners = rng.uniform(0, 60, size=(num_objects, 2))
    sizes = rng.uniform(1, 30, size=(num_objects, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    relations = np.stack(
        [
            rng.integers(0, num_objects, num_relations),
            rng.integers(0, num_objects, num_relations),
            rng.integers(1, NUM_PREDICATES + 1, num_relations),
        ],
        axis=1,
    ).reshape(-1, 3)
    return SceneGraph(
        image_id=image_id,
        width=int(rng.integers(90, 120)),
        height=int(rng.integers(70, 89)),
        boxes=boxes,
        labels=rng.integers(1, 8, num_objects),
        relations=relations,
    )


def random_graphs(count: int, seed: int = 0, max_objects: int = 6):
    rng = np.random.default_rng(seed)
    return [
        random_graph(rng, f"img{i}", int(rng.integers(2, max_objects + 1)), int(rng.integers(0, 6)))
        for i in range(count)
    ]


def hand_graph() -> SceneGraph:
    """3 objects; pair (0, 1) has predicates 2 and 5, pair (2, 0) has 3; plus a self relation."""
    return SceneGraph(
        image_id="hand",
        width=40,
        height=30,
        boxes=[[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]],
        labels=[1, 2, 3],
        relations=[[0, 1, 2], [0, 1, 5], [2, 0, 3], [1, 1, 4]],
    )


def config(**options) -> PipelineConfig:
    defaults = dict(
        batch_size=3,
        max_objects=6,
        max_pairs=16,
        max_fg=4,
        seed=0,
        num_epochs=2,
        shard_index=0,
        shard_count=1,
        read_threads=0,
    )
    defaults.update(options)
    return PipelineConfig(**defaults)


def batch_fields(batch):
    return {
        name: np.asarray(value)
        for name, value in vars(batch).items()
        if value is not None and not name.startswith("_")
    }


def assert_batches_equal(first, second):
    assert len(first) == len(second)
    for batch_a, batch_b in zip(first, second, strict=True):
        fields_a, fields_b = batch_fields(batch_a), batch_fields(batch_b)
        assert fields_a.keys() == fields_b.keys()
        for name in fields_a:
            np.testing.assert_array_equal(fields_a[name], fields_b[name], err_msg=name)


def image_indices_per_epoch(loader):
    per_epoch = []
    batches = list(loader)
    for epoch in range(loader.config.num_epochs):
        chunk = batches[
            epoch * loader.num_batches_per_epoch : (epoch + 1) * loader.num_batches_per_epoch
        ]
        indices = np.concatenate([np.asarray(b.image_index) for b in chunk])
        masks = np.concatenate([np.asarray(b.graph_mask) for b in chunk])
        np.testing.assert_array_equal(masks, indices >= 0)
        per_epoch.append(indices)
    return per_epoch


# ------------------------------------------------------------------------------------------------
# Determinism, coverage, sharding
# ------------------------------------------------------------------------------------------------


def test_same_seed_same_batches_and_different_seed_differs():
    graphs = random_graphs(10)
    run_a = list(make_loader(graphs, config(seed=7, read_threads=2)))
    run_b = list(make_loader(graphs, config(seed=7)))
    assert_batches_equal(run_a, run_b)
    run_c = list(make_loader(graphs, config(seed=8)))
    order_a = np.concatenate([b.image_index for b in run_a])
    order_c = np.concatenate([b.image_index for b in run_c])
    assert not np.array_equal(order_a, order_c)


def test_epochs_are_reshuffled():
    loader = make_loader(random_graphs(12), config(batch_size=4, num_epochs=3))
    epochs = image_indices_per_epoch(loader)
    for indices in epochs:
        np.testing.assert_array_equal(np.sort(indices), np.arange(12))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_image_once_per_epoch_with_padded_final_batch(shuffle):
    graphs = random_graphs(10)
    loader = make_loader(graphs, config(batch_size=4, shuffle=shuffle, drop_remainder=False))
    assert loader.num_batches_per_epoch == 3
    for indices in image_indices_per_epoch(loader):
        real = indices[indices >= 0]
        np.testing.assert_array_equal(np.sort(real), np.arange(10))
        assert np.count_nonzero(indices == -1) == 2
        if not shuffle:
            np.testing.assert_array_equal(indices, [*range(10), -1, -1])


def test_drop_remainder_gives_full_batches_of_distinct_images():
    loader = make_loader(random_graphs(10), config(batch_size=4, drop_remainder=True))
    assert loader.num_batches_per_epoch == 2
    for indices in image_indices_per_epoch(loader):
        assert indices.shape == (8,)
        assert len(set(indices.tolist())) == 8 and indices.min() >= 0


def test_evaluation_covers_source_in_order():
    graphs = random_graphs(7)
    loader = make_loader(graphs, PipelineConfig.evaluation(3, 6, 30, shard_count=1, read_threads=0))
    batches = list(loader)
    indices = np.concatenate([b.image_index for b in batches])
    np.testing.assert_array_equal(indices, [0, 1, 2, 3, 4, 5, 6, -1, -1])
    np.testing.assert_array_equal(batches[-1].graph_mask, [True, False, False])
    for batch in batches:
        for row, index in enumerate(batch.image_index):
            if index < 0:
                assert not batch.object_mask[row].any() and not batch.pair_mask[row].any()
                continue
            graph = graphs[index]
            np.testing.assert_array_equal(batch.image_size[row], [graph.height, graph.width])
            np.testing.assert_array_equal(batch.boxes[row, : graph.num_objects], graph.boxes)
            assert batch.pair_mask[row].sum() == graph.num_objects * (graph.num_objects - 1)


@pytest.mark.parametrize("train", [True, False])
def test_two_shards_partition_the_images_and_form_the_global_batch(train):
    graphs = random_graphs(11)
    options = dict(train=train, shuffle=train, drop_remainder=train, batch_size=2)
    shards = [
        list(make_loader(graphs, config(shard_index=k, shard_count=2, **options))) for k in range(2)
    ]
    single = list(make_loader(graphs, config(**{**options, "batch_size": 4})))
    assert len(shards[0]) == len(shards[1]) == len(single)
    per_epoch = len(single) // 2
    for epoch in range(2):
        seen = [
            np.concatenate(
                [b.image_index for b in shard[epoch * per_epoch : (epoch + 1) * per_epoch]]
            )
            for shard in shards
        ]
        real = [s[s >= 0] for s in seen]
        assert not set(real[0]) & set(real[1])
        expected = 8 if train else 11  # drop_remainder in training: 2 global batches of 4
        assert len(real[0]) + len(real[1]) == expected
    # Concatenating the processes' batches in process order gives the single-process global batch.
    for step, global_batch in enumerate(single):
        merged = [batch_fields(shards[0][step]), batch_fields(shards[1][step])]
        for name, value in batch_fields(global_batch).items():
            np.testing.assert_array_equal(
                np.concatenate([merged[0][name], merged[1][name]]), value, err_msg=name
            )


def test_pairs_of_an_image_do_not_depend_on_batch_composition():
    graphs = random_graphs(12)

    def pairs_by_image(batch_size):
        result = {}
        loader = make_loader(graphs, config(batch_size=batch_size, num_epochs=1, max_pairs=10))
        for batch in loader:
            for row, index in enumerate(batch.image_index):
                result[int(index)] = (batch.pairs[row].copy(), batch.pair_labels[row].copy())
        return result

    by_two, by_three = pairs_by_image(2), pairs_by_image(3)
    assert by_two.keys() == by_three.keys() == set(range(12))
    for index in by_two:
        np.testing.assert_array_equal(by_two[index][0], by_three[index][0])
        np.testing.assert_array_equal(by_two[index][1], by_three[index][1])


def test_iter_from_resumes_and_repeat_forever():
    graphs = random_graphs(5)
    loader = make_loader(graphs, config(batch_size=2, num_epochs=None))
    assert loader.num_batches is None
    first_seven = list(itertools.islice(iter(loader), 7))
    resumed = list(itertools.islice(loader.iter_from(4), 3))
    assert_batches_equal(first_seven[4:], resumed)
    np.testing.assert_array_equal(loader.dataset[6].image_index, first_seven[6].image_index)


def test_decode_is_applied_to_records():
    graphs = random_graphs(4)
    records = [
        {
            "id": g.image_id,
            "w": g.width,
            "h": g.height,
            "b": g.boxes,
            "l": g.labels,
            "r": g.relations,
        }
        for g in graphs
    ]

    def decode(record):
        return SceneGraph(
            record["id"], record["w"], record["h"], record["b"], record["l"], record["r"]
        )

    eval_config = PipelineConfig.evaluation(2, 6, 30, shard_count=1, read_threads=0)
    assert_batches_equal(
        list(make_loader(records, eval_config, decode=decode)),
        list(make_loader(graphs, eval_config)),
    )
    with pytest.raises(DataError, match="expected SceneGraph"):
        list(make_loader(records, eval_config))


# ------------------------------------------------------------------------------------------------
# Pair sampling
# ------------------------------------------------------------------------------------------------


def test_evaluation_pairs_are_all_ordered_pairs_with_first_annotated_label():
    sampled = sample_pairs(hand_graph(), train=False, max_pairs=10, num_predicates=NUM_PREDICATES)
    np.testing.assert_array_equal(sampled.pairs, [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]])
    np.testing.assert_array_equal(sampled.labels, [2, 0, 0, 0, 3, 0])
    assert sampled.num_truncated_pairs == 0 and sampled.num_foreground == 2
    expected = np.zeros((6, NUM_PREDICATES + 1), np.float32)
    expected[[1, 2, 3, 5], 0] = 1.0
    expected[0, [2, 5]] = 0.5
    expected[4, 3] = 1.0
    np.testing.assert_allclose(sampled.soft_targets, expected)


def test_evaluation_pairs_truncated_to_budget_are_counted():
    graph = random_graph(np.random.default_rng(3), "big", 5, 4)
    sampled = sample_pairs(graph, train=False, max_pairs=7)
    all_pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    np.testing.assert_array_equal(sampled.pairs, all_pairs[:7])
    assert sampled.num_truncated_pairs == 20 - 7


@pytest.mark.parametrize("seed", range(6))
def test_training_sampling_follows_gtbox_relsample(seed):
    rng = np.random.default_rng(seed)
    graph = random_graph(rng, "g", int(rng.integers(3, 8)), int(rng.integers(0, 15)))
    max_fg, max_pairs = 3, 12
    sampled = sample_pairs(graph, train=True, max_pairs=max_pairs, max_fg=max_fg, rng=rng)
    annotated = {}
    for subject, obj, predicate in graph.relations.tolist():
        if subject != obj:
            annotated.setdefault((subject, obj), set()).add(predicate)
    pairs = [tuple(p) for p in sampled.pairs.tolist()]
    num_fg = sampled.num_foreground
    assert num_fg == min(len(annotated), max_fg)
    assert len(set(pairs)) == len(pairs) <= max_pairs
    assert all(i != j for i, j in pairs)
    for pair, label in zip(pairs[:num_fg], sampled.labels[:num_fg].tolist(), strict=True):
        assert label in annotated[pair]
    for pair, label in zip(pairs[num_fg:], sampled.labels[num_fg:].tolist(), strict=True):
        assert pair not in annotated and label == 0
    num_objects = graph.num_objects
    available_bg = num_objects * (num_objects - 1) - len(annotated)
    assert len(pairs) - num_fg == min(max_pairs - num_fg, available_bg)
    assert sampled.num_truncated_pairs == 0


def test_training_label_of_a_multi_predicate_pair_is_drawn_at_random():
    graph = hand_graph()
    labels_of_pair_01 = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sampled = sample_pairs(graph, train=True, max_pairs=6, max_fg=6, rng=rng)
        row = [tuple(p) for p in sampled.pairs.tolist()].index((0, 1))
        labels_of_pair_01.add(int(sampled.labels[row]))
    assert labels_of_pair_01 == {2, 5}


def test_soft_targets_are_predicate_histograms_of_duplicates():
    graph = SceneGraph(
        image_id="dup",
        width=10,
        height=10,
        boxes=np.tile([[0, 0, 5, 5]], (3, 1)),
        labels=[1, 1, 2],
        relations=[[1, 2, 1], [1, 2, 1], [1, 2, 3], [0, 2, 4]],
    )
    cfg = config(
        batch_size=1,
        max_objects=3,
        max_pairs=6,
        max_fg=2,
        dedup_relations=False,
        multi_label_targets=True,
        num_predicates=NUM_PREDICATES,
    )
    example = pipeline.prepare_example(graph, image_index=0, epoch=0, config=cfg)
    targets, pairs, mask = example["soft_targets"], example["pairs"], example["pair_mask"]
    np.testing.assert_allclose(targets[mask].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(targets[~mask], 0.0)
    rows = {tuple(p): t for p, t, m in zip(pairs.tolist(), targets, mask, strict=True) if m}
    np.testing.assert_allclose(rows[(1, 2)], [0, 2 / 3, 0, 1 / 3, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(rows[(0, 2)], [0, 0, 0, 0, 1, 0])
    for pair in set(rows) - {(1, 2), (0, 2)}:
        np.testing.assert_array_equal(rows[pair], [1, 0, 0, 0, 0, 0])
    label_of_12 = example["pair_labels"][[tuple(p) for p in pairs.tolist()].index((1, 2))]
    assert label_of_12 in (1, 3)


def test_dedup_keeps_one_predicate_per_pair_in_training():
    graph = hand_graph()
    cfg = config(batch_size=1, max_objects=3, max_pairs=6, max_fg=6, dedup_relations=True)
    for epoch in range(5):
        example = pipeline.prepare_example(graph, image_index=0, epoch=epoch, config=cfg)
        pairs = [tuple(p) for p in example["pairs"][example["pair_mask"]].tolist()]
        assert sorted(pairs) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
        labels = dict(zip(pairs, example["pair_labels"].tolist(), strict=False))
        assert labels[(0, 1)] in (2, 5) and labels[(2, 0)] == 3


# ------------------------------------------------------------------------------------------------
# Truncation and padding
# ------------------------------------------------------------------------------------------------


def test_truncation_of_objects_and_pairs_is_counted_and_logged(caplog, monkeypatch):
    monkeypatch.setattr(pipeline, "_WARNED", set())
    graph = SceneGraph(
        image_id="crowded",
        width=50,
        height=40,
        boxes=np.arange(28, dtype=np.float32).reshape(7, 4),
        labels=[1, 2, 3, 4, 5, 6, 7],
        relations=[[0, 1, 1], [1, 5, 2], [6, 2, 3], [3, 2, 4]],
    )
    cfg = PipelineConfig.evaluation(2, 4, 5, shard_count=1, read_threads=0)
    with caplog.at_level(logging.WARNING, logger=pipeline.__name__):
        batches = list(make_loader([graph, graph], cfg))
    assert len(batches) == 1
    batch = batches[0]
    np.testing.assert_array_equal(batch.num_truncated_objects, [3, 3])
    np.testing.assert_array_equal(batch.num_truncated_pairs, [12 - 5, 12 - 5])
    np.testing.assert_array_equal(batch.labels[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(batch.boxes[0], graph.boxes[:4])
    np.testing.assert_array_equal(batch.pairs[0], [[0, 1], [0, 2], [0, 3], [1, 0], [1, 2]])
    np.testing.assert_array_equal(batch.pair_labels[0], [1, 0, 0, 0, 0])
    assert batch.pair_mask.all()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("max_objects=4" in m for m in messages) == 1
    assert sum("max_pairs=5" in m for m in messages) == 1

    truncated, dropped = pipeline.truncate_objects(graph, 4)
    assert dropped == 3
    np.testing.assert_array_equal(truncated.relations, [[0, 1, 1], [3, 2, 4]])


def test_padding_values_and_dtypes():
    graph = hand_graph()
    cfg = PipelineConfig.evaluation(2, 5, 9, shard_count=1, read_threads=0)
    batch = next(iter(make_loader([graph], cfg)))
    assert batch.boxes.dtype == np.float32 and batch.boxes.shape == (2, 5, 4)
    for name in ("labels", "pairs", "pair_labels", "image_size", "image_index"):
        assert getattr(batch, name).dtype == np.int32, name
    assert batch.pair_mask.dtype == bool and batch.object_mask.dtype == bool
    np.testing.assert_array_equal(batch.object_mask[0], [True, True, True, False, False])
    np.testing.assert_array_equal(batch.boxes[0, 3:], 0.0)
    np.testing.assert_array_equal(batch.pair_mask[0], [True] * 6 + [False] * 3)
    np.testing.assert_array_equal(batch.pairs[0, 6:], 0)
    np.testing.assert_array_equal(batch.pair_labels[0], [2, 0, 0, 0, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.image_size[0], [30, 40])
    np.testing.assert_array_equal(batch.graph_mask, [True, False])
    np.testing.assert_array_equal(batch.image_index, [0, -1])
    assert batch.images is None and batch.soft_targets is None


def per_pair_quantity(batch):
    """A per-pair value built from the batch: subject box width * label + object class."""
    boxes, labels = jnp.asarray(batch.boxes), jnp.asarray(batch.labels)
    subjects = jnp.asarray(batch.pairs[..., 0])
    subject_x1 = jnp.take_along_axis(boxes[..., 0], subjects, axis=1)
    subject_width = jnp.take_along_axis(boxes[..., 2], subjects, axis=1) - subject_x1
    object_class = jnp.take_along_axis(labels, batch.pairs[..., 1], axis=1)
    return subject_width * (batch.pair_labels + 1) + object_class


def test_padding_never_changes_a_masked_mean():
    graphs = random_graphs(5, seed=4, max_objects=5)
    means = []
    for batch_size, max_pairs in ((5, 20), (4, 20), (8, 64)):
        cfg = PipelineConfig.evaluation(batch_size, 6, max_pairs, shard_count=1, read_threads=0)
        batches = list(make_loader(graphs, cfg))
        values = jnp.concatenate([per_pair_quantity(b) for b in batches])
        mask = np.concatenate([b.pair_mask & b.graph_mask[:, None] for b in batches])
        assert mask.sum() == sum(g.num_objects * (g.num_objects - 1) for g in graphs)
        assert (~mask).any()
        mean = float(masked_mean(values, mask))
        for garbage in (1e9, -1e9, np.inf, np.nan):
            poisoned = jnp.where(mask, values, garbage)
            assert float(masked_mean(poisoned, mask)) == mean
        means.append(mean)
    expected = np.mean(
        np.concatenate(
            [
                np.asarray(per_pair_quantity(b))[b.pair_mask]
                for b in make_loader(
                    graphs, PipelineConfig.evaluation(1, 6, 20, shard_count=1, read_threads=0)
                )
            ]
        )
    )
    np.testing.assert_allclose(means, expected, rtol=1e-6)


def test_masked_mean_values():
    values = jnp.array([[1.0, 2.0, 9.0], [4.0, 7.0, 7.0]])
    mask = jnp.array([[True, True, False], [False, False, False]])
    assert float(masked_mean(values, mask)) == 1.5
    np.testing.assert_allclose(masked_mean(values, mask, axis=1), [1.5, 0.0])
    np.testing.assert_allclose(masked_mean(values, mask[:, :1], axis=0), [1.0, 2.0, 9.0])
    assert float(masked_mean(jnp.array([3, 4]), jnp.array([True, True]))) == 3.5


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, option",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(max_objects=-1), "max_objects"),
        (dict(max_pairs=0, max_fg=1), "max_pairs"),
        (dict(max_fg=0), "max_fg"),
        (dict(max_fg=17), "max_fg"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(seed=-1), "seed"),
        (dict(multi_label_targets=True, dedup_relations=False), "num_predicates"),
        (dict(multi_label_targets=True, num_predicates=5), "dedup_relations"),
        (dict(shard_index=2, shard_count=2), "shard_index"),
        (dict(shard_count=0), "shard_count"),
        (dict(read_threads=-1), "read_threads"),
    ],
)
def test_bad_budgets_raise_config_error(options, option):
    with pytest.raises(ConfigError, match=f"option '{option}'") as caught:
        config(**options)
    assert caught.value.option == option


def test_evaluation_config_ignores_the_training_foreground_budget():
    cfg = PipelineConfig.evaluation(2, 4, 8)
    assert cfg.max_fg > cfg.max_pairs and not cfg.train


def test_loader_errors():
    with pytest.raises(ConfigError, match="option 'batch_size'"):
        make_loader(random_graphs(3), config(batch_size=4, drop_remainder=True))
    with pytest.raises(DataError, match="empty"):
        make_loader([], config())
    bad_index = hand_graph().replace(relations=[[0, 3, 1]])
    with pytest.raises(DataError, match="image hand: field 'relations'"):
        pipeline.prepare_example(bad_index, image_index=0, epoch=0, config=config())
    bad_predicate = hand_graph().replace(relations=[[0, 1, 6]])
    cfg = config(num_predicates=NUM_PREDICATES)
    with pytest.raises(DataError, match="predicate 6 outside 1..5"):
        pipeline.prepare_example(bad_predicate, image_index=0, epoch=0, config=cfg)
