"""Tests of the Scorer (Huang et al., ACCV 2020): config, masking, empty images, w/o SA, jit."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.cce_scorer.scorer import (
    Scorer,
    ScorerConfig,
    global_image_feature,
    masked_softmax,
)

B, R, F, C, G = 2, 5, 6, 4, 3
PAIR_MASK = np.array([[True, True, False, True, False], [True, True, True, True, True]])


def tiny_config(**overrides) -> ScorerConfig:
    return ScorerConfig(**{"hidden_dim": 8, "attention_dim": 4, **overrides})


def make_inputs(seed=0, pair_mask=PAIR_MASK):
    rng = np.random.default_rng(seed)
    relation_features = rng.normal(size=(B, R, F)).astype(np.float32)
    distribution = jax.nn.softmax(rng.normal(size=(B, R, C)) * 2, axis=-1)
    image_features = rng.normal(size=(B, G)).astype(np.float32)
    return relation_features, np.asarray(distribution, np.float32), image_features, pair_mask


@functools.cache
def jitted(config):
    """``(init, apply)`` of the Scorer, compiled once per config (eager flax is slow on CPU)."""
    model = Scorer(config)
    return jax.jit(model.init), jax.jit(model.apply)


def init_and_apply(config, inputs, params=None):
    init, apply = jitted(config)
    if params is None:
        params = init(jax.random.key(0), *inputs)
    return params, apply(params, *inputs)


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_dim", 0), ("attention_dim", -2), ("attention_dim", 2.0), ("use_attention", 1)],
)
def test_config_rejects_bad_fields(field, value):
    with pytest.raises(ConfigError, match=field):
        ScorerConfig(**{field: value})


def test_config_defaults_are_the_papers():
    config = ScorerConfig()
    assert (config.hidden_dim, config.attention_dim, config.use_attention) == (512, 256, True)


def test_masked_softmax_hand_values_and_empty_row():
    scores = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])
    weights = masked_softmax(scores, mask)
    denominator = math.e + math.e**3
    np.testing.assert_allclose(weights[0], [math.e / denominator, 0.0, math.e**3 / denominator])
    np.testing.assert_array_equal(weights[1], [0.0, 0.0, 0.0])
    gradient = jax.jit(jax.grad(lambda s: jnp.sum(masked_softmax(s, mask) * jnp.arange(3.0))))(
        scores
    )
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient[:, 1], 0.0)
    np.testing.assert_array_equal(gradient[1], 0.0)


def test_output_shape_and_attention_rows():
    params, (scores, aux) = init_and_apply(tiny_config(), make_inputs())
    chex.assert_shape(scores, (B, R))
    chex.assert_tree_all_finite(scores)
    weights = np.asarray(aux["attention_weights"])
    chex.assert_shape(weights, (B, R, R))
    # padded keys get exactly zero weight, every query row sums to 1 over the real keys
    np.testing.assert_array_equal(
        weights[~np.broadcast_to(PAIR_MASK[:, None, :], weights.shape)], 0
    )
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights[np.broadcast_to(PAIR_MASK[:, None, :], weights.shape)] > 0)
    assert set(params["params"]) == {
        "relation_embed",
        "predicate_embed",
        "query",
        "key",
        "value",
        "score",
    }
    # image features are concatenated to the H-wide pair embedding: value sees H + G inputs
    chex.assert_shape(params["params"]["value"]["kernel"], (8 + G, 4))


@pytest.mark.parametrize("use_attention", [True, False])
def test_padded_pairs_do_not_change_real_scores(use_attention):
    config = tiny_config(use_attention=use_attention)
    inputs = make_inputs()
    params, (scores, _) = init_and_apply(config, inputs)
    padded = ~PAIR_MASK
    rng = np.random.default_rng(7)
    for garbage in (rng.normal(scale=100.0, size=(B, R, F)), np.full((B, R, F), np.nan)):
        relation_features = np.where(padded[..., None], garbage, inputs[0]).astype(np.float32)
        distribution = np.where(padded[..., None], rng.random((B, R, C)), inputs[1])
        changed = (relation_features, distribution.astype(np.float32), *inputs[2:])
        _, (other_scores, _) = init_and_apply(config, changed, params)
        np.testing.assert_array_equal(np.asarray(other_scores)[PAIR_MASK], scores[PAIR_MASK])
        chex.assert_tree_all_finite(other_scores)


def test_image_without_real_pairs_is_finite():
    pair_mask = PAIR_MASK.copy()
    pair_mask[0] = False
    inputs = make_inputs(pair_mask=pair_mask)
    config = tiny_config()
    params, (scores, aux) = init_and_apply(config, inputs)
    chex.assert_tree_all_finite(scores)
    np.testing.assert_array_equal(aux["attention_weights"][0], 0.0)
    np.testing.assert_allclose(np.asarray(aux["attention_weights"][1]).sum(-1), 1.0, rtol=1e-6)

    def loss(params):
        score_logits, _ = Scorer(config).apply(params, *inputs)
        return jnp.sum(jnp.where(pair_mask, score_logits, 0.0)) + jnp.sum(score_logits[0])

    chex.assert_tree_all_finite(jax.jit(jax.grad(loss))(params))


def test_all_background_distributions():
    relation_features, _, image_features, _ = make_inputs()
    distribution = np.zeros((B, R, C), np.float32)
    distribution[..., 0] = 1.0
    inputs = (relation_features, distribution, image_features, PAIR_MASK)
    _, (scores, aux) = init_and_apply(tiny_config(), inputs)
    chex.assert_shape(scores, (B, R))
    chex.assert_tree_all_finite((scores, aux))


def test_attention_mixes_pairs_and_pointwise_variant_does_not():
    inputs = make_inputs()
    changed_features = inputs[0].copy()
    changed_features[:, 1] += 3.0  # a real pair of both images
    changed = (changed_features, *inputs[1:])
    others = np.array([0, 3])  # real pairs of image 0 other than pair 1

    params, (scores, aux) = init_and_apply(tiny_config(use_attention=False), inputs)
    assert aux == {}
    assert "query" not in params["params"] and "key" not in params["params"]
    _, (changed_scores, _) = init_and_apply(tiny_config(use_attention=False), changed, params)
    np.testing.assert_array_equal(changed_scores[0, others], scores[0, others])
    assert not np.allclose(changed_scores[:, 1], scores[:, 1])

    params, (scores, _) = init_and_apply(tiny_config(), inputs)
    _, (changed_scores, _) = init_and_apply(tiny_config(), changed, params)
    assert not np.allclose(changed_scores[0, others], scores[0, others])
    # images do not see each other: changing image 0 only leaves image 1 alone
    only_image0 = inputs[0].copy()
    only_image0[0] += 1.0
    _, (image0_scores, _) = init_and_apply(tiny_config(), (only_image0, *inputs[1:]), params)
    np.testing.assert_array_equal(image0_scores[1], scores[1])


def test_jit_matches_eager_without_retracing():
    config = tiny_config()
    inputs = make_inputs()
    params, (scores, _) = init_and_apply(config, inputs)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, *inputs):
        return Scorer(config).apply(params, *inputs)

    jitted, _ = apply(params, *inputs)
    np.testing.assert_allclose(jitted, scores, rtol=1e-5, atol=1e-6)
    apply(params, *make_inputs(seed=3))


def test_global_image_feature_masked_mean():
    object_features = np.array(
        [[[1.0, 2.0], [3.0, 6.0], [np.nan, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]],
        np.float32,
    )
    object_mask = np.array([[True, True, False], [False, False, False]])
    feature = global_image_feature(object_features, object_mask)
    np.testing.assert_array_equal(feature, [[2.0, 4.0], [0.0, 0.0]])
