"""RA-SGG's official rule (variant="official") against a numpy re-statement of the official lines.

The re-statement follows ``ReTAGPENet.forward`` of ``KanghoonYoon/torch-rasgg`` at e8be01b
(``maskrcnn_benchmark/modeling/roi_heads/relation_head/roi_relation_predictors.py``) line by line:
469-473 (``freq_rwt``), 683-690 (confidence, foreground / background masks), 692-710 (first
background pair per image), 716-717 (sampling distribution).
"""

import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.ra_sgg import augment
from sgg_jax.projects.ra_sgg.memory_bank import BankEntries, cap_per_triplet
from sgg_jax.projects.ra_sgg.tail_sets import GQA200_TAIL_IDS, VG150_TAIL_IDS, official_tail_ids


def official_freq_rwt(counts, beta):
    """Lines 469-473 (with line 439's background count, overwritten at 473)."""
    counts = np.asarray(counts, np.float64).copy()
    counts[0] = counts[1:].sum() * 20
    counts = np.maximum(counts, 1.0)
    freq_rwt = (1 - beta) / (1 - beta**counts)
    foreground = np.sort(freq_rwt[1:])
    median = foreground[(len(foreground) - 1) // 2]  # torch.median: lower middle value
    freq_rwt = freq_rwt / median
    freq_rwt[0] = freq_rwt[1:].min()
    return freq_rwt


def official_lines(rel_labels, retrieved_value_pred, num_rels, tail_ids, counts, threshold, beta):
    """Lines 683-717: the change mask and each changed row's sampling distribution."""
    num_retrievals = retrieved_value_pred.shape[1]
    num_classes = len(counts)
    pos_ret_mask = rel_labels.reshape(-1, 1) == retrieved_value_pred
    rel_label_confidences = pos_ret_mask.sum(-1).astype(np.float32) / np.float32(num_retrievals)
    is_tail = np.isin(retrieved_value_pred, tail_ids).any(-1)
    mask_fg_change = (rel_label_confidences < np.float32(threshold)) & is_tail
    mask_fg_change = mask_fg_change & (rel_labels != 0)
    mask_bg_change = is_tail & (rel_labels == 0)
    pieces, start = [], 0
    for count in num_rels:
        m_bg = mask_bg_change[start : start + count]
        if m_bg.sum() == 0:
            pieces.append(m_bg)
        else:
            one = np.zeros(count, bool)
            one[np.where(m_bg)[0][0]] = True
            pieces.append(one)
        start += count
    mask_change = mask_fg_change | np.concatenate(pieces)
    retrieved_dists = np.stack(
        [np.bincount(row, minlength=num_classes) / num_retrievals for row in retrieved_value_pred]
    )
    sample_prob = retrieved_dists[mask_change] * official_freq_rwt(counts, beta)[None, :]
    sample_prob = sample_prob / sample_prob.sum(1, keepdims=True)
    return mask_change, sample_prob


def random_batch(rng, num_predicates, num_images, k, tail_ids):
    num_rels = rng.integers(1, 12, size=num_images).tolist()
    total = sum(num_rels)
    labels = np.where(rng.random(total) < 0.4, 0, rng.integers(1, num_predicates + 1, total))
    # Neighbours: mostly the label or a head predicate, sometimes a tail one, to hit every branch.
    pool = np.concatenate([np.arange(1, 6), np.asarray(tail_ids)[:4]])
    neighbours = rng.choice(pool, size=(total, k))
    agree = rng.random((total, k)) < rng.random((total, 1))
    neighbours = np.where(agree & (labels[:, None] > 0), labels[:, None], neighbours)
    return labels, neighbours, num_rels


@pytest.mark.parametrize("seed", range(6))
def test_official_augment_equals_the_official_lines(seed):
    rng = np.random.default_rng(seed)
    num_predicates, k = 50, (20 if seed % 2 else 10)
    tail = VG150_TAIL_IDS
    counts = np.concatenate([[0], np.sort(rng.integers(1, 30_000, num_predicates))[::-1]])
    labels, neighbours, num_rels = random_batch(rng, num_predicates, 5, k, tail)
    image_ids = np.repeat(np.arange(len(num_rels)), num_rels)
    result = augment.official_augment(
        labels, neighbours, image_ids, tail, counts, np.random.default_rng(0), threshold=0.3
    )
    mask_change, sample_prob = official_lines(
        labels, neighbours, num_rels, tail, counts, 0.3, 0.99999
    )
    np.testing.assert_array_equal(result.selected, mask_change)
    np.testing.assert_allclose(result.weights[mask_change], sample_prob, rtol=1e-12, atol=0)
    assert np.all(result.weights[~mask_change] == 0)
    # mixup labels: unchanged foreground keeps its label, unchanged background stays 0, changed
    # rows take a predicate of their support (which holds the ground truth when retrieved).
    unchanged = ~mask_change
    np.testing.assert_array_equal(result.augmented[unchanged], labels[unchanged])
    changed = np.flatnonzero(mask_change)
    assert np.all(result.weights[changed, result.augmented[changed]] > 0)
    assert mask_change.any() and unchanged.any()


def test_confidence_ties_at_the_threshold_do_not_change_the_label():
    # K = 20: 6 agreeing neighbours give confidence 0.3, not < 0.3; 5 give 0.25 < 0.3.
    tail = [45]
    counts = np.arange(51)[::-1].copy()
    labels = np.array([3, 3, 3])
    neighbours = np.full((3, 20), 1)
    neighbours[0, :6] = 3
    neighbours[1, :5] = 3
    neighbours[:, -1] = 45  # a tail neighbour in every row
    neighbours[2, :5] = 3
    neighbours[2, -1] = 2  # no tail neighbour: never changes
    result = augment.official_augment(
        labels, neighbours, [0, 0, 0], tail, counts, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(result.selected, [False, True, False])
    # The ground truth stays in the support of the changed row: 5 of 20 neighbours.
    weights = augment.official_predicate_weights(counts)
    histogram = np.zeros(51)
    histogram[[3, 1, 45]] = [5, 14, 1]
    expected = histogram * weights / (histogram * weights).sum()
    np.testing.assert_allclose(result.weights[1], expected, rtol=1e-12)
    assert expected[3] > 0


def test_background_pairs_first_eligible_per_image_and_no_tail_rows():
    tail = [9]
    counts = np.full(11, 100)
    labels = np.array([0, 0, 0, 4, 0, 0])
    neighbours = np.array(
        [[1, 1], [9, 1], [9, 9], [9, 1], [1, 2], [2, 9]]  # image 0: rows 0-3, image 1: rows 4-5
    )
    result = augment.official_augment(
        labels, neighbours, [0, 0, 0, 0, 1, 1], tail, counts, np.random.default_rng(1)
    )
    # row 1 is the first background pair with a tail neighbour in image 0; row 2 is eligible but
    # second; row 3 is foreground with confidence 0 and a tail neighbour; row 5 is image 1's first.
    np.testing.assert_array_equal(result.selected, [False, True, False, True, False, True])
    np.testing.assert_array_equal(result.augmented[[0, 2, 4]], [0, 0, 0])
    assert set(result.augmented[[1, 3, 5]]) <= {1, 2, 9}


def test_w_o_selection_and_w_o_ipss_ablations_of_the_official_rule():
    counts = np.concatenate([[0], np.linspace(5000, 5, 10).astype(int)])
    labels = np.array([1, 2, 0])
    neighbours = np.array([[1, 1, 1, 10], [2, 2, 3, 3], [1, 1, 1, 1]])
    result = augment.official_augment(
        labels, neighbours, [0, 0, 0], [10], counts, np.random.default_rng(0), select=False
    )
    np.testing.assert_array_equal(result.selected, [True, True, False])
    uniform = augment.official_augment(
        labels,
        neighbours,
        [0, 0, 0],
        [10],
        counts,
        np.random.default_rng(0),
        select=False,
        weighting="uniform",
    )
    np.testing.assert_allclose(uniform.weights[1, [2, 3]], [0.5, 0.5])
    assert result.weights[1, 3] > result.weights[1, 2]  # predicate 3 is rarer than 2


def test_official_predicate_weights_restate_lines_469_473():
    counts = np.array([0, 40000, 900, 900, 3, 77, 12])
    np.testing.assert_allclose(
        augment.official_predicate_weights(counts), official_freq_rwt(counts, 0.99999), rtol=1e-12
    )


def test_bundled_official_tail_sets():
    assert len(VG150_TAIL_IDS) == 22 and len(GQA200_TAIL_IDS) == 51
    assert official_tail_ids("gqa200_mini") == GQA200_TAIL_IDS
    assert official_tail_ids("synthetic") is None


@pytest.mark.parametrize(
    "tail_ids, message",
    [([], "the tail set is empty"), ([0, 3], "id 0 is outside"), ([51], "id 51 is outside")],
)
def test_bad_tail_ids_name_the_option(tail_ids, message):
    with pytest.raises(ConfigError, match=f"option 'tail_ids': {message}"):
        augment.check_tail_ids(tail_ids, 50)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_bad_threshold_names_the_option(threshold):
    with pytest.raises(ConfigError, match="option 'threshold': must lie in \\[0, 1\\]"):
        augment.check_threshold(threshold)


def test_cap_per_triplet_keeps_at_most_m_per_triplet_in_order():
    rng = np.random.default_rng(0)
    size = 500
    triplets = rng.integers(1, 4, size=(size, 3))
    entries = BankEntries(
        image_index=np.sort(rng.integers(0, 100, size)),
        subject=np.zeros(size, np.int64),
        object=np.ones(size, np.int64),
        predicate=triplets[:, 2],
        subject_class=triplets[:, 0],
        object_class=triplets[:, 1],
    )
    kept = cap_per_triplet(entries, 8, seed=3)
    _, counts = np.unique(kept.triplets, axis=0, return_counts=True)
    _, full = np.unique(entries.triplets, axis=0, return_counts=True)
    np.testing.assert_array_equal(counts, np.minimum(full, 8))
    assert np.all(np.diff(kept.image_index) >= 0)
    again = cap_per_triplet(entries, 8, seed=3)
    np.testing.assert_array_equal(again.triplets, kept.triplets)
    other = cap_per_triplet(entries, 8, seed=4)
    assert not np.array_equal(other.image_index, kept.image_index)
    with pytest.raises(ConfigError, match="option 'max_per_triplet'"):
        cap_per_triplet(entries, 0, seed=0)
