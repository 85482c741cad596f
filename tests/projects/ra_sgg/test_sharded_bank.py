"""The memory bank sharded by process: shards, merge of the per-shard top-k, 2 processes vs 1."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.projects.ra_sgg.memory_bank import (
    MemoryBank,
    exact_scores,
    merge_shard_results,
    shard_bounds,
    sharded_search,
)
from sgg_jax.structures import SceneGraph

NUM_PREDICATES = 4
ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_shard_bounds_split_whole_images_evenly():
    image_index = np.repeat(np.arange(6), [4, 1, 1, 3, 2, 1])  # 12 entries
    np.testing.assert_array_equal(shard_bounds(image_index, 1), [0, 12])
    np.testing.assert_array_equal(shard_bounds(image_index, 2), [0, 6, 12])
    # target 4 is a boundary; target 8 lies between the boundaries 6 and 9: the nearer one
    np.testing.assert_array_equal(shard_bounds(image_index, 3), [0, 4, 9, 12])
    # one image bigger than a shard's share leaves shards empty
    np.testing.assert_array_equal(shard_bounds(np.repeat([0, 1], [9, 1]), 4), [0, 0, 9, 9, 10])
    np.testing.assert_array_equal(shard_bounds(np.zeros(5, np.int64), 2), [0, 5, 5])
    with pytest.raises(ConfigError, match="'num_shards'"):
        shard_bounds(image_index, 0)


def graphs_with_ties(num_images=9, seed=0):
    """Images whose pairs share few class pairs: keys repeat within and across images."""
    rng = np.random.default_rng(seed)
    graphs = []
    for index in range(num_images):
        num_objects = int(rng.integers(3, 6))
        labels = rng.integers(1, 4, num_objects).astype(np.int32)
        boxes = np.array([[i, i, i + 10, i + 10] for i in range(num_objects)], np.float32)
        relations = [
            [*rng.choice(num_objects, 2, replace=False), rng.integers(1, NUM_PREDICATES + 1)]
            for _ in range(int(rng.integers(1, 7)))
        ]
        graphs.append(SceneGraph(f"img{index}", 100, 100, boxes, labels, np.array(relations)))
    return graphs


def class_pair_keys(batch):
    """A function of the pair's classes only (exact ties between images) plus a small image term."""
    pairs = np.asarray(batch.pairs)
    rows = np.arange(pairs.shape[0])[:, None]
    labels = np.asarray(batch.labels)
    subject, obj = labels[rows, pairs[..., 0]], labels[rows, pairs[..., 1]]
    table = np.random.default_rng(1).normal(size=(4, 4, 6)).astype(np.float32)
    keys = table[subject, obj]
    keys[..., 0] += 0.5 * (np.asarray(batch.image_index) % 2 == 0)[:, None]
    return keys


def bank(graphs, **options):
    return MemoryBank(
        graphs,
        max_objects=6,
        num_predicates=NUM_PREDICATES,
        backend="exact",
        batch_size=2,
        pair_budget=3,
        **options,
    )


@pytest.mark.parametrize("num_shards", [2, 3])
def test_merged_shard_top_k_equals_one_exact_index(num_shards):
    graphs = graphs_with_ties()
    whole = bank(graphs)
    whole.refresh(class_pair_keys)
    shards = [bank(graphs, num_shards=num_shards, shard_index=s) for s in range(num_shards)]
    for shard in shards:
        shard.refresh(class_pair_keys)
        # ids stay the single-process ids; every shard keeps all entries' metadata
        np.testing.assert_array_equal(shard.keys, whole.keys[shard.local_ids])
        assert shard.size == whole.size and shard.entries.size == whole.entries.size
        images = whole.entries.image_index[shard.local_ids]
        assert not np.isin(
            images, whole.entries.image_index[np.setdiff1d(np.arange(whole.size), shard.local_ids)]
        ).any()  # whole images per shard
    np.testing.assert_array_equal(
        np.concatenate([s.local_ids for s in shards]), np.arange(whole.size)
    )
    queries, own = whole.keys, np.arange(whole.size)
    for k, exclude in [(5, own), (5, None), (whole.size + 2, own)]:
        expected_ids, expected_scores = whole.search(queries, k, exclude)
        # what each process's shard answers for all queries, concatenated in process order (the
        # all-gather of sharded_search)
        results = [s.local_search(queries, k, exclude) for s in shards]
        ids, scores = merge_shard_results(
            np.concatenate([r[0] for r in results]),
            np.concatenate([r[1] for r in results]),
            num_shards=num_shards,
            k=k,
        )
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    # the check has teeth: self-exclusion across shards, exact ties between shards, and
    # neighbours from another shard
    ids, _ = whole.search(queries, 5, own)
    assert not (ids == own[:, None]).any()
    plain, _ = whole.search(queries, 1)
    assert (plain[:, 0] != own).any()  # ties resolved to a lower id, sometimes in another shard
    shard_of = np.searchsorted([s.local_ids[-1] for s in shards], ids)
    assert (shard_of != shard_of[:, :1]).any()


def test_sharded_search_in_one_process_is_the_bank_search():
    graphs = graphs_with_ties(seed=2)
    whole = bank(graphs)
    whole.refresh(class_pair_keys)
    own = np.arange(whole.size)
    for exclude in (own, None):
        expected = whole.search(whole.keys, 4, exclude)
        found = sharded_search(whole.local_search, whole.keys, 4, exclude, whole.keys.shape[1])
        np.testing.assert_array_equal(found[0], expected[0])
        np.testing.assert_array_equal(found[1], expected[1])
        # the index's own scores, to float32 rounding
        index_ids, index_scores = whole.index.search(whole.keys, 4, exclude)
        np.testing.assert_allclose(found[1], index_scores, atol=1e-6)
    # exact_scores: float64 cosine of each pair, rounded; ties sorted by id; padding last
    ids = np.array([[3, 0, -1, 1]])
    got_ids, got = exact_scores(whole.keys[:1] * 3.0, whole.keys, whole.local_ids, ids)
    unit = whole.keys.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    expected = (unit[[3, 0, 1]] @ unit[0]).astype(np.float32)
    order = np.lexsort(([3, 0, 1], -expected.astype(np.float64)))
    np.testing.assert_array_equal(got_ids[0], [*np.array([3, 0, 1])[order], -1])
    np.testing.assert_allclose(got[0, :3], expected[order], rtol=1e-6)
    assert got[0, 3] == -np.inf


def test_shard_bank_options_and_padding_batch():
    graphs = graphs_with_ties()
    with pytest.raises(ConfigError, match="'shard_index'"):
        bank(graphs, num_shards=2, shard_index=2)
    shard = bank(graphs, num_shards=2, shard_index=1)
    shard.refresh(class_pair_keys)
    # a bank of 2 shards is searched by 2 processes, not by this one
    with pytest.raises(ConfigError, match="'num_shards'"):
        shard.search(shard.keys, 3)
    real = shard.embedding_batches()[0][0]
    padding = shard._padding_batch()
    for name in ("boxes", "labels", "pairs", "pair_mask", "graph_mask", "image_index"):
        assert np.shape(getattr(padding, name)) == np.shape(getattr(real, name)), name
    assert not np.asarray(padding.graph_mask).any()
    assert (np.asarray(padding.image_index) == -1).all()


@pytest.mark.e2e
def test_two_processes_search_like_one(tmp_path):
    """2 processes x 2 CPU devices (the launcher) against 1 process x 4 devices (this one)."""
    sys.path.insert(0, str(ROOT))
    from tests.projects.ra_sgg import multiprocess_bank_script as script

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "sgg_jax.launch",
        "--num_processes=2",
        "--cpu_devices_per_process=2",
        "--timeout_seconds=30",
        "--",
        sys.executable,
        "-m",
        "tests.projects.ra_sgg.multiprocess_bank_script",
        str(tmp_path / "two"),
    ]
    log = tmp_path / "launch.log"
    with open(log, "w") as sink:
        job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            script.main(str(tmp_path / "one"), with_scann=False)  # meanwhile, in this process
            job.wait(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    assert job.returncode == 0, log.read_text()[-3000:]

    def load(which, name):
        return np.load(tmp_path / which / f"{name}.npy")

    # the shards were uneven: the process with fewer batches fed padding batches
    two_batches = load("two", "num_batches")
    assert two_batches.shape == (2,) and two_batches[0] != two_batches[1]
    assert two_batches.sum() >= load("one", "num_batches")[0]
    np.testing.assert_array_equal(load("two", "query_ids"), np.arange(load("one", "size")[0]))
    np.testing.assert_array_equal(load("two", "query_ids"), load("one", "query_ids"))
    np.testing.assert_allclose(load("two", "keys"), load("one", "keys"), atol=1e-6)
    for ids, scores in [("ids", "scores"), ("few_ids", "few_scores")]:
        np.testing.assert_array_equal(load("two", ids), load("one", ids))
        np.testing.assert_allclose(load("two", scores), load("one", scores), atol=1e-6)
    ids, queries = load("two", "ids"), load("two", "query_ids")
    assert not (ids == queries[:, None]).any()
    # some neighbours come from the other process's shard (the merge is not trivial)
    first = int(load("two", "shard_sizes")[0])
    assert 0 < first < queries.size
    assert (ids[:first] >= first).any() and ((ids[first:] < first) & (ids[first:] >= 0)).any()
    # the RA-SGG transform ran in both processes over their own batches (2 images each)
    assert load("two", "augmented").shape[0] == 4 and load("two", "augmented").sum() > 0
    # the SGDet bank: entries gathered (ids, triplets, the cap over all of them), keys sharded
    np.testing.assert_array_equal(load("two", "det_sizes"), load("one", "det_sizes"))
    assert load("one", "det_sizes")[0] < load("one", "det_sizes")[1]  # the cap removed some
    for name in ("det_query_ids", "det_triplets", "det_ids", "det_predicates"):
        np.testing.assert_array_equal(load("two", name), load("one", name), err_msg=name)
    for name in ("det_keys", "det_scores"):
        np.testing.assert_allclose(load("two", name), load("one", name), atol=1e-6)
    # ScaNN per shard (the default backend): the same scores, self excluded
    np.testing.assert_allclose(load("two", "scann_scores"), load("one", "scores"), atol=1e-5)
    assert not (load("two", "scann_ids") == queries[:, None]).any()
