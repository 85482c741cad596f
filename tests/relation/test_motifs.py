"""Tests of MotifNet: config, left-to-right order, BiLSTM masking, invariances, bias, training.

Compilation dominates on a CPU: one ``init`` (SGCls with the frequency bias; PredCls uses the same
parameters, it only lacks the object classifier) and one jitted ``apply`` per task and mode are
shared by all tests. Keys use the "rbg" PRNG, which compiles faster than threefry, and XLA's
cheaper CPU optimisation level (``fast_jit``); run time is negligible at these sizes.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.relation.frequency import FrequencyBaseline
from sgg_jax.relation.losses import cross_entropy
from sgg_jax.relation.motifs import (
    BiLSTM,
    MotifNet,
    MotifsConfig,
    left_to_right_order,
    with_tables,
)
from sgg_jax.structures import SceneGraph, SceneGraphBatch

NUM_CLASSES = 5
NUM_PREDICATES = 3
NUM_LABELS = NUM_CLASSES + 1
FEATURE_DIM = 6
MAX_OBJECTS = 6
MAX_PAIRS = 8
HIDDEN_DIM = 8
POOLING_DIM = 12


# Compiling, not running, is what these tests spend their time on.
fast_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def rbg_key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def tiny_config(**overrides) -> MotifsConfig:
    fields = {
        "embed_dim": 8,
        "hidden_dim": HIDDEN_DIM,
        "pooling_dim": POOLING_DIM,
        "object_feature_dim": 10,
        "union_feature_dim": 10,  # != pooling_dim: the union projection is exercised
        "feature_hidden_dim": 10,
        "box_embedding_dim": 8,
        "feature_source": "precomputed",
        **overrides,
    }
    return MotifsConfig.small(NUM_CLASSES, NUM_PREDICATES, **fields)


def make_batch(images, max_objects=MAX_OBJECTS, max_pairs=MAX_PAIRS, batch_size=None):
    """A padded batch from ``(boxes, labels, features, pairs, predicates)`` per image."""
    batch_size = batch_size or len(images)
    boxes = np.zeros((batch_size, max_objects, 4), np.float32)
    labels = np.zeros((batch_size, max_objects), np.int32)
    features = np.zeros((batch_size, max_objects, FEATURE_DIM), np.float32)
    object_mask = np.zeros((batch_size, max_objects), bool)
    pairs = np.zeros((batch_size, max_pairs, 2), np.int32)
    pair_labels = np.zeros((batch_size, max_pairs), np.int32)
    pair_mask = np.zeros((batch_size, max_pairs), bool)
    for row, (image_boxes, image_labels, image_features, image_pairs, predicates) in enumerate(
        images
    ):
        num_objects, num_pairs = len(image_labels), len(image_pairs)
        boxes[row, :num_objects] = image_boxes
        labels[row, :num_objects] = image_labels
        features[row, :num_objects] = image_features
        object_mask[row, :num_objects] = True
        pairs[row, :num_pairs] = image_pairs
        pair_labels[row, :num_pairs] = predicates
        pair_mask[row, :num_pairs] = True
    graph_mask = np.arange(batch_size) < len(images)
    return SceneGraphBatch(
        boxes=boxes,
        labels=labels,
        object_mask=object_mask,
        pairs=pairs,
        pair_labels=pair_labels,
        pair_mask=pair_mask,
        image_size=np.tile(np.array([[80, 100]], np.int32), (batch_size, 1)),
        graph_mask=graph_mask,
        image_index=np.where(graph_mask, np.arange(batch_size), -1).astype(np.int32),
        num_truncated_objects=np.zeros(batch_size, np.int32),
        num_truncated_pairs=np.zeros(batch_size, np.int32),
        object_features=features,
    )


def random_image(rng, num_objects, num_pairs):
    corners = rng.uniform(0, 60, size=(num_objects, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=(num_objects, 2))], 1)
    labels = rng.integers(1, NUM_CLASSES + 1, num_objects)
    features = rng.normal(size=(num_objects, FEATURE_DIM))
    ordered = np.array([(s, o) for s in range(num_objects) for o in range(num_objects) if s != o])
    pairs = ordered[rng.permutation(len(ordered))[:num_pairs]]
    predicates = rng.integers(0, NUM_PREDICATES + 1, num_pairs)
    return boxes, labels, features, pairs, predicates


def bias_lookup(table: np.ndarray, labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``table[label of subject, label of object]`` per pair: f32[B, P, C]."""
    rows = np.arange(labels.shape[0])[:, None]
    return table[labels[rows, pairs[..., 0]], labels[rows, pairs[..., 1]]]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [random_image(rng, 4, 7), random_image(rng, 3, 5)]


@pytest.fixture(scope="module")
def batch(images):
    return make_batch(images, batch_size=3)  # row 2: a padding image


@pytest.fixture(scope="module")
def frequency():
    """Three hand-made training graphs (boxes 0 and 1 overlap, box 2 is apart)."""
    box = [[0, 0, 10, 10], [5, 5, 15, 15], [50, 50, 60, 60]]
    graphs = [
        SceneGraph("1", 100, 100, box, [1, 2, 3], [[0, 1, 1], [0, 1, 1], [0, 2, 2]]),
        SceneGraph("2", 100, 100, box[:2], [1, 2], [[0, 1, 3]]),
        SceneGraph("3", 100, 100, box, [2, 1, 1], [[1, 0, 2]]),
    ]
    return FrequencyBaseline.from_graphs(graphs, NUM_CLASSES, NUM_PREDICATES)


@pytest.fixture(scope="module")
def models(batch, frequency):
    """Per task: the module, one jitted apply, and the shared variables."""
    configs = {task: tiny_config(task=task, frequency_bias=True) for task in ("predcls", "sgcls")}
    fresh = fast_jit(MotifNet(configs["sgcls"]).init)(rbg_key(0), batch)
    variables = with_tables(jax.device_get(fresh), frequency_bias=frequency.log_bias)
    predcls_model = MotifNet(configs["predcls"])
    sgcls_model = MotifNet(configs["sgcls"])

    @fast_jit
    @chex.assert_max_traces(n=1)  # every PredCls call of this module shares one batch shape
    def predcls_apply(variables, batch):
        return predcls_model.apply(variables, batch)

    sgcls_apply = fast_jit(sgcls_model.apply, static_argnames="train")
    return {
        "variables": variables,
        "predcls": (
            predcls_model,
            lambda batch, variables=variables: predcls_apply(variables, batch),
        ),
        "sgcls": (
            sgcls_model,
            lambda batch, variables=variables, train=False: sgcls_apply(
                variables, batch, train=train
            ),
        ),
    }


# ----------------------------------------------------------------------------------------------
# Config and order
# ----------------------------------------------------------------------------------------------


def test_config_presets_and_validation():
    official = MotifsConfig.official(150, 50)
    assert (official.hidden_dim, official.pooling_dim, official.embed_dim) == (512, 4096, 200)
    assert (official.num_object_layers, official.num_edge_layers) == (1, 1)
    assert official.num_relation_classes == 51 and official.pair_fusion == "concat"
    small = MotifsConfig.small(150, 50)
    assert small.hidden_dim < 128 and small.pooling_dim <= 128
    assert MotifsConfig.small(150, 50, embed_dim=20).embed_dim == 20
    assert small == MotifsConfig.small(150, 50) and hash(small) == hash(MotifsConfig.small(150, 50))
    assert small != small.replace(task="sgcls")
    assert small != small.replace(frequency_bias=True)
    bad = [
        ({"task": "sgdet"}, "'task'"),
        ({"feature_source": "clip"}, "'feature_source'"),
        ({"hidden_dim": 0}, "'hidden_dim'"),
        ({"num_edge_layers": 1.5}, "'num_edge_layers'"),
        ({"dropout_rate": 1.0}, "'dropout_rate'"),
        ({"pair_fusion": "sum"}, "'pair_fusion'"),
        ({"use_union_features": "yes"}, "'use_union_features'"),
        ({"frequency_bias": np.ones((151, 151, 51))}, "'frequency_bias'.*with_tables"),
        ({"frequency_bias": "yes"}, "'frequency_bias'"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            MotifsConfig.small(150, 50, **overrides)


def test_with_tables_fills_both_label_embeddings_and_the_bias(batch, models, frequency):
    """The tables replace exactly their leaves; wrong shapes and NaN name the field."""
    fresh = jax.device_get(
        fast_jit(MotifNet(tiny_config(frequency_bias=True)).init)(rbg_key(0), batch)
    )
    vectors = np.random.default_rng(3).normal(size=(NUM_LABELS, 8)).astype(np.float32)
    variables = with_tables(fresh, object_word_vectors=vectors, frequency_bias=frequency.log_bias)
    params = variables["params"]
    for name in ("object_embedding", "edge_embedding"):
        np.testing.assert_array_equal(params[name]["embedding"], vectors)
        assert not np.array_equal(fresh["params"][name]["embedding"], vectors)  # input intact
    np.testing.assert_array_equal(
        params["frequency_bias"], frequency.log_bias.reshape(NUM_LABELS**2, -1)
    )
    np.testing.assert_array_equal(fresh["params"]["frequency_bias"], 0.0)
    for name in ("box_layer0", "relation_classifier", "object_context"):
        chex.assert_trees_all_equal(params[name], fresh["params"][name])
    bad = [
        ({"object_word_vectors": vectors[1:]}, f"'object_word_vectors'.*{NUM_LABELS}"),
        ({"object_word_vectors": np.full_like(vectors, np.nan)}, "'object_word_vectors'.*NaN"),
        ({"frequency_bias": frequency.log_bias[..., :-1]}, "'frequency_bias'.*shape"),
        ({"frequency_bias": np.full_like(frequency.log_bias, np.inf)}, "'frequency_bias'.*NaN"),
    ]
    for tables, message in bad:
        with pytest.raises(ConfigError, match=message):
            with_tables(fresh, **tables)
    no_bias = jax.eval_shape(MotifNet(tiny_config()).init, rbg_key(0), batch)
    with pytest.raises(ConfigError, match="'frequency_bias'.*frequency_bias=False"):
        with_tables(no_bias, frequency_bias=frequency.log_bias)


def test_parameter_layout_of_the_options(batch, models):
    """Shapes: fusion, union projection, classifiers, bias (the options traced, not compiled)."""

    def shapes(**overrides):
        tree = jax.eval_shape(MotifNet(tiny_config(**overrides)).init, rbg_key(0), batch)
        return jax.tree.map(lambda leaf: leaf.shape, tree["params"])

    default = jax.tree.map(lambda leaf: leaf.shape, models["variables"]["params"])
    assert default["pair_projection"]["kernel"] == (2 * HIDDEN_DIM, POOLING_DIM)  # concat
    assert default["head_projection"]["kernel"] == (HIDDEN_DIM, 2 * HIDDEN_DIM)
    assert default["union_projection"]["kernel"] == (10, POOLING_DIM)
    assert default["relation_classifier"]["kernel"] == (POOLING_DIM, NUM_PREDICATES + 1)
    assert default["object_classifier"]["kernel"][1] == NUM_LABELS
    assert default["object_prior"]["kernel"] == (FEATURE_DIM, NUM_LABELS)
    assert set(default["object_context"]["rnn"]) == {"layer0_forward", "layer0_reverse"}
    product = shapes(pair_fusion="product", use_union_features=False, num_object_layers=2)
    assert product["pair_projection"]["kernel"] == (HIDDEN_DIM, POOLING_DIM)
    assert "union_projection" not in product and "frequency_bias" not in product
    assert "object_classifier" not in product and "object_prior" not in product
    assert set(product["object_context"]["rnn"]) == {
        f"layer{index}_{direction}" for index in (0, 1) for direction in ("forward", "reverse")
    }
    assert "union_projection" not in shapes(union_feature_dim=POOLING_DIM)


def test_left_to_right_order_with_ties_and_padding():
    # Image 0, centre x: 30, 10, 30 (tie with object 0), 20, then two padded slots (garbage).
    # Image 1: padded slots between real ones. Real objects first, ties and padding keep their
    # input order.
    nan = np.nan
    boxes = np.array(
        [
            [[20, 0, 40, 9], [0, 0, 20, 9], [25, 5, 35, 9], [15, 0, 25, 9], [nan] * 4, [0] * 4],
            [[50, 0, 60, 9], [9e9, 0, 9e9, 0], [0, 0, 10, 9], [0] * 4, [40, 0, 50, 9], [-9] * 4],
        ],
        np.float32,
    )
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0]], bool)
    order = np.asarray(left_to_right_order(boxes, mask))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(order, [[1, 3, 0, 2, 4, 5], [2, 4, 0, 1, 3, 5]])


def test_bilstm_reverse_direction_respects_seq_lengths():
    """Steps after seq_lengths (garbage here) change no real output, in either direction."""
    rng = np.random.default_rng(1)
    lengths = np.array([3, 5, 0], np.int32)
    inputs = rng.normal(size=(3, 5, 4)).astype(np.float32)
    garbage = inputs.copy()
    for row, length in enumerate(lengths):
        garbage[row, length:] = rng.normal(scale=50, size=(5 - length, 4))
    lstm = BiLSTM(hidden_dim=6)
    # Random weights from numpy (no initialiser to compile); larger than the defaults so that
    # every step matters.
    shapes = jax.eval_shape(lstm.init, rbg_key(0), inputs, lengths, train=False)
    variables = jax.tree.map(
        lambda leaf: rng.normal(scale=0.7, size=leaf.shape).astype(np.float32), shapes
    )
    run = fast_jit(lambda variables, x, n: lstm.apply(variables, x, n, train=False))
    outputs = np.asarray(run(variables, inputs, lengths))
    chex.assert_shape(outputs, (3, 5, 12))
    with_garbage = np.asarray(run(variables, garbage, lengths))
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(with_garbage[row, :length], outputs[row, :length], atol=1e-6)
        np.testing.assert_array_equal(outputs[row, length:], 0.0)

    # The reverse half is the forward computation over the flipped sequence: swapping the two
    # directions' weights and flipping row 1 (no padding) swaps and flips the two halves.
    cells = variables["params"]
    swapped = {
        "params": {
            "layer0_forward": cells["layer0_reverse"],
            "layer0_reverse": cells["layer0_forward"],
        }
    }
    flipped = np.asarray(run(swapped, np.ascontiguousarray(inputs[:, ::-1]), lengths))
    np.testing.assert_allclose(flipped[1, ::-1, :6], outputs[1, :, 6:], atol=1e-5)
    np.testing.assert_allclose(flipped[1, ::-1, 6:], outputs[1, :, :6], atol=1e-5)

    # The reverse half at step 0 reads the later real steps; the forward half does not.
    changed = inputs.copy()
    changed[0, 2] += 1.0
    moved = np.asarray(run(variables, changed, lengths))
    assert not np.allclose(moved[0, 0, 6:], outputs[0, 0, 6:], atol=1e-4)
    np.testing.assert_allclose(moved[0, :2, :6], outputs[0, :2, :6], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_output_shapes_and_contract(batch, models, frequency, task):
    _, apply = models[task]
    outputs, aux = apply(batch)
    num_relations = NUM_PREDICATES + 1
    chex.assert_shape(outputs["relation_logits"], (3, MAX_PAIRS, num_relations))
    chex.assert_shape([outputs["object_labels"], outputs["object_scores"]], (3, MAX_OBJECTS))
    chex.assert_shape(aux["relation_embedding"], (3, MAX_PAIRS, POOLING_DIM))
    chex.assert_shape([aux["object_context"], aux["edge_context"]], (3, MAX_OBJECTS, HIDDEN_DIM))
    assert outputs["object_labels"].dtype == jnp.int32
    assert outputs["relation_logits"].dtype == jnp.float32
    chex.assert_tree_all_finite((outputs, aux))
    mask = np.asarray(batch.object_mask)
    np.testing.assert_array_equal(np.asarray(aux["edge_context"])[~mask], 0.0)
    if task == "predcls":
        assert "object_logits" not in outputs and "object_prior_logits" not in aux
        np.testing.assert_array_equal(outputs["object_labels"], batch.labels)
        np.testing.assert_array_equal(outputs["object_scores"], mask.astype(np.float32))
    else:
        logits = np.asarray(outputs["object_logits"])
        chex.assert_shape([logits, aux["object_prior_logits"]], (3, MAX_OBJECTS, NUM_LABELS))
        predicted = 1 + logits[..., 1:].argmax(-1)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        scores = np.take_along_axis(probabilities, predicted[..., None], -1)[..., 0]
        np.testing.assert_array_equal(outputs["object_labels"], np.where(mask, predicted, 0))
        np.testing.assert_allclose(outputs["object_scores"], np.where(mask, scores, 0), rtol=1e-5)

    # logits = relation_classifier(relation_embedding) + log_bias[ô_s, ô_o] (ô: output labels).
    classifier = models["variables"]["params"]["relation_classifier"]
    expected = np.asarray(aux["relation_embedding"]) @ classifier["kernel"] + classifier["bias"]
    expected += bias_lookup(
        frequency.log_bias, np.asarray(outputs["object_labels"]), np.asarray(batch.pairs)
    )
    np.testing.assert_allclose(outputs["relation_logits"], expected, rtol=1e-4, atol=1e-4)


def test_sgcls_edges_use_truth_in_training_and_predictions_at_inference(batch, models):
    _, apply = models["sgcls"]
    relabelled = batch.replace(labels=np.where(batch.object_mask, 1, 0).astype(np.int32))
    evaluated, _ = apply(batch)
    evaluated_relabelled, _ = apply(relabelled)
    np.testing.assert_allclose(
        evaluated["relation_logits"], evaluated_relabelled["relation_logits"], rtol=1e-6
    )
    trained, _ = apply(batch, train=True)
    trained_relabelled, _ = apply(relabelled, train=True)
    assert not np.allclose(trained["relation_logits"], trained_relabelled["relation_logits"])


def test_permuting_the_objects_gives_the_same_relation_logits(batch, models):
    """Objects shuffled (padding slots included) and pairs remapped: same per-pair outputs."""
    permutation = np.array([4, 2, 0, 5, 3, 1])  # new slot k holds old object permutation[k]
    position = np.argsort(permutation)  # old object i sits at new slot position[i]
    permuted = batch.replace(
        boxes=batch.boxes[:, permutation],
        labels=batch.labels[:, permutation],
        object_mask=batch.object_mask[:, permutation],
        object_features=batch.object_features[:, permutation],
        pairs=position[batch.pairs].astype(np.int32),
    )
    assert not np.array_equal(permuted.object_mask, batch.object_mask)
    pair_mask = np.asarray(batch.pair_mask)
    for task in ("predcls", "sgcls"):
        _, apply = models[task]
        outputs, aux = apply(batch)
        permuted_outputs, permuted_aux = apply(permuted)
        np.testing.assert_allclose(
            np.asarray(permuted_outputs["relation_logits"])[pair_mask],
            np.asarray(outputs["relation_logits"])[pair_mask],
            rtol=1e-5,
            atol=1e-5,
        )
        for key in ("object_labels", "object_scores"):
            np.testing.assert_allclose(
                permuted_outputs[key], np.asarray(outputs[key])[:, permutation], rtol=1e-5
            )
        np.testing.assert_allclose(
            permuted_aux["edge_context"],
            np.asarray(aux["edge_context"])[:, permutation],
            rtol=1e-5,
            atol=1e-6,
        )


def test_padding_with_garbage_does_not_change_real_outputs(batch, models):
    rng = np.random.default_rng(7)
    mask = np.asarray(batch.object_mask)
    pair_mask = np.asarray(batch.pair_mask)
    garbage_boxes = rng.uniform(-500, 500, batch.boxes.shape)
    garbage_features = rng.normal(scale=1e3, size=batch.object_features.shape)
    garbage_pairs = rng.integers(0, MAX_OBJECTS, batch.pairs.shape)
    garbage = batch.replace(
        boxes=np.where(mask[..., None], batch.boxes, garbage_boxes).astype(np.float32),
        labels=np.where(mask, batch.labels, rng.integers(0, NUM_LABELS, mask.shape)).astype(
            np.int32
        ),
        object_features=np.where(mask[..., None], batch.object_features, garbage_features).astype(
            np.float32
        ),
        pairs=np.where(pair_mask[..., None], batch.pairs, garbage_pairs).astype(np.int32),
    )
    for task in ("predcls", "sgcls"):
        _, apply = models[task]
        outputs, aux = apply(batch)
        garbage_outputs, garbage_aux = apply(garbage)
        np.testing.assert_allclose(
            np.asarray(garbage_outputs["relation_logits"])[pair_mask],
            np.asarray(outputs["relation_logits"])[pair_mask],
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_array_equal(garbage_outputs["object_labels"], outputs["object_labels"])
        np.testing.assert_allclose(garbage_aux["edge_context"], aux["edge_context"], atol=1e-6)
    # The padding image (row 2) has no objects: labels and scores 0.
    assert not mask[2].any()
    np.testing.assert_array_equal(garbage_outputs["object_labels"][2], 0)
    np.testing.assert_array_equal(garbage_outputs["object_scores"][2], 0)


def test_graphs_of_different_sizes_share_one_trace(images, models):
    """The PredCls apply is wrapped in ``chex.assert_max_traces(n=1)`` (see ``models``)."""
    _, apply = models["predcls"]
    first, second = make_batch(images, batch_size=3), make_batch([images[1]] * 3)
    assert first.pair_mask.sum() != second.pair_mask.sum()
    apply(first)
    apply(second)


# ----------------------------------------------------------------------------------------------
# Frequency bias
# ----------------------------------------------------------------------------------------------


def test_frequency_bias_starts_from_the_table_and_is_added_to_the_logits(batch, models, frequency):
    table = np.asarray(models["variables"]["params"]["frequency_bias"])
    chex.assert_shape(table, (NUM_LABELS * NUM_LABELS, NUM_PREDICATES + 1))
    # Counts [background, p1, p2, p3] by hand. (1, 2): p1 twice (image 1), p3 (image 2), p2
    # (image 3: object 1 of class 1 -> object 0 of class 2); background = overlapping ordered
    # pairs of classes (1, 2), one per image, + 1. (2, 1): background only. (1, 3): p2 once,
    # boxes apart, so background 0 + 1. (4, 4): never seen.
    expected_counts = {(1, 2): [4, 2, 1, 1], (2, 1): [4, 0, 0, 0], (1, 3): [1, 0, 1, 0]}
    expected_counts[(4, 4)] = [1, 0, 0, 0]
    for (subject, obj), counts in expected_counts.items():
        counts = np.array(counts, np.float64)
        np.testing.assert_allclose(
            table[subject * NUM_LABELS + obj], np.log(counts / counts.sum() + 1e-3), rtol=1e-6
        )

    # Zeroing the table removes exactly the lookup, in PredCls at inference and in SGCls
    # training (indexed by the ground-truth labels there).
    params = models["variables"]["params"]
    zeroed = {"params": {**params, "frequency_bias": jnp.zeros_like(params["frequency_bias"])}}
    lookup = bias_lookup(frequency.log_bias, np.asarray(batch.labels), np.asarray(batch.pairs))
    _, predcls = models["predcls"]
    _, sgcls = models["sgcls"]
    for run in (predcls, lambda b, variables=None: sgcls(b, variables=variables, train=True)):
        with_bias, _ = run(batch, variables=models["variables"])
        without, _ = run(batch, variables=zeroed)
        np.testing.assert_allclose(
            with_bias["relation_logits"],
            np.asarray(without["relation_logits"]) + lookup,
            rtol=1e-5,
            atol=1e-5,
        )


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_few_optimizer_steps_reduce_the_cross_entropy(batch, models):
    """SGCls: relation CE + object CE over the output contract, 16 Adam steps."""
    model, _ = models["sgcls"]
    params = models["variables"]["params"]
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def objective(params):
        outputs, _ = model.apply({"params": params}, batch, train=True)
        relation = cross_entropy(outputs["relation_logits"], batch.pair_labels, batch.pair_mask)
        objects = cross_entropy(outputs["object_logits"], batch.labels, batch.object_mask)
        return relation + objects, (relation, objects)

    @fast_jit
    def step(params, opt_state):
        (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, terms, grads

    history = []
    for index in range(16):
        params, opt_state, loss, terms, grads = step(params, opt_state)
        history.append((float(loss), *map(float, terms)))
        if index == 0:  # every parameter, the frequency bias included, gets a gradient
            chex.assert_tree_all_finite(grads)
            assert float(jnp.abs(grads["frequency_bias"]).sum()) > 0
    (first, relation_first, objects_first), (last, relation_last, objects_last) = (
        history[0],
        history[-1],
    )
    assert np.all(np.isfinite(history))
    assert last < 0.6 * first, history
    assert relation_last < relation_first and objects_last < objects_first
