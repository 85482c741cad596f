"""Caption similarity s_XY (averaged word vectors, mean of caption inner products) and user .npy matrices."""

import json

import numpy as np
import pytest

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.sg_embed import similarity, triplet_samplers

TABLE = {
    "cat": np.array([1.0, 0.0], np.float32),
    "dog": np.array([0.0, 1.0], np.float32),
    "sat": np.array([1.0, 1.0], np.float32),
}


def test_tokenize_lowercases_and_splits_on_punctuation():
    assert similarity.tokenize("A man's T-shirt,red!  On_a  bike.") == [
        "a",
        "man",
        "s",
        "t",
        "shirt",
        "red",
        "on",
        "a",
        "bike",
    ]
    assert similarity.caption_vocabulary([["Cat, dog."], ["dog sat"]]) == {"cat", "dog", "sat"}


def test_hand_built_images_exact_similarity_and_counts():
    captions = {
        "x": ["Cat dog.", "cat"],  # c = [0.5, 0.5], [1, 0]
        "y": ["dog", "Dog!", "the dog sat"],  # c = [0, 1], [0, 1], [0.5, 1] ("the" skipped)
        "w": ["the a", "an"],  # no known word at all
        "v": ["a cat", "zebra"],  # second caption dropped; c = [1, 0]
    }
    matrix, report = similarity.caption_similarity(
        ["x", "z", "y", "w", "v"], captions, TABLE, normalise_captions=False
    )
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)
    # s_XY = mean over the 2 x 3 caption pairs: (0.5 + 0.5 + 0.75 + 0 + 0 + 0.5) / 6.
    expected = np.array(
        [
            [(0.5 + 0.5 + 0.5 + 1.0) / 4, 2.25 / 6, (0.5 + 1.0) / 2],
            [2.25 / 6, 9.25 / 9, (0 + 0 + 0.5) / 3],
            [(0.5 + 1.0) / 2, 0.5 / 3, 1.0],
        ]
    )
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)
    assert report.image_ids == ["x", "y", "v"]
    assert report.image_indices.tolist() == [0, 2, 4]
    assert report.images_without_captions == ["z"]
    assert report.images_without_known_words == ["w"]
    assert report.num_skipped_images == 2
    assert report.num_captions == 2 + 3 + 1
    assert report.num_captions_without_known_words == 3  # "the a", "an", "zebra"
    assert report.num_tokens == 3 + 5 + 3 + 3
    assert report.num_missing_tokens == 1 + 3 + 2  # the | the a an | a zebra
    assert report.missing_words == ["the", "a", "an", "zebra"]


def test_normalised_captions_give_mean_cosines_by_default():
    captions = {"x": ["cat", "sat"], "y": ["dog"]}
    matrix, _ = similarity.caption_similarity(["x", "y"], captions, TABLE)
    root_half = np.sqrt(0.5)
    # x: [1, 0] and [r, r]; y: [0, 1].
    expected = [[(1 + root_half + root_half + 1) / 4, root_half / 2], [root_half / 2, 1.0]]
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)
    explicit, _ = similarity.caption_similarity(
        ["x", "y"], captions, TABLE, normalise_captions=True
    )
    np.testing.assert_array_equal(matrix, explicit)
    # Un-normalised (the option): x's "sat" caption is [1, 1], so s_xx = (1 + 1 + 1 + 2) / 4.
    raw, _ = similarity.caption_similarity(["x", "y"], captions, TABLE, normalise_captions=False)
    np.testing.assert_allclose(raw, [[1.25, 0.5], [0.5, 1.0]], rtol=1e-6)


def test_normalised_similarities_lie_in_minus_one_one_and_feed_the_probability_sampler():
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(20)]
    table = {w: (rng.normal(size=8) * 3.0).astype(np.float32) for w in words}
    captions = {
        str(image): [" ".join(rng.choice(words, 4)) for _ in range(5)] for image in range(12)
    }
    matrix, _ = similarity.caption_similarity(None, captions, table)
    assert matrix.min() >= -1.0 and matrix.max() <= 1.0
    assert matrix.min() < 0  # random vectors: some negative cosines
    raw, _ = similarity.caption_similarity(None, captions, table, normalise_captions=False)
    assert raw.max() > 1.0

    # s_XY of normalised captions = the mean of the 5 x 5 cosines between the caption vectors.
    def unit(text):
        vector = np.mean([table[t] for t in text.split()], axis=0).astype(np.float64)
        return vector / np.linalg.norm(vector)

    cosines = [unit(a) @ unit(b) for a in captions["0"] for b in captions["1"]]
    assert len(cosines) == 25 and matrix[0, 1] == pytest.approx(np.mean(cosines), abs=1e-6)
    sampler_rng = np.random.default_rng(0)
    triplet_samplers.probability_triplets(matrix, np.arange(12), sampler_rng)
    with pytest.raises(DataError, match=r"probability sampler needs similarities in \[-1, 1\]"):
        triplet_samplers.probability_triplets(raw, np.arange(12), sampler_rng)


def test_matches_explicit_double_sum_for_any_number_of_captions():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    table = {w: rng.normal(size=5).astype(np.float32) for w in words}
    captions = {
        str(image): [
            " ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(rng.integers(1, 8))
        ]
        for image in range(6)
    }
    matrix, _ = similarity.caption_similarity(None, captions, table, normalise_captions=False)

    def embed(text):
        return np.mean([table[t] for t in text.split()], axis=0).astype(np.float64)

    for x in range(6):
        for y in range(6):
            products = [embed(a) @ embed(b) for a in captions[str(x)] for b in captions[str(y)]]
            assert matrix[x, y] == pytest.approx(np.mean(products), rel=1e-5, abs=1e-6)


def test_split_without_captions_is_a_data_error():
    with pytest.raises(DataError, match=r"caps.json: field 'captions': none of the 2 images"):
        similarity.caption_similarity(["a", "b"], {"c": ["cat"]}, TABLE, captions_path="caps.json")
    with pytest.raises(DataError, match="with a word of the word-vector table"):
        similarity.caption_similarity(["a", "b"], {"a": ["zebra"]}, TABLE)
    with pytest.raises(ConfigError, match="option 'image_ids'"):
        similarity.caption_similarity([], {"a": ["cat"]}, TABLE)
    with pytest.raises(ConfigError, match="option 'word_to_vector'"):
        similarity.caption_similarity(["a"], {"a": ["cat"]}, {})
    with pytest.raises(ConfigError, match="option 'word_to_vector'"):
        similarity.caption_similarity(["a"], {"a": ["cat"]}, {"cat": np.ones(2), "dog": np.ones(3)})


def test_from_caption_and_glove_files(tmp_path):
    captions_path = tmp_path / "caps.json"
    captions_path.write_text(json.dumps({"captions": {"1": ["Cat sat."], "2": ["dog", "a dog"]}}))
    glove_path = tmp_path / "glove.txt"
    glove_path.write_text("cat 1 0\ndog 0 1\nsat 1 1\nzebra 5 5\n")
    matrix, report = similarity.caption_similarity_from_files(
        ["2", "1", "3"], captions_path, glove_path, normalise_captions=False
    )
    # "2": c = [0, 1] twice ("a" skipped); "1": c = mean(cat, sat) = [1, 0.5].
    np.testing.assert_allclose(matrix, [[1.0, 0.5], [0.5, 1.25]], rtol=1e-6)
    normalised, _ = similarity.caption_similarity_from_files(
        ["2", "1", "3"], captions_path, glove_path
    )
    # Default: unit caption vectors, [0, 1] and [2, 1] / sqrt(5).
    np.testing.assert_allclose(
        normalised, [[1.0, 1 / np.sqrt(5)], [1 / np.sqrt(5), 1.0]], rtol=1e-6
    )
    assert report.image_ids == ["2", "1"] and report.images_without_captions == ["3"]
    assert report.missing_words == ["a"]
    glove_path.write_text("zebra 5 5\n")
    with pytest.raises(DataError, match="glove.txt: no word of the captions"):
        similarity.caption_similarity_from_files(None, captions_path, glove_path)


def test_load_similarity_matrix_reads_a_square_finite_matrix(tmp_path):
    path = tmp_path / "s.npy"
    values = np.arange(9, dtype=np.float64).reshape(3, 3) / 4 - 1  # -1 .. 1
    np.save(path, values)
    loaded = similarity.load_similarity_matrix(path, 3)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values)
    np.save(path, np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.int64))
    np.testing.assert_array_equal(similarity.load_similarity_matrix(path, 3), np.eye(3))


def test_load_similarity_matrix_outside_minus_one_one(tmp_path):
    path = tmp_path / "raw.npy"
    raw = np.arange(9, dtype=np.float64).reshape(3, 3)  # 0 .. 8: raw inner products, say
    np.save(path, raw)
    with pytest.raises(DataError) as error:
        similarity.load_similarity_matrix(path, 3)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: 7 entries lie outside [-1, 1]")
    assert "values in [0, 8], first at row 0, column 2" in message
    # Explicit option: any finite values (for the Random / Extreme samplers).
    np.testing.assert_array_equal(similarity.load_similarity_matrix(path, 3, bounded=False), raw)
    # Float rounding of cosines (within RANGE_TOLERANCE) is clipped, not rejected.
    np.save(path, np.array([[1.000001, 0.5, -1.000002], [0.5, 1, 0], [-1, 0, 1]], np.float32))
    loaded = similarity.load_similarity_matrix(path, 3)
    assert loaded[0, 0] == 1.0 and loaded[0, 2] == -1.0
    np.save(path, np.array([[1.001, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], np.float32))
    with pytest.raises(DataError, match=r"raw.npy: 1 entries lie outside \[-1, 1\]"):
        similarity.load_similarity_matrix(path, 3)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (np.ones((3, 2)), r"s.npy: expected a square 2-D matrix, got shape \(3, 2\)"),
        (np.ones(9), r"expected a square 2-D matrix, got shape \(9,\)"),
        (np.ones((2, 2)), r"s.npy: is 2 x 2 but the split has 3 images"),
        (
            np.array([[0, 1, np.nan], [1, 0, 1], [1, 1, np.inf]]),
            r"2 entries are NaN.*row 0, column 2",
        ),
        (np.full((3, 3), 1e300), r"9 entries are NaN, infinite or beyond float32"),
        (np.full((3, 3), "a"), r"expected a real numeric array, got dtype <U1"),
        (np.ones((3, 3), bool), r"expected a real numeric array, got dtype bool"),
        (np.ones((3, 3), complex), r"expected a real numeric array"),
    ],
)
def test_bad_similarity_matrices(tmp_path, content, pattern):
    path = tmp_path / "s.npy"
    np.save(path, content)
    with pytest.raises(DataError, match=pattern):
        similarity.load_similarity_matrix(path, 3)


def test_unreadable_similarity_files(tmp_path):
    with pytest.raises(DataError, match=r"missing.npy: file not found"):
        similarity.load_similarity_matrix(tmp_path / "missing.npy", 3)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects.npy: not a readable .npy array"):
        similarity.load_similarity_matrix(pickled, 3)
    text = tmp_path / "text.npy"
    text.write_text("0 1\n1 0\n")
    with pytest.raises(DataError, match=r"text.npy: not a readable .npy array"):
        similarity.load_similarity_matrix(text, 2)
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as handle:
        np.savez(handle, s=np.ones((2, 2)))
    with pytest.raises(DataError, match=r"archive.npy: expected a .npy array, got an .npz"):
        similarity.load_similarity_matrix(archive, 2)
    with pytest.raises(ConfigError, match="option 'num_images'"):
        similarity.load_similarity_matrix(archive, 0)
