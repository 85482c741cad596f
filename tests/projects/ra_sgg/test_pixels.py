"""RA-SGG on RoI features from pixels (``feature_source="roi"``) with a tiny random detector.

The memory bank's keys come from the images; in SGDet the bank holds the detection pairs that match
a ground-truth relation, and the retrieval augmenter's soft targets are built over the detection
pairs the update samples (same dropout key), so the loss reads them against the right labels.
"""

import jax
import numpy as np
import pytest
from PIL import Image

from sgg_jax import boxes as box_ops
from sgg_jax.data import pipeline
from sgg_jax.data.images import ImageBatchTransform
from sgg_jax.detection.detector import DetectorConfig
from sgg_jax.projects.ra_sgg.memory_bank import DetectionMemoryBank, MemoryBank
from sgg_jax.projects.ra_sgg.ra_sgg import (
    RASGGConfig,
    RetrievalAugmenter,
    make_detection_bank_fn,
    make_embed_fn,
    make_train_embed_fn,
)
from sgg_jax.relation.penet import PENet, PENetConfig
from sgg_jax.relation.sgdet import SGDetConfig
from sgg_jax.structures import SceneGraph
from sgg_jax.train import make_mesh, shard_batch

SIZE = 64
NUM_CLASSES, NUM_PREDICATES = 3, 3
# Placeholder ground truth; the SGDet tests replace the boxes by the detector's own detections.
BOXES = np.array([[2, 2, 30, 30], [20, 20, 60, 50], [5, 30, 40, 62]], np.float32)
LABELS = np.array([1, 2, 3], np.int32)
RELATIONS = np.array([[0, 1, 1], [1, 2, 2], [2, 0, 3]], np.int32)


def _images(directory, seed):
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(2):
        path = directory / f"{seed}_{index}.png"
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _graphs(paths, boxes=(BOXES, BOXES)):
    return [
        SceneGraph(
            f"image{i}", SIZE, SIZE, np.asarray(b, np.float32), LABELS, RELATIONS, image_path=p
        )
        for i, (p, b) in enumerate(zip(paths, boxes, strict=True))
    ]


def _config(task):
    return PENetConfig.small(
        NUM_CLASSES,
        NUM_PREDICATES,
        task=task,
        feature_source="roi",
        detector=DetectorConfig.tiny().replace(detections_per_image=5),
        sgdet=SGDetConfig(train_pairs=8, train_fg=6) if task == "sgdet" else None,
        hidden_dim=16,
        embed_dim=8,
    )


def _first_batch(graphs, max_pairs=6):
    config = pipeline.PipelineConfig.evaluation(
        4, 3, max_pairs, num_predicates=NUM_PREDICATES, read_threads=0
    )
    return next(iter(pipeline.make_loader(graphs, config).iter_from(0)))


def _init(model, batch):
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.jit(lambda b: model.init(keys, b, train=False))(batch)


@pytest.mark.e2e
def test_bank_keys_are_embedded_from_the_pixels(tmp_path):
    graphs = _graphs(_images(tmp_path, 0))
    other = _graphs(_images(tmp_path, 1))  # the same annotations, other pixels
    model = PENet(_config("predcls"))
    transform = ImageBatchTransform(graphs, SIZE)
    variables = _init(model, transform(None, 0, _first_batch(graphs))[0])
    embed = make_embed_fn(model, make_mesh(), shard_batch)

    def keys_of(graphs_):
        bank = MemoryBank(
            graphs_,
            max_objects=3,
            num_predicates=NUM_PREDICATES,
            backend="exact",
            batch_size=4,
            batch_transform=ImageBatchTransform(graphs_, SIZE),
        )
        bank.refresh(lambda b: embed(variables, b))
        return bank

    bank = keys_of(graphs)
    assert bank.size == 6 and np.all(np.isfinite(bank.keys))
    # The key of entry e is the model's embedding of its pair in the image WITH its pixels.
    batch, ids, rows, slots = bank.embedding_batches()[0]
    direct = embed(variables, transform(None, 0, batch)[0])
    np.testing.assert_allclose(bank.keys[ids], direct[rows, slots], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(keys_of(graphs).keys, bank.keys)  # deterministic
    assert np.abs(keys_of(other).keys - bank.keys).max() > 1e-4  # other pixels, other keys


@pytest.fixture(scope="module")
def sgdet(tmp_path_factory):
    """A tiny SGDet PE-Net and two images whose ground-truth boxes are detections of the model."""
    paths = _images(tmp_path_factory.mktemp("sgdet_images"), 0)
    model = PENet(_config("sgdet"))
    mesh = make_mesh()
    placeholder = _graphs(paths)
    batch = ImageBatchTransform(placeholder, SIZE)(None, 0, _first_batch(placeholder))[0]
    variables = _init(model, batch)
    train_embed = make_train_embed_fn(model, mesh, shard_batch, with_targets=True)
    _, found = train_embed(variables, batch, jax.random.key(5))
    detections = np.asarray(found["boxes"])[:2]  # the detector's boxes (images of SIZE: scale 1)
    assert detections.shape == (2, 5, 4)
    # Ground-truth objects = detections 0, 1, 2 of each image: every relation has a match.
    graphs = _graphs(paths, boxes=(detections[0, :3], detections[1, :3]))
    return {
        "model": model,
        "mesh": mesh,
        "variables": variables,
        "graphs": graphs,
        "detections": detections,
        "transform": ImageBatchTransform(graphs, SIZE),
        "batch": _first_batch(graphs),
        "train_embed": train_embed,
        "bank_fn": make_detection_bank_fn(model, mesh, shard_batch, budget=20),
    }


def _expected_entries(detections, graphs, iou_thresh=0.5):
    """Independent numpy matching: (image, subject det, object det) -> {predicates}, classes."""
    expected, classes = {}, {}
    for image, (boxes, graph) in enumerate(zip(detections, graphs, strict=True)):
        iou = np.asarray(box_ops.pairwise_iou(graph.boxes, boxes, plus_one=True))  # [G, D]
        best = iou.argmax(axis=0)
        labels = np.where(iou.max(axis=0) >= iou_thresh, graph.labels[best], 0)
        match = (iou > iou_thresh) & (graph.labels[:, None] == labels[None, :])
        for s, o, p in graph.relations:
            for i in np.flatnonzero(match[s]):
                for j in np.flatnonzero(match[o]):
                    if i != j:
                        expected.setdefault((image, int(i), int(j)), set()).add(int(p))
                        classes[(image, int(i), int(j))] = (int(labels[i]), int(labels[j]))
    return expected, classes


def _detection_bank(sgdet, max_per_triplet=None):
    bank = DetectionMemoryBank(
        [sgdet["batch"]],
        num_detections=5,
        num_predicates=NUM_PREDICATES,
        backend="exact",
        batch_transform=sgdet["transform"],
        max_per_triplet=max_per_triplet,
    )
    bank.refresh(lambda b: sgdet["bank_fn"](sgdet["variables"], b))
    return bank


@pytest.mark.e2e  # compiles the SGDet model (~1 min of CPU)
def test_sgdet_bank_holds_the_ground_truth_matched_detection_pairs(sgdet):
    bank = _detection_bank(sgdet)
    expected, classes = _expected_entries(sgdet["detections"], sgdet["graphs"])
    entries = bank.entries
    found = list(zip(entries.image_index, entries.subject, entries.object, strict=True))
    assert len(expected) >= 6 and sorted(found) == sorted(expected)  # each matched pair once
    for key, predicate, s_class, o_class in zip(
        found, entries.predicate, entries.subject_class, entries.object_class, strict=True
    ):
        assert predicate in expected[key]
        assert (s_class, o_class) == classes[key]
    assert bank.keys.shape == (bank.size, 16) and np.all(np.isfinite(bank.keys))
    # Entry identity: (image, subject detection, object detection, predicate).
    ids = bank.entry_ids(entries.image_index, entries.subject, entries.object, entries.predicate)
    np.testing.assert_array_equal(ids, np.arange(bank.size))
    # The official cap per triplet applies to the matched pairs.
    capped = _detection_bank(sgdet, max_per_triplet=1)
    assert capped.num_relations == bank.size
    assert capped.size == len({tuple(t) for t in bank.entries.triplets})


@pytest.mark.e2e
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_sgdet_soft_targets_follow_the_updates_detection_pairs(sgdet, variant):
    bank = _detection_bank(sgdet)
    counts = np.array([0, 5, 3, 1])
    config = RASGGConfig(
        num_neighbours=2,
        lambda_mode="fixed",
        lambda_value=0.75,
        variant=variant,
        weighting="class_balanced" if variant == "official" else "inverse_propensity",
        tail_ids=(3,),
        select=False,  # augment every relation
        bank="official",  # keep the bank built above (no refresh)
    )
    augmenter = RetrievalAugmenter(
        bank,
        None,
        counts,
        config,
        train_embed=sgdet["train_embed"],
        detection=True,
    )
    assert augmenter.wants_dropout_key
    batch = sgdet["transform"](None, 0, sgdet["batch"])[0]
    key = jax.random.key(11)
    out, metrics = augmenter(sgdet["variables"], 1, batch, dropout_key=key)
    # The model's own training forward with the update's key: its sampled pairs and labels.
    _, targets = sgdet["train_embed"](sgdet["variables"], batch, key)
    labels, mask = targets["pair_labels"], targets["pair_mask"]
    soft = np.asarray(out.soft_targets)
    assert soft.shape == (4, 8, NUM_PREDICATES + 1)  # [B, train_pairs, C], not the input's P
    assert (labels > 0).sum() > 0 and metrics["ra/augmented_fraction"] >= 0
    np.testing.assert_allclose(soft[mask].sum(-1), 1.0, rtol=1e-6)
    assert np.all(soft[~mask] == 0)
    # Every real pair keeps at least λ of its own sampled label.
    rows, slots = np.nonzero(mask)
    assert np.all(soft[rows, slots, labels[rows, slots]] >= 0.75 - 1e-6)
    foreground = labels[mask] > 0
    assert augmenter.totals["foreground"] == int(foreground.sum())
    # Another key samples other pairs: the targets follow it.
    other, _ = augmenter(sgdet["variables"], 2, batch, dropout_key=jax.random.key(12))
    _, other_targets = sgdet["train_embed"](sgdet["variables"], batch, jax.random.key(12))
    assert not np.array_equal(other_targets["pairs"], targets["pairs"])
    other_mask = other_targets["pair_mask"]
    rows, slots = np.nonzero(other_mask)
    picked = np.asarray(other.soft_targets)[rows, slots, other_targets["pair_labels"][rows, slots]]
    assert np.all(picked >= 0.75 - 1e-6)
