"""Tests of the scene-graph GCN: padding layout, truncation, errors, invariances, jit, init, grads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.sg_embed.graph_batch import GraphBatch, pad_scene_graphs
from sgg_jax.projects.sg_embed.sg_gcn import (
    SceneGraphGCN,
    SGGCNConfig,
    mean_of_messages,
    with_tables,
)
from sgg_jax.structures import SceneGraph

NUM_CLASSES = 6  # C: image node label 7
NUM_PREDICATES = 4  # P: __in_image__ label 5
EMBED_DIM = 8
HIDDEN_DIM = 16


def tiny_config(**overrides) -> SGGCNConfig:
    fields = {
        "num_object_classes": NUM_CLASSES,
        "num_predicates": NUM_PREDICATES,
        "embed_dim": EMBED_DIM,
        "hidden_dim": HIDDEN_DIM,
        "num_layers": 2,
        **overrides,
    }
    return SGGCNConfig(**fields)


def make_graph(image_id, labels, relations) -> SceneGraph:
    labels = np.asarray(labels, np.int32)
    return SceneGraph(image_id, 64, 48, np.zeros((labels.shape[0], 4)), labels, relations)


def random_graph(rng: np.random.Generator, image_id: str, num_objects: int, num_relations: int):
    labels = rng.integers(1, NUM_CLASSES + 1, num_objects)
    relations = np.stack(
        [
            rng.integers(0, num_objects, num_relations),
            rng.integers(0, num_objects, num_relations),
            rng.integers(1, NUM_PREDICATES + 1, num_relations),
        ],
        axis=1,
    )
    return make_graph(image_id, labels, relations)


def pad(graphs, max_nodes, max_edges, batch_size=None) -> GraphBatch:
    return pad_scene_graphs(
        graphs,
        max_nodes,
        max_edges,
        num_object_classes=NUM_CLASSES,
        num_predicates=NUM_PREDICATES,
        batch_size=batch_size,
    )


@pytest.fixture(scope="module")
def graphs():
    rng = np.random.default_rng(0)
    return [
        random_graph(rng, "a", 5, 6),
        random_graph(rng, "b", 3, 2),
        random_graph(rng, "c", 6, 9),
        make_graph("empty", np.zeros((0,), np.int32), np.zeros((0, 3), np.int32)),
    ]


@pytest.fixture(scope="module")
def model():
    return SceneGraphGCN(tiny_config())


@pytest.fixture(scope="module")
def apply_eval(model):
    """``(embedding, aux)`` with running averages (jitted)."""
    return jax.jit(lambda variables, batch: model.apply(variables, batch))


@pytest.fixture(scope="module")
def embed(apply_eval):
    return lambda variables, batch: apply_eval(variables, batch)[0]


@pytest.fixture(scope="module")
def embed_train(model):
    """``((embedding, aux), {"batch_stats": ...})`` with batch statistics (jitted)."""
    return jax.jit(
        lambda variables, batch: model.apply(variables, batch, train=True, mutable=["batch_stats"])
    )


@pytest.fixture(scope="module")
def variables(model, graphs, embed_train):
    """Initial parameters with running averages moved by three training-mode steps."""
    batch = pad(graphs, 10, 24)
    variables = jax.jit(model.init)(jax.random.key(0), batch)
    for _ in range(3):
        _, updates = embed_train(variables, batch)
        variables = {**variables, **updates}
    return variables


# ----------------------------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------------------------


def test_padding_layout_of_a_hand_built_graph():
    graph = make_graph("g1", [2, 5, 1], [[0, 1, 3], [2, 0, 1], [1, 2, 4]])
    batch = pad([graph], max_nodes=6, max_edges=8, batch_size=2)

    np.testing.assert_array_equal(batch.node_labels, [[2, 5, 1, 7, 0, 0], [0] * 6])
    np.testing.assert_array_equal(batch.node_mask, [[1, 1, 1, 1, 0, 0], [0] * 6])
    sink = [5, 5]
    np.testing.assert_array_equal(
        batch.edges,
        [
            [[0, 1], [2, 0], [1, 2], [0, 3], [1, 3], [2, 3], sink, sink],
            [sink] * 8,
        ],
    )
    np.testing.assert_array_equal(batch.edge_labels, [[3, 1, 4, 5, 5, 5, 0, 0], [0] * 8])
    np.testing.assert_array_equal(batch.edge_mask, [[1, 1, 1, 1, 1, 1, 0, 0], [0] * 8])
    np.testing.assert_array_equal(batch.graph_mask, [True, False])
    np.testing.assert_array_equal(batch.num_truncated_nodes, [0, 0])
    np.testing.assert_array_equal(batch.num_truncated_edges, [0, 0])
    assert batch.node_labels.dtype == np.int32 and batch.edges.dtype == np.int32
    assert (batch.batch_size, batch.max_nodes, batch.max_edges) == (2, 6, 8)
    assert (batch.num_object_classes, batch.num_predicates) == (NUM_CLASSES, NUM_PREDICATES)


def test_graph_without_objects_is_a_lone_image_node():
    graph = make_graph("none", np.zeros((0,), np.int32), np.zeros((0, 3), np.int32))
    batch = pad([graph], max_nodes=3, max_edges=2)
    np.testing.assert_array_equal(batch.node_labels, [[7, 0, 0]])
    np.testing.assert_array_equal(batch.node_mask, [[True, False, False]])
    np.testing.assert_array_equal(batch.edge_mask, [[False, False]])
    np.testing.assert_array_equal(batch.edges, [[[2, 2], [2, 2]]])


def test_truncation_keeps_first_objects_and_counts_what_is_dropped():
    labels = [1, 2, 3, 4, 5]
    relations = [[0, 1, 1], [3, 0, 2], [1, 2, 3], [2, 0, 4], [4, 4, 1], [0, 2, 2]]
    # max_nodes 5: objects 0..2 kept, image node 3, sink 4. Relations among kept: rows 0, 2, 3, 5;
    # max_edges 5 leaves 5 - 3 = 2 relation slots: rows 0 and 2.
    batch = pad([make_graph("big", labels, relations)], max_nodes=5, max_edges=5)
    np.testing.assert_array_equal(batch.node_labels, [[1, 2, 3, 7, 0]])
    np.testing.assert_array_equal(batch.edges, [[[0, 1], [1, 2], [0, 3], [1, 3], [2, 3]]])
    np.testing.assert_array_equal(batch.edge_labels, [[1, 3, 5, 5, 5]])
    np.testing.assert_array_equal(batch.num_truncated_nodes, [2])
    np.testing.assert_array_equal(batch.num_truncated_edges, [4])

    roomy = pad([make_graph("big", labels, relations)], max_nodes=5, max_edges=9)
    np.testing.assert_array_equal(roomy.edge_labels, [[1, 3, 4, 2, 5, 5, 5, 0, 0]])
    np.testing.assert_array_equal(roomy.num_truncated_edges, [2])  # rows 1 and 4 lost endpoints


def test_bad_graphs_raise_data_errors_naming_image_and_field():
    cases = [
        (make_graph("img7", [1, 0], []), "labels", "label 0"),
        (make_graph("img7", [1, NUM_CLASSES + 1], []), "labels", "label 7"),
        (make_graph("img7", [1, 2], [[0, 2, 1]]), "relations", "outside 0..1"),
        (make_graph("img7", [1, 2], [[-1, 1, 1]]), "relations", "outside 0..1"),
        (make_graph("img7", [1, 2], [[0, 1, 0]]), "relations", "predicate 0"),
        (make_graph("img7", [1, 2], [[0, 1, NUM_PREDICATES + 1]]), "relations", "predicate 5"),
    ]
    for graph, field, detail in cases:
        with pytest.raises(DataError) as info:
            pad([make_graph("fine", [1], []), graph], 6, 8)
        assert info.value.record == "img7" and info.value.field == field
        assert "image img7" in str(info.value) and detail in str(info.value)
    with pytest.raises(DataError, match="expected a SceneGraph"):
        pad([{"labels": [1]}], 6, 8)


def test_bad_budgets_raise_config_errors():
    graph = make_graph("g", [1, 2], [[0, 1, 1]])
    with pytest.raises(ConfigError, match="'max_nodes'"):
        pad([graph], 1, 8)
    with pytest.raises(ConfigError, match="'max_edges'.*max_nodes - 2 = 6"):
        pad([graph], 8, 5)
    with pytest.raises(ConfigError, match="'batch_size'"):
        pad([graph, graph], 6, 8, batch_size=1)
    with pytest.raises(ConfigError, match="'graphs'"):
        pad([], 6, 8)
    with pytest.raises(ConfigError, match="'num_object_classes'"):
        pad_scene_graphs([graph], 6, 8, num_object_classes=0, num_predicates=2)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    config = SGGCNConfig(150, 50)
    assert (config.embed_dim, config.hidden_dim, config.num_layers) == (300, 512, 5)
    assert (config.num_node_labels, config.num_edge_labels, config.output_dim) == (152, 52, 300)
    assert config == SGGCNConfig(150, 50) and hash(config) == hash(SGGCNConfig(150, 50))
    for field, value in [
        ("num_object_classes", 0),
        ("num_predicates", -1),
        ("embed_dim", 2.5),
        ("hidden_dim", True),
        ("num_layers", 0),
        ("batch_norm_momentum", 1.0),
    ]:
        with pytest.raises(ConfigError, match=f"'{field}'"):
            tiny_config(**{field: value})


def test_with_tables_rejects_wrong_tables_naming_the_field(model, variables):
    with pytest.raises(ConfigError, match="'object_word_vectors'.*shape"):
        with_tables(variables, object_word_vectors=np.zeros((NUM_CLASSES, EMBED_DIM)))
    with pytest.raises(ConfigError, match="'predicate_word_vectors'.*NaN"):
        with_tables(
            variables,
            predicate_word_vectors=np.full((NUM_PREDICATES + 1, EMBED_DIM), np.nan),
        )
    with pytest.raises(ConfigError, match="'object_word_vectors'.*float array"):
        with_tables(variables, object_word_vectors=[["a"] * EMBED_DIM] * (NUM_CLASSES + 1))
    with pytest.raises(ConfigError, match="'object_word_vectors'.*scene-graph GCN"):
        with_tables({"params": {}}, object_word_vectors=np.zeros((NUM_CLASSES + 1, EMBED_DIM)))


def test_model_rejects_a_batch_padded_for_another_vocabulary(model, variables):
    graph = make_graph("g", [1, 2], [[0, 1, 1]])
    other = pad_scene_graphs([graph], 6, 8, num_object_classes=9, num_predicates=NUM_PREDICATES)
    with pytest.raises(ConfigError, match="'num_object_classes'.*padded with 9"):
        model.apply(variables, other)


# ----------------------------------------------------------------------------------------------
# Message passing
# ----------------------------------------------------------------------------------------------


def test_mean_of_messages_by_hand():
    # One graph, 4 nodes, 3 edges: 0 -> 1, 2 -> 1, and a padded edge 3 -> 3 (masked).
    edges = jnp.array([[[0, 1], [2, 1], [3, 3]]], jnp.int32)
    edge_mask = jnp.array([[True, True, False]])
    to_subject = jnp.array([[[1.0, 0.0], [0.0, 2.0], [100.0, 100.0]]])
    to_object = jnp.array([[[4.0, 4.0], [2.0, 0.0], [100.0, 100.0]]])
    pooled = mean_of_messages(to_subject, to_object, edges, edge_mask, num_nodes=4)
    # node 0 gets (1, 0); node 1 gets (4, 4) and (2, 0); node 2 gets (0, 2); node 3 nothing.
    np.testing.assert_allclose(pooled[0], [[1, 0], [3, 2], [0, 2], [0, 0]])


# ----------------------------------------------------------------------------------------------
# Outputs and invariances
# ----------------------------------------------------------------------------------------------


def test_outputs_are_unit_vectors_and_padding_is_zero(variables, graphs, apply_eval, embed_train):
    batch = pad(graphs, 10, 24, batch_size=5)
    embedding, aux = apply_eval(variables, batch)
    chex.assert_shape(embedding, (5, EMBED_DIM))
    chex.assert_shape(aux["node_embeddings"], (5, 10, EMBED_DIM))
    chex.assert_shape(aux["edge_embeddings"], (5, 24, EMBED_DIM))
    np.testing.assert_allclose(jnp.linalg.norm(embedding, axis=-1), [1, 1, 1, 1, 0], atol=1e-5)
    node_norms = jnp.linalg.norm(aux["node_embeddings"], axis=-1)
    np.testing.assert_allclose(node_norms, batch.node_mask.astype(np.float32), atol=1e-5)
    assert not np.any(np.asarray(aux["edge_embeddings"])[~batch.edge_mask])
    assert np.all(np.asarray(embedding) >= 0)  # ReLU before normalisation (sg2im build_mlp)
    # Different graphs, different embeddings; the same call twice, the same numbers.
    distances = np.linalg.norm(embedding[:4, None] - embedding[None, :4], axis=-1)
    assert np.all(distances[~np.eye(4, dtype=bool)] > 1e-2)
    np.testing.assert_array_equal(embedding, apply_eval(variables, batch)[0])
    (train_embedding, _), _ = embed_train(variables, batch)
    np.testing.assert_allclose(
        jnp.linalg.norm(train_embedding, axis=-1), [1, 1, 1, 1, 0], atol=1e-5
    )


def permuted(graph: SceneGraph, rng: np.random.Generator) -> SceneGraph:
    """The same graph with objects in another order and relation rows shuffled."""
    order = rng.permutation(graph.num_objects)  # new object j = old object order[j]
    new_index = np.argsort(order)
    relations = graph.relations.copy()
    relations[:, :2] = new_index[relations[:, :2]]
    relations = relations[rng.permutation(graph.num_relations)]
    return make_graph(graph.image_id + "-perm", graph.labels[order], relations)


def test_permutation_invariance(variables, graphs, embed, embed_train):
    rng = np.random.default_rng(1)
    shuffled = [permuted(graph, rng) for graph in graphs]
    assert not np.array_equal(shuffled[0].labels, graphs[0].labels)
    batch, shuffled_batch = pad(graphs, 10, 24), pad(shuffled, 10, 24)
    np.testing.assert_allclose(
        embed(variables, batch), embed(variables, shuffled_batch), atol=1e-5, rtol=0
    )
    (train_embedding, _), updates = embed_train(variables, batch)
    (shuffled_embedding, _), shuffled_updates = embed_train(variables, shuffled_batch)
    np.testing.assert_allclose(train_embedding, shuffled_embedding, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(updates, shuffled_updates, atol=1e-5, rtol=1e-5)


def test_padding_invariance_in_evaluation(variables, graphs, embed):
    rng = np.random.default_rng(2)
    alone = embed(variables, pad(graphs[:1], 8, 14))
    bigger = embed(variables, pad(graphs[:1], 16, 40, batch_size=3))
    others = [random_graph(rng, f"o{i}", 4, 5) for i in range(3)]
    batched = embed(variables, pad([others[0], graphs[0], *others[1:]], 12, 30, batch_size=6))
    np.testing.assert_allclose(alone[0], bigger[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(bigger[1:], 0.0)


def test_extra_padding_never_changes_training_statistics(variables, graphs, embed_train):
    (embedding, aux), updates = embed_train(variables, pad(graphs, 10, 24))
    (padded_embedding, padded_aux), padded_updates = embed_train(
        variables, pad(graphs, 15, 40, batch_size=7)
    )
    chex.assert_trees_all_close(updates, padded_updates, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(embedding, padded_embedding[:4], atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        aux["node_embeddings"], padded_aux["node_embeddings"][:4, :10], atol=1e-5, rtol=0
    )
    # The statistics moved (so the comparison above is not vacuous).
    before = jax.tree.leaves(variables["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(updates), strict=True))


def test_a_batch_without_edges_leaves_running_averages_unchanged(variables, embed_train):
    empty = make_graph("empty", np.zeros((0,), np.int32), np.zeros((0, 3), np.int32))
    (embedding, _), updates = embed_train(variables, pad([empty, empty], 10, 24))
    assert np.all(np.isfinite(embedding))
    for layer in ("layer0", "layer1"):
        chex.assert_trees_all_equal(
            updates["batch_stats"][layer]["triple_mlp"],
            variables["batch_stats"][layer]["triple_mlp"],
        )
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(updates))


def test_one_trace_for_graphs_of_different_sizes(model, variables):
    rng = np.random.default_rng(3)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def embed_once(variables, batch):
        return model.apply(variables, batch)[0]

    for sizes in [(1, 0), (7, 12), (3, 3)]:
        graph = random_graph(rng, "x", *sizes)
        embedding = embed_once(variables, pad([graph], 10, 24, batch_size=2))
        np.testing.assert_allclose(jnp.linalg.norm(embedding[0]), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Initialisation and training
# ----------------------------------------------------------------------------------------------


def test_word_vectors_land_in_the_embedding_tables(graphs):
    rng = np.random.default_rng(4)
    object_vectors = rng.normal(0, 0.4, (NUM_CLASSES + 1, EMBED_DIM)).astype(np.float32)
    predicate_vectors = rng.normal(0, 0.4, (NUM_PREDICATES + 1, EMBED_DIM)).astype(np.float32)
    config = tiny_config(num_layers=1)
    batch = pad(graphs, 10, 24)
    fresh_init = jax.jit(SceneGraphGCN(config).init)

    def init(key, batch):
        return with_tables(
            fresh_init(key, batch),
            object_word_vectors=object_vectors,
            predicate_word_vectors=predicate_vectors,
        )

    params = init(jax.random.key(5), batch)["params"]
    other = init(jax.random.key(6), batch)["params"]
    fresh = fresh_init(jax.random.key(5), batch)
    before = np.array(fresh["params"]["object_embedding"]["embedding"])
    filled = with_tables(fresh, object_word_vectors=object_vectors)["params"]
    np.testing.assert_array_equal(fresh["params"]["object_embedding"]["embedding"], before)
    assert filled["layer0"] is fresh["params"]["layer0"]  # untouched subtrees are shared
    # Rows without a word vector: the fresh N(0, 1) draw times the word vectors' spread.
    spread = np.float32(object_vectors[1:].std())
    np.testing.assert_array_equal(filled["object_embedding"]["embedding"][0], spread * before[0])
    for name, vectors in [
        ("object_embedding", object_vectors),
        ("predicate_embedding", predicate_vectors),
    ]:
        table = np.asarray(params[name]["embedding"])
        assert table.shape == (vectors.shape[0] + 1, EMBED_DIM)
        np.testing.assert_array_equal(table[1:-1], vectors[1:])
        # Background and the added row (__image__ / __in_image__): seeded random at the scale of
        # the word vectors; another init key draws other rows but the same word rows.
        for row in (0, -1):
            assert np.all(np.isfinite(table[row])) and 0.05 < np.std(table[row]) < 2.0
            assert not np.allclose(table[row], vectors[0])
            assert not np.allclose(table[row], other[name]["embedding"][row])
        np.testing.assert_array_equal(table[1:-1], other[name]["embedding"][1:-1])
        np.testing.assert_array_equal(
            table, init(jax.random.key(5), batch)["params"][name]["embedding"]
        )


def test_gradients_reach_every_parameter(model, variables, graphs):
    batch = pad(graphs, 10, 24, batch_size=5)
    target = jax.random.normal(jax.random.key(7), (5, EMBED_DIM))

    def loss(params, train):
        outputs = model.apply(
            {**variables, "params": params}, batch, train=train, mutable=["batch_stats"]
        )
        (embedding, _), _ = outputs
        return jnp.sum(embedding * target)

    gradient = jax.jit(jax.grad(loss), static_argnums=1)
    for train in (True, False):
        grads = gradient(variables["params"], train)
        for path, grad in jax.tree_util.tree_leaves_with_path(grads):
            assert np.all(np.isfinite(grad)), path
            assert np.any(np.abs(grad) > 0), (train, jax.tree_util.keystr(path))
