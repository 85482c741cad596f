"""Precomputed object features on disk: one ``.npz`` with the features of every image's objects.

The usual way to train relation heads cheaply is to run a (frozen) detector once and save the RoI
feature of every ground-truth box. Layout (``I`` images, ``M`` objects in all):

=================  ===============  ===================================================
key                dtype / shape    meaning
=================  ===============  ===================================================
``image_ids``      str[I]           image id
``offsets``        int64[I+1]       image i's rows are ``offsets[i]:offsets[i+1]``
``features``       float32[M, D]    one row per object, in the scene graph's object order
=================  ===============  ===================================================

:func:`features_for` returns the list aligned with a list of scene graphs, which
``pipeline.make_loader(..., object_features=...)`` consumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from sgg_jax.data.fileio import check_offsets, load_npz
from sgg_jax.errors import DataError
from sgg_jax.structures import SceneGraph


def save_object_features(
    path: str | os.PathLike, image_ids: Sequence[str], features: Sequence[np.ndarray]
) -> None:
    """Writes per-image object features ``features[i]`` float32[N_i, D] (compressed ``.npz``)."""
    if len(image_ids) != len(features):
        raise ValueError(f"{len(image_ids)} image ids for {len(features)} feature arrays")
    dims = {np.shape(f)[1] for f in features}
    if len(dims) != 1:
        raise ValueError(f"feature arrays have different dimensions {sorted(dims)}")
    np.savez_compressed(
        path,
        image_ids=np.asarray([str(i) for i in image_ids]),
        offsets=np.concatenate([[0], np.cumsum([len(f) for f in features])]).astype(np.int64),
        features=np.concatenate([np.asarray(f, np.float32) for f in features]),
    )


def load_object_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a feature file into ``image id -> float32[N, D]``.

    Raises:
      DataError: naming the file and the field when it is missing, corrupt or inconsistent.
    """
    path = os.fspath(path)
    arrays = load_npz(path, ("image_ids", "offsets", "features"))
    image_ids, offsets, features = arrays["image_ids"], arrays["offsets"], arrays["features"]
    if features.ndim != 2 or not np.all(np.isfinite(features)):
        raise DataError("must be a finite [M, D] array", path=path, field="features")
    check_offsets(
        offsets, image_ids.shape[0], features.shape[0], path=path, field="offsets", rows="features"
    )
    return {
        str(image_id): features[offsets[i] : offsets[i + 1]] for i, image_id in enumerate(image_ids)
    }


def features_for(
    graphs: Sequence[SceneGraph], table: dict[str, np.ndarray], *, path: str = "object features"
) -> list[np.ndarray]:
    """The feature array of every graph, in order; each must have one row per object.

    Raises:
      DataError: an image has no features or a different number of rows than objects.
    """
    aligned = []
    for graph in graphs:
        features = table.get(graph.image_id)
        if features is None:
            raise DataError("no features for this image", path=path, record=graph.image_id)
        if features.shape[0] != graph.num_objects:
            raise DataError(
                f"{features.shape[0]} feature rows for {graph.num_objects} objects",
                path=path,
                record=graph.image_id,
                field="features",
            )
        aligned.append(features)
    return aligned
