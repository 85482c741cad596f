"""Tests of the VG150 reader on small files written in exactly the Scene-Graph-Benchmark layout.

The fixture file holds five h5 image rows (ids 10..14; 10, 11, 13 train, 12, 14 test; 11 and 14
without relations) and an ``image_data.json`` with the corrupted image 1592 between ids 10 and 11, so
reading correct sizes proves the alignment. Expected boxes are computed by hand in the comments.
"""

from __future__ import annotations

import gzip
import json
import os

import h5py
import numpy as np
import pytest

from sgg_jax.data import vg150
from sgg_jax.data.validation import ReadReport
from sgg_jax.errors import ConfigError, DataError

OBJECTS = ["cat", "dog", "man", "tree", "hat"]
PREDICATES = ["on", "has", "near"]
OBJECT_COUNTS = {"cat": 40, "dog": 30, "man": 20, "tree": 10, "hat": 5}
PREDICATE_COUNTS = {"on": 70, "has": 20, "near": 10}

IMAGE_DATA = [
    {"image_id": 10, "width": 800, "height": 600},
    {"image_id": 1592, "width": 1, "height": 1},  # corrupted in VG: skipped by the reader
    {"image_id": 11, "width": 500, "height": 1000},
    {"image_id": 12, "width": 1024, "height": 768},
    {"image_id": 13, "width": 640, "height": 480},
    {"image_id": 14, "width": 300, "height": 200},
]


def base_tables() -> dict[str, np.ndarray]:
    """The h5 datasets with the dtypes and shapes of the released ``VG-SGG-with-attri.h5``."""
    boxes_1024 = np.array(
        [
            [100, 200, 50, 81],  # image 10
            [512, 300, 128, 64],
            [300, 300, 64, 64],
            [50, 60, 20, 30],  # image 11
            [200, 200, 100, 100],
            [10, 10, 5, 7],  # image 12
            [500, 400, 200, 100],
            [320, 240, 100, 60],  # image 13
            [100, 100, 40, 40],
            [512, 512, 256, 256],  # image 14
        ],
        np.int32,
    )
    return {
        "split": np.array([0, 0, 2, 0, 2], np.int32),
        "img_to_first_box": np.array([0, 3, 5, 7, 9], np.int32),
        "img_to_last_box": np.array([2, 4, 6, 8, 9], np.int32),
        "img_to_first_rel": np.array([0, -1, 3, 4, -1], np.int32),
        "img_to_last_rel": np.array([2, -1, 3, 5, -1], np.int32),
        "labels": np.array([[1], [3], [4], [2], [5], [3], [3], [5], [1], [2]], np.int64),
        "boxes_1024": boxes_1024,
        "boxes_512": boxes_1024 // 2,
        # global box indices: image 10 has a duplicate (0, 1) pair; image 12 one relation; 13 two.
        "relationships": np.array([[0, 1], [0, 1], [2, 0], [6, 5], [7, 8], [8, 7]], np.int32),
        "predicates": np.array([[1], [2], [3], [2], [3], [1]], np.int64),
        "attributes": np.zeros((10, 10), np.int64),
    }


def dicts() -> dict:
    return {
        "idx_to_label": {str(i): name for i, name in enumerate(OBJECTS, start=1)},
        "label_to_idx": {name: i for i, name in enumerate(OBJECTS, start=1)},
        "idx_to_predicate": {str(i): name for i, name in enumerate(PREDICATES, start=1)},
        "predicate_to_idx": {name: i for i, name in enumerate(PREDICATES, start=1)},
        "object_count": OBJECT_COUNTS,
        "predicate_count": PREDICATE_COUNTS,
        "idx_to_attribute": {"1": "white"},
        "attribute_to_idx": {"white": 1},
        "attribute_count": {"white": 3},
    }


def write_h5(path, tables: dict[str, np.ndarray]) -> str:
    with h5py.File(path, "w") as h5_file:
        for key, value in tables.items():
            h5_file.create_dataset(key, data=value)
    return str(path)


def write_json(path, value) -> str:
    with open(path, "w") as f:
        json.dump(value, f)
    return str(path)


@pytest.fixture
def vg(tmp_path):
    """Factory writing the three files (optionally modified) and returning their paths."""

    def make(tables=None, drop=(), dicts_json=None, image_data=None):
        tables = {k: v for k, v in (tables or base_tables()).items() if k not in drop}
        return (
            write_h5(tmp_path / "VG-SGG-with-attri.h5", tables),
            write_json(tmp_path / "VG-SGG-dicts-with-attri.json", dicts_json or dicts()),
            write_json(tmp_path / "image_data.json", image_data or IMAGE_DATA),
        )

    return make


def modified(**changes) -> dict[str, np.ndarray]:
    """base_tables() with ``changes`` = {dataset: [(index, value), ...]} applied."""
    tables = base_tables()
    for key, edits in changes.items():
        for index, value in edits:
            tables[key][index] = value
    return tables


# ----------------------------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------------------------


def test_train_split_boxes_relations_and_alignment(vg):
    report = ReadReport()
    graphs, _ = vg150.read(*vg(), "train", report=report)
    assert [g.image_id for g in graphs] == ["10", "13"]  # 11 has no relations
    first, second = graphs
    # Sizes come from image_data with 1592 skipped: row 0 -> image 10, row 3 -> image 13.
    assert (first.width, first.height) == (800, 600)
    assert (second.width, second.height) == (640, 480)
    # Image 10, scale 800 / 1024 = 0.78125:
    #   [100, 200, 50, 81] -> x1 = 75, y1 = trunc(159.5) = 159, x2 = 125, y2 = 240
    #   [512, 300, 128, 64] -> [448, 268, 576, 332];  [300, 300, 64, 64] -> [268, 268, 332, 332]
    np.testing.assert_array_equal(
        first.boxes,
        np.array(
            [
                [58.59375, 124.21875, 97.65625, 187.5],
                [350.0, 209.375, 450.0, 259.375],
                [209.375, 209.375, 259.375, 259.375],
            ],
            np.float32,
        ),
    )
    np.testing.assert_array_equal(first.labels, [1, 3, 4])
    # Duplicates on one pair are kept (multi-label ground truth) unless filter_duplicate_rels.
    np.testing.assert_array_equal(first.relations, [[0, 1, 1], [0, 1, 2], [2, 0, 3]])
    # Image 13, scale 640 / 1024 = 0.625: [320, 240, 100, 60] -> [270, 210, 370, 270].
    np.testing.assert_array_equal(
        second.boxes, np.array([[168.75, 131.25, 231.25, 168.75], [50, 50, 75, 75]], np.float32)
    )
    # Global indices 7, 8 minus the first box 7.
    np.testing.assert_array_equal(second.relations, [[0, 1, 3], [1, 0, 1]])
    assert first.boxes.dtype == np.float32 and first.relations.dtype == np.int32
    assert first.image_path is None
    assert (report.images, report.boxes, report.relations) == (2, 5, 5)
    assert report.dropped_images_without_relations == 1
    assert report.repaired_boxes == 0


def test_test_split_and_filter_empty_rels(vg):
    paths = vg()
    report = ReadReport()
    graphs, _ = vg150.read(*paths, 2, report=report)
    assert [g.image_id for g in graphs] == ["12"]
    assert report.dropped_images_without_relations == 1
    # Image 12, scale 1: [10, 10, 5, 7] -> x1 = trunc(7.5) = 7, y1 = trunc(6.5) = 6, x2 = 12, y2 = 13.
    np.testing.assert_array_equal(graphs[0].boxes, [[7, 6, 12, 13], [400, 350, 600, 450]])
    np.testing.assert_array_equal(graphs[0].relations, [[1, 0, 2]])

    graphs, _ = vg150.read(*paths, "test", filter_empty_rels=False)
    assert [g.image_id for g in graphs] == ["12", "14"]
    # Image 14, scale 300 / 1024: [512, 512, 256, 256] -> [384, 384, 640, 640].
    np.testing.assert_array_equal(graphs[1].boxes, [[112.5, 112.5, 187.5, 187.5]])
    assert graphs[1].relations.shape == (0, 3)

    graphs, _ = vg150.read(*paths, "train", filter_empty_rels=False)
    assert [g.image_id for g in graphs] == ["10", "11", "13"]
    # Image 11, scale 1000 / 1024: [50, 60, 20, 30] -> [40, 45, 60, 75].
    np.testing.assert_allclose(
        graphs[1].boxes[0], np.array([40, 45, 60, 75]) * 1000 / 1024, rtol=1e-7
    )
    np.testing.assert_array_equal(graphs[1].labels, [2, 5])


def test_num_val_and_num_images(vg):
    paths = vg()
    val, _ = vg150.read(*paths, "val", num_val=1)
    train, _ = vg150.read(*paths, 0, num_val=1)
    assert [g.image_id for g in val] == ["10"]
    assert [g.image_id for g in train] == ["13"]
    val, _ = vg150.read(*paths, 1, num_val=5)  # more than there are: all train images
    assert [g.image_id for g in val] == ["10", "13"]
    first, _ = vg150.read(*paths, "train", num_images=1)
    assert [g.image_id for g in first] == ["10"]
    # num_images is applied before num_val, as in SGB.
    with pytest.raises(DataError, match="field 'split'"):
        vg150.read(*paths, "train", num_images=1, num_val=1)


def test_vocab_counts_from_dicts_or_train_graphs(vg):
    paths = vg()
    _, test_vocab = vg150.read(*paths, "test")
    assert test_vocab.object_names == ("__background__", *OBJECTS)
    assert test_vocab.predicate_names == ("__background__", *PREDICATES)
    np.testing.assert_array_equal(test_vocab.object_counts, [0, 40, 30, 20, 10, 5])
    np.testing.assert_array_equal(test_vocab.predicate_counts, [0, 70, 20, 10])
    _, train_vocab = vg150.read(*paths, "train")
    # Train graphs: labels [1, 3, 4] + [5, 1]; predicates [1, 2, 3] + [3, 1].
    np.testing.assert_array_equal(train_vocab.object_counts, [0, 2, 0, 1, 1, 1])
    np.testing.assert_array_equal(train_vocab.predicate_counts, [0, 2, 1, 2])
    assert train_vocab.object_names == test_vocab.object_names
    assert vg150.read_vocab(paths[1]) == test_vocab


def test_filter_duplicate_rels_is_seeded(vg):
    paths = vg()
    picks = set()
    for seed in range(12):
        report = ReadReport()
        graphs, vocab = vg150.read(
            *paths, "train", filter_duplicate_rels=True, seed=seed, report=report
        )
        again, _ = vg150.read(*paths, "train", filter_duplicate_rels=True, seed=seed)
        assert all(a == b for a, b in zip(graphs, again, strict=True))
        relations = graphs[0].relations
        assert relations.shape == (2, 3)
        assert relations[0, :2].tolist() == [0, 1] and relations[1].tolist() == [2, 0, 3]
        picks.add(int(relations[0, 2]))
        np.testing.assert_array_equal(graphs[1].relations, [[0, 1, 3], [1, 0, 1]])
        assert report.dropped_duplicate_relations == 1
        assert report.relations == 4
        assert vocab.predicate_counts.sum() == 4
    assert picks == {1, 2}  # both annotated predicates get sampled for some seed


def test_image_dir_sets_paths(vg, tmp_path):
    graphs, _ = vg150.read(*vg(), "train", image_dir=str(tmp_path / "VG_100K"))
    assert graphs[1].image_path == os.path.join(str(tmp_path / "VG_100K"), "13.jpg")


def test_self_relation_kept_dropped_or_strict(vg):
    paths = vg(modified(relationships=[(4, [7, 7])]))
    report = ReadReport()
    graphs, _ = vg150.read(*paths, "train", report=report)
    np.testing.assert_array_equal(graphs[1].relations, [[0, 0, 3], [1, 0, 1]])
    assert report.self_relations == 1
    graphs, _ = vg150.read(*paths, "train", drop_self_relations=True)
    np.testing.assert_array_equal(graphs[1].relations, [[1, 0, 1]])
    with pytest.raises(DataError, match=r"image 13: field 'relationships': .*itself"):
        vg150.read(*paths, "train", strict=True)


def test_negative_width_repaired_or_strict(vg):
    # [100, 100, -40, 40] -> x1 = 120, x2 = 80 at scale 0.625; repaired to [80, 80, 120, 120].
    paths = vg(modified(boxes_1024=[(8, [100, 100, -40, 40])]))
    report = ReadReport()
    graphs, _ = vg150.read(*paths, "train", report=report)
    np.testing.assert_array_equal(graphs[1].boxes[1], [50, 50, 75, 75])
    assert report.repaired_boxes == 1
    with pytest.raises(DataError, match=r"image 13: field 'boxes_1024': box 1 .*x2 < x1"):
        vg150.read(*paths, "train", strict=True)


def test_bundled_vocab_is_the_real_vg150_vocabulary():
    vocab = vg150.load_bundled_vocab()
    assert vocab.num_classes == 150 and vocab.num_predicates == 50
    assert vocab.predicate_names[1] == "above"
    assert vocab.object_names[1] == "airplane"
    assert vocab.predicate_counts[vocab.predicate_names.index("on")] == 712409
    assert vocab.object_counts[0] == 0 and vocab.object_counts[1:].min() > 0


def test_real_dicts_file_bounds_labels_at_150(vg, tmp_path):
    h5_path, _, image_data_path = vg(modified(labels=[(7, [151])]))
    real_dicts = str(tmp_path / "real-dicts.json.gz")
    resource = os.path.join(os.path.dirname(vg150.__file__), "resources", vg150.BUNDLED_DICTS)
    with open(resource, "rb") as src, open(real_dicts, "wb") as dst:
        dst.write(src.read())
    graphs, vocab = vg150.read(h5_path, real_dicts, image_data_path, "train", num_images=1)
    assert vocab.num_classes == 150
    assert [vocab.object_names[i] for i in graphs[0].labels] == ["airplane", "arm", "bag"]
    with pytest.raises(
        DataError, match=r"image 13: field 'labels': .*outside the vocabulary 1..150"
    ):
        vg150.read(h5_path, real_dicts, image_data_path, "train")


# ----------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------


def test_missing_h5_dataset(vg):
    paths = vg(drop=("predicates",))
    with pytest.raises(DataError, match=r"VG-SGG-with-attri.h5: field 'predicates': .*missing"):
        vg150.read(*paths, "train")


def test_missing_dicts_key(vg):
    broken = dicts()
    del broken["idx_to_predicate"]
    with pytest.raises(DataError, match=r"dicts-with-attri.json: field 'idx_to_predicate'"):
        vg150.read(*vg(dicts_json=broken), "train")


def test_inconsistent_dicts_inverse(vg):
    broken = dicts()
    broken["label_to_idx"] = {**broken["label_to_idx"], "cat": 2, "dog": 1}
    with pytest.raises(DataError, match=r"field 'label_to_idx': .*'cat'"):
        vg150.read(*vg(dicts_json=broken), "train")


@pytest.mark.parametrize(
    ("changes", "image", "field", "reason"),
    [
        ({"img_to_last_box": [(3, 6)]}, "13", "img_to_last_box", "before img_to_first_box"),
        ({"img_to_last_box": [(3, 10)]}, "13", "img_to_last_box", "beyond the 10 boxes"),
        ({"img_to_last_rel": [(3, 6)]}, "13", "img_to_last_rel", "beyond the 6 relations"),
        ({"img_to_last_rel": [(3, 3)]}, "13", "img_to_last_rel", "before img_to_first_rel"),
        ({"img_to_last_rel": [(1, 3)]}, "11", "img_to_last_rel", "img_to_first_rel is -1"),
        ({"img_to_first_box": [(3, -2)]}, "13", "img_to_first_box", "invalid index -2"),
        # Relation of image 13 pointing at box 2 of image 10: per-image index -5.
        ({"relationships": [(4, [7, 2])]}, "13", "relationships", "outside 0..1"),
        ({"relationships": [(0, [0, 40])]}, "10", "relationships", "outside 0..2"),
        ({"labels": [(7, [6])]}, "13", "labels", "outside the vocabulary 1..5"),
        ({"labels": [(0, [0])]}, "10", "labels", "outside the vocabulary 1..5"),
        ({"predicates": [(5, [4])]}, "13", "predicates", "outside the vocabulary 1..3"),
        ({"predicates": [(2, [0])]}, "10", "predicates", "outside the vocabulary 1..3"),
    ],
)
def test_bad_records_name_file_image_and_field(vg, changes, image, field, reason):
    paths = vg(modified(**changes))
    with pytest.raises(DataError) as info:
        vg150.read(*paths, "train")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(paths[0] + ": ")
    assert f"image {image}: field '{field}'" in message
    assert reason in message
    assert (info.value.record, info.value.field) == (image, field)


def test_nan_box_coordinate(vg):
    tables = base_tables()
    tables["boxes_1024"] = tables["boxes_1024"].astype(np.float32)
    tables["boxes_1024"][1, 2] = np.nan
    with pytest.raises(DataError, match=r"image 10: field 'boxes_1024': box 1 has a NaN"):
        vg150.read(*vg(tables), "train")


def test_empty_split(vg):
    paths = vg(modified(split=[(2, 0), (4, 0)]))
    with pytest.raises(DataError, match=r"field 'split': no test images: 0 rows with split == 2"):
        vg150.read(*paths, "test")


def test_misaligned_image_data(vg):
    paths = vg(image_data=IMAGE_DATA[:-1])
    with pytest.raises(DataError, match=r"image_data.json: field 'image_data': 4 images .* has 5"):
        vg150.read(*paths, "test")


def test_bad_image_size(vg):
    image_data = [dict(entry) for entry in IMAGE_DATA]
    image_data[4]["height"] = -480
    with pytest.raises(DataError, match=r"image_data.json: image 13: field 'height'"):
        vg150.read(*vg(image_data=image_data), "train")


def test_corrupt_and_truncated_h5(vg, tmp_path):
    h5_path, dicts_path, image_data_path = vg()
    with open(h5_path, "rb") as f:
        content = f.read()
    for name, data in (("garbage.h5", b"\x89HDF\r\n not really" * 50), ("half.h5", content[:1500])):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(DataError) as info:
            vg150.read(path, dicts_path, image_data_path, "train")
        assert str(info.value).startswith(path + ": ") and "\n" not in str(info.value)
        assert info.value.__cause__ is None
    with pytest.raises(DataError, match="file not found"):
        vg150.read(str(tmp_path / "absent.h5"), dicts_path, image_data_path, "train")


def test_corrupt_json(vg, tmp_path):
    h5_path, dicts_path, image_data_path = vg()
    with open(image_data_path) as f:
        text = f.read()
    with open(image_data_path, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"image_data.json: not valid JSON"):
        vg150.read(h5_path, dicts_path, image_data_path, "train")
    with open(dicts_path, "w") as f:
        f.write("{'idx_to_label': ")
    with pytest.raises(DataError, match=r"dicts-with-attri.json: not valid JSON"):
        vg150.read(h5_path, dicts_path, image_data_path, "train")
    gz_path = str(tmp_path / "broken.json.gz")
    with open(gz_path, "wb") as f:
        f.write(gzip.compress(b'{"idx_to_label": {"1": "cat"}}')[:20])
    with pytest.raises(DataError, match=r"broken.json.gz: "):
        vg150.read_vocab(gz_path)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"split": "dev"}, "split"),
        ({"split": 3}, "split"),
        ({"split": "val"}, "num_val"),
        ({"split": "train", "num_val": -1}, "num_val"),
        ({"split": "train", "num_images": 0}, "num_images"),
        ({"split": "test", "filter_duplicate_rels": True}, "filter_duplicate_rels"),
    ],
)
def test_config_errors(vg, kwargs, option):
    paths = vg()
    split = kwargs.pop("split")
    with pytest.raises(ConfigError, match=f"option '{option}'"):
        vg150.read(*paths, split, **kwargs)
