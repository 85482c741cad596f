"""Tests of PE-Net: config, outputs, cosine logits, gates, SGCls labels, padding, jit, training."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError
from sgg_jax.relation.losses import PENET_TERMS, make_penet_loss
from sgg_jax.relation.penet import PENet, PENetConfig, with_tables
from sgg_jax.structures import SceneGraph

NUM_CLASSES = 6
NUM_PREDICATES = 4
FEATURE_DIM = 5


def tiny_config(**overrides) -> PENetConfig:
    fields = {
        "hidden_dim": 16,
        "embed_dim": 8,
        "object_feature_dim": 12,
        "union_feature_dim": 12,
        "feature_hidden_dim": 12,
        "object_classifier_dim": 12,
        "box_embedding_dim": 8,
        **overrides,
    }
    return PENetConfig.small(NUM_CLASSES, NUM_PREDICATES, **fields)


def make_graph(rng: np.random.Generator, image_id: str, num_objects: int) -> SceneGraph:
    corners = rng.uniform(0, 60, size=(num_objects, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=(num_objects, 2))], axis=1)
    relations = np.array([[0, 1, 1], [1, 2 % num_objects, 3], [num_objects - 1, 0, 2]])
    labels = rng.integers(1, NUM_CLASSES + 1, num_objects)
    return SceneGraph(image_id, 100, 80, boxes, labels, relations)


def make_batch(graphs, max_objects, max_pairs, batch_size=None, train=False):
    if train:
        config = pipeline.PipelineConfig(
            batch_size=batch_size or len(graphs),
            max_objects=max_objects,
            max_pairs=max_pairs,
            max_fg=max_pairs // 2,
        )
    else:
        config = pipeline.PipelineConfig.evaluation(
            batch_size=batch_size or len(graphs), max_objects=max_objects, max_pairs=max_pairs
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
    return pipeline.collate(examples, batch_size)


@pytest.fixture(scope="module")
def graphs():
    rng = np.random.default_rng(0)
    return [make_graph(rng, "a", 3), make_graph(rng, "b", 4), make_graph(rng, "c", 2)]


@pytest.fixture(scope="module")
def batch(graphs):
    return make_batch(graphs[:2], max_objects=5, max_pairs=16)


def init(model, batch, seed=0):
    rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(1)}
    return jax.jit(model.init)(rngs, batch)


class Compiled:
    """A model with its variables and one jitted ``apply`` (compiled once per batch shape)."""

    def __init__(self, config, batch):
        self.model = PENet(config)
        self.variables = init(self.model, batch)
        self._apply = jax.jit(self.model.apply, static_argnames="train")

    def __call__(self, batch, variables=None, train=False, rngs=None):
        variables = self.variables if variables is None else variables
        return self._apply(variables, batch, train=train, rngs=rngs)


@pytest.fixture(scope="module")
def compiled(batch):
    return {task: Compiled(tiny_config(task=task), batch) for task in ("predcls", "sgcls")}


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def test_config_sizes_and_validation():
    official = PENetConfig.official(150, 50)
    assert (official.embed_dim, official.hidden_dim, official.projection_dim) == (300, 2048, 4096)
    assert official.dropout_rate == 0.2
    assert official.logit_scale_init == pytest.approx(math.log(1 / 0.07))
    assert official.num_relation_classes == 51
    small = PENetConfig.small(200, 100)
    assert (small.hidden_dim, small.embed_dim) == (128, 64)
    assert PENetConfig.small(200, 100, embed_dim=50).embed_dim == 50
    assert small == PENetConfig.small(200, 100) and hash(small) == hash(PENetConfig.small(200, 100))
    assert small != small.replace(task="sgcls")
    assert small != small.replace(frequency_bias=True)
    bad = [
        ({"task": "sgdet"}, "'task'"),
        ({"feature_source": "roi"}, "'detector'.*DetectorConfig"),
        ({"feature_source": "clip"}, "'feature_source'"),
        ({"hidden_dim": 0}, "'hidden_dim'"),
        ({"dropout_rate": 1.0}, "'dropout_rate': must lie in \\[0, 1\\), got 1.0"),
        ({"logit_scale_init": float("nan")}, "'logit_scale_init'"),
        ({"freeze_detector": "yes"}, "'freeze_detector'"),
        ({"frequency_bias": np.zeros((201, 201, 101))}, "'frequency_bias'.*with_tables"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            PENetConfig.small(200, 100, **overrides)
    with pytest.raises(ConfigError, match="'num_classes'"):
        PENetConfig.small(0, 100)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_output_shapes_dtypes_and_cosine_logits(batch, compiled, task):
    model = compiled[task]
    outputs, aux = model(batch)
    num_rel = NUM_PREDICATES + 1
    chex.assert_shape(outputs["relation_logits"], (2, 16, num_rel))
    chex.assert_shape(aux["relation_embedding"], (2, 16, 16))
    chex.assert_shape(aux["relation_projection"], (2, 16, 32))
    chex.assert_shape(aux["prototype_projection"], (num_rel, 32))
    chex.assert_shape([outputs["object_labels"], outputs["object_scores"]], (2, 5))
    assert outputs["object_labels"].dtype == jnp.int32
    assert outputs["relation_logits"].dtype == jnp.float32
    chex.assert_tree_all_finite((outputs, aux))

    # logits = cos(r, c) · exp(logit_scale), recomputed by hand from aux.
    relation = np.asarray(aux["relation_projection"], np.float64)
    prototypes = np.asarray(aux["prototype_projection"], np.float64)
    cosine = np.einsum(
        "bpd,cd->bpc",
        relation / np.linalg.norm(relation, axis=-1, keepdims=True),
        prototypes / np.linalg.norm(prototypes, axis=-1, keepdims=True),
    )
    assert float(aux["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
    np.testing.assert_allclose(outputs["relation_logits"], cosine / 0.07, rtol=1e-4, atol=1e-4)

    # The projection head maps the relation embedding (ReLU first, eval mode: no dropout).
    head = model.variables["params"]["projection_head"]
    hidden = np.maximum(np.asarray(aux["relation_embedding"]), 0) @ head["layer0"]["kernel"]
    hidden = np.maximum(hidden + head["layer0"]["bias"], 0)
    expected = hidden @ head["layer1"]["kernel"] + head["layer1"]["bias"]
    np.testing.assert_allclose(aux["relation_projection"], expected, rtol=1e-4, atol=1e-5)

    mask = np.asarray(batch.object_mask)
    if task == "predcls":
        assert "object_logits" not in outputs
        np.testing.assert_array_equal(outputs["object_labels"], np.where(mask, batch.labels, 0))
        np.testing.assert_array_equal(outputs["object_scores"], mask.astype(np.float32))
    else:
        logits = np.asarray(outputs["object_logits"])
        chex.assert_shape(logits, (2, 5, NUM_CLASSES + 1))
        predicted = 1 + np.argmax(logits[..., 1:], axis=-1)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        scores = np.take_along_axis(probabilities, predicted[..., None], -1)[..., 0]
        np.testing.assert_array_equal(outputs["object_labels"], np.where(mask, predicted, 0))
        np.testing.assert_allclose(outputs["object_scores"], np.where(mask, scores, 0), rtol=1e-5)
        assert np.all(np.asarray(outputs["object_labels"])[mask] >= 1)


def test_sgcls_relation_head_uses_predicted_labels(batch, compiled):
    """The relation head embeds the classifier's labels, so the ground-truth labels do not matter."""
    relabelled = batch.replace(labels=np.where(batch.object_mask, 1, 0).astype(np.int32))
    outputs, _ = compiled["sgcls"](batch)
    relabelled_outputs, _ = compiled["sgcls"](relabelled)
    np.testing.assert_allclose(
        outputs["relation_logits"], relabelled_outputs["relation_logits"], rtol=1e-6
    )
    before, _ = compiled["predcls"](batch)
    after, _ = compiled["predcls"](relabelled)
    assert not np.allclose(before["relation_logits"], after["relation_logits"])


def test_relation_embedding_depends_on_union_features_through_the_gate(batch):
    """With precomputed object features, moving a box changes only the union features."""
    model = Compiled(tiny_config(feature_source="precomputed"), batch)
    boxes = np.array(batch.boxes)
    boxes[0, 1] += np.array([7.0, 3.0, 9.0, 5.0], np.float32)
    moved = batch.replace(boxes=boxes)
    _, aux = model(batch)
    _, moved_aux = model(moved)
    pairs = np.asarray(batch.pairs[0])
    touching = np.flatnonzero((pairs == 1).any(-1) & np.asarray(batch.pair_mask[0]))
    untouched = np.flatnonzero(~(pairs == 1).any(-1) & np.asarray(batch.pair_mask[0]))
    for pair in touching:
        assert not np.allclose(
            aux["relation_embedding"][0, pair], moved_aux["relation_embedding"][0, pair]
        )
    np.testing.assert_allclose(
        aux["relation_embedding"][0, untouched],
        moved_aux["relation_embedding"][0, untouched],
        atol=1e-6,
    )

    # Closing the predicate gate (σ → 0) removes the union features from r.
    params = dict(model.variables["params"])
    gate = params["predicate_gate"]
    params["predicate_gate"] = {
        "kernel": jnp.zeros_like(gate["kernel"]),
        "bias": jnp.full_like(gate["bias"], -1e4),
    }
    _, closed_aux = model(batch, variables={"params": params})
    _, closed_moved_aux = model(moved, variables={"params": params})
    np.testing.assert_allclose(
        closed_aux["relation_embedding"], closed_moved_aux["relation_embedding"], atol=1e-6
    )


def test_dropout_is_active_only_in_training(batch, compiled):
    model = compiled["predcls"]
    eval_a, _ = model(batch)
    eval_b, _ = model(batch)
    train_a, _ = model(batch, train=True, rngs={"dropout": jax.random.key(3)})
    train_b, _ = model(batch, train=True, rngs={"dropout": jax.random.key(3)})
    train_c, _ = model(batch, train=True, rngs={"dropout": jax.random.key(4)})
    np.testing.assert_array_equal(eval_a["relation_logits"], eval_b["relation_logits"])
    np.testing.assert_array_equal(train_a["relation_logits"], train_b["relation_logits"])
    assert not np.allclose(train_a["relation_logits"], train_c["relation_logits"])
    assert not np.allclose(train_a["relation_logits"], eval_a["relation_logits"])


@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_real_pairs_do_not_depend_on_padding(graphs, batch, compiled, task):
    """The same graphs padded to larger N, P and B give the same outputs on the real entries."""
    large = make_batch(graphs[:2], max_objects=9, max_pairs=40, batch_size=3)
    small_out, small_aux = compiled[task](batch)
    large_out, large_aux = compiled[task](large)
    for row in range(2):
        pairs = np.flatnonzero(batch.pair_mask[row])
        np.testing.assert_array_equal(large.pairs[row, pairs], batch.pairs[row, pairs])
        np.testing.assert_allclose(
            large_out["relation_logits"][row, pairs],
            small_out["relation_logits"][row, pairs],
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            large_aux["relation_embedding"][row, pairs],
            small_aux["relation_embedding"][row, pairs],
            rtol=1e-5,
            atol=1e-5,
        )
        objects = np.flatnonzero(batch.object_mask[row])
        np.testing.assert_array_equal(
            large_out["object_labels"][row, objects], small_out["object_labels"][row, objects]
        )
        np.testing.assert_allclose(
            large_out["object_scores"][row, objects],
            small_out["object_scores"][row, objects],
            rtol=1e-5,
        )
    np.testing.assert_array_equal(large_out["object_labels"][2], 0)


def test_jit_traces_once_for_graphs_of_different_sizes(graphs, compiled):
    model = compiled["predcls"].model
    variables = compiled["predcls"].variables
    first = make_batch(graphs[:2], max_objects=5, max_pairs=16)
    second = make_batch([graphs[2], graphs[0]], max_objects=5, max_pairs=16)
    assert first.pair_mask.sum() != second.pair_mask.sum()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(variables, batch):
        return model.apply(variables, batch)[0]["relation_logits"]

    chex.clear_trace_counter()
    forward(variables, jax.device_put(first))
    forward(variables, jax.device_put(second))


def test_batch_sharded_over_the_mesh_gives_the_same_logits(graphs, compiled):
    num_devices = jax.device_count()
    mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    host_batch = make_batch(
        [graphs[i % 3] for i in range(num_devices)], max_objects=5, max_pairs=16
    )
    sharded = jax.device_put(host_batch, NamedSharding(mesh, PartitionSpec("data")))
    variables = jax.device_put(compiled["predcls"].variables, NamedSharding(mesh, PartitionSpec()))
    sharded_out, _ = compiled["predcls"](sharded, variables=variables)
    local_out, _ = compiled["predcls"](host_batch)
    assert sharded_out["relation_logits"].sharding.spec == PartitionSpec("data")
    np.testing.assert_allclose(
        sharded_out["relation_logits"], local_out["relation_logits"], rtol=1e-5, atol=1e-5
    )


def test_word_vectors_initialise_the_embedding_tables(batch, compiled):
    rng = np.random.default_rng(5)
    object_vectors = rng.normal(size=(NUM_CLASSES + 1, 8)).astype(np.float32)
    predicate_vectors = rng.normal(size=(NUM_PREDICATES + 1, 8)).astype(np.float32)
    fresh = compiled["predcls"].variables
    variables = with_tables(
        fresh, object_word_vectors=object_vectors, predicate_word_vectors=predicate_vectors
    )
    params = variables["params"]
    np.testing.assert_array_equal(params["object_embedding"]["embedding"], object_vectors)
    np.testing.assert_array_equal(params["predicate_embedding"]["embedding"], predicate_vectors)
    # Every other leaf is the fresh one, and the input is not changed.
    flat, flat_fresh = (traverse_util.flatten_dict(v["params"]) for v in (variables, fresh))
    for path, leaf in flat.items():
        if path[0] not in ("object_embedding", "predicate_embedding"):
            assert leaf is flat_fresh[path], path
    assert not np.array_equal(fresh["params"]["object_embedding"]["embedding"], object_vectors)
    table = np.asarray(compiled["predcls"].variables["params"]["object_embedding"]["embedding"])
    assert table.shape == (NUM_CLASSES + 1, 8) and 0.5 < table.std() < 1.6


@pytest.mark.e2e
def test_a_few_optimizer_steps_reduce_the_loss(graphs, compiled):
    """SGCls (all five loss terms): 20 Adam steps with dropout cut the eval-mode loss."""
    model = compiled["sgcls"].model
    train_batch = jax.device_put(make_batch(graphs, max_objects=5, max_pairs=12, train=True))
    assert int(np.asarray(train_batch.pair_labels).astype(bool).sum()) > 0
    loss_fn = make_penet_loss(model.config, num_negatives=3)
    optimizer = optax.adam(1e-2)
    params = compiled["sgcls"].variables["params"]
    opt_state = optimizer.init(params)

    def objective(params, key, train=True):
        outputs, aux = model.apply(
            {"params": params}, train_batch, train=train, rngs={"dropout": key}
        )
        return loss_fn(outputs, aux, train_batch)

    @jax.jit
    def step(params, opt_state, key):
        (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(lambda params: objective(params, jax.random.key(0), train=False))
    loss_before, terms_before = evaluate(params)
    assert set(terms_before) == set(PENET_TERMS)
    for index in range(20):
        params, opt_state, loss = step(params, opt_state, jax.random.key(index))
        assert np.isfinite(float(loss))
    loss_after, terms_after = evaluate(params)
    assert float(loss_after) < 0.7 * float(loss_before), (terms_before, terms_after)
    for name in ("relation_ce", "relation_euclidean", "object_ce"):
        assert float(terms_after[name]) < float(terms_before[name]), name


def test_frequency_bias_is_added_at_inference_only(batch, compiled):
    rng = np.random.default_rng(5)
    table = rng.normal(size=(NUM_CLASSES + 1, NUM_CLASSES + 1, NUM_PREDICATES + 1)).astype(
        np.float32
    )
    plain = compiled["predcls"]
    biased = Compiled(tiny_config(frequency_bias=True), batch)
    assert "frequency" in biased.variables
    np.testing.assert_array_equal(biased.variables["frequency"]["log_bias"], 0.0)
    # The fresh parameters do not depend on the flag (flax draws them per module path).
    chex.assert_trees_all_equal(biased.variables["params"], plain.variables["params"])
    variables = with_tables(biased.variables, frequency_bias=table)
    np.testing.assert_array_equal(
        variables["frequency"]["log_bias"], table.reshape((NUM_CLASSES + 1) ** 2, -1)
    )
    with_bias, _ = biased(batch, variables=variables)
    without, _ = plain(batch)
    labels = np.asarray(batch.labels)
    pairs = np.asarray(batch.pairs)
    rows = np.arange(labels.shape[0])[:, None]
    expected = (
        np.asarray(without["relation_logits"])
        + table[labels[rows, pairs[..., 0]], labels[rows, pairs[..., 1]]]
    )
    np.testing.assert_allclose(np.asarray(with_bias["relation_logits"]), expected, rtol=1e-5)
    key = {"dropout": jax.random.key(3)}
    trained, _ = biased(batch, variables=variables, train=True, rngs=key)
    trained_plain, _ = plain(batch, train=True, rngs=key)
    np.testing.assert_allclose(
        np.asarray(trained["relation_logits"]),
        np.asarray(trained_plain["relation_logits"]),
        rtol=1e-6,
    )
    with pytest.raises(ConfigError, match="option 'frequency_bias'"):
        with_tables(biased.variables, frequency_bias=table[:, :, :2])
    with pytest.raises(ConfigError, match="option 'frequency_bias'.*frequency_bias=False"):
        with_tables(plain.variables, frequency_bias=table)
