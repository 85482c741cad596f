"""Tests for sgg_jax.projects.ra_sgg.augment on hand-built retrieval results with hand-computed values."""

import math

import numpy as np
import pytest

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.ra_sgg import augment as aug

# P = 4 predicates; index 0 (background) is ignored, so its count is arbitrary.
COUNTS = np.array([7, 1000, 100, 10, 1])
# Normalised inverse propensities s_p = (1 / n_p) / Σ_q (1 / n_q) over predicates 1..4.
INV_SUM = 1 / 1000 + 1 / 100 + 1 / 10 + 1 / 1
S = [0.0, (1 / 1000) / INV_SUM, (1 / 100) / INV_SUM, (1 / 10) / INV_SUM, 1.0 / INV_SUM]

# Four relations, K = 4 neighbours each (-1 = missing, 0 = background neighbour).
GT = np.array([1, 2, 3, 4])
NEIGHBOURS = np.array(
    [
        [2, 3, 3, 1],  # d = sqrt(.75² + .25² + .5²) = sqrt(.875) -> selected; support {2, 3}
        [2, 2, 2, 4],  # d = sqrt(.25² + .25²) = sqrt(.125) < .5 -> not selected
        [1, 4, 0, -1],  # d = sqrt(3 / 9 + 1) = sqrt(4 / 3) -> selected; support {1, 4}
        [4, 4, 0, 0],  # d = sqrt(.5) -> selected, but only gt / background retrieved
    ]
)


class FixedUniforms:
    """Stand-in for np.random.Generator whose ``random(n)`` returns preset uniforms."""

    def __init__(self, uniforms):
        self.uniforms = list(uniforms)
        self.calls = []

    def random(self, size):
        self.calls.append(size)
        drawn, self.uniforms = self.uniforms[:size], self.uniforms[size:]
        assert len(drawn) == size, "test supplied too few uniforms"
        return np.array(drawn, np.float64)


def softmax(logits):
    exps = [math.exp(value - max(logits)) for value in logits]
    return [value / sum(exps) for value in exps]


def inverse_cdf(classes, weights, uniform):
    """The documented rule: first class whose cumulative weight exceeds u · Σ w."""
    cumulative = 0.0
    for cls, weight in zip(classes, weights, strict=True):
        cumulative += weight
        if cumulative > uniform * sum(weights):
            return cls
    raise AssertionError("uniform beyond the total mass")


def ip_expected_rows():
    """Hand-computed inverse-propensity weights of rows 0 and 2 of NEIGHBOURS."""
    w2, w3 = softmax([1 * S[2], 2 * S[3]])  # row 0: one neighbour 2, two neighbours 3
    w1, w4 = softmax([1 * S[1], 1 * S[4]])  # row 2: one neighbour 1, one neighbour 4
    expected = np.zeros((4, 5))
    expected[0, 2], expected[0, 3] = w2, w3
    expected[2, 1], expected[2, 4] = w1, w4
    return expected


# ----------------------------------------------------------------------------------------------
# label_inconsistency / select_candidates
# ----------------------------------------------------------------------------------------------


def test_label_inconsistency_hand_computed():
    gt = [1, 1, 2, 3, 1]
    neighbours = [
        [1, 1, 2, -1],  # mean over 3 valid = [0, 2/3, 1/3, 0] -> sqrt((1/3)² + (1/3)²)
        [1, 1, 1, 1],  # all agree -> 0
        [-1, -1, -1, -1],  # nothing retrieved -> 0
        [0, 0, 3, -1],  # background counts as a class: [2/3, 0, 0, 1/3] vs e_3
        [2, 2, 2, 2],  # fully inconsistent -> sqrt(2)
    ]
    distance = aug.label_inconsistency(gt, neighbours, num_predicates=3)
    expected = [
        math.sqrt(2) / 3,
        0.0,
        0.0,
        math.sqrt((2 / 3) ** 2 + (2 / 3) ** 2),
        math.sqrt(2),
    ]
    assert distance.dtype == np.float64
    np.testing.assert_allclose(distance, expected, rtol=0, atol=1e-15)


def test_label_inconsistency_of_the_shared_example():
    distance = aug.label_inconsistency(GT, NEIGHBOURS, num_predicates=4)
    expected = [math.sqrt(0.875), math.sqrt(0.125), math.sqrt(4 / 3), math.sqrt(0.5)]
    np.testing.assert_allclose(distance, expected, rtol=0, atol=1e-15)


def test_select_candidates_is_inclusive_at_tau():
    distance = np.array([0.0, 0.49, 0.5, 0.51, math.sqrt(2)])
    np.testing.assert_array_equal(
        aug.select_candidates(distance, 0.5), [False, False, True, True, True]
    )
    np.testing.assert_array_equal(aug.select_candidates(distance, 0), [True] * 5)
    np.testing.assert_array_equal(
        aug.select_candidates(distance, math.sqrt(2)), [False, False, False, False, True]
    )
    np.testing.assert_array_equal(aug.select_candidates(distance, 2.0), [False] * 5)
    # numpy scalars are accepted like Python numbers
    np.testing.assert_array_equal(
        aug.select_candidates(distance, np.float32(0.5)), [False, False, True, True, True]
    )


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), -0.1, -1, True, False, "0.5", None])
def test_select_candidates_rejects_bad_tau(tau):
    with pytest.raises(ConfigError, match="'tau'"):
        aug.select_candidates(np.zeros(3), tau)


# ----------------------------------------------------------------------------------------------
# inverse_propensity / class_balanced_weights
# ----------------------------------------------------------------------------------------------


def test_inverse_propensity_exact():
    counts = np.array([5, 1, 3, 0, 4])  # zero count clipped to 1 -> n = [_, 1, 3, 1, 4], Σ = 9
    raw = aug.inverse_propensity(counts, normalize=False)
    np.testing.assert_allclose(raw, [0.0, 9.0, 3.0, 9.0, 2.25], rtol=1e-15, atol=0)
    assert raw[0] == 0.0
    normalised = aug.inverse_propensity(counts)
    np.testing.assert_allclose(
        normalised, np.array([0.0, 9.0, 3.0, 9.0, 2.25]) / 23.25, rtol=1e-15, atol=0
    )
    assert normalised.sum() == pytest.approx(1.0, abs=1e-15)
    # the background count takes no part: neither in π's denominator nor as a score
    np.testing.assert_array_equal(
        aug.inverse_propensity([123456, 1, 3, 0, 4], normalize=False), raw
    )
    np.testing.assert_array_equal(counts, [5, 1, 3, 0, 4])  # input not modified


def test_inverse_propensity_of_shared_counts():
    np.testing.assert_allclose(aug.inverse_propensity(COUNTS), S, rtol=1e-14, atol=0)


def test_class_balanced_weights_exact():
    # beta = .5: cb(n) = .5 / (1 - .5^n) -> n=1: 1, n=2: 2/3, n=3: 4/7; zero count clipped to 1
    weights = aug.class_balanced_weights([7, 0, 1, 2, 3], beta=0.5)
    np.testing.assert_allclose(weights, [0.0, 1.0, 1.0, 2 / 3, 4 / 7], rtol=1e-15, atol=0)
    weights = aug.class_balanced_weights(COUNTS)
    beta = 0.99999
    expected = [0.0] + [(1 - beta) / (1 - beta**n) for n in (1000, 100, 10, 1)]
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=0)
    assert weights[4] == pytest.approx(1.0, rel=1e-9)  # n = 1 -> (1 - β) / (1 - β) = 1
    assert np.all(np.diff(weights[1:]) > 0)  # rarer -> larger
    np.testing.assert_allclose(
        aug.class_balanced_weights(COUNTS, beta=np.float32(0.5))[1:],
        [0.5 / (1 - 0.5**n) for n in (1000, 100, 10, 1)],
        rtol=1e-15,
    )


@pytest.mark.parametrize("beta", [0, 1, 1.5, -0.5, float("nan"), True, "0.9", None])
def test_class_balanced_weights_rejects_bad_beta(beta):
    with pytest.raises(ConfigError, match="'beta'"):
        aug.class_balanced_weights(COUNTS, beta=beta)


@pytest.mark.parametrize("counts", [[5], [[1, 2], [3, 4]], [1, -2, 3], [1, float("nan"), 3], 7])
def test_propensity_weights_reject_bad_counts(counts):
    with pytest.raises(DataError, match="'predicate_counts'"):
        aug.inverse_propensity(counts)
    with pytest.raises(DataError, match="'predicate_counts'"):
        aug.class_balanced_weights(counts)


# ----------------------------------------------------------------------------------------------
# augment
# ----------------------------------------------------------------------------------------------


def test_augment_inverse_propensity_weights_and_fixed_uniforms():
    # row 0: w = softmax(.009, .18) over {2, 3} -> w2 ≈ .457; row 2: softmax(.0009, .9) over {1, 4}
    expected = ip_expected_rows()
    assert 0.45 < expected[0, 2] < 0.46 and 0.28 < expected[2, 1] < 0.30
    rng = FixedUniforms([0.1, 0.9])  # row 0: .1 < w2 -> 2; row 2: .9 > w1 -> 4
    result = aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=0.5)
    np.testing.assert_allclose(result.weights, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.selected, [True, False, True, True])
    np.testing.assert_array_equal(result.augmented, [2, 2, 4, 4])
    assert result.augmented.dtype == np.int32
    assert rng.calls == [2]  # one uniform per sampled row (rows 0 and 2), one draw

    rng = FixedUniforms([0.5, 0.1])  # row 0: .5 > w2 -> 3; row 2: .1 < w1 -> 1
    result = aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=0.5)
    np.testing.assert_array_equal(result.augmented, [3, 2, 1, 4])


def test_augment_with_seeded_generator_matches_inverse_cdf():
    expected_weights = ip_expected_rows()
    uniforms = np.random.default_rng(0).random(2)  # one per sampled row, in row order
    expected = [
        inverse_cdf([2, 3], [expected_weights[0, 2], expected_weights[0, 3]], uniforms[0]),
        2,
        inverse_cdf([1, 4], [expected_weights[2, 1], expected_weights[2, 4]], uniforms[1]),
        4,
    ]
    rng = np.random.default_rng(0)
    result = aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=0.5)
    np.testing.assert_array_equal(result.augmented, expected)
    # exactly two uniforms were consumed
    reference = np.random.default_rng(0)
    reference.random(2)
    assert rng.random() == reference.random()


def test_augment_unselected_rows_keep_gt_and_zero_weights():
    result = aug.augment(GT, NEIGHBOURS, COUNTS, FixedUniforms([0.5, 0.5]), tau=0.5)
    for row in (1, 3):  # 1: below tau; 3: selected but only gt / background retrieved
        assert result.augmented[row] == GT[row]
        np.testing.assert_array_equal(result.weights[row], np.zeros(5))
    assert result.selected_fraction == 0.75
    assert result.augmented_fraction == 0.5
    # tau above every distance: nothing selected, no uniform drawn
    rng = FixedUniforms([])
    result = aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=2.0)
    np.testing.assert_array_equal(result.augmented, GT)
    np.testing.assert_array_equal(result.weights, np.zeros((4, 5)))
    assert rng.calls == []
    assert result.selected_fraction == 0.0 and result.augmented_fraction == 0.0


def test_augment_unnormalised_propensity():
    # raw s_p = Σ n / n_p = 1111 / n_p -> row 0 logits 11.11 and 222.2: nearly all mass on 3
    total = 1000 + 100 + 10 + 1
    w2, w3 = softmax([total / 100, 2 * total / 10])
    w1, w4 = softmax([total / 1000, total / 1])
    result = aug.augment(
        GT, NEIGHBOURS, COUNTS, FixedUniforms([0.5, 0.5]), normalize_propensity=False
    )
    np.testing.assert_allclose(result.weights[0, [2, 3]], [w2, w3], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(result.weights[2, [1, 4]], [w1, w4], rtol=1e-12, atol=1e-300)
    assert result.weights[0, 2] < 1e-90
    np.testing.assert_array_equal(result.augmented, [3, 2, 4, 4])


def test_augment_uniform_and_class_balanced_weights():
    uniform = aug.augment(GT, NEIGHBOURS, COUNTS, FixedUniforms([0.4, 0.4]), weighting="uniform")
    expected = np.zeros((4, 5))
    expected[0, 2], expected[0, 3] = 1 / 3, 2 / 3  # histogram {2: 1, 3: 2}
    expected[2, 1], expected[2, 4] = 1 / 2, 1 / 2  # histogram {1: 1, 4: 1}
    np.testing.assert_allclose(uniform.weights, expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(uniform.augmented, [3, 2, 1, 4])  # .4 > 1/3; .4 < 1/2

    beta = 0.5  # cb(100) ≈ .5, cb(10) = .5 / (1 - 2^-10), cb(1000) ≈ .5, cb(1) = 1
    cb = {n: (1 - beta) / (1 - beta**n) for n in (1000, 100, 10, 1)}
    balanced = aug.augment(
        GT, NEIGHBOURS, COUNTS, FixedUniforms([0.4, 0.4]), weighting="class_balanced", beta=beta
    )
    row0 = np.array([1 * cb[100], 2 * cb[10]])  # h_p · cb_p, a product (no softmax)
    row2 = np.array([1 * cb[1000], 1 * cb[1]])
    expected = np.zeros((4, 5))
    expected[0, [2, 3]] = row0 / row0.sum()
    expected[2, [1, 4]] = row2 / row2.sum()
    np.testing.assert_allclose(balanced.weights, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected[2, [1, 4]], [1 / 3, 2 / 3], rtol=0, atol=1e-12)
    # row 0: w2 ≈ .333 < .4 -> 3; row 2: w1 = 1/3 < .4 -> 4 (uniform weighting gave 1 there)
    np.testing.assert_array_equal(balanced.augmented, [3, 2, 4, 4])


def test_augment_tail_only_excludes_predicates_at_least_as_frequent_as_gt():
    counts = np.array([0, 50, 50, 5, 0])  # predicate 4 has count 0 -> clipped to 1
    gt = np.array([1, 4, 3])
    neighbours = np.array(
        [
            [2, 3, 4, 1],  # gt 1 (50): 2 has the same count (excluded), 3 and 4 are rarer
            [1, 2, 3, 3],  # gt 4 is the rarest: nothing rarer -> stays 4
            [1, 2, 4, 4],  # gt 3 (5): only 4 (1) is rarer
        ]
    )
    rng = FixedUniforms([0.6, 0.0])
    result = aug.augment(gt, neighbours, counts, rng, weighting="uniform", tail_only=True)
    expected = np.zeros((3, 5))
    expected[0, 3], expected[0, 4] = 0.5, 0.5
    expected[2, 4] = 1.0
    np.testing.assert_allclose(result.weights, expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(result.selected, [True, True, True])
    np.testing.assert_array_equal(result.augmented, [4, 4, 4])
    assert result.augmented_fraction == pytest.approx(2 / 3)
    # without tail_only, 2 is a candidate of row 0 and the rows gain head predicates
    full = aug.augment(gt, neighbours, counts, FixedUniforms([0.1, 0.1, 0.1]), weighting="uniform")
    np.testing.assert_allclose(full.weights[0, 2:], [1 / 3, 1 / 3, 1 / 3], atol=1e-15)
    np.testing.assert_allclose(full.weights[1, 1:], [1 / 4, 1 / 4, 2 / 4, 0], atol=1e-15)
    np.testing.assert_array_equal(full.augmented, [2, 1, 1])


def test_augment_select_false_augments_every_row():
    rng = FixedUniforms([0.1, 0.5, 0.9])
    result = aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=0.5, select=False)
    np.testing.assert_array_equal(result.selected, [True] * 4)
    expected = ip_expected_rows()
    expected[1, 4] = 1.0  # row 1 (below tau) is now augmented; its only non-gt neighbour is 4
    np.testing.assert_allclose(result.weights, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.augmented, [2, 4, 4, 4])  # row 3 still has nothing
    assert rng.calls == [3]
    assert result.selected_fraction == 1.0 and result.augmented_fraction == 0.75
    with pytest.raises(ConfigError, match="'tau'"):  # tau is validated even when unused
        aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=float("nan"), select=False)


@pytest.mark.parametrize("weighting", aug.WEIGHTINGS)
def test_augment_never_samples_gt_or_unretrieved_predicates(weighting):
    data_rng = np.random.default_rng(3)
    num_predicates, num_relations, k = 6, 400, 5
    counts = np.concatenate([[0], data_rng.integers(0, 500, num_predicates)])
    gt = data_rng.integers(1, num_predicates + 1, num_relations)
    neighbours = data_rng.integers(-1, num_predicates + 1, (num_relations, k))
    neighbours[:50] = gt[:50, None]  # consistent rows: never augmented
    result = aug.augment(
        gt, neighbours, counts, np.random.default_rng(4), tau=0.3, weighting=weighting
    )
    rows = np.arange(num_relations)
    changed = result.augmented != gt
    assert changed.sum() > 100
    np.testing.assert_array_equal(changed, result.weights.sum(-1) > 0)
    np.testing.assert_array_equal(result.weights[rows, gt], 0.0)
    np.testing.assert_array_equal(result.weights[:, 0], 0.0)
    np.testing.assert_allclose(result.weights[changed].sum(-1), 1.0, atol=1e-12)
    assert np.all(result.weights[changed, result.augmented[changed]] > 0)
    assert all(result.augmented[i] in neighbours[i] for i in np.flatnonzero(changed))
    assert not np.any(changed[:50]) and not np.any(changed & ~result.selected)
    assert np.all(result.augmented >= 1)


def test_augment_sampling_frequencies_follow_weights():
    repeats = 20000
    gt = np.full(repeats, 1)
    neighbours = np.tile([2, 3, 3, 4], (repeats, 1))
    result = aug.augment(gt, neighbours, COUNTS, np.random.default_rng(5))
    frequencies = np.bincount(result.augmented, minlength=5) / repeats
    np.testing.assert_allclose(frequencies, result.weights[0], atol=0.015)


def test_augment_empty_input():
    result = aug.augment(np.zeros(0, int), np.zeros((0, 3), int), COUNTS, FixedUniforms([]))
    assert result.augmented.shape == (0,) and result.weights.shape == (0, 5)
    assert result.selected_fraction == 0.0 and result.augmented_fraction == 0.0


# ----------------------------------------------------------------------------------------------
# relabel_background
# ----------------------------------------------------------------------------------------------

BG_NEIGHBOURS = np.array(
    [
        [1, 2, 0, -1],  # a: no tail neighbour
        [3, 1, 1, 0],  # a: 1 tail of 4 -> "any" only
        [3, 4, 4, 1],  # b: 3 tail of 4 -> "any" and "majority"
        [4, 4, 4, 4],  # b: eligible, but the second one of image b
        [0, 0, -1, -1],  # c: background neighbours only
        [4, 1, -1, -1],  # c: 1 tail of 2 valid -> "any" only (not more than half)
        [4, 4, 3, -1],  # a: 3 tail of 3 -> "majority"; under "any" pair 1 came first
    ]
)
BG_IMAGES = ["a", "a", "b", "b", "c", "c", "a"]
TAIL = {3, 4}


def test_relabel_background_any_rule_first_eligible_pair_per_image():
    rng = FixedUniforms([0.99, 0.1, 0.0])
    labels = aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, TAIL, COUNTS, rng, rule="any")
    # pair 2 draws from softmax(1·s3, 2·s4) over {3, 4}; u = .1 < w3 ≈ .153 -> 3
    w3, _ = softmax([S[3], 2 * S[4]])
    assert 0.1 < w3
    np.testing.assert_array_equal(labels, [0, 3, 3, 0, 0, 4, 0])
    assert labels.dtype == np.int32
    assert rng.calls == [3]  # one uniform per relabelled pair
    labels = aug.relabel_background(
        BG_NEIGHBOURS, BG_IMAGES, TAIL, COUNTS, FixedUniforms([0.0, 0.2, 0.0])
    )
    np.testing.assert_array_equal(labels, [0, 3, 4, 0, 0, 4, 0])


def test_relabel_background_majority_rule():
    rng = FixedUniforms([0.5, 0.5])
    labels = aug.relabel_background(
        BG_NEIGHBOURS, BG_IMAGES, TAIL, COUNTS, rng, rule="majority", weighting="uniform"
    )
    # pair 2: uniform {3: 1/3, 4: 2/3}, u = .5 -> 4; pair 6: {3: 1/3, 4: 2/3}, u = .5 -> 4
    np.testing.assert_array_equal(labels, [0, 0, 4, 0, 0, 0, 4])
    labels = aug.relabel_background(
        BG_NEIGHBOURS,
        BG_IMAGES,
        TAIL,
        COUNTS,
        FixedUniforms([0.3, 0.34]),
        rule="majority",
        weighting="uniform",
    )
    np.testing.assert_array_equal(labels, [0, 0, 3, 0, 0, 0, 4])


def test_relabel_background_seeded_labels_are_retrieved_tail_predicates():
    mask = np.array([False, False, False, True, True])
    for tail in (TAIL, [4, 3], mask, (3, 4)):
        labels = aug.relabel_background(
            BG_NEIGHBOURS, BG_IMAGES, tail, COUNTS, np.random.default_rng(0)
        )
        uniforms = np.random.default_rng(0).random(3)
        w3, w4 = softmax([S[3], 2 * S[4]])
        expected_pair2 = inverse_cdf([3, 4], [w3, w4], uniforms[1])
        np.testing.assert_array_equal(labels, [0, 3, expected_pair2, 0, 0, 4, 0])
    for i in np.flatnonzero(labels):
        assert labels[i] in TAIL and labels[i] in BG_NEIGHBOURS[i]


def test_relabel_background_without_eligible_pairs():
    rng = FixedUniforms([])
    labels = aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, set(), COUNTS, rng)
    np.testing.assert_array_equal(labels, np.zeros(7))
    assert rng.calls == []
    # index 0 in a bool mask is never a tail predicate
    labels = aug.relabel_background(
        [[0, 0, 0]], ["x"], np.array([True, False, False, False, False]), COUNTS, rng
    )
    np.testing.assert_array_equal(labels, [0])


def test_relabel_background_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="'rule'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, TAIL, COUNTS, rng, rule="all")
    with pytest.raises(ConfigError, match="'weighting'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, TAIL, COUNTS, rng, weighting="focal")
    with pytest.raises(ConfigError, match="'tail_predicates'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, {0, 3}, COUNTS, rng)
    with pytest.raises(ConfigError, match="'tail_predicates'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, [5], COUNTS, rng)
    with pytest.raises(ConfigError, match="'tail_predicates'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, np.ones(4, bool), COUNTS, rng)
    with pytest.raises(DataError, match="'bg_neighbour_predicates'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES[:-1], TAIL, COUNTS, rng)
    with pytest.raises(DataError, match="'bg_neighbour_predicates'"):
        aug.relabel_background([[1, 5]], ["a"], TAIL, COUNTS, rng)
    with pytest.raises(DataError, match="'bg_neighbour_predicates'"):
        aug.relabel_background([[1, -2]], ["a"], TAIL, COUNTS, rng)
    with pytest.raises(DataError, match="'predicate_counts'"):
        aug.relabel_background(BG_NEIGHBOURS, BG_IMAGES, TAIL, [1, -1, 2, 3, 4], rng)
    with pytest.raises(ConfigError, match="'beta'"):
        aug.relabel_background(
            BG_NEIGHBOURS, BG_IMAGES, TAIL, COUNTS, rng, weighting="class_balanced", beta=1.0
        )


# ----------------------------------------------------------------------------------------------
# multi_prototype_targets / sample_lambda
# ----------------------------------------------------------------------------------------------


def test_multi_prototype_targets_exact_rows():
    targets = aug.multi_prototype_targets([1, 2, 3], [3, 2, 0], num_classes=4, lam=0.8)
    expected = np.array(
        [[0.0, 0.8, 0.0, 1 - 0.8], [0.0, 0.0, 1.0, 0.0], [1 - 0.8, 0.0, 0.0, 0.8]], np.float32
    )
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, expected)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=0, atol=1e-7)


def test_multi_prototype_targets_per_row_lambda():
    lam = np.array([1.0, 0.5, 0.0, 0.3])
    targets = aug.multi_prototype_targets([1, 2, 3, 4], [2, 1, 4, 4], num_classes=5, lam=lam)
    expected = np.zeros((4, 5), np.float32)
    expected[0, 1] = 1.0  # λ = 1: the gt only
    expected[1, 2], expected[1, 1] = 0.5, 0.5
    expected[2, 4] = 1.0  # λ = 0: the augmented class only
    expected[3, 4] = 1.0  # aug = gt: one-hot whatever λ
    np.testing.assert_array_equal(targets, expected)
    np.testing.assert_array_equal(targets.sum(-1), 1.0)


def test_sample_lambda_mean_and_determinism():
    lam = aug.sample_lambda(np.random.default_rng(0), 20000)
    assert lam.shape == (20000,) and lam.dtype == np.float64
    assert abs(lam.mean() - 0.8) < 0.01  # Beta(20, 5) mean 20 / 25
    assert np.all((lam > 0) & (lam < 1))
    np.testing.assert_array_equal(lam, aug.sample_lambda(np.random.default_rng(0), 20000))
    assert not np.array_equal(lam, aug.sample_lambda(np.random.default_rng(1), 20000))
    np.testing.assert_array_equal(
        aug.sample_lambda(np.random.default_rng(0), 5, alpha=2, beta=3),
        np.random.default_rng(0).beta(2, 3, size=5),
    )


@pytest.mark.parametrize("option, value", [("alpha", 0), ("beta", -1.0), ("alpha", True)])
def test_sample_lambda_rejects_bad_parameters(option, value):
    with pytest.raises(ConfigError, match=f"'{option}'"):
        aug.sample_lambda(np.random.default_rng(0), 3, **{option: value})


@pytest.mark.parametrize("lam", [-0.1, 1.1, float("nan"), [0.5, 1.5, 0.5], [0.5, 0.5]])
def test_multi_prototype_targets_rejects_bad_lambda(lam):
    with pytest.raises(ConfigError, match="'lam'"):
        aug.multi_prototype_targets([1, 2, 3], [1, 2, 3], num_classes=4, lam=lam)


def test_multi_prototype_targets_rejects_bad_classes():
    with pytest.raises(DataError, match="'augmented'"):
        aug.multi_prototype_targets([1, 2], [1], num_classes=4, lam=0.8)
    with pytest.raises(DataError, match="'augmented'"):
        aug.multi_prototype_targets([1, 2], [1, 4], num_classes=4, lam=0.8)
    with pytest.raises(DataError, match="'gt'"):
        aug.multi_prototype_targets([-1, 2], [1, 2], num_classes=4, lam=0.8)


# ----------------------------------------------------------------------------------------------
# bad inputs of augment / label_inconsistency
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gt, neighbours, field",
    [
        ([1, 2], [1, 2, 3], "neighbour_predicates"),  # 1-D
        ([1, 2], [[1, 2, 3]], "neighbour_predicates"),  # Q mismatch
        ([1, 2], [[[1]], [[2]]], "neighbour_predicates"),  # 3-D
        ([1, 2], [[1, 5], [2, 2]], "neighbour_predicates"),  # > P
        ([1, 2], [[1, -2], [2, 2]], "neighbour_predicates"),  # < -1
        ([0, 2], [[1, 1], [2, 2]], "gt"),  # background gt
        ([1, 5], [[1, 1], [2, 2]], "gt"),  # > P
    ],
)
def test_bad_neighbours_and_gt(gt, neighbours, field):
    with pytest.raises(DataError, match=f"'{field}'"):
        aug.label_inconsistency(gt, neighbours, num_predicates=4)
    with pytest.raises(DataError, match=f"'{field}'"):
        aug.augment(gt, neighbours, COUNTS, np.random.default_rng(0))


@pytest.mark.parametrize("counts", [[5], [[1, 2, 3, 4, 5]], [0, 1, -1, 2, 3], [0, 1, np.inf, 2, 3]])
def test_augment_rejects_bad_counts(counts):
    with pytest.raises(DataError, match="'predicate_counts'"):
        aug.augment(GT, NEIGHBOURS, counts, np.random.default_rng(0))


def test_augment_counts_shorter_than_the_predicates_in_use():
    # P comes from the counts: three entries mean P = 2, so predicates 3 and 4 are out of range
    with pytest.raises(DataError, match="'gt'"):
        aug.augment(GT, NEIGHBOURS, [0, 10, 10], np.random.default_rng(0))
    with pytest.raises(DataError, match="'neighbour_predicates'"):
        aug.augment([1], [[1, 3]], [0, 10, 10], np.random.default_rng(0))


def test_augment_rejects_bad_options():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="'weighting'"):
        aug.augment(GT, NEIGHBOURS, COUNTS, rng, weighting="softmax")
    for beta in (0.0, 1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="'beta'"):
            aug.augment(GT, NEIGHBOURS, COUNTS, rng, weighting="class_balanced", beta=beta)
    for tau in (float("nan"), -0.5, True):
        with pytest.raises(ConfigError, match="'tau'"):
            aug.augment(GT, NEIGHBOURS, COUNTS, rng, tau=tau)
