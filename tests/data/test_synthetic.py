"""Tests of the synthetic long-tailed scene graphs (sgg_jax/data/synthetic.py)."""

import collections

import numpy as np
import pytest

from sgg_jax.data import synthetic, vg150
from sgg_jax.errors import ConfigError

NUM_IMAGES = 2000


@pytest.fixture(scope="module")
def dataset() -> synthetic.SyntheticDataset:
    return synthetic.generate(synthetic.SyntheticConfig(num_images=NUM_IMAGES, seed=0))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their average rank (the Spearman convention)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.shape[0])
    ranks[order] = np.arange(values.shape[0])
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(first), _ranks(second))[0, 1])


def _relations_with_truth(dataset):
    """Yields (graph, subject_idx, object_idx, annotated, true, valid_row) for every relation."""
    for graph, true, valid in zip(
        dataset.graphs, dataset.true_predicates, dataset.valid_predicates, strict=True
    ):
        for (subject, object_, annotated), true_predicate, valid_row in zip(
            graph.relations, true, valid, strict=True
        ):
            yield graph, subject, object_, annotated, true_predicate, valid_row


def _group_ids(dataset, head_name: str) -> set[int]:
    head = dataset.vocab.predicate_names.index(head_name)
    return set(next(group for group in dataset.groups if group[0] == head))


def test_spearman_helper_handles_ties():
    assert _spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert _spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # Ranks [0.5, 0.5, 2] vs [0, 1, 2]: Pearson of the ranks = sqrt(3) / 2.
    assert _spearman(np.array([5.0, 5.0, 9.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(
        np.sqrt(3) / 2
    )


def test_vocabulary_is_vg150(dataset):
    vocab = dataset.vocab
    assert vocab.num_classes == 150 and vocab.num_predicates == 50
    assert vocab.object_names[1] == "airplane" and vocab.object_names[150] == "zebra"
    assert vocab.predicate_names[31] == "on" and vocab.predicate_names[50] == "with"
    reference = dataset.reference_vocab
    assert reference.predicate_counts[31] == 712409
    assert reference.object_counts[vocab.object_names.index("man")] == 54659
    assert dataset.vocab.object_names == reference.object_names


def test_same_seed_is_identical_and_other_seed_differs():
    config = synthetic.SyntheticConfig(num_images=20, seed=3)
    first, second = synthetic.generate(config), synthetic.generate(config)
    assert first.graphs == second.graphs
    for a, b in zip(first.true_predicates, second.true_predicates, strict=True):
        np.testing.assert_array_equal(a, b)
    other = synthetic.generate(synthetic.SyntheticConfig(num_images=20, seed=4))
    assert sum(a == b for a, b in zip(first.graphs, other.graphs, strict=True)) == 0
    assert [g.image_id for g in first.graphs[:2]] == ["synthetic-3-0000000", "synthetic-3-0000001"]


def test_images_do_not_depend_on_dataset_size(dataset):
    small = synthetic.generate(synthetic.SyntheticConfig(num_images=7, seed=0))
    assert small.graphs == dataset.graphs[:7]


def test_counts_and_ranges_follow_config(dataset):
    config = dataset.config
    relation_counts = []
    for graph in dataset.graphs:
        assert config.min_image_size <= graph.width <= config.max_image_size
        assert config.min_image_size <= graph.height <= config.max_image_size
        assert config.min_objects <= graph.num_objects <= config.max_objects
        assert config.min_relations <= graph.num_relations <= config.max_relations
        assert graph.num_relations <= graph.num_objects - 1
        relation_counts.append(graph.num_relations)
    assert set(relation_counts) == set(range(config.min_relations, config.max_relations + 1))
    annotated = np.zeros(51, np.int64)
    for graph in dataset.graphs:
        annotated += np.bincount(graph.relations[:, 2], minlength=51)
    np.testing.assert_array_equal(dataset.vocab.predicate_counts, annotated)
    assert dataset.vocab.predicate_counts.sum() == sum(relation_counts)


def test_boxes_inside_image_no_self_relations_no_repeated_pairs(dataset):
    for graph in dataset.graphs:
        boxes = graph.boxes
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= graph.width) and np.all(boxes[:, 3] <= graph.height)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all(graph.relations[:, 0] != graph.relations[:, 1])
        pairs = {tuple(pair) for pair in graph.relations[:, :2].tolist()}
        assert len(pairs) == graph.num_relations
    sides = np.concatenate(
        [
            np.minimum(g.boxes[:, 2] - g.boxes[:, 0], g.boxes[:, 3] - g.boxes[:, 1])
            for g in dataset.graphs
        ]
    )
    assert np.mean(sides < dataset.config.min_box_size) < 0.005


def test_groups_partition_the_predicates_with_the_most_frequent_head(dataset):
    members = [p for group in dataset.groups for p in group]
    assert sorted(members) == list(range(1, 51))
    names = dataset.vocab.predicate_names
    real = dataset.reference_vocab.predicate_counts
    for group in dataset.groups:
        assert real[group[0]] == max(real[p] for p in group)
    assert {names[p] for p in _group_ids(dataset, "on")} == set(synthetic.AMBIGUITY_GROUPS[0])
    assert names[dataset.head_of[names.index("parked on")]] == "on"
    assert names[dataset.head_of[names.index("looking at")]] == "watching"
    assert dataset.head_of[names.index("under")] == names.index("under")


def test_annotated_predicate_frequencies_follow_vg150(dataset):
    annotated = dataset.vocab.predicate_counts[1:].astype(np.float64)
    real = dataset.reference_vocab.predicate_counts[1:].astype(np.float64)
    assert _spearman(annotated, real) > 0.8
    true = dataset.true_predicate_counts()[1:].astype(np.float64)
    assert _spearman(true, real) > 0.9
    # The true predicates are drawn from the real frequencies: "on" is 712409 / 2315006 of VG150.
    assert true[30] / true.sum() == pytest.approx(real[30] / real.sum(), abs=0.03)


def test_annotator_bias_moves_tail_predicates_to_the_head(dataset):
    names = dataset.vocab.predicate_names
    true = dataset.true_predicate_counts()
    annotated = dataset.vocab.predicate_counts
    on = names.index("on")
    assert annotated[on] / annotated.sum() > true[on] / true.sum()
    for tail in ("sitting on", "standing on", "with", "wears"):
        index = names.index(tail)
        assert annotated[index] < 0.5 * true[index]
    under = names.index("under")  # a singleton: recorded exactly as drawn
    assert annotated[under] == true[under]
    # With bias 0.7, a relation whose true predicate is a group tail keeps it with probability 0.3.
    kept = [
        a == t for _, _, _, a, t, _ in _relations_with_truth(dataset) if dataset.head_of[t] != t
    ]
    assert np.mean(kept) == pytest.approx(0.3, abs=0.06)


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_annotator_bias_extremes(bias):
    data = synthetic.generate(synthetic.SyntheticConfig(num_images=60, annotator_bias=bias, seed=1))
    for graph, true in zip(data.graphs, data.true_predicates, strict=True):
        expected = true if bias == 0.0 else data.head_of[true]
        np.testing.assert_array_equal(graph.relations[:, 2], expected)


def test_annotated_and_true_predicates_lie_in_the_valid_group(dataset):
    groups = {p: set(group) for group in dataset.groups for p in group}
    ambiguous = 0
    for _, _, _, annotated, true, valid in _relations_with_truth(dataset):
        assert not valid[0]
        assert valid[annotated] and valid[true]
        assert set(np.flatnonzero(valid).tolist()) == groups[true]
        ambiguous += valid.sum() > 1
    total = dataset.vocab.predicate_counts.sum()
    assert 0.8 < ambiguous / total < 1.0  # head predicates of VG150 all belong to groups


def _geometry(dataset, head_name):
    """Subject / object boxes (float64[K, 4]) and object heights of relations of one group."""
    group = _group_ids(dataset, head_name)
    subjects, objects_ = [], []
    for graph, subject, object_, _, true, _ in _relations_with_truth(dataset):
        if true in group:
            subjects.append(graph.boxes[subject])
            objects_.append(graph.boxes[object_])
    assert len(subjects) > 20
    return np.array(subjects, np.float64), np.array(objects_, np.float64)


def test_on_group_subject_rests_on_top_of_object(dataset):
    subjects, objects_ = _geometry(dataset, "on")
    object_height = objects_[:, 3] - objects_[:, 1]
    tolerance = 1e-3 * dataset.config.max_image_size
    # The subject's bottom edge lies in the top 15% of the object; horizontally the subject is inside.
    depth = (subjects[:, 3] - objects_[:, 1]) / object_height
    assert np.all(depth >= -tolerance / object_height)
    assert np.all(depth <= 0.15 + tolerance / object_height)
    assert np.all(subjects[:, 0] >= objects_[:, 0] - tolerance)
    assert np.all(subjects[:, 2] <= objects_[:, 2] + tolerance)
    assert np.all(subjects[:, 1] < objects_[:, 1])  # the subject sticks out above


def test_has_and_wearing_put_the_object_inside_the_subject(dataset):
    tolerance = 1e-3 * dataset.config.max_image_size
    for head in ("has", "wearing"):
        subjects, objects_ = _geometry(dataset, head)
        assert np.all(objects_[:, :2] >= subjects[:, :2] - tolerance)
        assert np.all(objects_[:, 2:] <= subjects[:, 2:] + tolerance)
    subjects, objects_ = _geometry(dataset, "wearing")
    width_ratio = (objects_[:, 2] - objects_[:, 0]) / (subjects[:, 2] - subjects[:, 0])
    assert np.all((width_ratio > 0.55 - 1e-3) & (width_ratio < 0.95 + 1e-3))


def test_under_near_and_in_geometry(dataset):
    subjects, objects_ = _geometry(dataset, "under")
    object_height = objects_[:, 3] - objects_[:, 1]
    assert np.all((subjects[:, 1] + subjects[:, 3]) / 2 > (objects_[:, 1] + objects_[:, 3]) / 2)
    assert np.all(subjects[:, 3] >= objects_[:, 3] + 0.05 * object_height - 1e-2)

    subjects, objects_ = _geometry(dataset, "near")
    object_width = objects_[:, 2] - objects_[:, 0]
    gap = np.maximum(subjects[:, 0] - objects_[:, 2], objects_[:, 0] - subjects[:, 2])
    assert np.all(gap >= 0.05 * object_width - 1e-2)  # side by side, never overlapping in x
    bottom_offset = np.abs(subjects[:, 3] - objects_[:, 3]) / (objects_[:, 3] - objects_[:, 1])
    assert np.all(bottom_offset <= 0.15 + 1e-3)
    left = subjects[:, 2] <= objects_[:, 0]
    assert 0.3 < left.mean() < 0.7  # both sides occur

    subjects, objects_ = _geometry(dataset, "in")
    assert np.all(subjects[:, :2] >= objects_[:, :2] - 1e-2)
    assert np.all(subjects[:, 2:] <= objects_[:, 2:] + 1e-2)


def test_placements_are_shared_within_groups_and_exactly_invertible():
    names = vg150.load_bundled_vocab().predicate_names
    placements = synthetic.predicate_placements(names)
    assert placements[0] is None
    for group in synthetic.AMBIGUITY_GROUPS:
        assert len({id(placements[names.index(name)]) for name in group}) == 1
    heads = [group[0] for group in synthetic.AMBIGUITY_GROUPS]
    singles = [n for n in names[1:] if not any(n in group for group in synthetic.AMBIGUITY_GROUPS)]
    distinct = {placements[names.index(name)] for name in heads + singles}
    assert len(distinct) == len(heads) + len(singles)  # one placement per geometric situation
    rng = np.random.default_rng(0)
    reference = np.array([10.0, 20.0, 40.0, 30.0])
    for placement in placements[1:]:
        relative = placement.sample(rng)
        placed = synthetic._from_reference(reference, relative)
        np.testing.assert_allclose(synthetic._to_reference(placed, relative), reference, rtol=1e-12)


def test_triplets_carry_class_structure(dataset):
    train, _, test = synthetic.train_val_test(dataset, (0.7, 0.1, 0.2))
    counts = collections.defaultdict(collections.Counter)
    for graph, subject, object_, annotated, _, _ in _relations_with_truth(train):
        counts[graph.labels[subject], graph.labels[object_]][annotated] += 1
    hits, head_hits, total = 0, 0, 0
    on = dataset.vocab.predicate_names.index("on")
    for graph, subject, object_, annotated, _, _ in _relations_with_truth(test):
        seen = counts.get((graph.labels[subject], graph.labels[object_]))
        hits += seen is not None and seen.most_common(1)[0][0] == annotated
        head_hits += annotated == on
        total += 1
    # A frequency-bias baseline on (subject class, object class) beats always answering "on".
    assert hits / total > head_hits / total + 0.2


def test_frequency_power_zero_draws_predicates_uniformly():
    data = synthetic.generate(
        synthetic.SyntheticConfig(num_images=300, frequency_power=0.0, seed=2)
    )
    true = data.true_predicate_counts()[1:]
    expected = true.sum() / 50
    assert true.min() > 0.4 * expected and true.max() < 1.8 * expected
    real = data.reference_vocab.predicate_counts[1:].astype(np.float64)
    assert abs(_spearman(true.astype(np.float64), real)) < 0.4


def test_train_val_test_split(dataset):
    train, val, test = synthetic.train_val_test(dataset, (0.7, 0.1, 0.2))
    assert (len(train), len(val), len(test)) == (1400, 200, 400)
    ids = [g.image_id for split in (train, val, test) for g in split.graphs]
    assert ids == [g.image_id for g in dataset.graphs]
    expected = dataset.vocab.with_counts_from(dataset.graphs[:1400])
    for split in (train, val, test):
        assert split.vocab == expected
        assert len(split.true_predicates) == len(split.valid_predicates) == len(split.graphs)
    np.testing.assert_array_equal(test.true_predicates[0], dataset.true_predicates[1600])
    with pytest.raises(ConfigError, match="fractions"):
        synthetic.train_val_test(dataset, (0.7, 0.2, 0.2))
    with pytest.raises(ConfigError, match="fractions"):
        synthetic.train_val_test(dataset, (1.2, -0.2, 0.0))


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"min_objects": 6, "max_objects": 5}, "max_objects"),
        ({"min_objects": 1}, "min_objects"),
        ({"min_objects": 6, "min_relations": 4, "max_relations": 3}, "max_relations"),
        ({"min_objects": 3, "min_relations": 3}, "min_relations"),
        ({"min_image_size": 300, "max_image_size": 200}, "max_image_size"),
        ({"annotator_bias": 1.5}, "annotator_bias"),
        ({"annotator_bias": -0.1}, "annotator_bias"),
        ({"annotator_bias": float("nan")}, "annotator_bias"),
        ({"frequency_power": -1.0}, "frequency_power"),
        ({"num_images": 2.5}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"profile_classes": 0}, "profile_classes"),
        ({"min_box_size": 0.0}, "min_box_size"),
    ],
)
def test_invalid_config_raises_config_error_naming_the_option(changes, option):
    with pytest.raises(ConfigError, match=f"option '{option}'") as error:
        synthetic.SyntheticConfig(**changes)
    assert error.value.option == option


def test_head_minority_regime_records_the_head_for_a_minority_varied_by_context():
    default = synthetic.generate(synthetic.SyntheticConfig(num_images=400, seed=3))
    regime = synthetic.generate(
        synthetic.SyntheticConfig(num_images=400, seed=3, context_bias_range=(0.05, 0.45))
    )
    # Same images and truth; only the annotation rule changes.
    np.testing.assert_array_equal(
        np.concatenate(default.true_predicates), np.concatenate(regime.true_predicates)
    )

    def head_rate(dataset):
        annotated = np.concatenate([g.relations[:, 2] for g in dataset.graphs])
        true = np.concatenate(dataset.true_predicates)
        ambiguous = dataset.head_of[true] != true
        return float(np.mean(annotated[ambiguous] != true[ambiguous]))

    assert 0.55 < head_rate(default) < 0.85  # annotator_bias 0.7
    assert 0.1 < head_rate(regime) < 0.4  # a minority, drawn in [0.05, 0.45] per context
    config = synthetic.SyntheticConfig(context_bias_range=(0.05, 0.45))
    probabilities = synthetic._context_head_probability(config, np.arange(1, 41), np.arange(41, 81))
    assert np.all((probabilities >= 0.05) & (probabilities <= 0.45))
    assert probabilities.std() > 0.08  # varied across contexts
    again = synthetic._context_head_probability(config, np.arange(1, 41), np.arange(41, 81))
    np.testing.assert_array_equal(probabilities, again)


@pytest.mark.parametrize("value", [(0.5, 0.4), (-0.1, 0.3), (0.2,), "x"])
def test_bad_context_bias_range_names_the_option(value):
    with pytest.raises(ConfigError, match="option 'context_bias_range'"):
        synthetic.SyntheticConfig(context_bias_range=value)
