"""Tests of the CCE + Scorer loss builder (one row of the ablation) on hand-made outputs."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.cce_scorer import losses
from sgg_jax.relation.motifs import MotifsConfig
from sgg_jax.relation.penet import PENetConfig

NUM_CLASSES = 3
NUM_PREDICATES = 3  # C = 4

MOTIFS = MotifsConfig.small(NUM_CLASSES, NUM_PREDICATES)
MOTIFS_SGCLS = MotifsConfig.small(NUM_CLASSES, NUM_PREDICATES, task="sgcls")
PENET = PENetConfig.small(NUM_CLASSES, NUM_PREDICATES)

# one image, 4 pair slots (3 real), 3 object slots (2 real)
RELATION_LOGITS = np.array(
    [[[3.0, 1.0, 2.0, 0.0], [0.0, 2.0, 0.5, 1.0], [1.0, 0.0, 2.5, 0.5], [9.0, 9.0, 9.0, 9.0]]],
    np.float32,
)
SCORER_LOGITS = np.array([[0.5, -1.0, 2.0, 100.0]], np.float32)
PAIR_LABELS = np.array([[1, 1, 0, 3]], np.int32)
PAIR_MASK = np.array([[True, True, True, False]])
OBJECT_LOGITS = np.array([[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0]]])


def fake_batch(pair_labels=PAIR_LABELS, pair_mask=PAIR_MASK):
    return types.SimpleNamespace(
        pair_labels=pair_labels,
        pair_mask=pair_mask,
        labels=np.array([[1, 2, 0]], np.int32),
        object_mask=np.array([[True, True, False]]),
    )


def outputs(with_objects=False, with_scorer=True):
    result = {"relation_logits": jnp.asarray(RELATION_LOGITS)}
    if with_scorer:
        result["scorer_logits"] = jnp.asarray(SCORER_LOGITS)
    if with_objects:
        result["object_logits"] = jnp.asarray(OBJECT_LOGITS, jnp.float32)
    return result


def penet_aux(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "relation_projection": jnp.asarray(rng.normal(size=(1, 4, 6)), jnp.float32),
        "prototype_projection": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
    }


def softplus(x):
    return math.log1p(math.exp(x))


# BCE of SCORER_LOGITS, q = (1, 1, 0) on the real pairs
BCE = (softplus(-0.5) + softplus(1.0) + softplus(2.0)) / 3


@pytest.mark.parametrize(("negatives", "cce_value"), [("foreground", 2.5 / 3), ("any", 3.5 / 3)])
def test_official_variant_replaces_the_relation_ce_by_cce_over_all_relations(negatives, cce_value):
    config = losses.CCEScorerLossConfig(
        base="motifs", use_cce=True, use_scorer=True, lambda_bce=2.0, cce_negatives=negatives
    )
    assert config.cce_variant == "official" and config.background == "include"
    loss, terms = losses.make_cce_scorer_loss(config, MOTIFS)(outputs(), {}, fake_batch())
    assert set(terms) == {"cce", "scorer_bce"}  # no relation CE: CCE replaces it
    # all three real pairs, the background one included: row 0 (y = 1) 2 − 1 = 1 ("foreground",
    # ŷ = 2) or 3 − 1 = 2 ("any", ŷ = background); row 1 max(1 − 2, 0) = 0; row 2 (y = 0,
    # ŷ = 2) 2.5 − 1 = 1.5
    np.testing.assert_allclose(terms["cce"], cce_value, rtol=1e-6)
    np.testing.assert_allclose(terms["scorer_bce"], BCE, rtol=1e-5)
    np.testing.assert_allclose(loss, 100.0 * cce_value + 2.0 * BCE, rtol=1e-5)


def test_paper_variant_is_ce_plus_weighted_cce_and_bce_on_hand_values():
    config = losses.CCEScorerLossConfig(
        base="motifs",
        use_cce=True,
        use_scorer=True,
        cce_variant="paper",
        lambda_cce=100.0,
        lambda_bce=2.0,
    )
    assert config.background == "skip"
    loss, terms = losses.make_cce_scorer_loss(config, MOTIFS)(outputs(), {}, fake_batch())
    assert set(terms) == {"relation_ce", "cce", "scorer_bce"}
    # CCE on the two foreground pairs: max(2 − 1, 0) = 1 and max(1 − 2, 0) = 0 → 0.5
    np.testing.assert_allclose(terms["cce"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(terms["scorer_bce"], BCE, rtol=1e-5)
    ce = losses.cross_entropy(RELATION_LOGITS, PAIR_LABELS, PAIR_MASK)
    np.testing.assert_allclose(terms["relation_ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(loss, ce + 100.0 * 0.5 + 2.0 * BCE, rtol=1e-5)


def test_motifs_sgcls_adds_the_object_ce_and_focal_x100_replaces_the_relation_ce():
    config = losses.CCEScorerLossConfig(base="motifs", use_focal=True, gamma=2.0)
    assert config.lambda_focal == 100.0  # the official conf.lambda1 * focal_loss
    loss, terms = losses.make_cce_scorer_loss(config, MOTIFS_SGCLS)(
        outputs(with_objects=True, with_scorer=False), {}, fake_batch()
    )
    assert set(terms) == {"relation_focal", "object_ce"}
    focal = losses.focal(RELATION_LOGITS, PAIR_LABELS, PAIR_MASK, 2.0)
    object_ce = losses.cross_entropy(OBJECT_LOGITS, [[1, 2, 0]], [[True, True, False]])
    np.testing.assert_allclose(terms["relation_focal"], focal, rtol=1e-6)
    np.testing.assert_allclose(loss, 100.0 * focal + object_ce, rtol=1e-6)
    config = losses.CCEScorerLossConfig(base="motifs", use_focal=True, gamma=2.0, lambda_focal=1)
    loss, _ = losses.make_cce_scorer_loss(config, MOTIFS_SGCLS)(
        outputs(with_objects=True, with_scorer=False), {}, fake_batch()
    )
    np.testing.assert_allclose(loss, focal + object_ce, rtol=1e-6)


def test_penet_keeps_its_own_terms_and_adds_cce_and_bce():
    config = losses.CCEScorerLossConfig(
        base="penet", use_cce=True, use_scorer=True, cce_variant="paper"
    )
    loss_fn = losses.make_cce_scorer_loss(config, PENET)
    loss, terms = loss_fn(outputs(), penet_aux(), fake_batch())
    _, penet_terms = losses.make_penet_loss(PENET, num_negatives=3)(
        outputs(), penet_aux(), fake_batch()
    )
    assert set(terms) == set(penet_terms) | {"cce", "scorer_bce"}
    expected = sum(penet_terms.values()) + 100.0 * terms["cce"] + terms["scorer_bce"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # official: CCE replaces PE-Net's relation CE (L_e_sim); its other terms stay
    official_fn = losses.make_cce_scorer_loss(
        losses.CCEScorerLossConfig(base="penet", use_cce=True, use_scorer=True), PENET
    )
    loss, terms = official_fn(outputs(), penet_aux(), fake_batch())
    assert set(terms) == (set(penet_terms) - {"relation_ce"}) | {"cce", "scorer_bce"}
    np.testing.assert_allclose(terms["cce"], 2.5 / 3, rtol=1e-6)
    others = sum(v for k, v in penet_terms.items() if k != "relation_ce")
    np.testing.assert_allclose(loss, others + 100.0 * 2.5 / 3 + BCE, rtol=1e-5)
    # focal instead of PE-Net's relation CE (L_e_sim); its other terms stay
    focal_fn = losses.make_cce_scorer_loss(
        losses.CCEScorerLossConfig(base="penet", use_focal=True), PENET
    )
    _, focal_terms = focal_fn(outputs(with_scorer=False), penet_aux(), fake_batch())
    assert set(focal_terms) == (set(penet_terms) - {"relation_ce"}) | {"relation_focal"}


@pytest.mark.parametrize("base, config", [("motifs", MOTIFS), ("penet", PENET)])
def test_all_background_batch_gives_a_finite_loss_and_gradient(base, config):
    loss_config = losses.CCEScorerLossConfig(
        base=base,
        use_cce=True,
        use_scorer=True,
        use_focal=True,
        cce_variant="paper",
        class_weights=(1, 2, 3, 4),
    )
    loss_fn = losses.make_cce_scorer_loss(loss_config, config)
    batch = fake_batch(pair_labels=np.zeros((1, 4), np.int32))

    def total(logits, scores):
        return loss_fn({"relation_logits": logits, "scorer_logits": scores}, penet_aux(), batch)

    (loss, terms), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
        jnp.asarray(RELATION_LOGITS), jnp.asarray(SCORER_LOGITS)
    )
    assert np.isfinite(float(loss))
    assert float(terms["cce"]) == 0.0  # no foreground relation to contrast ("skip")
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    # an empty image (no real pair at all) too
    empty = fake_batch(pair_labels=np.zeros((1, 4), np.int32), pair_mask=np.zeros((1, 4), bool))
    loss, _ = loss_fn(outputs(), penet_aux(), empty)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize(
    "option, value",
    [
        ("lambda_cce", -1.0),
        ("lambda_cce", float("nan")),
        ("lambda_bce", -0.5),
        ("lambda_bce", float("inf")),
        ("lambda_focal", -100.0),
        ("margin", -0.1),
        ("gamma", float("nan")),
    ],
)
def test_negative_or_non_finite_weights_name_the_option(option, value):
    with pytest.raises(ConfigError, match=f"^option '{option}': must be a finite number >= 0"):
        losses.CCEScorerLossConfig(**{option: value})


def test_other_config_errors():
    with pytest.raises(ConfigError, match="option 'base'"):
        losses.CCEScorerLossConfig(base="imp")
    with pytest.raises(ConfigError, match="option 'background'"):
        losses.CCEScorerLossConfig(background="sometimes")
    with pytest.raises(ConfigError, match="option 'cce_variant': must be one of"):
        losses.CCEScorerLossConfig(cce_variant="authors")
    with pytest.raises(ConfigError, match="option 'cce_negatives': must be one of"):
        losses.CCEScorerLossConfig(cce_negatives="all")
    with pytest.raises(ConfigError, match="option 'background': 'skip' is a 'paper'"):
        losses.CCEScorerLossConfig(background="skip")
    assert losses.CCEScorerLossConfig(cce_variant="paper", background="include").background == (
        "include"
    )
    with pytest.raises(ConfigError, match="option 'use_focal': cannot be combined with use_cce"):
        losses.CCEScorerLossConfig(use_cce=True, use_focal=True)
    with pytest.raises(ConfigError, match="option 'class_weights': must have 4 entries"):
        losses.make_cce_scorer_loss(
            losses.CCEScorerLossConfig(use_focal=True, class_weights=(1.0, 2.0)), MOTIFS
        )
    with pytest.raises(ConfigError, match="option 'class_weights'"):
        losses.CCEScorerLossConfig(class_weights=(1.0, -2.0, 1.0, 1.0))
    loss_fn = losses.make_cce_scorer_loss(losses.CCEScorerLossConfig(use_scorer=True), MOTIFS)
    with pytest.raises(ConfigError, match="option 'use_scorer': the model has no Scorer"):
        loss_fn(outputs(with_scorer=False), {}, fake_batch())
    with pytest.raises(ConfigError, match="option 'task'"):
        loss_fn(outputs(with_objects=True), {}, fake_batch())
