"""The memory bank (entries, ids, batched key building) and the RA-SGG batch transform."""

import numpy as np
import pytest

from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.ra_sgg.memory_bank import MemoryBank, enumerate_relations
from sgg_jax.projects.ra_sgg.ra_sgg import RASGGConfig, RetrievalAugmenter, tail_predicates
from sgg_jax.structures import SceneGraph

NUM_PREDICATES = 6


def graph(image_id, labels, relations):
    labels = np.asarray(labels, np.int32)
    boxes = np.array([[i, i, i + 10, i + 10] for i in range(len(labels))], np.float32)
    return SceneGraph(image_id, 100, 100, boxes, labels, np.asarray(relations, np.int32))


def test_enumerate_relations_follows_the_pipeline_view():
    graphs = [
        # a duplicate triplet, a self-relation, a relation touching object 3 (truncated at 3)
        graph("a", [1, 2, 3, 4], [[0, 1, 2], [0, 1, 2], [1, 1, 3], [2, 3, 4], [1, 0, 5]]),
        graph("b", [5], np.zeros((0, 3))),
        graph("c", [2, 2, 1], [[2, 0, 1], [0, 2, 6]]),
    ]
    entries = enumerate_relations(graphs, max_objects=3)
    assert entries.size == 4
    np.testing.assert_array_equal(entries.image_index, [0, 0, 2, 2])
    np.testing.assert_array_equal(entries.subject, [0, 1, 2, 0])
    np.testing.assert_array_equal(entries.object, [1, 0, 0, 2])
    np.testing.assert_array_equal(entries.predicate, [2, 5, 1, 6])
    np.testing.assert_array_equal(entries.triplets, [[1, 2, 2], [2, 1, 5], [1, 2, 1], [2, 1, 6]])


def pair_embedding(batch):
    """A deterministic function of the batch: (image_index, subject, object, subject class)."""
    pairs = np.asarray(batch.pairs)
    rows = np.arange(pairs.shape[0])[:, None]
    return np.stack(
        [
            np.broadcast_to(np.asarray(batch.image_index)[:, None], pairs.shape[:2]),
            pairs[..., 0],
            pairs[..., 1],
            np.asarray(batch.labels)[rows, pairs[..., 0]],
        ],
        axis=-1,
    ).astype(np.float32)


def random_graphs(num_images, seed=0, max_objects=7):
    rng = np.random.default_rng(seed)
    graphs = []
    for index in range(num_images):
        num_objects = int(rng.integers(2, max_objects + 1))
        labels = rng.integers(1, 9, num_objects)
        relations = []
        for _ in range(int(rng.integers(0, 12))):
            s, o = rng.choice(num_objects, 2, replace=False)
            relations.append([s, o, rng.integers(1, NUM_PREDICATES + 1)])
        graphs.append(graph(f"img{index}", labels, np.reshape(relations, (-1, 3))))
    return graphs


@pytest.mark.parametrize("pair_budget, batch_size", [(3, 2), (64, 4)])
def test_every_key_is_the_embedding_of_its_own_pair(pair_budget, batch_size):
    graphs = random_graphs(23)
    bank = MemoryBank(
        graphs,
        max_objects=5,
        num_predicates=NUM_PREDICATES,
        backend="exact",
        batch_size=batch_size,
        pair_budget=pair_budget,
    )
    stats = bank.refresh(pair_embedding)
    assert stats["bank/size"] == bank.size > 50
    entries = bank.entries
    labels = [
        graphs[i].labels[s] for i, s in zip(entries.image_index, entries.subject, strict=True)
    ]
    expected = np.stack([entries.image_index, entries.subject, entries.object, labels], axis=1)
    np.testing.assert_array_equal(bank.keys, expected.astype(np.float32))
    # entry_ids inverts the entries; unknown relations give -1.
    ids = bank.entry_ids(entries.image_index, entries.subject, entries.object, entries.predicate)
    np.testing.assert_array_equal(ids, np.arange(bank.size))
    missing = bank.entry_ids([0, 22, 999], [0, 0, 0], [0, 1, 1], [1, 7, 1])
    np.testing.assert_array_equal(missing[[0, 2]], [-1, -1])
    np.testing.assert_array_equal(bank.predicates_of([[0, -1]]), [[entries.predicate[0], -1]])


def test_search_excludes_the_query_itself():
    graphs = random_graphs(12, seed=3)
    bank = MemoryBank(graphs, max_objects=7, num_predicates=NUM_PREDICATES, backend="exact")
    rng = np.random.default_rng(0)
    bank.refresh(lambda b: rng.normal(size=(*np.shape(b.pairs)[:2], 8)).astype(np.float32))
    ids, scores = bank.search(bank.keys, 3, np.arange(bank.size))
    assert not np.any(ids == np.arange(bank.size)[:, None])
    plain, _ = bank.search(bank.keys, 1)
    # without exclusion the best match is itself, or the lower id of the same pair under another
    # predicate (one pair, one embedding)
    np.testing.assert_array_equal(bank.keys[plain[:, 0]], bank.keys)
    assert np.all(plain[:, 0] <= np.arange(bank.size))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_bank_bad_inputs():
    with pytest.raises(DataError, match="no relation"):
        MemoryBank([graph("x", [1, 2], np.zeros((0, 3)))], max_objects=4, num_predicates=3)
    with pytest.raises(DataError, match="img0.*relations"):
        MemoryBank([graph("img0", [1, 2], [[0, 1, 9]])], max_objects=4, num_predicates=3)
    with pytest.raises(ConfigError, match="'backend'"):
        MemoryBank(random_graphs(3), max_objects=4, num_predicates=6, backend="faiss")
    with pytest.raises(ConfigError, match="'pair_budget'"):
        MemoryBank(random_graphs(3), max_objects=4, num_predicates=6, pair_budget=0)
    bank = MemoryBank(random_graphs(3), max_objects=4, num_predicates=6)
    with pytest.raises(ConfigError, match="refresh"):
        bank.search(np.zeros((1, 4), np.float32), 2)
    with pytest.raises(FloatingPointError, match="non-finite"):
        bank.refresh(lambda b: np.full((*np.shape(b.pairs)[:2], 4), np.nan, np.float32))


def test_tail_predicates_are_the_rarest():
    np.testing.assert_array_equal(tail_predicates([0, 50, 3, 9, 3, 100, 1], 1 / 3), [2, 6])
    np.testing.assert_array_equal(tail_predicates([0, 5, 5, 5], 0.5), [1, 2])
    np.testing.assert_array_equal(tail_predicates([0, 5, 1], 1.0), [1, 2])


def test_tail_predicates_are_the_rarest_of_those_seen_in_training():
    # 2 and 4 never occur: no bank entry can carry them, so the rarest third of the 4 seen ones.
    np.testing.assert_array_equal(tail_predicates([0, 50, 0, 9, 0, 100, 1], 1 / 3), [3, 6])
    np.testing.assert_array_equal(tail_predicates([0, 0, 0], 0.5), np.zeros(0, np.int64))


# ----------------------------------------------------------------------------------------------
# The batch transform on a hand-built bank
# ----------------------------------------------------------------------------------------------

# Class pair (1, 2) carries predicates 1 ("on", head) and 4 ("lying on", tail) on different images;
# class pair (3, 3) only predicate 2. Embeddings are one-hot in the class pair (plus a small
# component shared by the pairs of the "lying on" image), so the neighbours of a relation are the
# other relations of its class pair.
COUNTS = np.array([0, 60, 30, 20, 5, 1, 1])


def class_pair_embedding(variables, batch):
    pairs = np.asarray(batch.pairs)
    rows = np.arange(pairs.shape[0])[:, None]
    labels = np.asarray(batch.labels)
    subject, obj = labels[rows, pairs[..., 0]], labels[rows, pairs[..., 1]]
    code = np.where((subject == 1) & (obj == 2), 0, np.where(subject == 3, 1, 2))
    vectors = np.eye(4, dtype=np.float32)[code]
    # (1, 2) pairs of the "lying on" image lean slightly toward each other
    vectors[..., 3] = 0.1 * (np.asarray(batch.image_index) == 6)[:, None] * (code == 0)
    return vectors * variables["scale"]


def hand_graphs():
    graphs = []
    for index in range(6):  # "on" six times, "lying on" once
        graphs.append(graph(f"on{index}", [1, 2, 3, 3], [[0, 1, 1], [2, 3, 2]]))
    # its background pair (0, 2) has the class pair (1, 2) too
    graphs.append(graph("lying", [1, 2, 2], [[0, 1, 4]]))
    return graphs


def train_batch(graphs, indices, max_fg=4):
    config = pipeline.PipelineConfig(
        batch_size=len(indices), max_objects=4, max_pairs=8, max_fg=max_fg, train=True
    )
    examples = [
        pipeline.prepare_example(graphs[i], image_index=i, epoch=0, config=config) for i in indices
    ]
    return pipeline.collate(examples)


def make_augmenter(graphs, **options):
    bank = MemoryBank(graphs, max_objects=4, num_predicates=NUM_PREDICATES, backend="exact")
    config = RASGGConfig(num_neighbours=6, seed=0, **options)
    return RetrievalAugmenter(bank, class_pair_embedding, COUNTS, config, foreground_slots=4), bank


def test_augmenter_writes_the_expected_soft_targets():
    graphs = hand_graphs()
    augmenter, bank = make_augmenter(graphs, tau=0.5, lambda_mode="fixed", lambda_value=0.7)
    batch = train_batch(graphs, [0, 6])
    out, metrics = augmenter({"scale": 1.0}, 1, batch)
    assert metrics["bank/size"] == bank.size == 13
    targets = np.asarray(out.soft_targets)
    labels, mask = np.asarray(batch.pair_labels), np.asarray(batch.pair_mask)
    for row in range(2):
        for slot in range(8):
            expected = np.zeros(NUM_PREDICATES + 1, np.float32)
            label = labels[row, slot]
            if not mask[row, slot]:
                pass
            elif label == 0:
                expected[0] = 1
            elif label == 1:
                # neighbours of image 0's "on": 5 other "on" (self excluded) + 1 "lying on":
                # d = ||onehot(1) - (5/6, 0, 0, 1/6)|| = sqrt(2)/6 = 0.236 < 0.5: not selected.
                expected[1] = 1
            elif label == 2:
                expected[2] = 1  # only "2" among its neighbours
            elif label == 4:
                # "lying on": 6 neighbours, all "on": d = sqrt(2) >= 0.5; the only other
                # predicate retrieved is 1, so aug = 1 with certainty.
                expected[4], expected[1] = 0.7, 0.3
            np.testing.assert_allclose(targets[row, slot], expected, err_msg=f"{row}, {slot}")
    assert metrics["ra/selected_fraction"] == pytest.approx(1 / 3)
    assert metrics["ra/augmented_fraction"] == pytest.approx(1 / 3)
    # Everything else of the batch is untouched.
    np.testing.assert_array_equal(out.pair_labels, batch.pair_labels)
    np.testing.assert_array_equal(out.pairs, batch.pairs)


def test_augmenter_without_selection_and_refresh_schedule():
    graphs = hand_graphs()
    augmenter, bank = make_augmenter(
        graphs, select=False, lambda_mode="fixed", lambda_value=0.6, bank_refresh_steps=2
    )
    batch = train_batch(graphs, [0, 6])
    out, metrics = augmenter({"scale": 1.0}, 1, batch)
    targets, labels = np.asarray(out.soft_targets), np.asarray(batch.pair_labels)
    on = np.argwhere(labels == 1)[0]
    # without selection "on" is augmented toward its only other retrieved predicate, 4
    np.testing.assert_allclose(targets[on[0], on[1], [1, 4]], [0.6, 0.4], rtol=1e-6)
    assert metrics["ra/selected_fraction"] == 1.0
    # refreshed at step 1 (the first call), not at 2, again at 3 (every 2 updates), with the
    # variables of that call
    _, metrics2 = augmenter({"scale": 2.0}, 2, batch)
    assert "bank/size" not in metrics2 and np.max(bank.keys) == 1.0
    _, metrics3 = augmenter({"scale": 3.0}, 3, batch)
    assert "bank/size" in metrics3 and np.max(bank.keys) == 3.0


def test_augmenter_is_deterministic_per_step_and_draws_lambda():
    graphs = hand_graphs()
    augmenter, _ = make_augmenter(graphs, select=False)
    batch = train_batch(graphs, [6, 1])
    first, _ = augmenter({"scale": 1.0}, 5, batch)
    again, _ = augmenter({"scale": 1.0}, 5, batch)
    other, _ = augmenter({"scale": 1.0}, 6, batch)
    np.testing.assert_array_equal(first.soft_targets, again.soft_targets)
    lying = np.argwhere(np.asarray(batch.pair_labels) == 4)[0]
    lam = first.soft_targets[lying[0], lying[1], 4]
    assert 0.3 < lam < 1.0 and lam != other.soft_targets[lying[0], lying[1], 4]
    np.testing.assert_allclose(first.soft_targets.sum(-1), batch.pair_mask, rtol=1e-6)


def test_augmenter_relabels_background_toward_tail_predicates():
    graphs = hand_graphs()
    augmenter, _ = make_augmenter(
        graphs, relabel_background=True, lambda_mode="fixed", lambda_value=0.75, tail_fraction=0.5
    )
    # the tail (rarest half of 6 predicates): 4, 5, 6
    np.testing.assert_array_equal(augmenter.tail, [4, 5, 6])
    batch = train_batch(graphs, [0, 6])
    out, metrics = augmenter({"scale": 1.0}, 1, batch)
    targets = np.asarray(out.soft_targets)
    labels, mask = np.asarray(batch.pair_labels), np.asarray(batch.pair_mask)
    # background pairs of class pair (1, 2) retrieve "lying on" (tail): one per image relabelled
    relabelled = (targets[..., 0] > 0) & (targets[..., 0] < 1)
    # only the "lying on" image (row 1) has a background pair whose neighbours hold a tail predicate
    assert metrics["ra/background_relabelled"] == relabelled.sum() == 1
    ((row, slot),) = np.argwhere(relabelled)
    assert row == 1 and labels[row, slot] == 0 and mask[row, slot]
    assert tuple(np.asarray(batch.pairs)[row, slot]) == (0, 2)
    np.testing.assert_allclose(targets[row, slot, [0, 4]], [0.75, 0.25])


def test_augmenter_bad_inputs():
    graphs = hand_graphs()
    bank = MemoryBank(graphs, max_objects=4, num_predicates=NUM_PREDICATES, backend="exact")
    with pytest.raises(ConfigError, match="'predicate_counts'"):
        RetrievalAugmenter(bank, class_pair_embedding, COUNTS[:-1], RASGGConfig())
    for options, name in [
        ({"tau": -1.0}, "tau"),
        ({"num_neighbours": 0}, "num_neighbours"),
        ({"weighting": "softmax"}, "weighting"),
        ({"lambda_mode": "mixup"}, "lambda_mode"),
        ({"lambda_value": 1.5}, "lambda_value"),
        ({"tail_fraction": 0.0}, "tail_fraction"),
        ({"bank_refresh_steps": -1}, "bank_refresh_steps"),
    ]:
        with pytest.raises(ConfigError, match=f"'{name}'"):
            RASGGConfig(**options)
    # foreground beyond the declared slots would be silently skipped: refused instead
    augmenter, _ = make_augmenter(graphs)
    augmenter.foreground_slots = 0
    with pytest.raises(ConfigError, match="'max_fg'"):
        augmenter({"scale": 1.0}, 1, train_batch(graphs, [0, 6]))


def test_official_augmenter_queries_with_the_training_forward_and_drops_the_first_hit():
    graphs = hand_graphs()
    bank = MemoryBank(
        graphs, max_objects=4, num_predicates=NUM_PREDICATES, backend="exact", max_per_triplet=8
    )
    config = RASGGConfig(
        num_neighbours=6,
        seed=0,
        variant="official",
        bank="official",
        weighting="class_balanced",
        threshold=0.9,
        tail_ids=(4,),
        lambda_mode="fixed",
        lambda_value=0.7,
    )
    keys = []

    def train_embed(variables, batch, dropout_key):
        keys.append(dropout_key)
        return class_pair_embedding(variables, batch)

    augmenter = RetrievalAugmenter(
        bank, class_pair_embedding, COUNTS, config, foreground_slots=4, train_embed=train_embed
    )
    assert augmenter.wants_dropout_key
    batch = train_batch(graphs, [0, 6])
    with pytest.raises(ConfigError, match="option 'bank': the official bank must be built"):
        augmenter({"scale": 1.0}, 1, batch, dropout_key="key-1")
    bank.refresh(lambda b: class_pair_embedding({"scale": 1.0}, b))  # built once, by the caller
    out, metrics = augmenter({"scale": 1.0}, 1, batch, dropout_key="key-1")
    assert keys == ["key-1"] and "bank/size" not in metrics  # never refreshed
    targets, labels = np.asarray(out.soft_targets), np.asarray(batch.pair_labels)
    mask = np.asarray(batch.pair_mask)
    # Image 0's "on": K + 1 = 7 hits, the first (itself) dropped: 5 "on" + the "lying on" entry,
    # confidence 5/6 < 0.9 with a tail neighbour (4): changed, drawn from {1: 5 w_1, 4: 1 w_4}.
    # Image 0's "2": 5 of 6 agree, no tail neighbour: kept. Image 6's "lying on": its first hit
    # is itself (dropped), the other six are "on": no tail neighbour, kept. No background pair
    # has a tail neighbour.
    on_row = targets[0][labels[0] == 1][0]
    assert on_row[1] >= 0.7 and on_row[[0, 2, 3, 5, 6]].sum() == 0
    assert on_row[4] in (0.0, pytest.approx(0.3))
    for row, label in ((0, 2), (1, 4)):
        np.testing.assert_allclose(targets[row][labels[row] == label][0], np.eye(7)[label])
    background = mask & (labels == 0)
    np.testing.assert_array_equal(targets[background], np.tile(np.eye(7)[0], (background.sum(), 1)))
    assert np.all(targets[~mask] == 0)
    assert metrics["ra/selected_fraction"] == pytest.approx(1 / 3)
    assert metrics["ra/background_relabelled"] == 0.0
    with pytest.raises(ConfigError, match="option 'variant'"):
        RetrievalAugmenter(bank, class_pair_embedding, COUNTS, config)
