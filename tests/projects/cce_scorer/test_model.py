"""Tests of the base model + Scorer wrapper and the test-time ranking transforms (hand values)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError
from sgg_jax.projects.cce_scorer.losses import CCEScorerLossConfig, make_cce_scorer_loss
from sgg_jax.projects.cce_scorer.model import CCEScorerModel, rank_predicate_scores
from sgg_jax.projects.cce_scorer.scorer import ScorerConfig
from sgg_jax.relation.motifs import MotifNet, MotifsConfig
from sgg_jax.relation.penet import PENet, PENetConfig
from sgg_jax.structures import SceneGraph

NUM_CLASSES = 5
NUM_PREDICATES = 4
FEATURE_DIM = 6
SIZES = {
    "object_feature_dim": 8,
    "union_feature_dim": 8,
    "feature_hidden_dim": 8,
    "box_embedding_dim": 8,
    "embed_dim": 8,
    "feature_source": "precomputed",
}
SCORER = ScorerConfig(hidden_dim=8, attention_dim=4)

# Compiling, not running, is what these tests spend their time on.
fast_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def base_model(base: str):
    if base == "motifs":
        config = MotifsConfig.small(
            NUM_CLASSES, NUM_PREDICATES, hidden_dim=8, pooling_dim=8, **SIZES
        )
        return MotifNet(config), config
    config = PENetConfig.small(
        NUM_CLASSES, NUM_PREDICATES, hidden_dim=8, object_classifier_dim=8, **SIZES
    )
    return PENet(config), config


def make_graph(rng, image_id, num_objects, relations):
    corners = rng.uniform(0, 60, size=(num_objects, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=(num_objects, 2))], axis=1)
    labels = rng.integers(1, NUM_CLASSES + 1, num_objects)
    return SceneGraph(
        image_id, 100, 80, boxes, labels, np.asarray(relations, np.int64).reshape(-1, 3)
    )


def make_batch(graphs, max_objects=4, max_pairs=12):
    config = pipeline.PipelineConfig.evaluation(
        batch_size=len(graphs), max_objects=max_objects, max_pairs=max_pairs
    )
    examples = [
        pipeline.prepare_example(
            graph,
            image_index=index,
            epoch=0,
            config=config,
            object_features=np.random.default_rng(index).normal(
                size=(graph.num_objects, FEATURE_DIM)
            ),
        )
        for index, graph in enumerate(graphs)
    ]
    return pipeline.collate(examples, len(graphs))


@pytest.fixture(scope="module")
def batch():
    """Image 0: 3 objects, 6 pairs (2 annotated); image 1: one object, no pair at all."""
    rng = np.random.default_rng(0)
    graphs = [
        make_graph(rng, "a", 3, [[0, 1, 2], [2, 0, 4]]),
        make_graph(rng, "single", 1, []),
    ]
    return make_batch(graphs)


# ----------------------------------------------------------------------------------------------
# Ranking transforms
# ----------------------------------------------------------------------------------------------

HAND_SCORES = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [1.0, 0.0, 0.0]], np.float32)
HAND_LOGITS = np.array([0.0, np.log(3.0), 2.0], np.float32)  # σ = 0.5, 0.75, 0.8808


def test_predicate_ranking_is_the_identity():
    ranked = rank_predicate_scores(HAND_SCORES, None, "predicate")
    np.testing.assert_array_equal(ranked, HAND_SCORES)
    np.testing.assert_array_equal(
        rank_predicate_scores(HAND_SCORES, HAND_LOGITS, "predicate"), HAND_SCORES
    )


def test_scorer_x_predicate_multiplies_every_column_by_the_score():
    ranked = np.asarray(rank_predicate_scores(HAND_SCORES, HAND_LOGITS, "scorer_x_predicate"))
    sigma = 1.0 / (1.0 + np.exp(-2.0))
    expected = [[0.25, 0.15, 0.1], [0.075, 0.45, 0.225], [sigma, 0.0, 0.0]]
    np.testing.assert_allclose(ranked, expected, rtol=1e-6)


def test_scorer_ranking_gives_the_best_predicate_the_score_and_keeps_the_order():
    ranked = np.asarray(rank_predicate_scores(HAND_SCORES, HAND_LOGITS, "scorer"))
    sigma = 1.0 / (1.0 + np.exp(-2.0))
    # foreground p_c · σ / max p_fg; background p_0 · σ; an all-background row stays finite.
    expected = [[0.25, 0.5, 1.0 / 3.0], [0.075, 0.75, 0.375], [sigma, 0.0, 0.0]]
    np.testing.assert_allclose(ranked, expected, rtol=1e-6)
    assert np.all(np.isfinite(ranked))
    # the pair's best foreground score is σ(s): pairs rank by the Scorer alone
    np.testing.assert_allclose(ranked[:2, 1:].max(-1), [0.5, 0.75], rtol=1e-6)


def test_ranking_errors():
    with pytest.raises(ConfigError, match="option 'ranking': must be one of"):
        rank_predicate_scores(HAND_SCORES, HAND_LOGITS, "bogus")
    with pytest.raises(ConfigError, match="needs a model with the Scorer"):
        rank_predicate_scores(HAND_SCORES, None, "scorer")


# ----------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["motifs", "penet"])
def initialised(request, batch):
    """(base name, base module, base config, wrapper with the Scorer, its variables)."""
    module, config = base_model(request.param)
    model = CCEScorerModel(module, scorer_config=SCORER)
    variables = fast_jit(lambda b: model.init(jax.random.key(0, impl="rbg"), b))(batch)
    return request.param, module, config, model, variables


def test_wrapper_adds_finite_scores_and_keeps_the_base_outputs(batch, initialised):
    base, module, config, model, variables = initialised
    assert set(variables["params"]) == {"base", "scorer"}
    loss_fn = make_cce_scorer_loss(
        CCEScorerLossConfig(
            base=base, use_cce=True, use_scorer=True, use_focal=True, cce_variant="paper"
        ),
        config,
    )

    @fast_jit
    def run(variables, batch):
        outputs, aux = model.apply(variables, batch)
        base_variables = {k: v["base"] for k, v in variables.items()}
        base_outputs, _ = module.apply(base_variables, batch)

        def loss(params):
            out, extra = model.apply({**variables, "params": params}, batch)
            return loss_fn(out, extra, batch)[0]

        value, grads = jax.value_and_grad(loss)(variables["params"])
        return outputs, aux["scorer_attention_weights"], base_outputs, value, grads

    outputs, attention, base_outputs, value, grads = run(variables, batch)
    assert outputs["scorer_logits"].shape == batch.pair_mask.shape
    assert attention.shape == (2, 12, 12)
    # image 1 has one object and no pair: its scores are finite, its attention weights all 0
    assert not batch.pair_mask[1].any()
    assert np.all(np.isfinite(np.asarray(outputs["scorer_logits"])))
    np.testing.assert_array_equal(np.asarray(attention[1]), 0.0)
    # the base model's outputs are those of the base model alone with the same parameters
    for name, base_value in base_outputs.items():
        np.testing.assert_array_equal(np.asarray(outputs[name]), np.asarray(base_value))
    # the full loss (CCE + Scorer BCE + focal) and its gradient are finite on this batch
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_without_scorer_the_outputs_are_the_base_models(batch):
    module, _ = base_model("motifs")
    model = CCEScorerModel(module)
    shapes = jax.eval_shape(lambda b: model.init(jax.random.key(1, impl="rbg"), b), batch)
    outputs, aux = jax.eval_shape(lambda v, b: model.apply(v, b), shapes, batch)
    assert "scorer_logits" not in outputs and "scorer_attention_weights" not in aux
    assert set(shapes["params"]) == {"base"}
    assert outputs["relation_logits"].shape == (2, 12, NUM_PREDICATES + 1)


def test_scorer_loss_reaches_the_base_model_only_when_trained_jointly(batch, initialised):
    base, module, config, _, variables = initialised
    if base != "penet":
        pytest.skip("one base model is enough")
    models = [
        CCEScorerModel(module, scorer_config=SCORER, detach_scorer_inputs=detach)
        for detach in (True, False)  # detached, joint
    ]
    loss_fn = make_cce_scorer_loss(CCEScorerLossConfig(base=base, use_scorer=True), config)

    @fast_jit
    def gradients(params, batch):
        def scorer_loss(params, model):  # the Scorer's BCE term alone (λ2 · L_BCE, λ2 = 1)
            outputs, aux = model.apply({**variables, "params": params}, batch)
            return loss_fn(outputs, aux, batch)[1]["scorer_bce"]

        return [jax.grad(scorer_loss)(params, model) for model in models]

    def squared_norm(tree):
        return sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(tree))

    detached, attached = gradients(variables["params"], batch)
    assert squared_norm(detached["scorer"]) > 0 and squared_norm(attached["scorer"]) > 0
    assert squared_norm(detached["base"]) == 0.0
    assert squared_norm(attached["base"]) > 0.0
