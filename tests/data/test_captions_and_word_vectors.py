"""Caption reader and GloVe word vectors (multi-word averaging, seeded fallback, bad lines)."""

import json

import numpy as np
import pytest

from sgg_jax.data import captions, word_vectors
from sgg_jax.errors import DataError
from sgg_jax.structures import SceneGraph


def test_read_captions_normalises_whitespace(tmp_path):
    path = tmp_path / "caps.json"
    path.write_text(json.dumps({"captions": {"5": ["A man  rides\na horse. ", "x"]}}))
    assert captions.read(path) == {"5": ("A man rides a horse.", "x")}


@pytest.mark.parametrize(
    "content, pattern",
    [
        ({"captions": {"5": "a caption"}}, r"image 5: field 'captions': expected a non-empty list"),
        ({"captions": {"5": ["ok", 3]}}, r"image 5: field 'captions': caption 1 is not"),
        ({"captions": {}}, r"field 'captions': no captions"),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_bad_caption_files(tmp_path, content, pattern):
    path = tmp_path / "caps.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=pattern):
        captions.read(path)


def test_bundled_captions_and_attach():
    table = captions.load_bundled()
    assert len(table) == 1403 and sorted({len(v) for v in table.values()}) == [5, 6]
    graph = SceneGraph("2415074", 10, 10, [[0, 0, 1, 1]], [1], [])
    other = SceneGraph("1", 10, 10, [[0, 0, 1, 1]], [1], [])
    attached = captions.attach([graph, other], table)
    assert (
        len(attached) == 1
        and attached[0].captions[2] == "A blue sign giving directions to three towns."
    )
    assert len(captions.attach([graph, other], table, keep_missing=True)) == 2


def _glove(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("in 1 0 0\nfront 0 2 0\nof 0 0 3\nman 1 1 1\n")
    return path


def test_multi_word_names_are_averaged_and_missing_words_counted(tmp_path):
    names = ["__background__", "in front of", "man", "traffic_light"]
    vectors, report = word_vectors.glove_name_vectors(_glove(tmp_path), names, seed=3)
    np.testing.assert_allclose(vectors[0], 0.0)
    np.testing.assert_allclose(vectors[1], [1 / 3, 2 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(vectors[2], [1, 1, 1])
    assert report.missing_words == ["traffic", "light"] and report.num_missing == 2
    assert report.names_without_vectors == ["traffic_light"]
    again, _ = word_vectors.glove_name_vectors(_glove(tmp_path), names, seed=3)
    np.testing.assert_array_equal(vectors, again)  # seeded fallback
    other, _ = word_vectors.glove_name_vectors(_glove(tmp_path), names, seed=4)
    assert not np.allclose(other[3], vectors[3])
    # a missing word gets the same vector wherever it appears
    pair, _ = word_vectors.name_vectors(
        ["light", "light man"], {"man": np.ones(3, np.float32)}, seed=3
    )
    np.testing.assert_allclose(pair[1], (pair[0] + 1.0) / 2, rtol=1e-6)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("in 1 0 0\nof 0 0\n", r"line 2: field 'vector': has 2 numbers, earlier lines have 3"),
        ("in 1 0 0\nof 0 x 0\n", r"line 2: field 'vector': contains a value that is not a number"),
        ("in 1 nan 0\n", r"line 1: field 'vector': contains NaN/inf"),
        ("", r"holds no vectors"),
    ],
)
def test_bad_glove_lines(tmp_path, text, pattern):
    path = tmp_path / "glove.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern):
        word_vectors.read_glove(path)


def test_bundled_predicate_vectors():
    table = word_vectors.load_bundled_predicate_vectors(50)
    assert len(table) == 51 and table["on"].shape == (50,)
    assert np.isclose(table["above"][0], 0.20461)
