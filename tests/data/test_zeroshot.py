"""Zero-shot triplet files."""

import json

import numpy as np
import pytest

from sgg_jax.data import zeroshot
from sgg_jax.errors import DataError


def test_bundled_vg150_triplets():
    triplets = zeroshot.load_bundled_vg150()
    assert triplets.shape == (5971, 3) and triplets.dtype == np.int32
    np.testing.assert_array_equal(triplets[0], [1, 1, 33])
    assert triplets[:, :2].max() <= 150 and triplets[:, 2].max() <= 50


def test_bare_list_and_bad_rows(tmp_path):
    path = tmp_path / "z.json"
    path.write_text(json.dumps([[1, 2, 3], [4, 5, 6]]))
    np.testing.assert_array_equal(zeroshot.read(path), [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(DataError, match=r"row 1: field 'triplets': predicate 6 outside 1..5"):
        zeroshot.read(path, num_classes=10, num_predicates=5)
    path.write_text(json.dumps({"triplets": [[1, 2, 3], [1, 2]]}))
    with pytest.raises(DataError, match=r"row 1: field 'triplets': expected \[subject_class"):
        zeroshot.read(path)
    path.write_text(json.dumps({"triplets": []}))
    with pytest.raises(DataError, match="non-empty list"):
        zeroshot.read(path)
