"""Image paths of every dataset, header size checks, the VG150 zero-shot list on the tfds route,
and the sharded object-feature store (round trip, resume, lazy reading, bad input)."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from data_prep import vg150 as vg150_prep
from sgg_jax.data import datasets, feature_store, image_check, pipeline, tfds_source
from sgg_jax.errors import DataError
from sgg_jax.experiment import relation
from sgg_jax.structures import SceneGraph
from tests.data.test_data_prep import _write_vg150
from tests.data.test_vg150 import IMAGE_DATA, base_tables, dicts, write_h5, write_json


def _jpeg(path, width, height, value=128):
    Image.new("RGB", (width, height), (value, value // 2, 255 - value)).save(path, quality=80)
    return str(path)


def _graph(image_id, width, height, path, boxes=((0, 0, 10, 10), (5, 5, 20, 30))):
    boxes = np.asarray(boxes, np.float32)
    return SceneGraph(
        image_id=str(image_id),
        width=width,
        height=height,
        boxes=boxes,
        labels=np.arange(1, len(boxes) + 1, dtype=np.int32),
        relations=np.asarray([[0, len(boxes) - 1, 1]], np.int32),
        image_path=path,
    )


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def test_vg150_image_dir_flag_sets_sgb_paths(tmp_path):
    files = (
        write_h5(tmp_path / "VG-SGG-with-attri.h5", base_tables()),
        write_json(tmp_path / "VG-SGG-dicts-with-attri.json", dicts()),
        write_json(tmp_path / "image_data.json", IMAGE_DATA),
    )
    images = tmp_path / "VG_100K"
    images.mkdir()
    data = relation.DataConfig(
        dataset="vg150",
        vg150_h5=files[0],
        vg150_dicts=files[1],
        vg150_image_data=files[2],
        vg150_image_dir=str(images),
        num_val=0,
    )
    assert data.paths()["image_dir"] == str(images)
    graphs, _ = datasets.load("vg150", "train", paths=data.paths())
    assert [g.image_path for g in graphs] == [str(images / f"{g.image_id}.jpg") for g in graphs]
    with pytest.raises(Exception, match="option 'gqa200_image_dir': .* is not a directory"):
        relation.DataConfig(gqa200_image_dir=str(tmp_path / "nope"))


def test_gqa200_image_dir_paths_are_image_id_jpg(tmp_path):
    resources = os.path.join(os.path.dirname(datasets.__file__), "resources")
    paths = {
        "train": os.path.join(resources, "GQA_200_Test.json.gz"),
        "test": os.path.join(resources, "GQA_200_Test.json.gz"),
        "id_info": os.path.join(resources, "GQA_200_ID_Info.json.gz"),
        "image_dir": "/data/gqa/images",
    }
    graphs, _ = datasets.load("gqa200", "test", paths=paths)
    assert graphs[0].image_path == f"/data/gqa/images/{graphs[0].image_id}.jpg"
    assert all(g.image_path.endswith(f"/{g.image_id}.jpg") for g in graphs)


# ----------------------------------------------------------------------------------------------
# Header size checks
# ----------------------------------------------------------------------------------------------


def test_sizes_match_and_vg150_wrong_sizes_are_rescaled_as_sgb(tmp_path, caplog):
    ok = _graph(1, 40, 30, _jpeg(tmp_path / "1.jpg", 40, 30))
    # image_data.json says 40x30 but the file is the same picture at 80x60 (SGB corrects it).
    half = _graph(2, 40, 30, _jpeg(tmp_path / "2.jpg", 80, 60))
    with caplog.at_level(logging.WARNING):
        checked = image_check.check_splits({"train": [ok, half], "test": [ok]}, dataset="vg150")
    warnings = [r for r in caplog.records if "correct_img_info" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("1 of 3 images")
    fixed = checked["train"][1]
    assert (fixed.width, fixed.height) == (80, 60)
    np.testing.assert_allclose(fixed.boxes, half.boxes * 2.0)
    assert checked["train"][0] is ok and checked["test"][0] is ok
    assert checked["train"][:2][1].width == 80 and [g.width for g in checked["train"]] == [40, 80]


@pytest.mark.parametrize(
    ("dataset", "real", "field"),
    [("vg150", (30, 40), "width"), ("gqa200", (80, 60), "width"), ("vg150", (40, 36), "height")],
)
def test_other_mismatch_is_one_line_naming_file_and_field(tmp_path, dataset, real, field):
    path = _jpeg(tmp_path / "7.jpg", *real)
    with pytest.raises(DataError) as error:
        image_check.check_image_sizes([_graph(7, 40, 30, path)], dataset=dataset)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: field '{field}': the image is")


def test_missing_image_and_no_path_are_one_line(tmp_path):
    missing = str(tmp_path / "9.jpg")
    with pytest.raises(DataError, match=f"^{missing}: field 'image_path': file not found$"):
        image_check.check_image_sizes([_graph(9, 4, 4, missing)], dataset="vg150")
    with pytest.raises(DataError, match="image 9: field 'image_path': no image file"):
        image_check.check_image_sizes([_graph(9, 4, 4, None)], dataset="vg150")
    errors = []
    out = image_check.check_image_sizes([_graph(9, 4, 4, missing)], dataset="vg150", errors=errors)
    assert len(out) == 1 and [i for i, _ in errors] == [0]


def test_header_check_is_fast(tmp_path):
    path = _jpeg(tmp_path / "a.jpg", 640, 480)
    graphs = [_graph(i, 640, 480, path) for i in range(300)]
    start = time.perf_counter()
    assert image_check.check_image_sizes(graphs, dataset="gqa200") is graphs
    assert time.perf_counter() - start < 2.0  # header reads only: ~0.1 ms per image


# ----------------------------------------------------------------------------------------------
# VG150 zero-shot list whatever the route
# ----------------------------------------------------------------------------------------------


def test_tfds_records_of_vg150_get_the_bundled_zeroshot_list(tmp_path):
    (tmp_path / "raw").mkdir()
    files = _write_vg150(tmp_path / "raw")
    vg150_prep.build(*files, tmp_path / "out", num_val=3, image_dir="/images/vg")
    splits = {
        s: tfds_source.open_source(tmp_path / "out", "vg150", s)[0] for s in ("train", "test")
    }
    assert splits["test"][0].image_path == f"/images/vg/{splits['test'][0].image_id}.jpg"
    triplets = relation.zeroshot_for("tfds", splits)
    assert triplets.shape == (5971, 3)
    vocab = tfds_source.read_vocab(tmp_path / "out", "vg150")
    assert relation.is_vg150("tfds", vocab) and not relation.is_vg150("gqa200_mini", None)
    # Another dataset (GQA-200 vocabulary): derived from the splits, not the VG150 list.
    mini, mini_vocab = datasets.load("gqa200_mini", "test")
    assert not relation.is_vg150("tfds", mini_vocab)


# ----------------------------------------------------------------------------------------------
# Feature store
# ----------------------------------------------------------------------------------------------


def _write_store(path, features, *, shard_images=2, detector=None, dtype="float16"):
    ids = list(features)
    writer = feature_store.StoreWriter(
        path,
        detector=detector or {"workdir": "/det", "digest": "abc"},
        feature_dim=3,
        dtype=dtype,
        shard_images=shard_images,
        splits={"train": ids},
    )
    for shard in range(writer.num_shards("train")):
        members = writer.shard_images_of("train", shard)
        writer.write_shard("train", shard, members, [features[i] for i in members])
    return writer


def _features(counts):
    rng = np.random.default_rng(0)
    return {str(i): rng.normal(size=(n, 3)).astype(np.float32) for i, n in enumerate(counts)}


def test_store_round_trip_is_lazy_memmaps(tmp_path):
    features = _features([2, 1, 3, 2, 2])
    writer = _write_store(tmp_path / "store", features)
    assert writer.finish() == []
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["feature_dim"] == 3 and manifest["dtype"] == "float16"
    assert manifest["splits"]["train"]["image_ids"] == list(features)
    assert sorted(os.listdir(tmp_path / "store" / "shards"))[:2] == [
        "train-00000.json",
        "train-00000.npy",
    ]
    store = feature_store.load_object_features(tmp_path / "store")
    assert isinstance(store, feature_store.FeatureStore) and len(store) == 5
    assert isinstance(store["2"], np.memmap) and store["2"].shape == (3, 3)
    graphs = [_graph(i, 9, 9, None, boxes=[(0, 0, 1, 1)] * len(f)) for i, f in features.items()]
    lazy = feature_store.features_for(graphs, store, path=str(tmp_path / "store"))
    assert isinstance(lazy, feature_store.LazyFeatures) and store._arrays.get(1) is not None
    for graph, row in zip(graphs, lazy, strict=True):
        np.testing.assert_allclose(row, features[graph.image_id], atol=2e-3)
        assert row.dtype == np.float32
    loader = pipeline.make_loader(
        graphs, pipeline.PipelineConfig.evaluation(2, 4, 12, read_threads=0), object_features=lazy
    )
    batch = next(iter(loader))
    np.testing.assert_allclose(batch.object_features[1, :1], features["1"], atol=2e-3)
    subset = feature_store.take(lazy, [3, 0])
    assert isinstance(subset, feature_store.LazyFeatures) and subset.image_ids == ["3", "0"]
    np.testing.assert_allclose(subset[1], features["0"], atol=2e-3)


def test_store_resume_skips_done_shards_and_refuses_another_extraction(tmp_path):
    features = _features([1, 2, 1])
    writer = feature_store.StoreWriter(
        tmp_path / "s",
        detector={"digest": "abc"},
        feature_dim=3,
        dtype="float32",
        shard_images=2,
        splits={"train": list(features)},
    )
    writer.write_shard("train", 0, ["0", "1"], [features["0"], features["1"]])
    assert writer.finish() == [] and not writer.manifest["complete"]
    again = feature_store.StoreWriter(
        tmp_path / "s",
        detector={"digest": "abc"},
        feature_dim=3,
        dtype="float32",
        shard_images=2,
        splits={"train": list(features)},
    )
    assert again.done("train", 0) and not again.done("train", 1)
    again.write_shard("train", 1, ["2"], [features["2"]], [{"image_id": "3", "error": "x"}])
    assert again.finish() == [{"image_id": "3", "error": "x"}] and again.manifest["complete"]
    with pytest.raises(DataError, match=r"manifest.json: field 'detector': .*another extraction"):
        feature_store.StoreWriter(
            tmp_path / "s",
            detector={"digest": "other"},
            feature_dim=3,
            dtype="float32",
            shard_images=2,
            splits={"train": list(features)},
        )


def test_store_bad_inputs_are_one_line_errors(tmp_path):
    features = _features([2, 1])
    path = tmp_path / "store"
    _write_store(path, features).finish()
    store = feature_store.open_store(path)
    graphs = [_graph(i, 9, 9, None, boxes=[(0, 0, 1, 1)] * len(f)) for i, f in features.items()]
    # Images of another dataset.
    with pytest.raises(DataError, match=f"^{path}: image 77: no features for this image"):
        feature_store.features_for([_graph(77, 9, 9, None)], store)
    # Another dimension than the model expects.
    with pytest.raises(DataError, match="field 'feature_dim': features of width 3, the model"):
        feature_store.features_for(graphs, store, expected_dim=4096)
    # Another detector than the run names.
    with pytest.raises(DataError, match="manifest.json: field 'detector.digest': features of"):
        store.check_detector("zzz", "/other/detector")
    store.check_detector("abc", "/det")
    # A shard of another width than the manifest.
    np.save(path / "shards" / "train-00000.npy", np.zeros((3, 5), np.float16))
    with pytest.raises(DataError, match="train-00000.npy: field 'feature_dim': rows of width"):
        feature_store.features_for(graphs, feature_store.open_store(path))
    # Not a store.
    (path / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match="manifest.json: field 'format': not a feature store"):
        feature_store.open_store(path)


def test_run_naming_another_detector_or_dimension_is_refused(tmp_path):
    import dataclasses

    from sgg_jax.detection.detector import DetectorConfig

    detector = tmp_path / "detector"
    (detector / "checkpoints" / "3").mkdir(parents=True)
    (detector / "checkpoints" / "3" / "weights").write_bytes(b"step 3")
    config = {"flags": {}, "detector": dataclasses.asdict(DetectorConfig.tiny())}
    (detector / "config.json").write_text(json.dumps(config))
    splits, _ = datasets.load("gqa200_mini", "test")
    splits = {"test": splits[:3]}
    features = {g.image_id: np.ones((g.num_objects, 3), np.float32) for g in splits["test"]}
    data = relation.DataConfig(detector_workdir=str(detector))
    identity = relation.detector_identity(data)
    assert identity["step"] == 3 and len(identity["digest"]) == 64
    _write_store(tmp_path / "other", features, detector={"digest": "another"}).finish()
    run = relation.DataConfig(
        feature_source="precomputed",
        object_features=str(tmp_path / "other"),
        detector_workdir=str(detector),
    )
    with pytest.raises(DataError, match="field 'detector.digest': features of another detector"):
        relation.object_features_for(run, splits)
    _write_store(tmp_path / "same", features, detector=identity).finish()
    run = dataclasses.replace(run, object_features=str(tmp_path / "same"))
    width = DetectorConfig.tiny().representation_size
    with pytest.raises(DataError, match=f"features of width 3, the model expects {width}"):
        relation.object_features_for(run, splits)
    lazy = relation.object_features_for(dataclasses.replace(run, detector_workdir=None), splits)
    assert isinstance(lazy["test"], feature_store.LazyFeatures) and len(lazy["test"]) == 3
