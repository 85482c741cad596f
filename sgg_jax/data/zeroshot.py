"""Zero-shot triplet lists for zR@K: ``[subject_class, object_class, predicate]`` rows, 1-based.

A file is JSON: either ``{"triplets": [[s, o, p], ...]}`` or a bare list of rows. The package bundles
the 5,971 VG150 zero-shot test triplets of Scene-Graph-Benchmark (``zeroshot_triplet.pytorch``, MIT),
decoded to JSON.
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np

from sgg_jax.data.fileio import load_json
from sgg_jax.errors import DataError

BUNDLED_VG150 = "vg150_zeroshot_triplets.json.gz"


def read(
    path: str | os.PathLike, *, num_classes: int | None = None, num_predicates: int | None = None
) -> np.ndarray:
    """Reads a zero-shot triplet file.

    Args:
      path: JSON file (plain or ``.gz``).
      num_classes, num_predicates: when given, every row is checked against the vocabulary.

    Returns:
      int32[Z, 3] rows ``(subject_class, object_class, predicate)``.

    Raises:
      DataError: naming the file, the row and the field.
    """
    path = os.fspath(path)
    data = load_json(path)
    rows = data.get("triplets") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise DataError("expected a non-empty list of [s, o, p] rows", path=path, field="triplets")
    for index, row in enumerate(rows):
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in row)
        ):
            raise DataError(
                f"expected [subject_class, object_class, predicate] integers, got {row!r}",
                path=path,
                record=index,
                record_kind="row",
                field="triplets",
            )
    triplets = np.asarray(rows, np.int64)
    limits = (num_classes, num_classes, num_predicates)
    for column, (limit, name) in enumerate(
        zip(limits, ("subject", "object", "predicate"), strict=True)
    ):
        values = triplets[:, column]
        bad = np.flatnonzero((values < 1) | ((values > limit) if limit is not None else False))
        if bad.size:
            raise DataError(
                f"{name} {int(values[bad[0]])} outside 1..{limit if limit is not None else ''}",
                path=path,
                record=int(bad[0]),
                record_kind="row",
                field="triplets",
            )
    return triplets.astype(np.int32)


def load_bundled_vg150() -> np.ndarray:
    """The 5,971 VG150 zero-shot test triplets (int32[5971, 3], VG150 ids)."""
    path = importlib.resources.files("sgg_jax.data") / "resources" / BUNDLED_VG150
    return read(str(path), num_classes=150, num_predicates=50)
