"""GQA-200 reader (SHA-GCL layout), bundled GQA-200-mini, and every bad input named in one line."""

import copy
import json

import numpy as np
import pytest

from sgg_jax.data import gqa200
from sgg_jax.data.validation import ReadReport
from sgg_jax.errors import ConfigError, DataError

CLASSES = ["__background__", "man", "horse", "hat", "street"]
PREDICATES = ["__background__", "on", "riding", "wearing"]


def _split():
    return {
        "filenames_all": ["10.jpg", "11.jpg"],
        "img_info_all": [{"width": 100, "height": 80}, {"width": 50, "height": 50}],
        "gt_boxes_all": [
            [[10, 10, 40, 70], [5, 30, 90, 79], [12, 8, 20, 15]],
            [[0, 0, 49, 49], [10, 10, 20, 20]],
        ],
        "gt_classes_all": [[1, 2, 3], [4, 1]],
        "relationships_all": [[[0, 1, 2], [0, 2, 3], [0, 1, 1]], [[1, 0, 1]]],
    }


def _info():
    return {
        "ind_to_classes": CLASSES,
        "ind_to_predicates": PREDICATES,
        "obj_count": {"man": 5, "horse": 2, "hat": 1, "street": 9},
        "rel_count": {"on": 7, "riding": 3, "wearing": 2},
    }


def _write(tmp_path, split=None, info=None):
    split_path, info_path = tmp_path / "GQA_200_Test.json", tmp_path / "GQA_200_ID_Info.json"
    split_path.write_text(json.dumps(_split() if split is None else split))
    info_path.write_text(json.dumps(_info() if info is None else info))
    return split_path, info_path


def test_read_small_file_values(tmp_path):
    graphs, vocab = gqa200.read(*_write(tmp_path), image_dir="/images")
    assert [g.image_id for g in graphs] == ["10", "11"]
    assert graphs[0].image_path == "/images/10.jpg"
    assert (graphs[0].width, graphs[0].height) == (100, 80)
    np.testing.assert_array_equal(graphs[0].boxes[1], [5, 30, 90, 79])
    np.testing.assert_array_equal(graphs[0].labels, [1, 2, 3])
    # duplicate relations on pair (0, 1) are kept: multi-label ground truth
    np.testing.assert_array_equal(graphs[0].relations, [[0, 1, 2], [0, 2, 3], [0, 1, 1]])
    assert vocab.object_names == tuple(CLASSES) and vocab.predicate_names == tuple(PREDICATES)
    np.testing.assert_array_equal(vocab.predicate_counts, [0, 7, 3, 2])
    np.testing.assert_array_equal(vocab.object_counts, [0, 5, 2, 1, 9])


def test_quirks_are_repaired_by_default_and_raise_when_strict(tmp_path):
    split = _split()
    split["gt_boxes_all"][1][1] = [30, 40, 10, 62]  # inverted in x and 12 px below the image
    split["relationships_all"][1].append([1, 1, 2])  # self-relation
    paths = _write(tmp_path, split)
    report = ReadReport()
    graphs, _ = gqa200.read(*paths, report=report)
    np.testing.assert_array_equal(graphs[1].boxes[1], [10, 40, 30, 50])
    assert graphs[1].num_relations == 2
    assert (report.repaired_boxes, report.self_relations, report.relations) == (1, 1, 5)
    graphs, _ = gqa200.read(*paths, drop_self_relations=True)
    assert graphs[1].num_relations == 1
    with pytest.raises(DataError, match=r"image 11: field 'gt_boxes_all': box 1 .* x2 < x1"):
        gqa200.read(*paths, strict=True)
    split["gt_boxes_all"][1][1] = [10, 40, 30, 62]
    with pytest.raises(DataError, match=r"image 11: field 'gt_boxes_all': .*outside the 50x50"):
        gqa200.read(*_write(tmp_path, split), strict=True)
    split["gt_boxes_all"][1][1] = [10, 40, 30, 50.9]  # within the 1-pixel tolerance
    with pytest.raises(DataError, match=r"image 11: field 'relationships_all': .*to itself"):
        gqa200.read(*_write(tmp_path, split), strict=True)


def _mutated(mutate):
    split = copy.deepcopy(_split())
    mutate(split)
    return split


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda s: s.pop("gt_boxes_all"), r"GQA_200_Test.json: field 'gt_boxes_all': missing key"),
        (
            lambda s: s["img_info_all"][1].pop("height"),
            r"image 11: field 'height': missing key",
        ),
        (
            lambda s: s["gt_boxes_all"][0][2].__setitem__(1, float("nan")),
            r"image 10: field 'gt_boxes_all': box 2 has a NaN/inf",
        ),
        (
            lambda s: s["relationships_all"][0].append([0, 3, 1]),
            r"image 10: field 'relationships_all': relation 3 \[0, 3, 1\] indexes an object outside 0..2",
        ),
        (
            lambda s: s["relationships_all"][1].append([0, 1, 4]),
            r"image 11: field 'relationships_all': relation 1 has predicate 4 outside the vocabulary 1..3",
        ),
        (
            lambda s: s["gt_classes_all"][1].__setitem__(0, 5),
            r"image 11: field 'gt_classes_all': object 0 has label 5 outside the vocabulary 1..4",
        ),
        (
            lambda s: s["gt_classes_all"][1].pop(),
            r"image 11: field 'gt_classes_all': 1 labels for 2 boxes",
        ),
        (
            lambda s: s["gt_boxes_all"][0].__setitem__(0, [1, 2, 3]),
            r"image 10: field 'gt_boxes_all'",
        ),
        (
            lambda s: s["img_info_all"][0].__setitem__("width", 0),
            r"image 10: field 'img_info_all.width': must be a positive",
        ),
        (
            lambda s: s["img_info_all"].pop(),
            r"field 'img_info_all': has 1 entries but filenames_all has 2",
        ),
        (
            lambda s: [s[k].clear() for k in list(s)],
            r"field 'filenames_all': the split has no images",
        ),
    ],
)
def test_bad_input_names_file_image_and_field(tmp_path, mutate, pattern):
    paths = _write(tmp_path, _mutated(mutate))
    with pytest.raises(DataError, match=pattern) as info:
        gqa200.read(*paths)
    assert "\n" not in str(info.value)


def test_missing_vocab_key_and_corrupt_json(tmp_path):
    info = _info()
    info.pop("ind_to_predicates")
    with pytest.raises(
        DataError, match=r"GQA_200_ID_Info.json: field 'ind_to_predicates': missing"
    ):
        gqa200.read(*_write(tmp_path, info=info))
    split_path, info_path = _write(tmp_path)
    split_path.write_text(split_path.read_text()[:-40])
    with pytest.raises(
        DataError, match=r"GQA_200_Test.json: not valid JSON \(truncated or corrupt\)"
    ):
        gqa200.read(split_path, info_path)
    with pytest.raises(DataError, match="file not found"):
        gqa200.read(tmp_path / "nope.json", info_path)


def test_filter_empty_rels(tmp_path):
    split = _split()
    split["relationships_all"][1] = []
    report = ReadReport()
    graphs, _ = gqa200.read(*_write(tmp_path, split), filter_empty_rels=True, report=report)
    assert [g.image_id for g in graphs] == ["10"] and report.dropped_images_without_relations == 1


def test_real_gqa200_test_split(shared_data):
    report = ReadReport()
    graphs, vocab = gqa200.read(
        shared_data / "gqa200" / "GQA_200_Test.json",
        shared_data / "gqa200" / "GQA_200_ID_Info.json",
        report=report,
    )
    assert len(graphs) == 8209
    assert sum(g.num_objects for g in graphs) == 121140
    assert sum(g.num_relations for g in graphs) == 38151
    assert vocab.num_classes == 200 and vocab.num_predicates == 100
    assert int(vocab.predicate_counts.sum()) == 310374
    assert vocab.predicate_names[1] == "on" and vocab.predicate_counts[1] == 64218
    assert (report.repaired_boxes, report.self_relations) == (149, 207)
    present = np.zeros(101, bool)
    for g in graphs:
        present[g.relations[:, 2]] = True
        assert np.all(g.boxes[:, 2] >= g.boxes[:, 0]) and np.all(g.boxes[:, 3] >= g.boxes[:, 1])
    assert present[1:].all()  # all 100 predicates occur


def test_bundled_gqa200_mini_split_is_deterministic_disjoint_and_complete():
    splits = {name: gqa200.load_bundled(name) for name in ("train", "val", "test")}
    ids = {name: {g.image_id for g in graphs} for name, (graphs, _) in splits.items()}
    assert sum(len(v) for v in ids.values()) == 8209
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (5741, 791, 1677)
    train_graphs, vocab = splits["train"]
    expected = np.bincount(np.concatenate([g.relations[:, 2] for g in train_graphs]), minlength=101)
    np.testing.assert_array_equal(vocab.predicate_counts, expected)
    assert splits["test"][1] == vocab  # every split carries the train-part counts
    assert gqa200.split_of("2353884") == gqa200.split_of("2353884")
    with pytest.raises(ConfigError, match="option 'split'"):
        gqa200.load_bundled("dev")
