"""Hostile data files: every reader answers with one DataError line naming the file, the record and
the field, never runs code a data file names, and never changes what it reads from valid files."""

import copy
import gzip
import importlib.resources
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from array_record.python import array_record_module

from data_prep import common
from data_prep import gqa200 as gqa200_prep
from sgg_jax.data import feature_store, gqa200, tfds_source, vg_json
from sgg_jax.data.validation import ReadReport
from sgg_jax.detection import convert
from sgg_jax.errors import DataError
from sgg_jax.evaluation import predictions_io, sgg
from sgg_jax.projects.sg_embed import similarity
from sgg_jax.retrieval.index import ExactIndex, Index
from sgg_jax.structures import Prediction, SceneGraph

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESOURCES = importlib.resources.files("sgg_jax.data") / "resources"
ID_INFO = str(RESOURCES / "GQA_200_ID_Info.json.gz")

CLASSES = ["__background__", "man", "horse", "hat", "street"]
PREDICATES = ["__background__", "on", "riding", "wearing"]


# ----------------------------------------------------------------------------------------------
# Small GQA-200 files (SHA-GCL layout).
# ----------------------------------------------------------------------------------------------


def _split():
    return {
        "filenames_all": ["10.jpg", "11.jpg"],
        "img_info_all": [{"width": 100, "height": 80}, {"width": 50, "height": 50}],
        "gt_boxes_all": [
            [[10, 10, 40, 70], [5, 30, 90, 79], [12, 8, 20, 15]],
            [[0, 0, 49, 49], [10, 10, 20, 20]],
        ],
        "gt_classes_all": [[1, 2, 3], [4, 1]],
        "relationships_all": [[[0, 1, 2], [0, 2, 3]], [[1, 0, 1]]],
    }


def _info():
    return {
        "ind_to_classes": CLASSES,
        "ind_to_predicates": PREDICATES,
        "obj_count": {"man": 5, "horse": 2, "hat": 1, "street": 9},
        "rel_count": {"on": 7, "riding": 3, "wearing": 2},
    }


def _write_gqa(folder, split=None, info=None):
    split_path = folder / "GQA_200_Test.json"
    info_path = folder / "GQA_200_ID_Info.json"
    split_path.write_text(json.dumps(_split() if split is None else split))
    info_path.write_text(json.dumps(_info() if info is None else info))
    return str(split_path), str(info_path)


@pytest.fixture(scope="module")
def gqa_rows(tmp_path_factory):
    """A split file holding the first 12 images of the bundled GQA-200 test split."""
    with gzip.open(str(RESOURCES / "GQA_200_Test.json.gz"), "rt", encoding="utf-8") as handle:
        columns = json.load(handle)
    path = tmp_path_factory.mktemp("gqa_raw") / "GQA_200_Train.json"
    path.write_text(json.dumps({key: column[:12] for key, column in columns.items()}))
    return str(path)


@pytest.fixture(scope="module")
def built(gqa_rows, tmp_path_factory):
    """A genuine data_prep-written dataset (split ``train``)."""
    return gqa200_prep.build({"train": gqa_rows}, ID_INFO, tmp_path_factory.mktemp("gqa_out"))


def _copy_dataset(built, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(built.dataset_dir, data_dir / "gqa200" / "1.0.0")
    return data_dir, data_dir / "gqa200" / "1.0.0"


# ----------------------------------------------------------------------------------------------
# 1. A dataset folder never makes us import code.
# ----------------------------------------------------------------------------------------------


EVIL_MODULE = """
import pathlib
pathlib.Path(__file__).with_name("imported.marker").write_text("evil_module was imported")


class Evil:
    pass
"""


def _plant_evil(folder, cwd):
    """Points features.json at ``evil_module.Evil`` and writes ``evil_module.py`` into ``cwd``."""
    features = json.loads((folder / "features.json").read_text())
    features["pythonClassName"] = "evil_module.Evil"
    (folder / "features.json").write_text(json.dumps(features))
    (cwd / "evil_module.py").write_text(EVIL_MODULE)
    return cwd / "imported.marker"


def test_features_json_naming_a_module_is_rejected_and_never_imported(built, tmp_path, monkeypatch):
    data_dir, folder = _copy_dataset(built, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = _plant_evil(folder, cwd)
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    with pytest.raises(DataError) as info:
        tfds_source.open_source(data_dir, "gqa200", "train")
    assert str(info.value) == (
        f"{folder / 'features.json'}: differs from the scene-graph record features sgg_jax writes "
        "(sgg_jax.data.tfds_source.features); refusing to read the dataset"
    )
    assert not marker.exists()
    assert "evil_module" not in sys.modules


def test_evaluation_cli_on_a_hostile_folder_imports_nothing(built, tmp_path):
    data_dir, folder = _copy_dataset(built, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = _plant_evil(folder, cwd)
    predictions = tmp_path / "preds.npz"
    predictions_io.save_predictions(predictions, [], [])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgg_jax.evaluation",
            f"--groundtruth={data_dir}",
            "--tfds_name=gqa200",
            "--split=train",
            f"--predictions={predictions}",
        ],
        cwd=cwd,  # python -m puts the cwd first on sys.path: evil_module.py is importable
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {folder / 'features.json'}: differs from the scene-graph")
    assert not marker.exists()


def test_genuine_dataset_still_reads(built, gqa_rows, tmp_path):
    expected, expected_vocab = gqa200.read(gqa_rows, ID_INFO)
    source, vocab = tfds_source.open_source(built.data_dir, "gqa200", "train")
    assert len(source) == 12
    assert list(source) == expected
    assert vocab == expected_vocab
    # A copy (as a user would move it) reads the same.
    data_dir, _ = _copy_dataset(built, tmp_path)
    assert list(tfds_source.open_source(data_dir, "gqa200", "train")[0]) == expected


def test_dataset_info_is_checked(built, tmp_path):
    data_dir, folder = _copy_dataset(built, tmp_path)
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text())
    bad = copy.deepcopy(info)
    bad["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(bad))
    with pytest.raises(
        DataError, match="field 'file_format': stored as tfrecord, expected array_record"
    ):
        tfds_source.open_source(data_dir, "gqa200", "train")
    bad = copy.deepcopy(info)
    bad["splits"][0]["filepathTemplate"] = "../../{SPLIT}"
    info_path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="unsupported shard file template"):
        tfds_source.open_source(data_dir, "gqa200", "train")
    bad = copy.deepcopy(info)
    bad["splits"][0]["shardLengths"] = ["13"]
    info_path.write_text(json.dumps(bad))
    with pytest.raises(
        DataError, match="split 'train' holds 12 records, dataset_info.json says 13"
    ):
        tfds_source.open_source(data_dir, "gqa200", "train")


# ----------------------------------------------------------------------------------------------
# 2. Duplicate image ids.
# ----------------------------------------------------------------------------------------------


def test_gqa_reader_rejects_a_duplicate_image_id(tmp_path):
    split = _split()
    split["filenames_all"][1] = "images/10.png"
    path, info = _write_gqa(tmp_path, split)
    with pytest.raises(DataError) as error:
        gqa200.read(path, info)
    assert str(error.value) == f"{path}: image 10: field 'filenames_all': image id appears twice"


def test_data_prep_rejects_a_duplicate_image_id_and_writes_nothing(tmp_path):
    split = _split()
    split["filenames_all"][1] = "10.jpg"
    path, _ = _write_gqa(tmp_path, split)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="image 10: field 'filenames_all': image id appears twice"):
        gqa200_prep.build({"test": path}, ID_INFO, out)
    assert os.listdir(out) == []


def test_vg_json_rejects_a_duplicate_image_id(tmp_path):
    path = tmp_path / "relationships.json"
    path.write_text(json.dumps([{"image_id": 7, "relationships": []}] * 2))
    with pytest.raises(DataError, match="image 7: field 'image_id': image id appears twice"):
        vg_json.read_relationships(path)


def _rewrite_records(folder, graphs):
    """Replaces the train shard by records of ``graphs`` (as data_prep encodes them)."""
    features = common.features()
    shard = folder / "gqa200-train.array_record-00000-of-00001"
    writer = array_record_module.ArrayRecordWriter(str(shard), "group_size:1")
    for graph in graphs:
        writer.write(features.serialize_example(common.encode_example(graph)))
    writer.close()
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"][0]["shardLengths"] = [str(len(graphs))]
    (folder / "dataset_info.json").write_text(json.dumps(info))


def test_tfds_source_rejects_a_duplicate_image_id(built, tmp_path):
    data_dir, folder = _copy_dataset(built, tmp_path)
    graphs = list(tfds_source.open_source(built.data_dir, "gqa200", "train")[0])
    _rewrite_records(folder, [graphs[0], graphs[1], graphs[0]])
    with pytest.raises(DataError) as error:
        tfds_source.open_source(data_dir, "gqa200", "train")
    assert str(error.value) == (
        f"{folder}: image {graphs[0].image_id}: field 'image_id': "
        "image id appears twice in split 'train'"
    )
    source, _ = tfds_source.open_source(data_dir, "gqa200", "train", check_unique_ids=False)
    ids = [graphs[0].image_id, graphs[1].image_id, graphs[0].image_id]
    assert [g.image_id for g in source] == ids


def _graph(image_id):
    return SceneGraph(image_id, 100, 100, [[0, 0, 50, 50], [40, 40, 90, 90]], [1, 2], [[0, 1, 1]])


def _oracle(graph, num_predicates=3):
    scores = np.zeros((1, num_predicates + 1), np.float32)
    scores[0, 1] = 1.0
    return Prediction(graph.boxes, graph.labels, np.ones(2), np.array([[0, 1]]), scores)


def test_evaluate_rejects_two_ground_truths_with_one_image_id():
    first, second = _graph("5"), _graph("5")
    with pytest.raises(DataError) as error:
        sgg.evaluate(
            [first, second], [_oracle(first), _oracle(second)], mode="predcls", num_predicates=3
        )
    assert str(error.value) == (
        "image 5 (index 1): field 'groundtruths': image id also at index 0: one prediction would "
        "be scored against two ground truths"
    )
    metrics = sgg.evaluate(
        [_graph("5"), _graph("6")],
        [_oracle(first), _oracle(second)],
        mode="predcls",
        num_predicates=3,
    )
    assert metrics["R@20"] == 1.0


def _evaluate_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sgg_jax.evaluation", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_evaluation_cli_rejects_duplicate_ids_in_ground_truth_and_predictions(tmp_path):
    split = _split()
    split["filenames_all"][1] = "10.jpg"
    path, info = _write_gqa(tmp_path, split)
    graph = _graph("10")
    predictions = tmp_path / "preds.npz"
    predictions_io.save_predictions(predictions, ["10"], [_oracle(graph)])
    result = _evaluate_cli(
        f"--groundtruth={path}", f"--id_info={info}", f"--predictions={predictions}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: image 10: field 'filenames_all': image id appears twice"
    )
    valid = tmp_path / "valid"
    valid.mkdir()
    path, info = _write_gqa(valid)
    predictions_io.save_predictions(predictions, ["10", "10"], [_oracle(graph), _oracle(graph)])
    result = _evaluate_cli(
        f"--groundtruth={path}", f"--id_info={info}", f"--predictions={predictions}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {predictions}: image 10: field 'image_ids': image id appears twice in the "
        "predictions"
    )


# ----------------------------------------------------------------------------------------------
# 3. No quiet coercion in the GQA reader.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "row", "value", "field", "message"),
    [
        ("img_info_all", 0, {"width": 0.5, "height": 80}, "img_info_all.width",
         "must be a positive integer, got 0.5"),
        ("img_info_all", 0, {"width": 100.5, "height": 80}, "img_info_all.width",
         "must be a positive integer, got 100.5"),
        ("img_info_all", 0, {"width": True, "height": 80}, "img_info_all.width",
         "not a number: True"),
        ("img_info_all", 0, {"width": 100, "height": "80"}, "img_info_all.height",
         "not a number: '80'"),
        ("gt_boxes_all", 0, [[10, 10, 40, True], [5, 30, 90, 79], [12, 8, 20, 15]],
         "gt_boxes_all", "not a number: True"),
        ("gt_boxes_all", 0, [[10, 10, 40, "70"], [5, 30, 90, 79], [12, 8, 20, 15]],
         "gt_boxes_all", "not a number: '70'"),
        ("gt_classes_all", 0, [1, True, 3], "gt_classes_all", "not a number: True"),
        ("gt_classes_all", 0, [1, "2", 3], "gt_classes_all", "not a number: '2'"),
        ("relationships_all", 0, [[0, 1, "2"], [0, 2, 3]], "relationships_all",
         "not a number: '2'"),
        ("relationships_all", 0, [[0, True, 2], [0, 2, 3]], "relationships_all",
         "not a number: True"),
        ("relationships_all", 0, [[0, 1, None]], "relationships_all", "not a number: None"),
    ],
)  # fmt: skip
def test_gqa_values_are_never_coerced(tmp_path, column, row, value, field, message):
    split = _split()
    split[column][row] = value
    path, info = _write_gqa(tmp_path, split)
    with pytest.raises(DataError) as error:
        gqa200.read(path, info)
    assert str(error.value) == f"{path}: image 10: field '{field}': {message}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "count of 'man' is not a non-negative integer: -1"),
        (2.5, "count of 'man' is not a non-negative integer: 2.5"),
        (True, "count of 'man' is not a non-negative integer: True"),
        ("5", "count of 'man' is not a non-negative integer: '5'"),
    ],
)
def test_gqa_counts_must_be_non_negative_integers(tmp_path, value, message):
    info = _info()
    info["obj_count"]["man"] = value
    path, info_path = _write_gqa(tmp_path, info=info)
    with pytest.raises(DataError) as error:
        gqa200.read(path, info_path)
    assert str(error.value) == f"{info_path}: field 'obj_count': {message}"


def test_gqa_file_names_and_vocabulary_are_checked(tmp_path):
    split = _split()
    split["filenames_all"][0] = 10
    path, info = _write_gqa(tmp_path, split)
    with pytest.raises(DataError) as error:
        gqa200.read(path, info)
    assert str(error.value) == (
        f"{path}: image #0: field 'filenames_all': expected a non-empty file name, got 10"
    )
    vocab = _info()
    vocab["ind_to_classes"] = [*CLASSES, "man"]
    path, info = _write_gqa(tmp_path, info=vocab)
    with pytest.raises(DataError, match="field 'ind_to_classes': name 'man' appears twice"):
        gqa200.read(path, info)


def test_deeply_nested_json_is_one_line(tmp_path):
    path, info = _write_gqa(tmp_path)
    with open(path, "w") as handle:
        handle.write("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError) as error:
        gqa200.read(path, info)
    assert str(error.value) == f"{path}: not valid JSON: nested too deeply"


def test_box_repaired_to_zero_area_names_its_image(tmp_path):
    split = _split()
    split["gt_boxes_all"][1] = [[0, 0, 49, 49], [60, 10, 70, 20]]  # wholly right of the 50 px image
    path, info = _write_gqa(tmp_path, split)
    report = ReadReport()
    graphs, _ = gqa200.read(path, info, report=report)
    np.testing.assert_array_equal(graphs[1].boxes[1], [50, 10, 50, 20])
    assert report.repaired_boxes == 1
    assert report.zero_area_boxes == 1
    assert report.zero_area_images == ["11"]


def test_bundled_gqa200_mini_loads_as_before():
    report = ReadReport()
    graphs, _ = gqa200.read(str(RESOURCES / "GQA_200_Test.json.gz"), ID_INFO, report=report)
    assert (report.images, report.boxes, report.relations) == (8_209, 121_140, 38_151)
    assert (report.repaired_boxes, report.self_relations) == (149, 207)
    every, _ = gqa200.load_bundled("all")
    assert len(every) == 8_209
    assert sum(g.num_objects for g in every) == 121_140
    assert sum(g.num_relations for g in every) == 38_151
    assert every == graphs
    sizes = [len(gqa200.load_bundled(split)[0]) for split in ("train", "val", "test")]
    assert sum(sizes) == 8_209


# ----------------------------------------------------------------------------------------------
# 4. A text file passed as .npz / .npy.
# ----------------------------------------------------------------------------------------------


def _assert_no_pickle_advice(error):
    assert "pickle" not in str(error.value).lower()
    assert "\n" not in str(error.value)


def test_text_file_as_npz(tmp_path):
    path = tmp_path / "features.npz"
    path.write_text("image_id,feature\n1,0.5\n")
    for load in (
        predictions_io.load_predictions,
        feature_store.load_object_features,
        convert.load_state_dict,
    ):
        with pytest.raises(DataError) as error:
            load(path)
        assert str(error.value) == (
            f"{path}: not a readable .npz file: not an .npz archive (no zip signature)"
        )
        _assert_no_pickle_advice(error)


def test_text_file_as_npy(tmp_path):
    path = tmp_path / "similarity.npy"
    path.write_text("0 1\n1 0\n")
    with pytest.raises(DataError) as error:
        similarity.load_similarity_matrix(path, 2)
    assert str(error.value) == (
        f"{path}: not a readable .npy array: not a .npy array (no NumPy header)"
    )
    _assert_no_pickle_advice(error)


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as error:
        similarity.load_similarity_matrix(path, 1)
    assert str(error.value) == (
        f"{path}: not a readable .npy array: holds Python objects (pickled data), which are "
        "never loaded"
    )
    archive = tmp_path / "predictions.npz"
    np.savez(archive, image_ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError) as error:
        feature_store.load_object_features(archive)
    assert "missing array" in str(error.value)
    np.savez(
        archive,
        image_ids=np.array([object()], dtype=object),
        offsets=np.array([0, 1]),
        features=np.zeros((1, 2), np.float32),
    )
    with pytest.raises(DataError) as error:
        feature_store.load_object_features(archive)
    assert str(error.value) == (
        f"{archive}: field 'image_ids': not a readable .npz file: holds Python objects (pickled "
        "data), which are never loaded"
    )


def test_text_file_as_index_arrays(tmp_path):
    folder = tmp_path / "index"
    ExactIndex().build(np.eye(4, dtype=np.float32)).save(folder)
    (folder / "ids.npy").write_text("0\n1\n2\n3\n")
    with pytest.raises(DataError) as error:
        Index.load(folder)
    assert str(error.value) == (
        f"{folder / 'ids.npy'}: cannot be read: not a .npy array (no NumPy header)"
    )
    _assert_no_pickle_advice(error)
