"""Raw Visual Genome ``relationships.json`` and COCO-caption readers on small files in the real formats.

Image 1 (100 x 80) holds a man (object 10) shared by five relations, a horse given as a ``names`` list,
a hat, a street reached through the alias "on top of" -> "on", a "unicorn" outside the vocabulary, a
predicate "flying" outside the vocabulary and a self-relation. Image 2 has an aliased object name
("Men") and a fractional box; image 3 has no relation. Expected boxes are ``x, y, x + w, y + h``.
"""

from __future__ import annotations

import copy
import gzip
import json

import numpy as np
import pytest

from sgg_jax.data import captions as captions_lib
from sgg_jax.data import vg150, vg_json
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.sg_embed import similarity
from sgg_jax.structures import BACKGROUND, Vocab

VOCAB = Vocab(
    object_names=(BACKGROUND, "hat", "horse", "man", "street"),
    predicate_names=(BACKGROUND, "near", "on", "riding", "wearing"),
)
ALIASES = {"Men": "man", "on  top of": "on"}


def _object(object_id, name, x, y, w, h, *, names=False):
    entity = {"object_id": object_id, "x": x, "y": y, "w": w, "h": h, "synsets": []}
    if names:
        entity["names"] = [name, "other name"]
    else:
        entity["name"] = name
    return entity


def _relationship(relationship_id, subject, predicate, obj):
    return {
        "relationship_id": relationship_id,
        "predicate": predicate,
        "synsets": [],
        "subject": subject,
        "object": obj,
    }


def _relationships():
    man = _object(10, "Man ", 10, 20, 30, 40)
    horse = _object(11, "horse", 5, 30, 80, 45, names=True)
    hat = _object(12, "hat", 12, 8, 10, 10)
    street = _object(13, "  street", 0, 60, 100, 20)
    unicorn = _object(14, "Unicorn", 50, 10, 20, 20)
    men = _object(20, "Men", 1.5, 2, 20.25, 30)
    street2 = _object(21, "street", 0, 30, 40, 10)
    return [
        {
            "image_id": 1,
            "relationships": [
                _relationship(100, man, "Riding", horse),
                _relationship(101, dict(man), "wearing", hat),
                _relationship(102, dict(horse), "on  top of", street),
                _relationship(103, dict(man), "holding", unicorn),
                _relationship(104, dict(man), "flying", dict(horse)),
                _relationship(105, dict(man), "near", dict(man)),
            ],
        },
        {"image_id": 2, "relationships": [_relationship(200, men, "ON", street2)]},
        {"image_id": 3, "relationships": []},
    ]


def _image_data():
    return [
        {"image_id": 1, "width": 100, "height": 80, "coco_id": 500, "flickr_id": None, "url": "u"},
        {"image_id": 2, "width": 50, "height": 50, "coco_id": None, "flickr_id": 7, "url": "u"},
        {"image_id": 3, "width": 64, "height": 48, "coco_id": 600, "flickr_id": None, "url": "u"},
        {"id": 4, "width": 10, "height": 10, "coco_id": 800, "flickr_id": None, "url": "u"},
    ]


def _write(path, content):
    path.write_text(json.dumps(content))
    return path


def _files(tmp_path, relationships=None, image_data=None):
    return (
        _write(
            tmp_path / "relationships.json",
            _relationships() if relationships is None else relationships,
        ),
        _write(tmp_path / "image_data.json", _image_data() if image_data is None else image_data),
    )


# ----------------------------------------------------------------------------------------------
# read_relationships.
# ----------------------------------------------------------------------------------------------


def test_graphs_with_a_given_vocab_and_aliases(tmp_path):
    rel_path, data_path = _files(tmp_path)
    graphs, vocab, report = vg_json.read_relationships(
        rel_path, vocab=VOCAB, aliases=ALIASES, image_data_path=data_path
    )
    assert vocab is VOCAB
    assert [g.image_id for g in graphs] == ["1", "2", "3"]
    first, second, third = graphs
    assert (first.width, first.height) == (100, 80)
    # Nodes in order of first occurrence: man (10, shared), horse (11, "names"), hat, street.
    np.testing.assert_array_equal(first.labels, [3, 2, 1, 4])
    np.testing.assert_array_equal(
        first.boxes, [[10, 20, 40, 60], [5, 30, 85, 75], [12, 8, 22, 18], [0, 60, 100, 80]]
    )
    # riding, wearing, on (alias), self-relation near; holding (unicorn) and flying dropped.
    np.testing.assert_array_equal(first.relations, [[0, 1, 3], [0, 2, 4], [1, 3, 2], [0, 0, 1]])
    assert (second.width, second.height) == (50, 50)
    np.testing.assert_array_equal(second.labels, [3, 4])  # "Men" -> "man" by alias
    np.testing.assert_allclose(second.boxes, [[1.5, 2, 21.75, 32], [0, 30, 40, 40]])
    np.testing.assert_array_equal(second.relations, [[0, 1, 2]])
    assert (third.width, third.height, third.num_objects, third.num_relations) == (64, 48, 0, 0)
    assert (report.images, report.boxes, report.relations) == (3, 6, 5)
    assert report.dropped_objects == 1
    assert report.dropped_relations_unknown_object == 1
    assert report.dropped_relations_unknown_predicate == 1
    assert report.self_relations == 1 and report.repaired_boxes == 0


def test_drop_self_relations_and_strict(tmp_path):
    rel_path, data_path = _files(tmp_path)
    graphs, _, report = vg_json.read_relationships(
        rel_path, vocab=VOCAB, aliases=ALIASES, image_data_path=data_path, drop_self_relations=True
    )
    np.testing.assert_array_equal(graphs[0].relations, [[0, 1, 3], [0, 2, 4], [1, 3, 2]])
    assert report.dropped_self_relations == 1
    with pytest.raises(
        DataError, match=r"relationships.json: image 1: field 'relationships'.*itself"
    ):
        vg_json.read_relationships(rel_path, vocab=VOCAB, image_data_path=data_path, strict=True)


def test_without_aliases_the_unaliased_names_are_dropped(tmp_path):
    rel_path, data_path = _files(tmp_path)
    graphs, _, report = vg_json.read_relationships(rel_path, vocab=VOCAB, image_data_path=data_path)
    np.testing.assert_array_equal(graphs[0].relations, [[0, 1, 3], [0, 2, 4], [0, 0, 1]])
    np.testing.assert_array_equal(graphs[1].labels, [4])  # "men" is not in the vocabulary
    assert graphs[1].num_relations == 0
    assert report.dropped_objects == 2  # unicorn, men
    assert report.dropped_relations_unknown_object == 2
    assert report.dropped_relations_unknown_predicate == 2  # flying, "on top of"


def test_with_the_bundled_vg150_vocab(tmp_path):
    rel_path, data_path = _files(tmp_path)
    vocab = vg150.load_bundled_vocab()
    graphs, _, report = vg_json.read_relationships(
        rel_path, vocab=vocab, aliases=ALIASES, image_data_path=data_path
    )
    objects, predicates = vocab.object_names, vocab.predicate_names
    assert [objects[i] for i in graphs[0].labels] == ["man", "horse", "hat", "street"]
    assert [(s, o, predicates[p]) for s, o, p in graphs[0].relations.tolist()] == [
        (0, 1, "riding"),
        (0, 2, "wearing"),
        (1, 3, "on"),
        (0, 0, "near"),
    ]
    assert report.dropped_objects == 1 and report.dropped_relations_unknown_predicate == 1


def test_built_vocab_takes_the_most_frequent_names_ties_by_name(tmp_path):
    rel_path, data_path = _files(tmp_path)
    graphs, vocab, report = vg_json.read_relationships(
        rel_path,
        aliases=ALIASES,
        num_object_classes=3,
        num_predicates=2,
        image_data_path=data_path,
    )
    # Objects: man 2, street 2, then hat / horse / unicorn 1 each -> hat by name. Listed by name.
    assert vocab.object_names == (BACKGROUND, "hat", "man", "street")
    # Predicates: on 2, then flying / holding / near / riding / wearing 1 each -> flying.
    assert vocab.predicate_names == (BACKGROUND, "flying", "on")
    np.testing.assert_array_equal(graphs[0].labels, [2, 1, 3])  # man, hat, street; horse dropped
    np.testing.assert_array_equal(graphs[0].boxes[1], [12, 8, 22, 18])
    assert graphs[0].num_relations == 0  # every relation touches the horse or has another predicate
    np.testing.assert_array_equal(graphs[1].labels, [2, 3])
    np.testing.assert_array_equal(graphs[1].relations, [[0, 1, 2]])
    np.testing.assert_array_equal(vocab.object_counts, [0, 1, 2, 2])  # from the returned graphs
    np.testing.assert_array_equal(vocab.predicate_counts, [0, 0, 1])
    assert report.dropped_objects == 2  # horse, unicorn


def test_built_vocab_with_a_min_count_keeps_every_frequent_enough_name(tmp_path):
    rel_path, data_path = _files(tmp_path)
    # Counts after aliases: objects man 2, street 2, hat / horse / unicorn 1; predicates on 2, the
    # rest 1. The paper's rule (seen >= min_count times, no size limit) with min_count = 2:
    graphs, vocab, report = vg_json.read_relationships(
        rel_path,
        aliases=ALIASES,
        num_object_classes=None,
        num_predicates=None,
        min_count=2,
        image_data_path=data_path,
    )
    assert vocab.object_names == (BACKGROUND, "man", "street")
    assert vocab.predicate_names == (BACKGROUND, "on")
    np.testing.assert_array_equal(graphs[0].labels, [1, 2])  # man, street
    assert graphs[0].num_relations == 0  # man-street has no relation in image 1
    np.testing.assert_array_equal(graphs[1].relations, [[0, 1, 1]])  # men -> man, on, street
    np.testing.assert_array_equal(vocab.object_counts, [0, 2, 2])
    assert report.dropped_objects == 3  # horse, hat, unicorn
    # min_count = 1 without limits: every name seen; the limit still applies on top of a min count.
    _, everything, _ = vg_json.read_relationships(
        rel_path, aliases=ALIASES, num_object_classes=None, num_predicates=None, min_count=1
    )
    assert everything.object_names[1:] == ("hat", "horse", "man", "street", "unicorn")
    assert len(everything.predicate_names) == 1 + 6  # flying holding near on riding wearing
    _, capped, _ = vg_json.read_relationships(
        rel_path, aliases=ALIASES, num_object_classes=1, num_predicates=None, min_count=2
    )
    assert capped.object_names == (BACKGROUND, "man")  # man / street tie at 2: by name
    with pytest.raises(DataError, match=r"relationships.json: field 'vocabulary': no object name"):
        vg_json.read_relationships(rel_path, aliases=ALIASES, min_count=3)


def test_image_ids_filter_and_size_from_box_extent(tmp_path):
    rel_path, _ = _files(tmp_path)
    graphs, _, report = vg_json.read_relationships(
        rel_path, vocab=VOCAB, aliases=ALIASES, image_ids=[2, "99"]
    )
    assert [g.image_id for g in graphs] == ["2"]
    assert (graphs[0].width, graphs[0].height) == (40, 40)  # ceil of max x2 (40) and y2 (40)
    assert report.requested_images_not_in_file == 1
    graphs, _, _ = vg_json.read_relationships(rel_path, vocab=VOCAB, image_ids=["3"])
    assert (graphs[0].width, graphs[0].height, graphs[0].num_objects) == (1, 1, 0)
    with pytest.raises(DataError, match="none of the requested image_ids"):
        vg_json.read_relationships(rel_path, vocab=VOCAB, image_ids=["99"])


def test_gzip_file(tmp_path):
    path = tmp_path / "relationships.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(_relationships(), handle)
    graphs, _, _ = vg_json.read_relationships(path, vocab=VOCAB, aliases=ALIASES)
    assert [g.num_relations for g in graphs] == [4, 1, 0]


def _mutate(change):
    relationships = copy.deepcopy(_relationships())
    change(relationships)
    return relationships


def _set(entry, key, value):
    entry[key] = value


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            lambda r: r[0]["relationships"][1].pop("subject"),
            r"image 1: field 'relationships\[1\]\.subject': missing key",
        ),
        (
            lambda r: _set(r[0]["relationships"][0]["subject"], "x", "10"),
            r"image 1: field 'relationships\[0\]\.subject\.x': not a finite number: '10'",
        ),
        (
            lambda r: _set(r[0]["relationships"][2]["object"], "x", float("nan")),
            r"image 1: field 'relationships\[2\]\.object\.x': not a finite number",
        ),
        (
            lambda r: _set(r[1]["relationships"][0]["object"], "w", -3),
            r"image 2: field 'relationships\[0\]\.object\.w': must be >= 0, got -3",
        ),
        (
            lambda r: r[1]["relationships"][0]["subject"].pop("h"),
            r"image 2: field 'relationships\[0\]\.subject\.h': missing key",
        ),
        (
            lambda r: r[0]["relationships"][0]["subject"].pop("name"),
            r"image 1: field 'relationships\[0\]\.subject\.name': missing key",
        ),
        (
            lambda r: _set(r[0]["relationships"][0]["object"], "names", []),
            r"image 1: field 'relationships\[0\]\.object\.names': expected a non-empty list",
        ),
        (
            lambda r: _set(r[0]["relationships"][1]["object"], "name", 5),
            r"image 1: field 'relationships\[1\]\.object\.name': expected a string",
        ),
        (
            lambda r: r[0]["relationships"][3]["object"].pop("object_id"),
            r"image 1: field 'relationships\[3\]\.object\.object_id': missing key",
        ),
        (
            lambda r: _set(r[0]["relationships"][3]["object"], "object_id", "14"),
            r"image 1: field 'relationships\[3\]\.object\.object_id': not an integer",
        ),
        (
            lambda r: _set(r[0]["relationships"][0], "predicate", None),
            r"image 1: field 'relationships\[0\]\.predicate': expected a string",
        ),
        (
            lambda r: r[0]["relationships"][0].pop("predicate"),
            r"image 1: field 'relationships\[0\]\.predicate': missing key",
        ),
        (
            lambda r: _set(r[0]["relationships"], 2, "oops"),
            r"image 1: field 'relationships\[2\]': expected a JSON object",
        ),
        (
            lambda r: _set(r[0]["relationships"][0], "object", [1, 2]),
            r"image 1: field 'relationships\[0\]\.object': expected a JSON object",
        ),
        (
            lambda r: _set(r[1], "relationships", {}),
            r"image 2: field 'relationships': expected a list",
        ),
        (lambda r: r[2].pop("relationships"), r"image 3: field 'relationships': missing key"),
        (lambda r: r[1].pop("image_id"), r"image #1: field 'image_id': missing key"),
        (lambda r: _set(r[2], "image_id", True), r"image #2: field 'image_id': invalid image id"),
        (lambda r: _set(r[2], "image_id", 1), r"image 1: field 'image_id': image id appears twice"),
        (lambda r: _set(r, 1, 7), r"image #1: expected a JSON object"),
    ],
)
def test_malformed_relationships(tmp_path, change, pattern):
    rel_path, data_path = _files(tmp_path, relationships=_mutate(change))
    with pytest.raises(DataError, match=r"relationships\.json: " + pattern) as info:
        vg_json.read_relationships(rel_path, vocab=VOCAB, image_data_path=data_path)
    assert info.value.path == str(rel_path)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ({"images": []}, r"relationships\.json: field 'images': expected a JSON list"),
        ([], r"relationships\.json: field 'images': the file has no images"),
    ],
)
def test_malformed_relationships_file(tmp_path, content, pattern):
    rel_path, _ = _files(tmp_path, relationships=content)
    with pytest.raises(DataError, match=pattern):
        vg_json.read_relationships(rel_path, vocab=VOCAB)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "relationships.json"
    path.write_text(json.dumps(_relationships())[:-20])
    with pytest.raises(DataError, match=r"relationships\.json: not valid JSON"):
        vg_json.read_relationships(path, vocab=VOCAB)
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        vg_json.read_relationships(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda d: d.pop(1), r"image_data\.json: image 2: field 'image_id': image not listed"),
        (lambda d: _set(d[0], "width", -100), r"image_data\.json: image 1: field 'width': must be"),
        (lambda d: d[2].pop("height"), r"image_data\.json: image 3: field 'height': missing key"),
        (lambda d: d[1].pop("image_id"), r"image_data\.json: image #1: field 'image_id': missing"),
    ],
)
def test_malformed_image_data_for_sizes(tmp_path, change, pattern):
    image_data = _image_data()
    change(image_data)
    rel_path, data_path = _files(tmp_path, image_data=image_data)
    with pytest.raises(DataError, match=pattern):
        vg_json.read_relationships(rel_path, vocab=VOCAB, image_data_path=data_path)


def test_bad_options(tmp_path):
    rel_path, _ = _files(tmp_path)
    with pytest.raises(ConfigError, match="option 'num_object_classes'"):
        vg_json.read_relationships(rel_path, num_object_classes=0)
    with pytest.raises(ConfigError, match="option 'min_count'"):
        vg_json.read_relationships(rel_path, min_count=0)
    with pytest.raises(ConfigError, match="option 'aliases'"):
        vg_json.read_relationships(rel_path, aliases={"men": 1})


# ----------------------------------------------------------------------------------------------
# read_coco_captions.
# ----------------------------------------------------------------------------------------------


def _coco_files(tmp_path):
    train = {
        "info": {},
        "images": [{"id": 500, "file_name": "000000000500.jpg"}, {"id": 600}, {"id": 700}],
        "annotations": [
            {"id": 1, "image_id": 500, "caption": "A man  riding\na horse. "},
            {"id": 2, "image_id": 600, "caption": "An empty street."},
            {"id": 3, "image_id": 700, "caption": "Not in Visual Genome."},
            {"id": 4, "image_id": 500, "caption": "A rider wearing a hat."},
        ],
    }
    val = {
        "images": [{"id": 800}, {"id": 500}],
        "annotations": [{"id": 5, "image_id": 500, "caption": "Horse and man."}],
    }
    return _write(tmp_path / "captions_train2017.json", train), _write(
        tmp_path / "captions_val2017.json", val
    )


def test_coco_captions_joined_through_coco_id(tmp_path):
    train_path, val_path = _coco_files(tmp_path)
    _, data_path = _files(tmp_path)
    table = vg_json.read_coco_captions([train_path, val_path], data_path)
    # Image 2 has no coco_id; image 4 ("id" key) has a coco_id without captions in the files.
    assert list(table) == ["1", "3"]
    assert table["1"] == ("A man riding a horse.", "A rider wearing a hat.", "Horse and man.")
    assert table["3"] == ("An empty street.",)
    only_train = vg_json.read_coco_captions(str(train_path), data_path)
    assert only_train["1"] == ("A man riding a horse.", "A rider wearing a hat.")
    assert vg_json.read_coco_captions([val_path], data_path) == {"1": ("Horse and man.",)}


def test_coco_captions_feed_attach_and_caption_similarity(tmp_path):
    train_path, val_path = _coco_files(tmp_path)
    rel_path, data_path = _files(tmp_path)
    table = vg_json.read_coco_captions([train_path, val_path], data_path)
    graphs, _, _ = vg_json.read_relationships(
        rel_path, vocab=VOCAB, aliases=ALIASES, image_data_path=data_path
    )
    with_captions = captions_lib.attach(graphs, table)
    assert [(g.image_id, len(g.captions)) for g in with_captions] == [("1", 3), ("3", 1)]
    vectors = {
        "man": np.array([1.0, 0.0]),
        "horse": np.array([0.5, 0.5]),
        "street": np.array([0.0, 1.0]),
    }
    matrix, report = similarity.caption_similarity([g.image_id for g in graphs], table, vectors)
    assert report.image_ids == ["1", "3"]  # image 2 has no COCO captions
    # Image 1: captions 1 and 3 average man and horse -> [0.75, 0.25] (caption 2 has no known word),
    # unit length [3, 1] / sqrt(10); image 3: street -> [0, 1]. Mean cosines (the default).
    cosine = 1 / np.sqrt(10)
    np.testing.assert_allclose(matrix, [[1.0, cosine], [cosine, 1.0]], atol=1e-6)
    raw, _ = similarity.caption_similarity(
        [g.image_id for g in graphs], table, vectors, normalise_captions=False
    )
    np.testing.assert_allclose(raw, [[0.625, 0.25], [0.25, 1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            lambda t: _set(t["annotations"][1], "caption", 3),
            r"captions_train2017\.json: annotation #1 \(COCO image 600\): field 'caption': not a "
            r"non-empty string: 3",
        ),
        (
            lambda t: _set(t["annotations"][2], "caption", "  "),
            r"captions_train2017\.json: annotation #2 \(COCO image 700\): field 'caption'",
        ),
        (
            lambda t: t["annotations"][3].pop("image_id"),
            r"captions_train2017\.json: annotation #3: field 'image_id': missing key",
        ),
        (
            lambda t: _set(t["annotations"][0], "image_id", "500"),
            r"captions_train2017\.json: annotation #0: field 'image_id': not an integer",
        ),
        (
            lambda t: t["annotations"][0].pop("caption"),
            r"captions_train2017\.json: annotation #0: field 'caption': missing key",
        ),
        (
            lambda t: _set(t["annotations"], 0, "text"),
            r"captions_train2017\.json: annotation #0: field 'annotations': expected a JSON object",
        ),
        (lambda t: t.pop("annotations"), r"captions_train2017\.json: field 'annotations': missing"),
        (
            lambda t: _set(t, "annotations", {}),
            r"captions_train2017\.json: field 'annotations': expected a list",
        ),
    ],
)
def test_malformed_coco_captions(tmp_path, change, pattern):
    train_path, val_path = _coco_files(tmp_path)
    content = json.loads(train_path.read_text())
    change(content)
    _write(train_path, content)
    _, data_path = _files(tmp_path)
    with pytest.raises(DataError, match=pattern):
        vg_json.read_coco_captions([val_path, train_path], data_path)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            lambda d: d[1].pop("image_id"),
            r"image_data\.json: image #1: field 'image_id': missing key",
        ),
        (lambda d: _set(d[2], "image_id", None), r"image #2: field 'image_id': invalid image id"),
        (lambda d: d[0].pop("coco_id"), r"image_data\.json: image 1: field 'coco_id': missing key"),
        (lambda d: _set(d[0], "coco_id", "500"), r"image 1: field 'coco_id': expected an integer"),
        (lambda d: _set(d, 3, [4]), r"image_data\.json: image #3: expected a JSON object"),
    ],
)
def test_malformed_image_data_for_captions(tmp_path, change, pattern):
    train_path, _ = _coco_files(tmp_path)
    image_data = _image_data()
    change(image_data)
    _, data_path = _files(tmp_path, image_data=image_data)
    with pytest.raises(DataError, match=pattern):
        vg_json.read_coco_captions(train_path, data_path)
