"""One process of the sharded memory bank check (``test_multiprocess_bank.py`` runs it).

    python -m sgg_jax.launch --num_processes=2 --cpu_devices_per_process=2 -- \\
        python -m tests.projects.ra_sgg.multiprocess_bank_script OUT_DIR

Every process builds the same :class:`MemoryBank` (a tiny PE-Net over precomputed features of a
synthetic split, keys from :func:`make_embed_fn` on the global mesh), refreshes it (each process
embeds its shard), then searches its own queries: the keys of its shard with self-exclusion, and
three queries that only process 0 asks (the others ask none); runs the RA-SGG transform over its
own training batch (its searches are collectives too); then the same with a ScaNN bank
(the default backend, one index per shard); and an SGDet bank (:class:`DetectionMemoryBank`)
whose processes hold different numbers of batches. Process 0 writes the gathered
results to ``OUT_DIR`` as ``.npy``; with one process the same file holds the single-process bank's
results.
"""

import os
import sys

from sgg_jax import distributed

if distributed.launch_environment() is not None:
    distributed.initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sgg_jax.data import pipeline  # noqa: E402
from sgg_jax.projects.ra_sgg.memory_bank import DetectionMemoryBank, MemoryBank  # noqa: E402
from sgg_jax.projects.ra_sgg.ra_sgg import (  # noqa: E402
    RASGGConfig,
    RetrievalAugmenter,
    make_embed_fn,
)
from sgg_jax.relation.penet import PENet, PENetConfig  # noqa: E402
from sgg_jax.structures import SceneGraph  # noqa: E402
from sgg_jax.train import make_mesh, replicate, shard_batch  # noqa: E402

NUM_CLASSES, NUM_PREDICATES, FEATURE_DIM, MAX_OBJECTS, K = 6, 5, 5, 6, 4


def synthetic_split():
    """20 images: the first 5 with many relations, the rest with few (uneven shards of batches)."""
    rng = np.random.default_rng(7)
    graphs, features = [], []
    for index in range(20):
        num_objects = 6 if index < 5 else 3
        corners = rng.uniform(0, 60, size=(num_objects, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(4, 30, size=(num_objects, 2))], 1)
        labels = rng.integers(1, NUM_CLASSES + 1, num_objects)
        relations = []
        for _ in range(10 if index < 5 else 2):
            s, o = rng.choice(num_objects, 2, replace=False)
            relations.append([s, o, rng.integers(1, NUM_PREDICATES + 1)])
        graphs.append(SceneGraph(f"img{index}", 100, 80, boxes, labels, np.array(relations)))
        features.append(rng.normal(size=(num_objects, FEATURE_DIM)).astype(np.float32))
    return graphs, features


def detection_pairs(batch):
    """A stand-in for the SGDet bank's model: the annotated pairs, keys from their classes."""
    pairs, labels = np.asarray(batch.pairs), np.asarray(batch.labels)
    rows = np.arange(pairs.shape[0])[:, None]
    subject_class, object_class = labels[rows, pairs[..., 0]], labels[rows, pairs[..., 1]]
    table = np.random.default_rng(3).normal(size=(NUM_CLASSES + 1, NUM_CLASSES + 1, 6))
    embedding = table[subject_class, object_class].astype(np.float32)
    embedding[..., 0] += 0.25 * (np.asarray(batch.image_index) % 3 == 0)[:, None]
    predicate = np.asarray(batch.pair_labels)
    return {
        "embedding": embedding,
        "subject": pairs[..., 0],
        "object": pairs[..., 1],
        "subject_class": subject_class,
        "object_class": object_class,
        "predicate": predicate,
        "mask": np.asarray(batch.pair_mask) & (predicate > 0),
    }


def detection_bank(graphs):
    """The SGDet bank over this process's batches: process 0 the first 3 of 10, process 1 the
    other 7 (uneven: process 0 feeds padding batches); one process all of them."""
    batch_size = 4 if distributed.process_count() == 1 else 2
    config = pipeline.PipelineConfig.evaluation(
        batch_size, MAX_OBJECTS, 30, num_predicates=NUM_PREDICATES, read_threads=0
    )
    examples = [
        pipeline.prepare_example(graph, image_index=i, epoch=0, config=config)
        for i, graph in enumerate(graphs)
    ]
    batches = [
        pipeline.collate(examples[start : start + batch_size], batch_size)
        for start in range(0, len(examples), batch_size)
    ]
    if distributed.process_count() > 1:
        batches = batches[:3] if distributed.process_index() == 0 else batches[3:]
    bank = DetectionMemoryBank(
        batches,
        num_detections=MAX_OBJECTS,
        num_predicates=NUM_PREDICATES,
        backend="exact",
        max_per_triplet=2,
    )
    bank.refresh(detection_pairs)
    ids, scores = bank.search(bank.keys, K, bank.local_ids)
    return {
        "det_query_ids": distributed.allgather_rows(bank.local_ids),
        "det_keys": distributed.allgather_rows(bank.keys),
        "det_ids": distributed.allgather_rows(ids),
        "det_scores": distributed.allgather_rows(scores),
        "det_predicates": distributed.allgather_rows(bank.predicates_of(ids)),
        "det_triplets": bank.entries.triplets,
        "det_sizes": np.array([bank.size, bank.num_relations]),
    }


def augment_own_batch(bank, graphs, features, embed, variables):
    """The RA-SGG transform over this process's training batch (its own images): a bank refresh,
    then two searches (foreground, and background relabelling), all collectives. Returns the row
    sums of the soft targets, which must equal the pair mask."""
    batch_size = jax.local_device_count()
    config = pipeline.PipelineConfig(
        batch_size=batch_size, max_objects=MAX_OBJECTS, max_pairs=8, max_fg=8, train=True
    )
    first = distributed.process_index() * batch_size
    examples = [
        pipeline.prepare_example(
            graphs[i], image_index=i, epoch=0, config=config, object_features=features[i]
        )
        for i in range(first, first + batch_size)
    ]
    batch = pipeline.collate(examples)
    counts = np.bincount(bank.entries.predicate, minlength=NUM_PREDICATES + 1)
    augmenter = RetrievalAugmenter(
        bank,
        embed,
        counts,
        RASGGConfig(num_neighbours=K, relabel_background=True, tail_fraction=0.6),
        foreground_slots=8,
    )
    out, metrics = augmenter(variables, 1, batch)
    assert all(np.isfinite(value) for value in metrics.values()), metrics
    targets = np.asarray(out.soft_targets)
    np.testing.assert_allclose(targets.sum(-1), np.asarray(batch.pair_mask), rtol=1e-5)
    return targets.sum(-1)


def main(out_dir: str, with_scann: bool = True) -> None:
    graphs, features = synthetic_split()
    model = PENet(
        PENetConfig.small(
            NUM_CLASSES,
            NUM_PREDICATES,
            feature_source="precomputed",
            hidden_dim=16,
            embed_dim=8,
            object_feature_dim=12,
            union_feature_dim=12,
            feature_hidden_dim=12,
            object_classifier_dim=12,
            box_embedding_dim=8,
        )
    )
    mesh = make_mesh()
    batch_size = jax.local_device_count()
    bank = MemoryBank(
        graphs,
        max_objects=MAX_OBJECTS,
        num_predicates=NUM_PREDICATES,
        backend="exact",
        batch_size=batch_size,
        pair_budget=8,
        object_features=features,
    )
    # The same variables in every process: initialised on this process's devices, then put on
    # the global mesh replicated.
    example = bank.embedding_batches()[0][0] if bank.local_ids.size else bank._padding_batch()
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.jit(lambda b: model.init(keys, b, train=False))(example)
    variables = replicate(jax.tree.map(np.asarray, variables), mesh)
    embed = make_embed_fn(model, mesh, shard_batch)
    bank.refresh(lambda batch: embed(variables, batch))

    augmented = augment_own_batch(bank, graphs, features, embed, variables)
    ids, scores = bank.search(bank.keys, K, bank.local_ids)
    few = bank.keys[:3] if distributed.process_index() == 0 else bank.keys[:0]
    few_ids, few_scores = bank.search(few, K + 1)
    gathered = detection_bank(graphs)
    if with_scann:  # the default backend, ScaNN, per shard (brute force at this size)
        scann = MemoryBank(
            graphs,
            max_objects=MAX_OBJECTS,
            num_predicates=NUM_PREDICATES,
            batch_size=batch_size,
            pair_budget=8,
            object_features=features,
        )
        scann.refresh(lambda batch: embed(variables, batch))
        scann_ids, scann_scores = scann.search(scann.keys, K, scann.local_ids)
        gathered["scann_ids"] = distributed.allgather_rows(scann_ids)
        gathered["scann_scores"] = distributed.allgather_rows(scann_scores)
    gathered |= {
        "query_ids": distributed.allgather_rows(bank.local_ids),
        "keys": distributed.allgather_rows(bank.keys),
        "ids": distributed.allgather_rows(ids),
        "scores": distributed.allgather_rows(scores),
        "few_ids": distributed.allgather_rows(few_ids),
        "few_scores": distributed.allgather_rows(few_scores),
        "num_batches": distributed.allgather_rows(np.array([len(bank.embedding_batches())])),
        "shard_sizes": distributed.allgather_rows(np.array([bank.local_ids.size])),
        "size": np.array([bank.size]),
        "augmented": distributed.allgather_rows(augmented),
    }
    if distributed.is_chief():
        os.makedirs(out_dir, exist_ok=True)
        for name, value in gathered.items():
            np.save(os.path.join(out_dir, f"{name}.npy"), value)
    distributed.barrier("bank_script_done")
    print(f"process {distributed.process_index()}: {bank.local_ids.size} of {bank.size} entries")


if __name__ == "__main__":
    main(*sys.argv[1:])
