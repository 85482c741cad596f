"""Configs without arrays; tables put into the variables by the models' ``with_tables``.

``tables_reference.npz`` holds outputs of tiny PE-Net, MotifNet and SG-GCN models built when the
configs still carried the word vectors and the frequency table (commit b4492af): the same models
built from a plain config and filled by ``with_tables`` must give the same numbers, bit for bit
(with a float tolerance only under another JAX version than the one that recorded them).
"""

import dataclasses
import pathlib
import sys

import chex
import jax
import numpy as np
import pytest

from sgg_jax.data import pipeline
from sgg_jax.detection.detector import DetectorConfig
from sgg_jax.errors import ConfigError
from sgg_jax.projects.sg_embed import graph_batch, sg_gcn
from sgg_jax.relation import motifs, penet
from sgg_jax.relation.sgdet import SGDetConfig
from sgg_jax.structures import SceneGraph

REFERENCE = pathlib.Path(__file__).with_name("tables_reference.npz")
K, P, E, F = 6, 4, 8, 5  # classes, predicates, embedding size, precomputed feature size
SIZES = dict(
    hidden_dim=16,
    embed_dim=E,
    object_feature_dim=12,
    union_feature_dim=12,
    feature_hidden_dim=12,
    box_embedding_dim=8,
)


def make_graph(rng, image_id, num_objects):
    corners = rng.uniform(0, 60, size=(num_objects, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=(num_objects, 2))], 1)
    relations = np.array([[0, 1, 1], [1, 2 % num_objects, 3], [num_objects - 1, 0, 2]])
    return SceneGraph(image_id, 100, 80, boxes, rng.integers(1, K + 1, num_objects), relations)


@pytest.fixture(scope="module")
def graphs():
    rng = np.random.default_rng(0)
    return [make_graph(rng, "a", 3), make_graph(rng, "b", 4), make_graph(rng, "c", 2)]


@pytest.fixture(scope="module")
def batch(graphs):
    config = pipeline.PipelineConfig.evaluation(batch_size=3, max_objects=5, max_pairs=12)
    examples = [
        pipeline.prepare_example(
            graph,
            image_index=index,
            epoch=0,
            config=config,
            object_features=np.random.default_rng(index).normal(size=(graph.num_objects, F)),
        )
        for index, graph in enumerate(graphs)
    ]
    return pipeline.collate(examples, None)


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(7)
    return {
        "object_word_vectors": rng.normal(size=(K + 1, E)).astype(np.float32),
        "predicate_word_vectors": rng.normal(size=(P + 1, E)).astype(np.float32),
        "frequency_bias": rng.normal(size=(K + 1, K + 1, P + 1)).astype(np.float32),
    }


def outputs_of(model, variables, batch):
    """Outputs at inference and in training (dropout key 2), as in the recorded reference."""
    mutable = [name for name in variables if name != "params"]
    evaluated = model.apply(variables, batch, train=False)[0]
    trained = model.apply(
        variables, batch, train=True, rngs={"dropout": jax.random.key(2)}, mutable=mutable
    )[0][0]
    if not isinstance(evaluated, dict):
        evaluated, trained = {"embedding": evaluated}, {"embedding": trained}
    return {"eval": evaluated, "train": trained}


def fresh_variables(model, batch):
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return model.init(keys, batch, train=False)


# ----------------------------------------------------------------------------------------------
# Configs: plain frozen dataclasses
# ----------------------------------------------------------------------------------------------


def config_examples():
    detector = DetectorConfig.tiny(detections_per_image=4)
    sgdet = SGDetConfig(train_pairs=8, train_fg=4)
    return [
        lambda: penet.PENetConfig.small(K, P, frequency_bias=True),
        lambda: penet.PENetConfig.small(
            K, P, task="sgdet", feature_source="roi", detector=detector, sgdet=sgdet
        ),
        lambda: motifs.MotifsConfig.small(K, P, task="sgcls", frequency_bias=True),
        lambda: sg_gcn.SGGCNConfig(K, P, embed_dim=E),
    ]


@pytest.mark.parametrize("make", config_examples())
def test_configs_compare_and_hash_by_value_with_the_dataclass_methods(make):
    config, again = make(), make()
    params = type(config).__dataclass_params__
    assert params.frozen and params.eq and not params.unsafe_hash
    # __eq__ / __hash__ are the ones dataclasses generated (no hand-written methods).
    source = sys.modules[type(config).__module__].__file__
    for method in ("__eq__", "__hash__"):
        assert getattr(type(config), method).__code__.co_filename != source, method
    assert config == again and hash(config) == hash(again) and config is not again
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        assert not isinstance(value, np.ndarray | jax.Array | list | dict), field.name
    changed = config.replace(embed_dim=config.embed_dim + 1)
    assert changed != config


def test_configs_are_static_arguments_of_jitted_functions():
    traces = []

    def scaled(config, x):
        traces.append(config)
        return x * config.embed_dim

    scaled_jit = jax.jit(scaled, static_argnums=0)
    x = np.ones(3, np.float32)
    for make in config_examples():
        np.testing.assert_array_equal(scaled_jit(make(), x), x * make().embed_dim)
        np.testing.assert_array_equal(scaled_jit(make(), x), x * make().embed_dim)  # cached
    assert len(traces) == len(config_examples())


# ----------------------------------------------------------------------------------------------
# with_tables: the same numbers as the configs that carried the tables
# ----------------------------------------------------------------------------------------------


def assert_same(name, actual, reference):
    expected = reference[name]
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    if str(reference["jax_version"]) == jax.__version__:
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def relation_models():
    for task in ("predcls", "sgcls"):
        config = penet.PENetConfig.small(
            K, P, task=task, object_classifier_dim=12, frequency_bias=True, **SIZES
        )
        yield (
            f"penet_{task}",
            penet.PENet(config),
            penet.with_tables,
            (
                "object_word_vectors",
                "predicate_word_vectors",
                "frequency_bias",
            ),
        )
        config = motifs.MotifsConfig.small(
            K, P, task=task, pooling_dim=12, frequency_bias=True, **SIZES
        )
        yield (
            f"motifs_{task}",
            motifs.MotifNet(config),
            motifs.with_tables,
            (
                "object_word_vectors",
                "frequency_bias",
            ),
        )


@pytest.mark.e2e
def test_relation_models_with_tables_match_the_recorded_outputs(batch, tables):
    reference = np.load(REFERENCE)
    for name, model, with_tables, fields in relation_models():
        fresh = fresh_variables(model, batch)
        variables = with_tables(fresh, **{field: tables[field] for field in fields})
        params = variables["params"]
        np.testing.assert_array_equal(
            params["object_embedding"]["embedding"], tables["object_word_vectors"]
        )
        flat_bias = tables["frequency_bias"].reshape((K + 1) ** 2, P + 1)
        if name.startswith("penet"):
            np.testing.assert_array_equal(
                params["predicate_embedding"]["embedding"], tables["predicate_word_vectors"]
            )
            np.testing.assert_array_equal(variables["frequency"]["log_bias"], flat_bias)
            assert "log_bias" not in params  # inference-only: not a trained parameter
        else:
            np.testing.assert_array_equal(
                params["edge_embedding"]["embedding"], tables["object_word_vectors"]
            )
            np.testing.assert_array_equal(params["frequency_bias"], flat_bias)
        outputs = outputs_of(model, variables, batch)
        for mode, values in outputs.items():
            for key in ("relation_logits", "object_logits", "object_labels"):
                if key in values:
                    assert_same(f"{name}/{mode}/{key}", values[key], reference)


def test_scene_graph_gcn_with_tables_matches_the_recorded_outputs(graphs, tables):
    reference = np.load(REFERENCE)
    batch = graph_batch.pad_scene_graphs(graphs, 6, 8, num_object_classes=K, num_predicates=P)
    model = sg_gcn.SceneGraphGCN(sg_gcn.SGGCNConfig(K, P, embed_dim=E, hidden_dim=12, num_layers=2))
    variables = sg_gcn.with_tables(
        fresh_variables(model, batch),
        object_word_vectors=tables["object_word_vectors"],
        predicate_word_vectors=tables["predicate_word_vectors"],
    )
    for name in ("object_embedding", "predicate_embedding"):
        key = f"sg_gcn/var/params/{name}/embedding"
        assert_same(key, variables["params"][name]["embedding"], reference)
    for mode, values in outputs_of(model, variables, batch).items():
        assert_same(f"sg_gcn/{mode}/embedding", values["embedding"], reference)


@pytest.mark.e2e
def test_cce_scorer_model_tables_go_under_the_base_scope(batch, tables):
    from sgg_jax.projects.cce_scorer.model import CCEScorerModel
    from sgg_jax.projects.cce_scorer.scorer import ScorerConfig

    config = penet.PENetConfig.small(K, P, frequency_bias=True, **SIZES)
    model = CCEScorerModel(penet.PENet(config), scorer_config=ScorerConfig(8, 8))
    fresh = fresh_variables(model, batch)
    variables = penet.with_tables(fresh, scope="base", frequency_bias=tables["frequency_bias"])
    np.testing.assert_array_equal(
        variables["frequency"]["base"]["log_bias"],
        tables["frequency_bias"].reshape((K + 1) ** 2, P + 1),
    )
    chex.assert_trees_all_equal(variables["params"], fresh["params"])
    with pytest.raises(ConfigError, match="'frequency_bias'.*frequency/log_bias"):
        penet.with_tables(fresh, frequency_bias=tables["frequency_bias"])  # scope missing


def _nan(table):
    table = np.array(table)
    table.flat[3] = np.nan
    return table


@pytest.mark.parametrize(
    "field, make_table, message",
    [
        (
            "object_word_vectors",
            lambda t: t[:-1],
            r"must have shape \(7, embed_dim=8\), got \(6, 8\)",
        ),
        ("object_word_vectors", _nan, "contains NaN or inf"),
        ("predicate_word_vectors", lambda t: t[:, :4], r"must have shape \(5, embed_dim=8\)"),
        ("predicate_word_vectors", lambda t: np.full_like(t, np.inf), "contains NaN or inf"),
        ("frequency_bias", lambda t: t[:, :, :2], r"must have shape \(7, 7, 5\), got \(7, 7, 2\)"),
        ("frequency_bias", _nan, "contains NaN or inf"),
        ("frequency_bias", lambda t: "table", "must be a float array"),
    ],
)
def test_with_tables_rejects_wrong_tables_in_one_line_naming_the_field(
    batch, tables, field, make_table, message
):
    model = penet.PENet(penet.PENetConfig.small(K, P, frequency_bias=True, **SIZES))
    fresh = jax.eval_shape(lambda batch: fresh_variables(model, batch), batch)
    with pytest.raises(ConfigError, match=f"^option '{field}': {message}") as error:
        penet.with_tables(fresh, **{field: make_table(tables[field])})
    assert "\n" not in str(error.value)
