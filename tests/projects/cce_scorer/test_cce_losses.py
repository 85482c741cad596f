"""Tests of the CCE + Scorer losses (Huang et al., ACCV 2020) on hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.cce_scorer import losses

# P + 1 = 4 classes: column 0 = background, 1..3 predicates.
HAND_LOGITS = np.array(
    [
        [3.0, 1.0, 2.0, 0.0],  # y = 1; background most probable, ŷ = 2: 2 − 1 = 1.0
        [0.0, 2.0, 0.5, 1.0],  # y = 1; ŷ = 3: 1 − 2 = −1.0
        [1.0, 0.0, 2.5, 0.5],  # y = 0; "include": ŷ = 2: 2.5 − 1 = 1.5
        [9.0, 9.0, 9.0, 9.0],  # padding
    ],
    np.float32,
)
HAND_LABELS = np.array([1, 1, 0, 3], np.int32)
HAND_MASK = np.array([True, True, True, False])


# d cce / d logits, compiled (eager autodiff compiles every primitive separately: slow on CPU)
cce_gradient = jax.jit(jax.grad(losses.cce), static_argnums=3, static_argnames="background")


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_hardest_negative_excludes_background_and_true_class():
    negatives = losses.hardest_negative(HAND_LOGITS, HAND_LABELS)
    np.testing.assert_array_equal(negatives[:3], [2, 3, 2])
    # "any": background may be a foreground row's negative (row 0); a background row still gets
    # the most probable foreground predicate (row 2), as under "foreground".
    negatives = losses.hardest_negative(HAND_LOGITS, HAND_LABELS, "any")
    np.testing.assert_array_equal(negatives[:3], [0, 3, 2])


def official_cce_reference(logits, labels, m1, lambda1, pool):
    """numpy re-statement of the official CCE (stevehuanghe/scene_graph train_rels.py:240-244).

    ``neg_rels = get_neg_labels(rel_dists, gt_rels)`` (lib/utils.py is unpublished: its two
    readings, ``pool``), then ``lambda1 * relu(CE(gt) − CE(neg) + m1).mean()`` with unreduced
    cross-entropies, over every row (background rows included), written with the log-sum-exp
    rather than simplified to a logit difference.
    """
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(logits))
    peak = logits.max(-1, keepdims=True)
    log_normaliser = (peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True)))[:, 0]
    ce_true = log_normaliser - logits[rows, labels]
    candidates = logits.copy()
    candidates[rows, labels] = -np.inf
    if pool == "foreground":
        candidates[:, 0] = -np.inf
    negatives = np.argmax(candidates, axis=-1)  # first index on ties
    ce_negative = log_normaliser - logits[rows, negatives]
    return lambda1 * np.mean(np.maximum(ce_true - ce_negative + m1, 0.0)), negatives


@pytest.mark.parametrize("pool", ["foreground", "any"])
@pytest.mark.parametrize("margin", [0.0, 0.7])
def test_official_cce_matches_a_numpy_restatement_of_the_official_lines(pool, margin):
    rng = np.random.default_rng(3)
    num_rows, num_classes = 64, 6
    # integer logits: many ties, between negatives and between the true class and its negative
    logits = rng.integers(-2, 3, (num_rows, num_classes)).astype(np.float32)
    labels = np.where(rng.random(num_rows) < 0.6, 0, rng.integers(1, num_classes, num_rows))
    assert (labels == 0).sum() > 20 and (labels > 0).sum() > 10
    expected, reference_negatives = official_cce_reference(logits, labels, margin, 100.0, pool)
    negatives = np.asarray(losses.hardest_negative(logits, labels, pool))
    np.testing.assert_array_equal(negatives, reference_negatives)
    # padded rows (NaN logits) appended to a batch of 2 images change nothing
    padded_logits = np.concatenate([logits, np.full((16, num_classes), np.nan, np.float32)])
    padded_labels = np.concatenate([labels, np.full(16, 3)]).reshape(2, 40)
    mask = np.concatenate([np.ones(num_rows, bool), np.zeros(16, bool)]).reshape(2, 40)
    value = losses.cce(
        padded_logits.reshape(2, 40, num_classes),
        padded_labels,
        mask,
        margin,
        background="include",
        negatives=pool,
    )
    assert 100.0 * float(value) == pytest.approx(expected, rel=1e-5)
    # the loss-level official variant: λ1·CCE (+ λ2·BCE), no relation CE
    loss, terms = losses.cce_scorer_losses(
        logits,
        np.zeros(num_rows, np.float32),
        labels,
        np.ones(num_rows, bool),
        margin=margin,
        negatives=pool,
        lambda_bce=0.0,
    )
    assert set(terms) == {"cce", "scorer_bce"}
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_cce_tie_gradient_goes_to_the_first_tied_negative():
    logits = np.array([[0.0, 1.0, 2.0, 2.0], [5.0, 1.0, 1.0, 1.0]], np.float32)
    labels = np.array([1, 0])
    gradient = cce_gradient(logits, labels, np.ones(2, bool), 0.0, background="include")
    # row 0: ŷ = 2 (first of the tied 2, 3): 2 − 1 = 1 > 0; row 1: ŷ = 1, 1 − 5 < 0 (no gradient)
    np.testing.assert_allclose(gradient, [[0.0, -0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # a true class tied with its hardest negative: the hinge sits at α
    tied = np.array([[0.0, 2.0, 2.0]], np.float32)
    assert float(losses.cce(tied, np.array([1]), np.array([True]), 0.25)) == pytest.approx(0.25)


def test_cce_hand_values_equal_log_probability_difference():
    log_p = log_softmax(np.float64(HAND_LOGITS))
    # log p_ŷ − log p_y written out (the normaliser cancels: equals z_ŷ − z_y).
    assert log_p[0, 2] - log_p[0, 1] == pytest.approx(1.0)
    assert log_p[1, 3] - log_p[1, 1] == pytest.approx(-1.0)
    assert log_p[2, 2] - log_p[2, 0] == pytest.approx(1.5)
    # skip: rows 0, 1 count -> (1.0 + max(−1, 0)) / 2
    assert float(losses.cce(HAND_LOGITS, HAND_LABELS, HAND_MASK)) == pytest.approx(0.5)
    # include: rows 0, 1, 2 -> (1.0 + 0 + 1.5) / 3
    value = losses.cce(HAND_LOGITS, HAND_LABELS, HAND_MASK, background="include")
    assert float(value) == pytest.approx(2.5 / 3, rel=1e-6)


@pytest.mark.parametrize(
    ("margin", "expected"),
    [(0.0, 0.5), (0.5, (1.5 + 0.0) / 2), (1.0, (2.0 + 0.0) / 2), (1.5, (2.5 + 0.5) / 2)],
)
def test_cce_margin_and_hinge(margin, expected):
    value = losses.cce(HAND_LOGITS, HAND_LABELS, HAND_MASK, margin)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_cce_hinge_is_zero_when_true_class_wins_by_the_margin():
    logits = np.array([[0.0, 5.0, 1.0, 2.0]], np.float32)  # z_ŷ − z_y = 2 − 5 = −3
    assert float(losses.cce(logits, np.array([1]), np.array([True]), 2.9)) == 0.0
    assert float(losses.cce(logits, np.array([1]), np.array([True]), 3.5)) == pytest.approx(0.5)


def test_cce_all_masked_or_only_background_is_zero_and_finite():
    nan_logits = np.full_like(HAND_LOGITS, np.nan)
    value = losses.cce(nan_logits, HAND_LABELS, np.zeros(4, bool))
    assert float(value) == 0.0
    only_background = np.array([False, False, True, False])
    assert float(losses.cce(HAND_LOGITS, HAND_LABELS, only_background)) == 0.0
    gradient = cce_gradient(nan_logits, HAND_LABELS, np.zeros(4, bool), 0.0)
    assert np.all(gradient == 0.0)


def test_cce_two_classes_has_no_negative():
    logits = np.array([[0.0, 1.0], [2.0, 0.0]], np.float32)
    assert float(losses.cce(logits, np.array([1, 0]), np.ones(2, bool), 1.0)) == 0.0
    # include: only row 1 counts (ŷ = 1): max(0 − 2 + 3, 0) = 1
    value = losses.cce(logits, np.array([1, 0]), np.ones(2, bool), 3.0, background="include")
    assert float(value) == pytest.approx(1.0)
    # "any": background is row 0's negative: max(0 − 1 + 3, 0) = 2; row 1 as above: 1
    value = losses.cce(
        logits, np.array([1, 0]), np.ones(2, bool), 3.0, background="include", negatives="any"
    )
    assert float(value) == pytest.approx((2.0 + 1.0) / 2)


def test_cce_gradient_on_true_and_hardest_negative_columns():
    gradient = cce_gradient(HAND_LOGITS, HAND_LABELS, HAND_MASK, 0.5)
    # Rows 0 and 1 count (2 relations); both hinges are active at α = 0.5 only for row 0.
    np.testing.assert_allclose(gradient[0], [0.0, -0.5, 0.5, 0.0])
    np.testing.assert_allclose(gradient[1:], 0.0)
    gradient = cce_gradient(HAND_LOGITS, HAND_LABELS, HAND_MASK, 1.5)
    np.testing.assert_allclose(gradient[1], [0.0, -0.5, 0.0, 0.5])
    gradient = cce_gradient(HAND_LOGITS, HAND_LABELS, HAND_MASK, 0.0, background="include")
    np.testing.assert_allclose(gradient[2], [-1 / 3, 0.0, 1 / 3, 0.0], rtol=1e-6)


def test_cce_jits_over_batched_pairs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6)).astype(np.float32)
    labels = rng.integers(0, 6, (2, 5))
    mask = rng.random((2, 5)) < 0.8
    eager = losses.cce(logits, labels, mask, 0.3)
    jitted = jax.jit(lambda z, y, m: losses.cce(z, y, m, 0.3))(logits, labels, mask)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    # numpy reference: max(log p_ŷ − log p_y + α, 0) over masked foreground pairs
    log_p = log_softmax(np.float64(logits))
    terms = []
    for b, r in zip(*np.nonzero(mask & (labels > 0)), strict=True):
        others = [j for j in range(1, 6) if j != labels[b, r]]
        negative = others[int(np.argmax(log_p[b, r, others]))]
        terms.append(max(log_p[b, r, negative] - log_p[b, r, labels[b, r]] + 0.3, 0.0))
    assert float(eager) == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize(
    ("option", "kwargs"),
    [
        ("margin", {"margin": -0.1}),
        ("margin", {"margin": math.nan}),
        ("margin", {"margin": True}),
        ("background", {"background": "ignore"}),
        ("cce_negatives", {"negatives": "all"}),
    ],
)
def test_cce_bad_options(option, kwargs):
    with pytest.raises(ConfigError, match=option):
        losses.cce(HAND_LOGITS, HAND_LABELS, HAND_MASK, **kwargs)


def test_focal_hand_value_and_weight():
    logits = np.log(np.array([[0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25]], np.float32))
    labels = np.array([2, 0])
    mask = np.array([True, False])
    # −(1 − 0.6)^2 log 0.6 = 0.16 × 0.5108256 = 0.0817321
    assert float(losses.focal(logits, labels, mask, 2.0)) == pytest.approx(0.0817321, rel=1e-5)
    # γ = 4: 0.0256 × 0.5108256 = 0.0130771
    assert float(losses.focal(logits, labels, mask)) == pytest.approx(0.0130771, rel=1e-5)
    weight = np.array([1.0, 1.0, 3.0, 1.0], np.float32)
    value = losses.focal(logits, labels, mask, 2.0, weight)
    assert float(value) == pytest.approx(3 * 0.0817321, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 7, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, (3, 7))
    mask = rng.random((3, 7)) < 0.7
    focal = losses.focal(logits, labels, mask, 0.0)
    np.testing.assert_allclose(focal, losses.cross_entropy(logits, labels, mask), rtol=1e-6)
    gradient = jax.jit(jax.grad(lambda z: losses.focal(z, labels, mask, 0.5)))(logits)
    assert np.all(np.isfinite(gradient))


def test_focal_bad_options():
    logits, labels = HAND_LOGITS, HAND_LABELS
    with pytest.raises(ConfigError, match="gamma"):
        losses.focal(logits, labels, HAND_MASK, -1.0)
    with pytest.raises(ConfigError, match="weight"):
        losses.focal(logits, labels, HAND_MASK, 2.0, np.ones(3, np.float32))


def test_scorer_bce_hand_value():
    score_logits = np.array([0.0, 2.0, -1.0, 50.0, 100.0], np.float32)
    targets = losses.scorer_targets(np.array([3, 0, 1, 0, 2]))
    np.testing.assert_array_equal(targets, [1.0, 0.0, 1.0, 0.0, 1.0])
    mask = np.array([True, True, True, False, True])
    # log 2, log(1 + e²), log(1 + e¹), padding, log(1 + e⁻¹⁰⁰) ≈ 0
    expected = (math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.e) + 0.0) / 4
    assert float(losses.scorer_bce(score_logits, targets, mask)) == pytest.approx(expected)
    assert float(losses.scorer_bce(score_logits, targets, np.zeros(5, bool))) == 0.0


def test_cce_scorer_total_and_losses():
    total = losses.cce_scorer_total(jnp.float32(0.5), jnp.float32(2.0), jnp.float32(1.0))
    assert float(total) == pytest.approx(1.0 + 100 * 0.5 + 1 * 2.0)
    total = losses.cce_scorer_total(0.5, 2.0, lambda_cce=1.0, lambda_bce=0.25)
    assert float(total) == pytest.approx(1.0)
    score_logits = np.zeros(4, np.float32)
    loss, terms = losses.cce_scorer_losses(
        HAND_LOGITS, score_logits, HAND_LABELS, HAND_MASK, variant="paper"
    )
    assert set(terms) == {"relation_ce", "cce", "scorer_bce"}
    assert float(terms["cce"]) == pytest.approx(0.5)
    assert float(terms["scorer_bce"]) == pytest.approx(math.log(2))
    expected = terms["relation_ce"] + 100 * terms["cce"] + terms["scorer_bce"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # official (default): no relation CE, CCE over all 3 real rows, background row included
    loss, terms = losses.cce_scorer_losses(HAND_LOGITS, score_logits, HAND_LABELS, HAND_MASK)
    assert set(terms) == {"cce", "scorer_bce"}
    assert float(terms["cce"]) == pytest.approx(2.5 / 3, rel=1e-6)
    assert float(loss) == pytest.approx(100 * 2.5 / 3 + math.log(2), rel=1e-6)
    with pytest.raises(ConfigError, match="option 'background': 'skip' is a 'paper'"):
        losses.cce_scorer_losses(
            HAND_LOGITS, score_logits, HAND_LABELS, HAND_MASK, background="skip"
        )
    with pytest.raises(ConfigError, match="option 'cce_variant': must be one of"):
        losses.cce_scorer_losses(
            HAND_LOGITS, score_logits, HAND_LABELS, HAND_MASK, variant="authors"
        )


@pytest.mark.parametrize(
    ("option", "kwargs"),
    [
        ("lambda_cce", {"lambda_cce": -1.0}),
        ("lambda_cce", {"lambda_cce": math.inf}),
        ("lambda_bce", {"lambda_bce": -0.5}),
        ("lambda_bce", {"lambda_bce": "1"}),
    ],
)
def test_cce_scorer_total_bad_lambdas(option, kwargs):
    with pytest.raises(ConfigError, match=option):
        losses.cce_scorer_total(0.0, 0.0, **kwargs)
    with pytest.raises(ConfigError, match=option):
        losses.cce_scorer_losses(HAND_LOGITS, np.zeros(4), HAND_LABELS, HAND_MASK, **kwargs)
