"""Ranking / triplet / InfoNCE losses on graph embeddings: hand-computed values, masks, degenerate cases."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.sg_embed import losses as el

# Unit vectors with easy dot products: e_x . v = 0.6, e_x . w = 0.8, e_y . v = 0.8, e_y . w = 0.6.
E_X = [1.0, 0.0]
E_Y = [0.0, 1.0]
V = [0.6, 0.8]
W = [0.8, 0.6]
NAN = [float("nan"), float("inf")]


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def bce(target, logit):
    probability = 1.0 / (1.0 + math.exp(-logit))
    return -target * math.log(probability) - (1 - target) * math.log(1 - probability)


def test_ranking_targets_clip_negatives_and_split_zero_evenly():
    targets = el.ranking_targets(
        jnp.array([0.3, 0.0, 0.5, -0.2, -0.1, 2.0]), jnp.array([0.1, 0.0, -0.2, 0.5, -0.3, 2.0])
    )
    np.testing.assert_allclose(targets, [0.75, 0.5, 1.0, 0.0, 0.5, 0.5], rtol=1e-6)


def test_ranking_loss_hand_computed_with_mask_and_degenerate_targets():
    anchor = jnp.array([E_X, E_Y, E_X, NAN, E_X])
    positive = jnp.array([V, E_X, V, NAN, E_Y])
    negative = jnp.array([E_Y, V, W, NAN, E_X])
    s_ap = jnp.array([0.3, 0.0, 0.5, float("nan"), -0.4])
    s_an = jnp.array([0.1, 0.0, -0.2, 0.7, -0.1])
    mask = jnp.array([True, True, True, False, True])
    # z = f_A.f_P - f_A.f_N; P = s_AP / (s_AP + s_AN) after clipping at 0 (0.5 for 0 / 0).
    expected_terms = [
        bce(0.75, 0.6 - 0.0),  # ordinary target
        bce(0.5, 0.0 - 0.8),  # both similarities 0 -> target 0.5
        bce(1.0, 0.6 - 0.8),  # s_AN < 0 clipped -> target 1
        bce(0.5, 0.0 - 1.0),  # both negative -> target 0.5
    ]
    loss = el.ranking_loss(anchor, positive, negative, s_ap, s_an, mask)
    assert float(loss) == pytest.approx(np.mean(expected_terms), rel=1e-6)
    # The closed forms of the first two terms, written out.
    assert expected_terms[0] == pytest.approx(math.log1p(math.exp(0.6)) - 0.75 * 0.6)
    assert expected_terms[1] == pytest.approx(math.log1p(math.exp(-0.8)) + 0.4)
    # nu scales the logit.
    loss_nu = el.ranking_loss(anchor[:1], positive[:1], negative[:1], s_ap[:1], s_an[:1], nu=2.0)
    assert float(loss_nu) == pytest.approx(bce(0.75, 0.3), rel=1e-6)


def test_ranking_loss_matches_naive_bce_and_is_stable_for_large_logits():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 16, 8))
    anchor, positive, negative = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    s_ap, s_an = rng.random((2, 16))
    z = (np.sum(anchor * positive, -1) - np.sum(anchor * negative, -1)) / 0.7
    target = s_ap / (s_ap + s_an)
    naive = np.mean([bce(t, zz) for t, zz in zip(target, z, strict=True)])
    loss = el.ranking_loss(anchor, positive, negative, s_ap, s_an, nu=0.7)
    assert float(loss) == pytest.approx(naive, rel=1e-5)
    # nu = 1e-3: logits of +-600 overflow a naive sigmoid; the loss is (1 - P) z for z >> 0.
    big = el.ranking_loss([E_X], [E_X], [E_Y], [0.3], [0.1], nu=1e-3)
    assert float(big) == pytest.approx(0.25 * 1000.0, rel=1e-5)
    small = el.ranking_loss([E_X], [E_Y], [E_X], [0.3], [0.1], nu=1e-3)
    assert float(small) == pytest.approx(0.75 * 1000.0, rel=1e-5)


def test_triplet_loss_hand_computed():
    anchor = jnp.array([E_X, E_X, NAN, E_Y])
    positive = jnp.array([V, E_X, NAN, V])
    negative = jnp.array([W, E_Y, NAN, E_Y])
    mask = jnp.array([True, True, False, True])
    # max(f_A.f_N - f_A.f_P + 0.5, 0): 0.8 - 0.6 + 0.5 = 0.7; 0 - 1 + 0.5 < 0; 1 - 0.8 + 0.5 = 0.7.
    loss = el.triplet_loss(anchor, positive, negative, mask)
    assert float(loss) == pytest.approx((0.7 + 0.0 + 0.7) / 3, rel=1e-6)
    assert float(el.triplet_loss(anchor[:2], positive[:2], negative[:2], margin=0.0)) == (
        pytest.approx(0.2 / 2, rel=1e-6)
    )
    assert float(el.triplet_loss(anchor, positive, negative, jnp.zeros(4, bool))) == 0.0


def test_info_nce_hand_computed_with_negative_mask():
    anchor = jnp.array([E_X, E_X, E_X, NAN])
    positive = jnp.array([V, V, V, NAN])
    negatives = jnp.array([[E_Y, W], [E_Y, W], [E_Y, NAN], [NAN, NAN]])
    negative_mask = jnp.array([[True, True], [True, False], [False, False], [True, True]])
    mask = jnp.array([True, True, True, False])
    # Anchor 0: logits 0.6 | 0, 0.8; anchor 1: 0.6 | 0; anchor 2 has no valid negative (excluded).
    term0 = -0.6 + math.log(math.exp(0.6) + 1.0 + math.exp(0.8))
    term1 = -0.6 + math.log(math.exp(0.6) + 1.0)
    loss = el.info_nce_loss(anchor, positive, negatives, mask, negative_mask)
    assert float(loss) == pytest.approx((term0 + term1) / 2, rel=1e-6)
    # lambda = 0.5 doubles the logits.
    loss_half = el.info_nce_loss(anchor[:1], positive[:1], negatives[:1], temperature=0.5)
    expected = -1.2 + math.log(math.exp(1.2) + 1.0 + math.exp(1.6))
    assert float(loss_half) == pytest.approx(expected, rel=1e-6)


def test_info_nce_with_one_negative_is_softplus_of_the_margin():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3, 5, 4))
    anchor, positive, negative = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    gap = np.sum(anchor * negative, -1) - np.sum(anchor * positive, -1)
    expected = np.mean([softplus(g) for g in gap])
    assert float(el.info_nce_loss(anchor, positive, negative)) == pytest.approx(expected, rel=1e-5)
    assert float(el.info_nce_loss(anchor, positive, negative[:, None])) == pytest.approx(
        expected, rel=1e-5
    )


def test_gradients_finite_and_zero_for_masked_triplets():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(3, 4, 6)).astype(np.float32)
    anchor, positive, negative = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    anchor[3] = np.nan
    positive[3] = np.inf
    mask = np.array([True, True, True, False])
    s_ap = np.array([0.2, 0.0, -1.0, np.nan], np.float32)
    s_an = np.array([0.4, 0.0, -1.0, np.nan], np.float32)
    losses = {
        "ranking": lambda a, p, n: el.ranking_loss(a, p, n, s_ap, s_an, mask, nu=0.1),
        "triplet": lambda a, p, n: el.triplet_loss(a, p, n, mask, margin=2.0),
        "info_nce": lambda a, p, n: el.info_nce_loss(
            a, p, jnp.stack([n, -n], 1), mask, temperature=0.2
        ),
    }
    for name, loss_fn in losses.items():
        value, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))(
            anchor, positive, negative
        )
        assert np.isfinite(float(value)), name
        for grad in grads:
            assert np.all(np.isfinite(grad)), name
            assert np.all(grad[3] == 0), name
        assert np.any(grads[0][:3] != 0), name


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1", None])
def test_bad_hyper_parameters(bad):
    a = jnp.array([E_X])
    with pytest.raises(ConfigError, match="option 'nu'"):
        el.ranking_loss(a, a, a, [0.1], [0.2], nu=bad)
    with pytest.raises(ConfigError, match="option 'temperature'"):
        el.info_nce_loss(a, a, a, temperature=bad)
    if bad != 0:
        with pytest.raises(ConfigError, match="option 'margin'"):
            el.triplet_loss(a, a, a, margin=bad)


def test_shape_errors_name_the_argument():
    a = jnp.ones((3, 4))
    with pytest.raises(ConfigError, match="option 'positive'"):
        el.triplet_loss(a, jnp.ones((3, 5)), a)
    with pytest.raises(ConfigError, match="option 'mask'"):
        el.triplet_loss(a, a, a, jnp.ones(2, bool))
    with pytest.raises(ConfigError, match="option 'similarity_negative'"):
        el.ranking_loss(a, a, a, jnp.ones(3), jnp.ones(4))
    with pytest.raises(ConfigError, match="option 'negatives'"):
        el.info_nce_loss(a, a, jnp.ones((3, 2, 5)))
    with pytest.raises(ConfigError, match="option 'negative_mask'"):
        el.info_nce_loss(a, a, jnp.ones((3, 2, 4)), negative_mask=jnp.ones((3, 3), bool))


def test_losses_jit_with_static_hyper_parameters():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 8, 4)).astype(np.float32)
    a, p, n = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    s = rng.random((2, 8)).astype(np.float32)
    jitted = jax.jit(functools.partial(el.ranking_loss, nu=0.5))
    assert float(jitted(a, p, n, s[0], s[1])) == pytest.approx(
        float(el.ranking_loss(a, p, n, s[0], s[1], nu=0.5)), rel=1e-6
    )
