"""Tests of the TFDS builders (data_prep) and the array_record read side (sgg_jax.data.tfds_source).

GQA-200 datasets are built from split files holding real images of the bundled GQA-200 test split,
written in the SHA-GCL layout; VG150 datasets from a small h5 / image_data / dicts triple written in
the Scene-Graph-Benchmark layout with the real VG150 vocabulary. Every test reads the written
array_record files back and compares them with what the readers return for the raw files.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import pickle
import subprocess
import sys

import grain
import h5py
import numpy as np
import pytest
from array_record.python import array_record_module

from data_prep import common
from data_prep import gqa200 as gqa200_prep
from data_prep import vg150 as vg150_prep
from sgg_jax.data import gqa200 as gqa200_reader
from sgg_jax.data import tfds_source
from sgg_jax.data import vg150 as vg150_reader
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESOURCES = importlib.resources.files("sgg_jax.data") / "resources"
ID_INFO = str(RESOURCES / "GQA_200_ID_Info.json.gz")
VG_DICTS = str(RESOURCES / "VG-SGG-dicts-with-attri.json.gz")

# Rows of the bundled GQA-200 test file copied into the small split files. Row 0..59 -> train,
# 60..99 -> test; the extra rows hold the file's annotation quirks (an inverted box, boxes outside
# the image, self-relations), which the default policy repairs or keeps.
TRAIN_ROWS = list(range(60))
TEST_ROWS = list(range(60, 100))


@pytest.fixture(scope="module")
def gqa_columns() -> dict[str, list]:
    """The raw columns of the bundled GQA-200 test split (SHA-GCL layout)."""
    with gzip.open(str(RESOURCES / "GQA_200_Test.json.gz"), "rt", encoding="utf-8") as handle:
        return json.load(handle)


def _quirk_rows(columns: dict[str, list]) -> list[int]:
    """Rows past the train/test rows with an inverted box, a box > 1 px outside the image, or a
    self-relation (the first 2 of each kind)."""
    inverted, outside, self_rel = [], [], []
    start = len(TRAIN_ROWS) + len(TEST_ROWS)
    for row in range(start, len(columns["filenames_all"])):
        info = columns["img_info_all"][row]
        boxes = np.asarray(columns["gt_boxes_all"][row], np.float64).reshape(-1, 4)
        if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            inverted.append(row)
        if ((boxes[:, 2] > info["width"] + 1) | (boxes[:, 3] > info["height"] + 1)).any():
            outside.append(row)
        if any(r[0] == r[1] for r in columns["relationships_all"][row]):
            self_rel.append(row)
    return sorted(set(inverted[:2] + outside[:2] + self_rel[:2]))


def _write_split(columns: dict[str, list], rows: list[int], path) -> str:
    with open(path, "w") as handle:
        json.dump({key: [column[r] for r in rows] for key, column in columns.items()}, handle)
    return str(path)


@pytest.fixture(scope="module")
def gqa_files(gqa_columns, tmp_path_factory) -> dict[str, str]:
    """``GQA_200_Train.json`` (60 images) and ``GQA_200_Test.json`` (40 + the quirk rows)."""
    folder = tmp_path_factory.mktemp("gqa_raw")
    return {
        "train": _write_split(gqa_columns, TRAIN_ROWS, folder / "GQA_200_Train.json"),
        "test": _write_split(
            gqa_columns, TEST_ROWS + _quirk_rows(gqa_columns), folder / "GQA_200_Test.json"
        ),
    }


@pytest.fixture(scope="module")
def gqa_built(gqa_files, tmp_path_factory) -> common.BuildResult:
    out = tmp_path_factory.mktemp("gqa_out")
    return gqa200_prep.build([gqa_files["train"], gqa_files["test"]], ID_INFO, out)


def _summary_rows(stdout: str) -> dict[str, list[int]]:
    """The split table of a CLI summary: {split: [images, boxes, relations, repaired, self, dropped]}."""
    rows = {}
    for line in stdout.splitlines()[2:]:
        if not line.strip():
            break
        name, *numbers = line.split()
        rows[name] = [int(n) for n in numbers]
    return rows


def _run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ----------------------------------------------------------------------------------------------
# GQA-200.
# ----------------------------------------------------------------------------------------------


def test_gqa200_round_trip_equals_reader(gqa_built, gqa_files, gqa_columns):
    assert [s.name for s in gqa_built.splits] == ["train", "test"]
    for split, path in gqa_files.items():
        expected, expected_vocab = gqa200_reader.read(path, ID_INFO)
        source, vocab = tfds_source.open_source(gqa_built.data_dir, "gqa200", split)
        assert len(source) == len(expected)
        assert list(source) == expected  # SceneGraph value equality, file order
        assert vocab == expected_vocab == gqa200_reader.read_vocab(ID_INFO)
        assert vocab.num_classes == 200 and vocab.num_predicates == 100
        assert int(vocab.predicate_counts.sum()) == 310_374  # train counts of the id-info file
    test_graphs = list(tfds_source.open_source(gqa_built.data_dir, "gqa200", "test")[0])
    assert len(test_graphs) == len(TEST_ROWS) + len(_quirk_rows(gqa_columns))
    assert all(g.image_path is None for g in test_graphs)


@pytest.mark.e2e
def test_gqa200_full_bundled_test_split(tmp_path):
    """All 8,209 images of the real GQA-200 test split (bundled gzip) round-trip exactly."""
    split_file = str(RESOURCES / "GQA_200_Test.json.gz")
    result = gqa200_prep.build([split_file], ID_INFO, tmp_path)
    (summary,) = result.splits
    assert (summary.name, summary.images, summary.boxes, summary.relations) == (
        "test",
        8209,
        121_140,
        38_151,
    )
    assert (summary.report.repaired_boxes, summary.report.self_relations) == (149, 207)
    assert int((summary.predicate_counts[1:] > 0).sum()) == 100
    expected, expected_vocab = gqa200_reader.read(split_file, ID_INFO)
    source, vocab = tfds_source.open_source(tmp_path, "gqa200", "test")
    assert list(source) == expected and vocab == expected_vocab
    assert os.listdir(tmp_path) == ["gqa200"]  # no staging folder left behind


def test_gqa200_quirks_round_trip(gqa_built, gqa_files):
    source, _ = tfds_source.open_source(gqa_built.data_dir, "gqa200", "test")
    graphs = list(source)
    boxes = np.concatenate([g.boxes for g in graphs])
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()  # repaired
    num_self = sum(int((g.relations[:, 0] == g.relations[:, 1]).sum()) for g in graphs)
    test_summary = gqa_built.splits[1]
    assert num_self == test_summary.report.self_relations >= 2  # kept as annotated
    assert test_summary.report.repaired_boxes >= 3


def test_gqa200_files_are_array_record(gqa_built):
    folder = os.path.join(gqa_built.data_dir, "gqa200", "1.0.0")
    assert gqa_built.dataset_dir == folder
    names = sorted(os.listdir(folder))
    record_files = [n for n in names if ".array_record" in n]
    assert record_files == [
        "gqa200-test.array_record-00000-of-00001",
        "gqa200-train.array_record-00000-of-00001",
    ]
    assert not [n for n in names if "tfrecord" in n]
    assert list(gqa_built.files) == [os.path.join(folder, n) for n in record_files]
    assert (
        json.load(open(os.path.join(folder, "dataset_info.json")))["fileFormat"] == "array_record"
    )
    order = {"train": 0, "test": 1}
    for name, split in zip(record_files, ("test", "train"), strict=True):
        reader = array_record_module.ArrayRecordReader(os.path.join(folder, name))
        try:
            source, _ = tfds_source.open_source(gqa_built.data_dir, "gqa200", split)
            assert reader.num_records() == len(source) == gqa_built.splits[order[split]].images
        finally:
            reader.close()
    metadata = json.load(open(os.path.join(folder, "metadata.json")))
    assert metadata["vocab"]["predicate_names"][:3] == ["__background__", "on", "wearing"]


def test_gqa200_summary_counts(gqa_built, gqa_files):
    for summary in gqa_built.splits:
        graphs, _ = gqa200_reader.read(gqa_files[summary.name], ID_INFO)
        assert summary.images == len(graphs)
        assert summary.boxes == sum(g.num_objects for g in graphs)
        assert summary.relations == sum(g.num_relations for g in graphs)
        hist = np.bincount(np.concatenate([g.relations[:, 2] for g in graphs]), minlength=101)
        np.testing.assert_array_equal(summary.predicate_counts, hist)
    text = common.format_summary(gqa_built, top_k=3)
    lines = text.splitlines()
    assert lines[0].startswith("gqa200 1.0.0: 2 array_record files in ")
    assert "(every record read back and verified)" in lines[0]
    total = gqa_built.splits[0].predicate_counts + gqa_built.splits[1].predicate_counts
    top = int(np.argmax(total[1:])) + 1
    name = gqa_built.vocab.predicate_names[top]
    rank1 = next(line for line in lines if line.split()[:1] == ["1"])
    assert rank1.split()[1:] == [
        *name.split(),
        str(gqa_built.splits[0].predicate_counts[top]),
        str(gqa_built.splits[1].predicate_counts[top]),
        str(total[top]),
        f"{100 * total[top] / total.sum():.2f}%",
    ]
    occurring = int((total[1:] > 0).sum())
    assert f"predicates: 100, {occurring} occur; top 3 and bottom 3 by total count" in text
    assert lines[-1].split()[0] == "100" and lines[-1].split()[-3:-1] == ["0", "0"]


def test_source_random_access_pickle_and_grain(gqa_built):
    source, _ = tfds_source.open_source(gqa_built.data_dir, "gqa200:1.0.0", "train")
    graphs = list(source)
    assert len(graphs) == 60
    assert source[-1] == graphs[59] and source[np.int64(7)] == graphs[7]
    assert source[10:13] == graphs[10:13]
    assert source.__getitems__([5, 0, 5]) == [graphs[5], graphs[0], graphs[5]]
    with pytest.raises(IndexError):
        source[60]
    clone = pickle.loads(pickle.dumps(source))
    assert len(clone) == 60 and clone[3] == graphs[3]
    dataset = grain.MapDataset.source(source).map(lambda g: g.num_relations)
    assert [dataset[i] for i in range(60)] == [g.num_relations for g in graphs]


def test_image_dir_round_trips(gqa_files, tmp_path):
    result = gqa200_prep.build(
        {"mini": gqa_files["train"]}, ID_INFO, tmp_path, image_dir="/images/gqa", verify=False
    )
    source, _ = tfds_source.open_source(tmp_path, "gqa200", "mini")
    expected, _ = gqa200_reader.read(gqa_files["train"], ID_INFO, image_dir="/images/gqa")
    assert list(source) == expected
    assert source[0].image_path == f"/images/gqa/{expected[0].image_id}.jpg"
    assert not result.verified


def test_existing_dataset_needs_overwrite(gqa_files, tmp_path):
    first = gqa200_prep.build({"train": gqa_files["train"]}, ID_INFO, tmp_path)
    with pytest.raises(ConfigError, match="already holds a prepared dataset; pass --overwrite"):
        gqa200_prep.build({"test": gqa_files["test"]}, ID_INFO, tmp_path)
    second = gqa200_prep.build({"test": gqa_files["test"]}, ID_INFO, tmp_path, overwrite=True)
    assert second.dataset_dir == first.dataset_dir
    assert [os.path.basename(f) for f in second.files] == [
        "gqa200-test.array_record-00000-of-00001"
    ]
    with pytest.raises(ConfigError, match="splits \\['test'\\], not 'train'"):
        tfds_source.open_source(tmp_path, "gqa200", "train")
    assert len(tfds_source.open_source(tmp_path, "gqa200", "test")[0]) == second.splits[0].images


def test_split_names():
    assert gqa200_prep.split_name_from_path("/d/GQA_200_Train.json") == "train"
    assert gqa200_prep.split_name_from_path("GQA_200_Test.json.gz") == "test"
    assert gqa200_prep.split_name_from_path("gqa-val.json") == "val"
    assert gqa200_prep.split_name_from_path("My Subset.json") == "my_subset"
    assert gqa200_prep.parse_split_args(["a.json", "dev=/x/GQA_200_Train.json"]) == {
        "a": "a.json",
        "dev": "/x/GQA_200_Train.json",
    }
    with pytest.raises(ConfigError, match="two files for split 'train'"):
        gqa200_prep.parse_split_args(["GQA_200_Train.json", "x/gqa_train.json"])


def test_open_source_errors(tmp_path):
    with pytest.raises(DataError, match="no prepared dataset .*python -m data_prep.gqa200"):
        tfds_source.open_source(tmp_path, "gqa200", "test")
    folder = tmp_path / "vg150" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")
    (folder / "metadata.json").write_text(json.dumps({"vocab": {"object_names": ["x"]}}))
    with pytest.raises(
        DataError, match="metadata.json: field 'vocab.predicate_names': missing key"
    ):
        tfds_source.open_source(tmp_path, "vg150", "test")


def test_decode_example_rejects_bad_record():
    example = common.encode_example(
        SceneGraph("7", 10, 10, np.zeros((2, 4)), np.array([1, 2]), np.zeros((0, 3)))
    )
    assert tfds_source.decode_example(example) == SceneGraph(
        "7", 10, 10, np.zeros((2, 4)), np.array([1, 2]), np.zeros((0, 3))
    )
    example["labels"] = np.array([1], np.int32)
    with pytest.raises(DataError, match="data/x: image 7: field 'labels': 1 labels for 2 boxes"):
        tfds_source.decode_example(example, path="data/x")
    example["labels"] = np.array([1, 2], np.int32)
    example["relations"] = np.array([0, 1, 1], np.int32)
    with pytest.raises(
        DataError, match="image 7: field 'relations': expected shape \\[N, 3\\], got \\[3\\]"
    ):
        tfds_source.decode_example(example)
    del example["boxes"]
    with pytest.raises(DataError, match="record #3: field 'boxes': missing from the record"):
        tfds_source.decode_example(example, index=3)


# ----------------------------------------------------------------------------------------------
# GQA-200 CLI.
# ----------------------------------------------------------------------------------------------


def test_gqa200_cli_summary(gqa_files, tmp_path):
    out = tmp_path / "out"
    proc = _run_cli(
        "data_prep.gqa200",
        f"--split_json={gqa_files['train']}",
        f"--split_json={gqa_files['test']}",
        f"--id_info={ID_INFO}",
        f"--out={out}",
        "--top_k=2",
    )
    assert proc.returncode == 0, proc.stderr
    rows = _summary_rows(proc.stdout)
    expected = {}
    for split, path in gqa_files.items():
        graphs, _ = gqa200_reader.read(path, ID_INFO)
        expected[split] = [
            len(graphs),
            sum(g.num_objects for g in graphs),
            sum(g.num_relations for g in graphs),
        ]
        assert rows[split][:3] == expected[split]
    assert rows["total"][:3] == [a + b for a, b in zip(*expected.values(), strict=True)]
    assert "predicates: 100, " in proc.stdout and "top 2 and bottom 2 by total count" in proc.stdout
    assert "Downloading and preparing" not in proc.stdout  # stdout holds the summary only
    source, _ = tfds_source.open_source(out, "gqa200", "test")
    assert len(source) == expected["test"][0]


def test_gqa200_cli_corrupt_json(gqa_files, tmp_path):
    corrupt = tmp_path / "GQA_200_Test.json"
    corrupt.write_text(open(gqa_files["test"]).read()[:5000])  # truncated
    proc = _run_cli(
        "data_prep.gqa200", f"--split_json={corrupt}", f"--id_info={ID_INFO}", f"--out={tmp_path}"
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"{corrupt}: not valid JSON (truncated or corrupt): "
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["GQA_200_Test.json"]  # nothing written


def test_gqa200_cli_bad_record_and_flags(gqa_columns, tmp_path, capsys):
    columns = {key: [column[r] for r in range(5)] for key, column in gqa_columns.items()}
    columns["gt_classes_all"][2] = [201] + columns["gt_classes_all"][2][1:]
    bad = tmp_path / "GQA_200_Test.json"
    bad.write_text(json.dumps(columns))
    image_id = columns["filenames_all"][2].split(".")[0]
    argv = ["gqa200", f"--split_json={bad}", f"--id_info={ID_INFO}", f"--out={tmp_path}"]
    assert gqa200_prep.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"{bad}: image {image_id}: field 'gt_classes_all': object 0 has label 201 outside the "
        "vocabulary 1..200"
    )
    assert captured.out == ""

    assert gqa200_prep.main(["gqa200", f"--id_info={ID_INFO}", f"--out={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "flag --split_json=None: Flag --split_json must have a value other than None."
    )

    quirky = _write_split(gqa_columns, _quirk_rows(gqa_columns)[:1], tmp_path / "q_test.json")
    argv = ["gqa200", f"--split_json={quirky}", f"--id_info={ID_INFO}", f"--out={tmp_path}"]
    assert gqa200_prep.main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{quirky}: image ")
    assert gqa200_prep.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:2] == ["test", "1"]

    assert gqa200_prep.main(["gqa200", "--help"]) == 0
    assert "--split_json" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# VG150.
# ----------------------------------------------------------------------------------------------

VG_NUM_IMAGES = 24


def _write_vg150(folder) -> tuple[str, str, str]:
    """A small VG-SGG-with-attri.h5 + image_data.json in the SGB layout (real vocabulary file).

    24 h5 rows: rows with ``k % 3 == 2`` are test (split 2), the rest train (split 0); rows
    ``k % 5 == 4`` have no relations; row 7 has no boxes. ``image_data.json`` lists the corrupted
    image 1592 between the first two rows, as the real file does.
    """
    rng = np.random.default_rng(0)
    split, first_box, last_box, first_rel, last_rel = [], [], [], [], []
    boxes, labels, pairs, predicates, image_data = [], [], [], [], []
    for row in range(VG_NUM_IMAGES):
        width, height = int(rng.integers(200, 1000)), int(rng.integers(200, 1000))
        image_data.append(
            {
                "image_id": 100 + row,
                "width": width,
                "height": height,
                "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{100 + row}.jpg",
                "coco_id": None,
                "flickr_id": None,
            }
        )
        if row == 0:
            image_data.append(
                {
                    "image_id": 1592,
                    "width": 1,
                    "height": 1,
                    "url": "",
                    "coco_id": None,
                    "flickr_id": None,
                }
            )
        split.append(2 if row % 3 == 2 else 0)
        num_boxes = 0 if row == 7 else int(rng.integers(2, 7))
        scale = 1024 / max(width, height)
        start = len(boxes)
        for _ in range(num_boxes):
            w, h = rng.integers(10, 200, size=2)
            cx = rng.integers(w // 2 + 1, max(int(width * scale) - w // 2, w // 2 + 2))
            cy = rng.integers(h // 2 + 1, max(int(height * scale) - h // 2, h // 2 + 2))
            boxes.append([cx, cy, w, h])
            labels.append([int(rng.integers(1, 151))])
        first_box.append(start if num_boxes else -1)
        last_box.append(start + num_boxes - 1 if num_boxes else -1)
        num_rels = 0 if (row % 5 == 4 or num_boxes == 0) else int(rng.integers(1, 5))
        rel_start = len(pairs)
        for _ in range(num_rels):
            subject, object_ = rng.choice(num_boxes, size=2, replace=False)
            pairs.append([start + subject, start + object_])
            predicates.append([int(rng.integers(1, 51))])
        first_rel.append(rel_start if num_rels else -1)
        last_rel.append(rel_start + num_rels - 1 if num_rels else -1)
    boxes_1024 = np.asarray(boxes, np.int32)
    tables = {
        "split": np.asarray(split, np.int32),
        "img_to_first_box": np.asarray(first_box, np.int32),
        "img_to_last_box": np.asarray(last_box, np.int32),
        "img_to_first_rel": np.asarray(first_rel, np.int32),
        "img_to_last_rel": np.asarray(last_rel, np.int32),
        "labels": np.asarray(labels, np.int64),
        "boxes_1024": boxes_1024,
        "boxes_512": boxes_1024 // 2,
        "relationships": np.asarray(pairs, np.int32),
        "predicates": np.asarray(predicates, np.int64),
        "attributes": np.zeros((len(boxes), 10), np.int64),
    }
    h5_path = os.path.join(folder, "VG-SGG-with-attri.h5")
    with h5py.File(h5_path, "w") as h5_file:
        for key, value in tables.items():
            h5_file.create_dataset(key, data=value)
    image_data_path = os.path.join(folder, "image_data.json")
    with open(image_data_path, "w") as handle:
        json.dump(image_data, handle)
    return h5_path, VG_DICTS, image_data_path


@pytest.fixture(scope="module")
def vg_files(tmp_path_factory) -> tuple[str, str, str]:
    return _write_vg150(tmp_path_factory.mktemp("vg_raw"))


# Rows with relations (k % 5 != 4, k != 7): train rows k % 3 != 2, test rows k % 3 == 2.
_WITH_RELS = [k for k in range(VG_NUM_IMAGES) if k % 5 != 4 and k != 7]
VG_TRAIN_ALL = [k for k in _WITH_RELS if k % 3 != 2]  # 11 images
VG_TEST = [k for k in _WITH_RELS if k % 3 == 2]  # 7 images


def test_vg150_round_trip_equals_reader(vg_files, tmp_path):
    result = vg150_prep.build(*vg_files, tmp_path, num_val=3)
    assert [s.name for s in result.splits] == ["train", "val", "test"]
    assert [s.images for s in result.splits] == [len(VG_TRAIN_ALL) - 3, 3, len(VG_TEST)]
    ids = {}
    for split in ("train", "val", "test"):
        expected, expected_vocab = vg150_reader.read(*vg_files, split, num_val=3)
        source, vocab = tfds_source.open_source(tmp_path, "vg150", split)
        assert list(source) == expected
        ids[split] = [g.image_id for g in source]
        if split == "train":
            assert vocab == expected_vocab  # counts of the written train split
            hist = np.bincount(np.concatenate([g.relations[:, 2] for g in expected]), minlength=51)
            np.testing.assert_array_equal(vocab.predicate_counts, hist)
    assert vocab.num_classes == 150 and vocab.predicate_names[:3] == (
        "__background__",
        "above",
        "across",
    )
    assert ids["val"] == [str(100 + k) for k in VG_TRAIN_ALL[:3]]
    assert ids["train"] == [str(100 + k) for k in VG_TRAIN_ALL[3:]]
    assert ids["test"] == [str(100 + k) for k in VG_TEST]
    record_files = sorted(os.path.basename(f) for f in result.files)
    assert record_files == [
        f"vg150-{s}.array_record-00000-of-00001" for s in ("test", "train", "val")
    ]


def test_vg150_cli_summary_and_errors(vg_files, tmp_path):
    h5_path, dicts_path, image_data_path = vg_files
    out = tmp_path / "out"
    args = [f"--h5={h5_path}", f"--dicts={dicts_path}", f"--image_data={image_data_path}"]
    proc = _run_cli(
        "data_prep.vg150", *args, f"--out={out}", "--num_val=0", "--nofilter_empty_rels"
    )
    assert proc.returncode == 0, proc.stderr
    rows = _summary_rows(proc.stdout)
    assert list(rows) == ["train", "test", "total"]
    # Without filter_empty_rels only row 7 (no boxes) is dropped.
    num_train = sum(1 for k in range(VG_NUM_IMAGES) if k % 3 != 2 and k != 7)
    graphs = {
        split: vg150_reader.read(*vg_files, split, filter_empty_rels=False)[0]
        for split in ("train", "test")
    }
    assert rows["train"][0] == num_train == len(graphs["train"])
    for split in ("train", "test"):
        assert rows[split][:3] == [
            len(graphs[split]),
            sum(g.num_objects for g in graphs[split]),
            sum(g.num_relations for g in graphs[split]),
        ]
    assert rows["train"][5] == 1  # the image without boxes
    assert "predicates: 50, " in proc.stdout
    assert list(tfds_source.open_source(out, "vg150", "test")[0]) == graphs["test"]
    with pytest.raises(ConfigError, match="not 'val'"):
        tfds_source.open_source(out, "vg150", "val")

    broken = tmp_path / "image_data.json"
    broken.write_text(open(image_data_path).read()[:-20])
    proc = _run_cli("data_prep.vg150", *args[:2], f"--image_data={broken}", f"--out={tmp_path}/o2")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{broken}: not valid JSON (truncated or corrupt)")
    assert "Traceback" not in proc.stderr
