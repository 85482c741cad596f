"""RA-SGG phase 2 with the retrieval inside the train step against the host path.

On the same bank and the same embeddings: the sharded in-step top-K equals ``ExactIndex`` (self
exclusion and ties included), and the selections (label inconsistency, the official rule) equal
those of :mod:`sgg_jax.projects.ra_sgg.augment`; the soft targets of a whole batch equal the host
augmenter's where no draw is involved.
"""

import functools

import jax
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.ra_sgg import augment, in_step
from sgg_jax.projects.ra_sgg.memory_bank import MemoryBank
from sgg_jax.projects.ra_sgg.ra_sgg import RASGGConfig, RetrievalAugmenter
from sgg_jax.retrieval.index import ExactIndex
from sgg_jax.train import make_mesh
from tests.projects.ra_sgg.test_memory_bank import (
    COUNTS,
    NUM_PREDICATES,
    class_pair_embedding,
    hand_graphs,
    train_batch,
)


def bank_with_ties(rng, size, dim):
    keys = rng.normal(size=(size, dim)).astype(np.float32)
    keys[size // 2 :: 3] = keys[1]  # exact duplicates of entry 1: equal scores, across shards
    keys[size - 1] = 4.0 * keys[4]  # same direction, a power-of-two norm: an exact cosine tie
    return keys


@pytest.mark.parametrize(("size", "k"), [(37, 5), (6, 7)])
def test_sharded_topk_equals_exact_index_with_self_exclusion_and_ties(size, k):
    assert jax.device_count() == 4
    mesh = make_mesh()
    rng = np.random.default_rng(size)
    keys = bank_with_ties(rng, size, 8)
    queries = np.concatenate([keys[[1, 4, 0, size - 1]], rng.normal(size=(8, 8))]).astype(
        np.float32
    )
    own = np.array([1, 4, -1, size - 1, *rng.integers(-1, size, 8)], np.int64)
    predicates = rng.integers(1, NUM_PREDICATES + 1, size)
    index = ExactIndex().build(keys)
    bank_keys, bank_ids, bank_predicates = in_step.device_bank(keys, predicates, mesh)
    assert bank_keys.shape[0] % 4 == 0 and bank_keys.sharding.spec[0] == "data"

    @functools.partial(jax.jit, static_argnums=(4,))
    def search(queries, bank_keys, bank_ids, bank_predicates, k, own):
        ids, scores, found = in_step.sharded_topk(
            queries, bank_keys, bank_ids, bank_predicates, k + 1, mesh
        )
        return (ids, found), in_step.drop_excluded(ids, scores, found, own, k)

    (ranked, ranked_predicates), (ids, _, found) = search(
        queries, bank_keys, bank_ids, bank_predicates, k, own
    )
    expected, _ = index.search(queries, k, own)
    np.testing.assert_array_equal(np.asarray(ids), expected)
    expected_predicates = np.where(expected >= 0, predicates[np.clip(expected, 0, None)], -1)
    np.testing.assert_array_equal(np.asarray(found), expected_predicates)
    # The official variant's K + 1 without exclusion (it drops the first hit itself).
    expected, _ = index.search(queries, k + 1)
    np.testing.assert_array_equal(np.asarray(ranked), expected)
    assert np.asarray(ranked_predicates).shape == (queries.shape[0], k + 1)
    if size > 2 * k:  # the duplicates of entry 1 tie: lower ids first
        assert list(np.asarray(ranked)[0, :3]) == [1, size // 2, size // 2 + 3]
    # Only the active queries: 8 in chunks of 3 (a loop with a partial last chunk), then 3 in one
    # block of 4 (the power of two above them).
    position = np.arange(queries.shape[0])
    for chunk, smallest, active in ((3, 8, position % 3 != 1), (8, 2, position % 4 == 0)):
        chunked, _, chunked_predicates = jax.jit(
            lambda q, a, keys, ids, predicates, c=chunk, s=smallest: in_step.chunked_search(
                q, a, keys, ids, predicates, k + 1, mesh, chunk=c, smallest=s
            )
        )(queries, active, bank_keys, bank_ids, bank_predicates)
        np.testing.assert_array_equal(np.asarray(chunked)[active], expected[active])
        np.testing.assert_array_equal(
            np.asarray(chunked_predicates)[active], np.asarray(ranked_predicates)[active]
        )


@pytest.mark.parametrize(
    ("weighting", "tail_only", "select"),
    [
        ("inverse_propensity", False, True),
        ("class_balanced", True, True),
        ("uniform", False, False),
    ],
)
def test_paper_rule_selects_as_the_host_path(weighting, tail_only, select):
    rng = np.random.default_rng(0)
    num_predicates, k, queries = 12, 7, 300  # (τ K)² = 12.25 is no integer: no exact d = τ
    counts = np.concatenate([[0], rng.integers(1, 500, num_predicates)])
    gt = rng.integers(1, num_predicates + 1, queries)
    neighbours = rng.integers(1, 6, (queries, k))
    agree = rng.random((queries, k)) < rng.random((queries, 1))
    neighbours = np.where(agree, gt[:, None], neighbours)
    neighbours[::7, -2:] = -1  # missing neighbours
    host = augment.augment(
        gt,
        neighbours,
        counts,
        np.random.default_rng(0),
        tau=0.5,
        weighting=weighting,
        tail_only=tail_only,
        select=select,
    )
    config = RASGGConfig(weighting=weighting)
    tables = in_step.rule_tables(counts, config, np.arange(1, 4))
    result = jax.jit(
        functools.partial(
            in_step.paper_rule, tau=0.5, weighting=weighting, tail_only=tail_only, select=select
        )
    )(gt, neighbours, np.ones(queries, bool), jax.random.key(0), tables)
    np.testing.assert_array_equal(np.asarray(result["selected"]), host.selected)
    assert 0 < host.selected.sum() < queries or not select
    np.testing.assert_allclose(np.asarray(result["weights"]), host.weights, rtol=1e-5, atol=1e-7)
    augmented = np.asarray(result["augmented"])
    sampled = host.weights.sum(-1) > 0
    assert np.all(host.weights[sampled, augmented[sampled]] > 0)
    np.testing.assert_array_equal(augmented[~sampled], gt[~sampled])


@pytest.mark.parametrize("select", [True, False])
def test_official_rule_selects_as_the_host_path(select):
    rng = np.random.default_rng(1)
    num_predicates, k, images, pairs = 20, 10, 6, 16
    tail = np.array([14, 17, 19])
    counts = np.concatenate([[0], np.sort(rng.integers(1, 3000, num_predicates))[::-1]])
    labels = np.where(rng.random((images, pairs)) < 0.5, 0, rng.integers(1, 9, (images, pairs)))
    pool = np.concatenate([np.arange(0, 6), tail])
    neighbours = rng.choice(pool, size=(images, pairs, k))
    agree = rng.random((images, pairs, k)) < rng.random((images, pairs, 1))
    neighbours = np.where(agree & (labels[..., None] > 0), labels[..., None], neighbours)
    real = rng.random((images, pairs)) < 0.8
    rows, columns = np.nonzero(real)
    host = augment.official_augment(
        labels[rows, columns],
        neighbours[rows, columns],
        rows.tolist(),
        tail,
        counts,
        np.random.default_rng(0),
        threshold=0.3,
        select=select,
    )
    config = RASGGConfig(variant="official", weighting="class_balanced")
    tables = in_step.rule_tables(counts, config, tail)
    result = jax.jit(
        functools.partial(
            in_step.official_rule, threshold=0.3, select=select, weighting="class_balanced"
        )
    )(labels, neighbours, real, jax.random.key(0), tables)
    selected = np.asarray(result["selected"])
    np.testing.assert_array_equal(selected[rows, columns], host.selected)
    assert not selected[~real].any() and host.selected.any()
    weights = np.asarray(result["weights"])[rows, columns]
    np.testing.assert_allclose(weights, host.weights, rtol=1e-5, atol=1e-7)
    augmented = np.asarray(result["augmented"])[rows, columns]
    sampled = host.weights.sum(-1) > 0
    assert np.all(host.weights[sampled, augmented[sampled]] > 0)
    np.testing.assert_array_equal(augmented[~sampled], host.augmented[~sampled])


def _in_step_targets(transform, config, batch, embeddings, mesh):
    rows = transform({"scale": 1.0}, 1, batch)[0]
    tables = in_step.rule_tables(COUNTS, config, in_step.tail_of(config, COUNTS, NUM_PREDICATES))
    targets, stats = jax.jit(
        lambda e, b, key: in_step.in_step_targets(
            e, b, key, config, tables, mesh, foreground_slots=4
        )
    )(embeddings, rows, jax.random.key(0))
    return np.asarray(targets), {name: float(value) for name, value in stats.items()}


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_in_step_targets_equal_the_host_augmenter(variant):
    graphs = hand_graphs()
    mesh = make_mesh()
    official = variant == "official"
    bank = MemoryBank(
        graphs,
        max_objects=4,
        num_predicates=NUM_PREDICATES,
        backend="exact",
        max_per_triplet=8 if official else None,
    )
    options = {"variant": "official", "bank": "official", "weighting": "class_balanced"}
    config = RASGGConfig(
        num_neighbours=6,
        tau=0.5,
        lambda_mode="fixed",
        lambda_value=0.7,
        tail_ids=(4,),
        threshold=0.9,
        **(options if official else {}),
    )
    batch = train_batch(graphs, [0, 6, 1, 2])
    embeddings = class_pair_embedding({"scale": 1.0}, batch)
    host = RetrievalAugmenter(
        bank,
        class_pair_embedding,
        COUNTS,
        config,
        foreground_slots=4,
        train_embed=lambda variables, b, key: class_pair_embedding(variables, b),
    )
    if official:
        bank.refresh(lambda b: class_pair_embedding({"scale": 1.0}, b))
    host_batch, host_metrics = host({"scale": 1.0}, 1, batch, dropout_key="unused")
    transform = in_step.InStepRetrieval(bank, class_pair_embedding, config, mesh)
    targets, stats = _in_step_targets(transform, config, batch, embeddings, mesh)
    expected = np.asarray(host_batch.soft_targets)
    labels = np.asarray(batch.pair_labels)
    # Image 0's "on" in the official variant is the one draw here: {1, 4} by class-balanced weights.
    drawn = np.zeros(labels.shape, bool)
    if official:
        drawn[0] = labels[0] == 1
        drawn[2:] = labels[2:] == 1
    np.testing.assert_allclose(targets[~drawn], expected[~drawn], rtol=1e-6)
    for row, column in np.argwhere(drawn):
        assert targets[row, column, 1] >= 0.7 - 1e-6
        assert targets[row, column, 1] + targets[row, column, 4] == pytest.approx(1.0)
    for name in ("ra/selected_fraction", "ra/background_relabelled"):
        assert stats[name] == pytest.approx(host_metrics[name])


def test_in_step_refuses_what_it_does_not_support():
    graphs = hand_graphs()
    bank = MemoryBank(graphs, max_objects=4, num_predicates=NUM_PREDICATES, backend="exact")
    mesh = make_mesh()
    with pytest.raises(ConfigError, match="option 'retrieval'"):
        in_step.InStepRetrieval(bank, class_pair_embedding, RASGGConfig(), mesh, detection=True)
    with pytest.raises(ConfigError, match="option 'relabel_background'"):
        in_step.InStepRetrieval(
            bank, class_pair_embedding, RASGGConfig(relabel_background=True), mesh
        )
    with pytest.raises(ConfigError, match="option 'retrieval'"):
        RASGGConfig(retrieval="device")


@pytest.mark.e2e
def test_a_short_phase2_run_with_the_retrieval_in_the_step_trains(tmp_path):
    """Three updates of PE-Net through the training loop: finite loss, parameters move."""
    from sgg_jax.data import pipeline
    from sgg_jax.projects.ra_sgg.ra_sgg import make_embed_fn
    from sgg_jax.relation.losses import make_penet_loss
    from sgg_jax.relation.penet import PENet, PENetConfig
    from sgg_jax.train import OptimConfig, TrainConfig, shard_batch, train

    graphs = hand_graphs()
    mesh = make_mesh()
    model_config = PENetConfig.small(4, NUM_PREDICATES)
    model = PENet(model_config)
    loader = pipeline.make_loader(
        graphs,
        pipeline.PipelineConfig(
            batch_size=4, max_objects=4, max_pairs=8, max_fg=4, num_predicates=NUM_PREDICATES
        ),
    )
    initial = jax.device_get(model.init(jax.random.key(3), loader.dataset[0], train=False))
    bank = MemoryBank(
        graphs, max_objects=4, num_predicates=NUM_PREDICATES, backend="exact", batch_size=4
    )
    config = RASGGConfig(num_neighbours=3, tau=0.2, bank_refresh_steps=2)
    transform = in_step.InStepRetrieval(bank, make_embed_fn(model, mesh, shard_batch), config, mesh)
    loss = in_step.make_in_step_loss(
        make_penet_loss(model_config, num_negatives=3, multi_prototype=True),
        config,
        COUNTS,
        in_step.tail_of(config, COUNTS, NUM_PREDICATES),
        mesh,
        foreground_slots=4,
    )
    state, metrics = train(
        model,
        loss,
        loader,
        workdir=tmp_path,
        train_config=TrainConfig(num_steps=3, checkpoint_every=0, progress=False),
        optim_config=OptimConfig(optimizer="sgd", learning_rate=0.1),
        mesh=mesh,
        batch_transform=transform,
        init_variables=initial,
    )
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["loss/ra/selected_fraction"] <= 1.0
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        jax.device_get(state.params),
        initial["params"],
    )
    assert max(jax.tree.leaves(moved)) > 0
    assert transform._refreshed_at == 2  # refreshed at updates 1 and 3, as the host path
