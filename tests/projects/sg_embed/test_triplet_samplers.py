"""Triplet samplers: exact distributions (chi-square with fixed seeds), Extreme exact, invariants."""

import itertools

import numpy as np
import pytest
from scipy import stats

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.sg_embed import triplet_samplers as ts

DRAWS = 20_000
# Row 0 is the anchor used for the distribution tests; its self-similarity (9, or -5) is out of range
# and must never matter. Row 0 holds ties (0.5, 0.5), a negative value and (for Probability) 1.
S_RANDOM = np.array(
    [
        [9.0, 0.1, 0.5, 0.5, 0.9],
        [0.1, 1.0, 0.2, 0.3, 0.4],
        [0.5, 0.2, 1.0, 0.6, 0.7],
        [0.5, 0.3, 0.6, 1.0, 0.8],
        [0.9, 0.4, 0.7, 0.8, 1.0],
    ]
)
S_PROBABILITY = np.array(
    [
        [-5.0, 0.2, -0.3, 0.7, 1.0],
        [0.2, 1.0, 0.1, 0.3, 0.4],
        [-0.3, 0.1, 1.0, 0.5, 0.6],
        [0.7, 0.3, 0.5, 1.0, 0.9],
        [1.0, 0.4, 0.6, 0.9, 1.0],
    ]
)


def pair_counts(sample, num_images):
    counts = np.zeros((num_images, num_images), np.int64)
    np.add.at(counts, (sample.positive, sample.negative), 1)
    return counts


def assert_matches(counts, probabilities):
    """Zero-probability cells are never drawn; the others pass a chi-square test at level 1e-3."""
    assert counts.sum() == DRAWS
    assert probabilities.sum() == pytest.approx(1.0)
    assert np.all(counts[probabilities == 0] == 0)
    support = probabilities > 0
    result = stats.chisquare(counts[support], DRAWS * probabilities[support])
    assert result.pvalue > 1e-3, result
    np.testing.assert_allclose(counts / DRAWS, probabilities, atol=0.015)


def probability_joint(row, anchor):
    """Exact Pr(P = p, N = n) of Probability sampling for one anchor row in [-1, 1], by enumeration:
    Pr(P = X) ∝ max(s_AX, 0), then Pr(N = X) ∝ 1 - max(s_AX, 0) among the others but P."""
    clipped = np.clip(row, 0, 1)
    others = [x for x in range(len(row)) if x != anchor]
    weights = {x: clipped[x] for x in others}
    joint = np.zeros((len(row), len(row)))
    total = sum(weights.values())
    for p in others:
        pr_p = weights[p] / total if total > 0 else 1 / len(others)
        rest = [x for x in others if x != p]
        rest_total = sum(1 - clipped[x] for x in rest)
        for n in rest:
            pr_n = (1 - clipped[n]) / rest_total if rest_total > 0 else 1 / len(rest)
            joint[p, n] = pr_p * pr_n
    return joint


def test_random_is_uniform_over_correctly_ordered_pairs():
    sample = ts.random_triplets(S_RANDOM, np.zeros(DRAWS, int), np.random.default_rng(0))
    # Others 1..4 with s = 0.1, 0.5, 0.5, 0.9: ordered pairs (P, N) with s_AP > s_AN.
    ordered_pairs = [(2, 1), (3, 1), (4, 1), (4, 2), (4, 3)]
    expected = np.zeros((5, 5))
    for pair in ordered_pairs:
        expected[pair] = 1 / len(ordered_pairs)
    assert_matches(pair_counts(sample, 5), expected)
    assert sample.ordered.all()
    assert sample.positive.dtype == np.int32 and sample.negative.dtype == np.int32


def test_random_falls_back_to_distinct_pairs_when_a_row_is_all_ties():
    similarity = np.array([[0.0, 0.3, 0.3, 0.3], [1, 0, 2, 3], [1, 2, 0, 3], [1, 2, 3, 0]], float)
    sample = ts.random_triplets(similarity, np.zeros(DRAWS, int), np.random.default_rng(1))
    expected = np.zeros((4, 4))
    for pair in itertools.permutations([1, 2, 3], 2):
        expected[pair] = 1 / 6
    assert_matches(pair_counts(sample, 4), expected)
    assert not sample.ordered.any()


def test_extreme_is_exact_with_ties_to_the_lowest_index():
    similarity = np.array(
        [
            [5.0, 0.2, 0.9, 0.9, 0.2],
            [0.2, -9.0, 0.5, 0.1, 0.6],
            [0.3, 0.3, 0.3, 0.3, 0.3],
            [0.9, 0.1, 0.4, 0.0, 0.4],
            [0.2, 0.6, 0.3, 0.4, 9.0],
        ]
    )
    sample = ts.extreme_triplets(similarity, np.array([0, 1, 2, 3, 4, 0]))
    assert sample.positive.tolist() == [2, 4, 0, 0, 1, 2]
    assert sample.negative.tolist() == [1, 3, 1, 1, 0, 1]
    assert sample.ordered.tolist() == [True, True, False, True, True, True]


def test_probability_matches_the_exact_joint_distribution():
    sample = ts.probability_triplets(S_PROBABILITY, np.zeros(DRAWS, int), np.random.default_rng(2))
    expected = probability_joint(S_PROBABILITY[0], 0)
    # Weights w = [0.2, 0, 0.7, 1] for images 1..4 (s = -0.3 reads as 0), so image 2 is never the
    # positive and image 4 (1 - 1 = 0) never the negative.
    assert expected[2].sum() == 0 and expected[:, 4].sum() == 0
    assert_matches(pair_counts(sample, 5), expected)
    assert not sample.ordered.all()  # misordered draws are kept


def random_joint(row, anchor):
    """Exact Pr(P = p, N = n) of Random sampling: uniform over the pairs with s_AP > s_AN."""
    joint = np.zeros((len(row), len(row)))
    for p, n in itertools.permutations([x for x in range(len(row)) if x != anchor], 2):
        joint[p, n] = float(row[p] > row[n])
    return joint / joint.sum()


@pytest.mark.parametrize("favourite", [0.9, 0.5])
def test_probability_draws_follow_the_similarities_not_the_random_sampler(favourite):
    # Anchor 0; image 1 is much more similar to it than images 2..5 (one of which is negative).
    row = np.array([1.0, favourite, 0.3, 0.2, 0.0, -0.6])
    similarity = np.eye(6)
    similarity[0], similarity[:, 0] = row, row
    anchors = np.zeros(DRAWS, int)
    sample = ts.probability_triplets(similarity, anchors, np.random.default_rng(10))
    random_sample = ts.random_triplets(similarity, anchors, np.random.default_rng(11))
    # The stated formula: Pr(P = X) = max(s_AX, 0) / sum_Y max(s_AY, 0) over the others.
    weights = np.maximum(row[1:], 0)
    stated = weights / weights.sum()
    drawn = np.bincount(sample.positive, minlength=6)[1:] / DRAWS
    random_drawn = np.bincount(random_sample.positive, minlength=6)[1:] / DRAWS
    random_stated = random_joint(row, 0).sum(axis=1)[1:]
    # Tolerance: 5 binomial standard errors of a frequency over DRAWS draws (about 0.017 at most).
    tolerance = 5 * np.sqrt(np.maximum(stated * (1 - stated), 1 / DRAWS) / DRAWS)
    np.testing.assert_array_less(np.abs(drawn - stated), tolerance)
    np.testing.assert_array_less(np.abs(random_drawn - random_stated), 5 * np.sqrt(0.25 / DRAWS))
    assert drawn[0] == pytest.approx(favourite / (favourite + 0.5), abs=tolerance[0])
    # Random draws image 1 as P in 4 of its 10 ordered pairs whatever its similarity (0.4); the
    # Probability sampler 0.643 / 0.5: the frequencies differ by more than both tolerances together.
    assert random_stated[0] == pytest.approx(0.4)
    assert abs(drawn[0] - random_drawn[0]) > 4 * tolerance[0]
    assert drawn[4] == 0 and drawn[3] == 0  # s = -0.6 and s = 0 are never the positive
    # Negatives: Pr(N = X) ∝ 1 - max(s_AX, 0) among the others but P, marginalised over P.
    stated_negative = probability_joint(row, 0).sum(axis=0)[1:]
    drawn_negative = np.bincount(sample.negative, minlength=6)[1:] / DRAWS
    np.testing.assert_allclose(drawn_negative, stated_negative, atol=5 * np.sqrt(0.25 / DRAWS))


def test_probability_with_all_zero_weights_is_uniform():
    similarity = np.array([[0.5, 0.0, -1.0, 0.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], float)
    sample = ts.probability_triplets(similarity, np.zeros(DRAWS, int), np.random.default_rng(3))
    assert_matches(pair_counts(sample, 4), probability_joint(similarity[0], 0))


@pytest.mark.parametrize("max_retries", [0, 2])
def test_reject_matches_conditioned_distribution_with_swap_fallback(max_retries):
    sample = ts.reject_triplets(
        S_PROBABILITY, np.zeros(DRAWS, int), np.random.default_rng(4), max_retries=max_retries
    )
    row = S_PROBABILITY[0]
    draw = probability_joint(row, 0)
    accepted = np.zeros_like(draw, bool)
    for p, n in itertools.product(range(5), repeat=2):
        accepted[p, n] = draw[p, n] > 0 and row[p] >= row[n]
    alpha = draw[accepted].sum()
    tries = 1 + max_retries
    # Accepted at some try, or rejected at every try with the last draw swapped.
    expected = np.where(accepted, draw, 0) * (1 - (1 - alpha) ** tries) / alpha
    expected += (1 - alpha) ** (tries - 1) * np.where(accepted, 0, draw).T
    assert_matches(pair_counts(sample, 5), expected)
    assert np.all(row[sample.positive] >= row[sample.negative])


def test_reject_never_returns_misordered_triplets_on_random_matrices():
    rng = np.random.default_rng(5)
    similarity = rng.random((30, 30))
    anchors = rng.integers(0, 30, 3000)
    sample = ts.reject_triplets(similarity, anchors, rng, max_retries=1)
    rows = similarity[anchors]
    picked = np.arange(anchors.size)
    assert np.all(rows[picked, sample.positive] >= rows[picked, sample.negative])
    assert sample.ordered.all()  # no ties in a random matrix


@pytest.mark.parametrize("method", sorted(ts.SAMPLERS))
def test_never_the_anchor_and_reproducible(method):
    rng = np.random.default_rng(6)
    similarity = rng.random((7, 7))
    similarity[np.arange(0, 7, 2), np.arange(0, 7, 2)] = 5.0  # self most similar
    similarity[np.arange(1, 7, 2), np.arange(1, 7, 2)] = -5.0  # self least similar
    anchors = np.tile(np.arange(7), 300)
    sample = ts.sample_triplets(method, similarity, anchors, np.random.default_rng(7))
    assert np.all(sample.positive != anchors) and np.all(sample.negative != anchors)
    assert np.all(sample.positive != sample.negative)
    assert np.all((0 <= sample.positive) & (sample.positive < 7))
    again = ts.sample_triplets(method, similarity, anchors, np.random.default_rng(7))
    for first, second in zip(sample, again, strict=True):
        np.testing.assert_array_equal(first, second)
    rows = similarity[anchors, sample.positive] > similarity[anchors, sample.negative]
    np.testing.assert_array_equal(sample.ordered, rows)
    empty = ts.sample_triplets(method, similarity, np.zeros(0, int), np.random.default_rng(7))
    assert empty.positive.shape == (0,) and empty.ordered.dtype == bool


@pytest.mark.parametrize("method", ts.BOUNDED_SAMPLERS)
def test_unnormalised_similarities_are_rejected_not_degenerate(method):
    # Raw inner products of averaged word vectors (un-normalised captions): a few units. Clipped to
    # [0, 1] they would give every weight 0 or 1, i.e. a uniform draw; they are rejected instead.
    raw = np.array(
        [[4.0, 3.1, 1.2, 2.5], [3.1, 5.0, 0.7, 2.2], [1.2, 0.7, 2.0, 0.9], [2.5, 2.2, 0.9, 3.0]]
    )
    rng = np.random.default_rng(0)
    with pytest.raises(
        DataError, match=rf"similarity.*{method} sampler needs .*\[-1, 1\].*0.7, 3.1"
    ):
        ts.sample_triplets(method, raw, [0, 1, 2, 3], rng)
    with pytest.raises(DataError, match=rf"{method} sampler needs similarities in \[-1, 1\]"):
        ts.check_similarity_range(raw, method)
    # The order-only samplers take the same matrix.
    for order_only in ("random", "extreme"):
        ts.check_similarity_range(raw, order_only)
        assert ts.sample_triplets(order_only, raw, [0, 1, 2, 3], rng).ordered.all()
    # Mean cosines (normalised) are accepted, with float rounding just above 1 tolerated.
    cosine = raw / 5.0
    cosine[0, 1] = cosine[1, 0] = 1.0 + ts.RANGE_TOLERANCE / 2
    ts.check_similarity_range(cosine, method)
    sample = ts.sample_triplets(method, cosine, np.zeros(1000, int), rng)
    assert np.mean(sample.positive == 1) > 0.4  # s = 1 against 0.24 and 0.5: not uniform (1/3)
    # The diagonal is never read: self-similarities out of range are allowed.
    np.fill_diagonal(cosine, 7.0)
    ts.check_similarity_range(cosine, method, rows_per_chunk=3)
    ts.sample_triplets(method, cosine, [0, 1, 2, 3], rng)
    cosine[2, 3] = -1.5
    with pytest.raises(DataError, match=r"got values in \[-1.5, 1"):
        ts.check_similarity_range(cosine, method, rows_per_chunk=3)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="at least 3 images"):
        ts.random_triplets(np.ones((2, 2)), [0], rng)
    with pytest.raises(ConfigError, match="option 'similarity': expected a square"):
        ts.probability_triplets(np.ones((3, 4)), [0], rng)
    with pytest.raises(ConfigError, match="option 'anchors'"):
        ts.random_triplets(np.ones((3, 3)), [3], rng)
    with pytest.raises(ConfigError, match="option 'anchors'"):
        ts.random_triplets(np.ones((3, 3)), [0.5], rng)
    with pytest.raises(ConfigError, match="option 'rng'"):
        ts.random_triplets(np.ones((3, 3)), [0], 0)
    with pytest.raises(DataError, match="NaN"):
        ts.extreme_triplets(np.array([[0, 1, np.nan], [1, 0, 1], [1, 1, 0]]), [0])
    with pytest.raises(ConfigError, match="option 'max_retries'"):
        ts.reject_triplets(np.ones((3, 3)), [0], rng, max_retries=-1)
    with pytest.raises(ConfigError, match="option 'method'"):
        ts.sample_triplets("hardest", np.ones((3, 3)), [0], rng)
    with pytest.raises(ConfigError, match="option 'random'"):
        ts.sample_triplets("random", np.ones((3, 3)), [0], rng, max_retries=2)
