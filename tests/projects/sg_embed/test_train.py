"""Scene-graph embedding training (sgg_jax.projects.sg_embed.train): batches, determinism, learning, bad input."""

import functools
import json
import os

import numpy as np
import pytest

from sgg_jax.data import synthetic, word_vectors
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.evaluation import embedding as embedding_eval
from sgg_jax.projects.sg_embed import sg_gcn, synthetic_captions
from sgg_jax.projects.sg_embed import similarity as similarity_lib
from sgg_jax.projects.sg_embed import train as sg_embed
from sgg_jax.projects.sg_embed.graph_batch import pad_scene_graphs
from sgg_jax.projects.sg_embed.sg_gcn import SGGCNConfig
from sgg_jax.structures import SceneGraph


@pytest.fixture(scope="module")
def data():
    dataset = synthetic.generate(synthetic.SyntheticConfig(num_images=160, seed=3))
    graphs, types = synthetic_captions.synthesize(
        dataset.graphs,
        dataset.vocab,
        synthetic_captions.CaptionConfig(noise=0.2, seed=3, num_scene_types=4),
    )
    table = {g.image_id: g.captions for g in graphs}
    vectors = word_vectors.random_word_vectors(similarity_lib.caption_vocabulary(table.values()))
    similarity, _ = similarity_lib.caption_similarity(
        [g.image_id for g in graphs], table, vectors, normalise_captions=True
    )
    vocab = dataset.vocab
    model_config = SGGCNConfig(
        len(vocab.object_names) - 1,
        len(vocab.predicate_names) - 1,
        embed_dim=16,
        hidden_dim=32,
        num_layers=2,
    )
    max_nodes, max_edges = sg_embed.graph_budgets(graphs)
    return graphs, similarity, model_config, max_nodes, max_edges, types


def _config(data, **changes):
    max_nodes, max_edges = data[3], data[4]
    options = dict(epochs=2, batch_size=16, learning_rate=1e-2, max_nodes=max_nodes)
    options.update(max_edges=max_edges, eval_batch_size=32)
    options.update(changes)
    return sg_embed.EmbedTrainConfig(**options)


def test_graph_budgets_hold_every_graph(data):
    graphs = data[0]
    max_nodes, max_edges = sg_embed.graph_budgets(graphs)
    assert max_nodes == max(g.num_objects for g in graphs) + 2
    assert max_edges == max(g.num_objects + g.num_relations for g in graphs)
    batch = pad_scene_graphs(
        graphs, max_nodes, max_edges, num_object_classes=150, num_predicates=50
    )
    assert batch.num_truncated_nodes.sum() == 0 and batch.num_truncated_edges.sum() == 0


def test_stack_rows_pads_with_empty_graphs(data):
    graphs, _, config, max_nodes, max_edges = data[:5]
    padded = pad_scene_graphs(
        graphs[:5],
        max_nodes,
        max_edges,
        num_object_classes=config.num_object_classes,
        num_predicates=config.num_predicates,
    )
    stacked = sg_embed._stack_rows(padded, np.array([3, -1, 0, -1]))
    np.testing.assert_array_equal(stacked.graph_mask, [True, False, True, False])
    np.testing.assert_array_equal(stacked.node_labels[0], padded.node_labels[3])
    np.testing.assert_array_equal(stacked.edges[2], padded.edges[0])
    assert not stacked.node_mask[1].any() and not stacked.edge_mask[3].any()
    assert (stacked.edges[1] == max_nodes - 1).all() and (stacked.node_labels[3] == 0).all()


@pytest.mark.e2e
@pytest.mark.parametrize("objective", sg_embed.OBJECTIVES)
def test_training_is_deterministic_and_finite(data, objective):
    graphs, similarity, model_config = data[:3]
    config = _config(data, objective=objective, sampler="reject", epochs=1)
    first = sg_embed.train_embedding(graphs[:40], similarity[:40, :40], model_config, config)
    second = sg_embed.train_embedding(graphs[:40], similarity[:40, :40], model_config, config)
    assert first.steps == 3 and len(first.losses) == 1 and np.isfinite(first.losses[0])
    assert first.losses == second.losses
    np.testing.assert_array_equal(first.embedder(graphs[40:50]), second.embedder(graphs[40:50]))
    embeddings = first.embedder(graphs[40:50])
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


@pytest.mark.e2e
def test_ranking_training_fits_the_supervision(data):
    # Supervision with a clear structure: images of the same hidden scene type are similar.
    graphs, _, model_config, max_nodes, max_edges = data[:5]
    types = data[5][:64]
    target = np.where(types[:, None] == types[None, :], 0.9, 0.1).astype(np.float32)
    train = graphs[:64]
    untrained = sg_embed.initial_embedder(model_config, max_nodes=max_nodes, max_edges=max_edges)
    before = embedding_eval.rank_correlations(untrained(train), target)["kendall_row"]
    history = []
    trained = sg_embed.train_embedding(
        train,
        target,
        model_config,
        _config(data, objective="ranking", sampler="probability", epochs=15),
        eval_fn=lambda e: {
            "kendall_row": embedding_eval.rank_correlations(e(train), target)["kendall_row"]
        },
        eval_every=5,
        log=history.append,
    )
    after = embedding_eval.rank_correlations(trained.embedder(train), target)["kendall_row"]
    assert [h["epoch"] for h in trained.history] == [5, 10, 15]
    assert trained.history[-1]["kendall_row"] == pytest.approx(after)
    assert len(history) == 15 and history[-1].startswith("epoch 15/15")
    assert trained.losses[-1] < trained.losses[0] - 0.05
    assert after > before + 0.15


def test_query_without_objects_embeds_as_the_image_node_alone(data):
    graphs, _, model_config, max_nodes, max_edges = data[:5]
    embedder = sg_embed.initial_embedder(
        model_config, max_nodes=max_nodes, max_edges=max_edges, batch_size=4
    )
    query = embedding_eval.remove_edges(graphs[0], 10_000, rng=0)
    assert query.num_objects == 0 and query.num_relations == 0
    bare = SceneGraph(
        "bare", 10, 10, np.zeros((0, 4)), np.zeros(0, np.int32), np.zeros((0, 3), np.int32)
    )
    embeddings = embedder([query, graphs[1], bare])
    assert np.all(np.isfinite(embeddings))
    # Both are the image node alone: the same embedding, whatever the image.
    np.testing.assert_allclose(embeddings[0], embeddings[2], atol=1e-6)
    assert not np.allclose(embeddings[0], embeddings[1])
    sweep = embedding_eval.noise_sweep(embedder, graphs[:20], [1, 10_000], ks=(1, 5))
    assert sweep[10_000]["num_empty_queries"] == 20
    # Identical queries: ranks are pessimistic ties, so nothing is retrieved at rank 1 by chance.
    assert sweep[10_000]["R@1"] <= 1 / 20


def test_embedder_counts_truncation(data):
    graphs, _, model_config = data[:3]
    embedder = sg_embed.initial_embedder(model_config, max_nodes=4, max_edges=2, batch_size=8)
    embedder(graphs[:8])
    assert embedder.num_truncated_nodes == sum(max(0, g.num_objects - 2) for g in graphs[:8])
    assert embedder.num_truncated_edges > 0


def test_bad_similarity_is_rejected(data):
    graphs, similarity, model_config = data[:3]
    config = _config(data)
    with pytest.raises(ConfigError, match="similarity.*square"):
        sg_embed.train_embedding(graphs[:10], similarity[:10, :9], model_config, config)
    with pytest.raises(ConfigError, match="similarity.*10 x 10 but there are 12 graphs"):
        sg_embed.train_embedding(graphs[:12], similarity[:10, :10], model_config, config)
    broken = similarity[:10, :10].copy()
    broken[2, 3] = np.nan
    with pytest.raises(DataError, match="similarity.*finite"):
        sg_embed.train_embedding(graphs[:10], broken, model_config, config)
    with pytest.raises(ConfigError, match="at least 3 training graphs"):
        sg_embed.train_embedding(graphs[:2], similarity[:2, :2], model_config, config)


@pytest.mark.parametrize("sampler", ["probability", "reject"])
def test_unnormalised_similarity_is_rejected_before_training(data, monkeypatch, sampler):
    graphs, similarity, model_config = data[:3]
    raw = similarity[:10, :10] * 3.0  # like raw inner products of un-normalised captions
    assert raw.max() > 1.0 >= similarity.max()

    def no_compile(*args, **kwargs):
        raise AssertionError("the step was built before the similarity was checked")

    monkeypatch.setattr(sg_embed, "_compiled_step", no_compile)
    with pytest.raises(DataError, match=rf"{sampler} sampler needs similarities in \[-1, 1\]"):
        sg_embed.train_embedding(graphs[:10], raw, model_config, _config(data, sampler=sampler))


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"objective": "contrastive"}, "objective"),
        ({"sampler": "hardest"}, "sampler"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"nu": float("nan")}, "nu"),
        ({"margin": -0.1}, "margin"),
        ({"max_nodes": 10, "max_edges": 5}, "max_edges"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_training_options(changes, option):
    with pytest.raises(ConfigError, match=option):
        sg_embed.EmbedTrainConfig(**changes)


@pytest.mark.e2e
def test_saved_embedder_round_trip_and_model_free_function(data, tmp_path):
    graphs, similarity, model_config = data[:3]
    trained = sg_embed.train_embedding(
        graphs[:40], similarity[:40, :40], model_config, _config(data, epochs=1)
    )
    expected = trained.embedder(graphs[40:50])
    path = sg_embed.save_embedder(trained.embedder, tmp_path / "embedder", extra={"note": "test"})
    loaded = sg_embed.load_embedder(path)
    np.testing.assert_allclose(loaded(graphs[40:50]), expected, atol=1e-6)
    embed = sg_embed.load_exported_embed_function(path)
    batch = pad_scene_graphs(
        graphs[40:50],
        loaded.max_nodes,
        loaded.max_edges,
        num_object_classes=model_config.num_object_classes,
        num_predicates=model_config.num_predicates,
        batch_size=loaded.batch_size,
    )
    outputs = embed(*(getattr(batch, name) for name in sg_embed.GRAPH_INPUTS))
    np.testing.assert_allclose(np.asarray(outputs)[:10], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="already exists"):
        sg_embed.save_embedder(trained.embedder, path)
    with pytest.raises(DataError, match="not a saved embedder"):
        sg_embed.load_embedder(tmp_path)
    # Broken files: one line naming the file.
    function_file = tmp_path / "embedder" / sg_embed.EMBEDDER_FUNCTION
    function_file.write_bytes(b"garbage")
    with pytest.raises(DataError) as error:
        sg_embed.load_exported_embed_function(path)
    assert str(error.value).startswith(f"{function_file}: SHA-256 differs from embedder.json")
    assert "\n" not in str(error.value)
    for leaf in (tmp_path / "embedder" / sg_embed.EMBEDDER_PARAMS).iterdir():
        if leaf.is_file():
            leaf.write_bytes(b"garbage")
    with pytest.raises(DataError) as error:
        sg_embed.load_embedder(path)
    variables_dir = tmp_path / "embedder" / sg_embed.EMBEDDER_PARAMS
    assert str(error.value).startswith(f"{variables_dir}/")
    assert "SHA-256 differs from embedder.json" in str(error.value)
    assert "\n" not in str(error.value)
    from sgg_jax.train import export as export_lib

    with pytest.raises(export_lib.ExportError) as error:  # the reader below the checksums
        export_lib.restore_variables(variables_dir)
    assert str(error.value).startswith(f"{variables_dir}: unreadable saved variables")
    # A config field that is no longer one (word vectors live in the variables): one line naming
    # the file and the field, not a traceback and not a silently different model.
    path = sg_embed.save_embedder(trained.embedder, tmp_path / "embedder_with_old_config")
    config_path = os.path.join(path, sg_embed.EMBEDDER_CONFIG)
    with open(config_path) as handle:
        document = json.load(handle)
    document["model"]["object_word_vectors"] = [[0.0] * model_config.embed_dim]
    with open(config_path, "w") as handle:
        json.dump(document, handle)
    with pytest.raises(DataError, match=r"embedder.json: field 'model': .*'object_word_vectors'"):
        sg_embed.load_embedder(path)


class _Killed(Exception):
    pass


def _leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_triplet_batches_are_random_access_by_step(data):
    graphs, similarity, model_config = data[:3]
    padded = pad_scene_graphs(
        graphs[:40],
        24,
        64,
        num_object_classes=model_config.num_object_classes,
        num_predicates=model_config.num_predicates,
    )
    batches = sg_embed.TripletBatches(
        padded, similarity[:40, :40], "probability", batch_size=16, epochs=2, seed=4
    )
    assert batches.steps_per_epoch == 3 and batches.num_batches == 6
    everything = list(batches.iter_from(0))
    assert len(everything) == 6
    # The last batch of an epoch has 40 - 2 * 16 = 8 real anchors.
    assert [int(b["mask"].sum()) for b in everything] == [16, 16, 8, 16, 16, 8]
    for start in (2, 4):
        for expected, got in zip(everything[start:], batches.iter_from(start), strict=True):
            for a, b in zip(_leaves(expected), _leaves(got), strict=True):
                np.testing.assert_array_equal(a, b)
    # Anchors / positives / negatives index real graphs of the batch.
    first = everything[0]
    for key in ("anchor", "positive", "negative"):
        assert first["graphs"].graph_mask[first[key]].all()


@pytest.mark.e2e
def test_killed_embedder_run_resumes_to_the_same_parameters(data, tmp_path, monkeypatch):
    graphs, similarity, model_config = data[:3]
    config = _config(data, epochs=2, sampler="probability")  # 40 graphs: 3 steps per epoch
    args = (graphs[:40], similarity[:40, :40], model_config, config)
    reference = sg_embed.train_embedding(*args, workdir=tmp_path / "reference", checkpoint_every=2)
    no_workdir = sg_embed.train_embedding(*args)
    assert reference.steps == no_workdir.steps == 6
    assert reference.losses == no_workdir.losses and len(reference.losses) == 2

    original = sg_embed.TripletBatches.iter_from

    def dies_before_batch_4(self, step):
        for index, batch in enumerate(original(self, step), start=step):
            if index == 4:  # batch 4 is read while update 4 runs, before its checkpoint
                raise _Killed
            yield batch

    monkeypatch.setattr(sg_embed.TripletBatches, "iter_from", dies_before_batch_4)
    with pytest.raises(_Killed):
        sg_embed.train_embedding(*args, workdir=tmp_path / "resumed", checkpoint_every=2)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["2"]
    monkeypatch.setattr(sg_embed.TripletBatches, "iter_from", original)
    resumed = sg_embed.train_embedding(*args, workdir=tmp_path / "resumed", checkpoint_every=2)
    assert resumed.steps == 6
    for a, b in zip(_leaves(resumed.variables), _leaves(reference.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(reference.variables), _leaves(no_workdir.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    # The resumed call trained steps 3..6: the last step of epoch 1 alone, then all of epoch 2.
    assert len(resumed.losses) == 2 and resumed.losses[1] == reference.losses[1]


def test_init_variables_put_word_vectors_into_the_initial_embedder(data):
    graphs, _, model_config, max_nodes, max_edges = data[:5]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(model_config.num_object_classes + 1, model_config.embed_dim))
    fill = functools.partial(sg_gcn.with_tables, object_word_vectors=vectors)
    plain = sg_embed.initial_embedder(model_config, max_nodes=max_nodes, max_edges=max_edges)
    filled = sg_embed.initial_embedder(
        model_config, max_nodes=max_nodes, max_edges=max_edges, init_variables=fill
    )
    table = np.asarray(filled.variables["params"]["object_embedding"]["embedding"])
    np.testing.assert_array_equal(table[1:-1], vectors[1:].astype(np.float32))
    np.testing.assert_array_equal(
        filled.variables["params"]["layer0"]["node_mlp"]["dense0"]["kernel"],
        plain.variables["params"]["layer0"]["node_mlp"]["dense0"]["kernel"],
    )
    assert not np.allclose(filled(graphs[:4]), plain(graphs[:4]))
