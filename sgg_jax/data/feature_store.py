"""Precomputed object features on disk: one ``.npz``, or a sharded store read lazily.

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

**Store** (a directory, written by ``python -m data_prep.extract_features``; :class:`StoreWriter`,
:func:`open_store`), for datasets whose features do not fit in memory (VG150: ~108k images x ~12
objects x 4096 float16 = ~10 GB)::

  <dir>/manifest.json              format, detector (workdir / checkpoint, digest), feature_dim,
                                   dtype, shard_images, per split its image ids, complete,
                                   bad_images
  <dir>/shards/<split>-NNNNN.npy   dtype[M_k, D]: the rows of shard k's images, in order
  <dir>/shards/<split>-NNNNN.json  {"image_ids", "counts", "bad"}: written last (the shard's
                                   completion mark; a rerun skips shards that have it)

Shard k of a split holds its images ``k*shard_images : (k+1)*shard_images`` (minus bad images).
Reading memory-maps the shards (``np.load(mmap_mode="r")``): :func:`features_for` returns a lazy
sequence whose item ``i`` reads image i's rows (as float32) when the pipeline asks for it, so
training never holds the store in RAM. Bad input is a one-line DataError naming the file and the
field: images of the run missing from the store, a shard whose width differs from the manifest's
``feature_dim`` or from the dimension the run expects, a manifest from another detector than the
one the run names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

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


def load_object_features(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Reads a feature file into ``image id -> float32[N, D]`` (a store directory: the lazy
    :class:`FeatureStore`, nothing read but its indices).

    Raises:
      DataError: naming the file and the field when it is missing, corrupt or inconsistent.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return open_store(path)
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
    graphs: Sequence[SceneGraph],
    table: Mapping[str, np.ndarray],
    *,
    path: str = "object features",
    expected_dim: int | None = None,
) -> Sequence[np.ndarray]:
    """The feature array of every graph, in order; each must have one row per object.

    With a :class:`FeatureStore` nothing is read: the result is a lazy sequence (rows counted from
    the store's index); with a dict, the list of its arrays.

    Args:
      graphs: the scene graphs of a split.
      table: :func:`load_object_features` of ``path``.
      path: the feature file, for messages.
      expected_dim: the feature width the model expects (None: any).

    Raises:
      DataError: an image has no features or a different number of rows than objects, or the
        width differs from ``expected_dim``.
    """
    if isinstance(table, FeatureStore):
        return table.aligned(graphs, expected_dim=expected_dim)
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
        if expected_dim is not None and features.shape[1] != expected_dim:
            raise DataError(
                f"features of width {features.shape[1]}, the model expects {expected_dim}",
                path=path,
                field="features",
            )
        aligned.append(features)
    return aligned


# ----------------------------------------------------------------------------------------------
# The sharded store
# ----------------------------------------------------------------------------------------------

STORE_FORMAT = "sgg_jax.object_feature_store/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
STORE_DTYPES = ("float16", "float32")
# Manifest fields a rerun must find unchanged to resume (anything else: a new directory).
_RESUME_KEYS = ("format", "detector", "feature_dim", "dtype", "shard_images", "splits")


def _write_json(path: str, value: Any) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
    os.replace(temporary, path)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot be read: {type(exc).__name__}", path=path) from None


def file_digest(paths: Sequence[str], root: str | None = None) -> str:
    """sha256 over the (relative) names and contents of ``paths`` (a detector's identity)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).encode() if root else b"")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def shard_name(split: str, shard: int) -> str:
    """The base name of a shard's files (``<split>-NNNNN``)."""
    return f"{split}-{shard:05d}"


class StoreWriter:
    """Writes (or resumes) a store directory (module docstring).

    Args:
      path: the store directory (created).
      detector: identity of the feature extractor (``{"digest": ..., ...}``).
      feature_dim: D.
      dtype: ``float16`` or ``float32``.
      shard_images: images per shard.
      splits: ``{split: [image ids in order]}``.

    Raises:
      DataError: ``path`` holds a manifest of another extraction (naming the differing field).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        detector: Mapping[str, Any],
        feature_dim: int,
        dtype: str,
        shard_images: int,
        splits: Mapping[str, Sequence[str]],
    ):
        if dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        self.path = os.fspath(path)
        self.dtype = dtype
        self.shard_images = int(shard_images)
        self.feature_dim = int(feature_dim)
        manifest = {
            "format": STORE_FORMAT,
            "detector": dict(detector),
            "feature_dim": self.feature_dim,
            "dtype": dtype,
            "shard_images": self.shard_images,
            "splits": {name: {"image_ids": [str(i) for i in ids]} for name, ids in splits.items()},
            "complete": False,
            "bad_images": [],
        }
        os.makedirs(os.path.join(self.path, SHARD_DIR), exist_ok=True)
        manifest_path = os.path.join(self.path, MANIFEST)
        if os.path.exists(manifest_path):
            old = _read_json(manifest_path)
            for key in _RESUME_KEYS:
                if not isinstance(old, dict) or old.get(key) != manifest[key]:
                    raise DataError(
                        "the directory holds features of another extraction (this field "
                        "differs); give a new --out",
                        path=manifest_path,
                        field=key,
                    )
            manifest = old
            manifest["complete"] = False
        _write_json(manifest_path, manifest)
        self.manifest = manifest

    def num_shards(self, split: str) -> int:
        count = len(self.manifest["splits"][split]["image_ids"])
        return -(-count // self.shard_images)

    def shard_images_of(self, split: str, shard: int) -> list[str]:
        ids = self.manifest["splits"][split]["image_ids"]
        return ids[shard * self.shard_images : (shard + 1) * self.shard_images]

    def done(self, split: str, shard: int) -> bool:
        """Whether shard ``shard`` of ``split`` is complete (its index file exists)."""
        return os.path.exists(
            os.path.join(self.path, SHARD_DIR, shard_name(split, shard) + ".json")
        )

    def write_shard(
        self,
        split: str,
        shard: int,
        image_ids: Sequence[str],
        features: Sequence[np.ndarray],
        bad: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """Writes one shard: its rows (``.npy``), then its index (``.json``, the completion mark)."""
        base = os.path.join(self.path, SHARD_DIR, shard_name(split, shard))
        rows = [np.asarray(f, self.dtype).reshape(-1, self.feature_dim) for f in features]
        array = np.concatenate(rows) if rows else np.zeros((0, self.feature_dim), self.dtype)
        temporary = f"{base}.tmp-{os.getpid()}.npy"
        np.save(temporary, array)
        os.replace(temporary, base + ".npy")
        _write_json(
            base + ".json",
            {
                "image_ids": [str(i) for i in image_ids],
                "counts": [len(r) for r in rows],
                "bad": [dict(b) for b in bad],
            },
        )

    def finish(self) -> list[dict[str, str]]:
        """Marks the store complete (every shard done); returns the bad images of all shards."""
        bad = []
        complete = True
        for split in self.manifest["splits"]:
            for shard in range(self.num_shards(split)):
                if not self.done(split, shard):
                    complete = False
                    continue
                index = _read_json(
                    os.path.join(self.path, SHARD_DIR, shard_name(split, shard) + ".json")
                )
                bad.extend(index.get("bad", []))
        self.manifest["complete"] = complete
        self.manifest["bad_images"] = bad
        _write_json(os.path.join(self.path, MANIFEST), self.manifest)
        return bad


class FeatureStore(Mapping):
    """A store directory opened for reading: ``store[image_id]`` is a read-only memory-mapped
    ``dtype[N, D]`` view (nothing is read until it is sliced); the indices are read at open."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.manifest_path = os.path.join(self.path, MANIFEST)
        manifest = _read_json(self.manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
            raise DataError(
                f"not a feature store (expected format {STORE_FORMAT!r})",
                path=self.manifest_path,
                field="format",
            )
        self.manifest = manifest
        dim = manifest.get("feature_dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise DataError(
                f"must be a positive integer, got {dim!r}",
                path=self.manifest_path,
                field="feature_dim",
            )
        self.feature_dim = dim
        self._files: list[str] = []
        self._arrays: dict[int, np.ndarray] = {}
        self._index: dict[str, tuple[int, int, int]] = {}
        for split, entry in manifest.get("splits", {}).items():
            count = len(entry.get("image_ids", []))
            for shard in range(-(-count // int(manifest.get("shard_images", 1)))):
                base = os.path.join(self.path, SHARD_DIR, shard_name(split, shard))
                if not os.path.exists(base + ".json"):
                    continue  # an unfinished shard: its images are missing
                index = _read_json(base + ".json")
                file_index = len(self._files)
                self._files.append(base + ".npy")
                offset = 0
                for image_id, rows in zip(index["image_ids"], index["counts"], strict=True):
                    self._index.setdefault(str(image_id), (file_index, offset, int(rows)))
                    offset += int(rows)

    def _array(self, file_index: int) -> np.ndarray:
        array = self._arrays.get(file_index)
        if array is None:
            path = self._files[file_index]
            try:
                array = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise DataError("file not found", path=path) from None
            except (OSError, ValueError) as exc:
                raise DataError(f"not a readable .npy: {type(exc).__name__}", path=path) from None
            if array.ndim != 2 or array.shape[1] != self.feature_dim:
                raise DataError(
                    f"rows of width {list(array.shape[1:])}, the manifest says {self.feature_dim}",
                    path=path,
                    field="feature_dim",
                )
            self._arrays[file_index] = array
        return array

    def __getitem__(self, image_id: str) -> np.ndarray:
        file_index, offset, rows = self._index[str(image_id)]
        return self._array(file_index)[offset : offset + rows]

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def check_detector(self, digest: str, name: str) -> None:
        """DataError naming the manifest when its detector digest is not ``digest`` (``name``
        describes the run's detector)."""
        recorded = self.manifest.get("detector", {})
        if recorded.get("digest") != digest:
            raise DataError(
                f"features of another detector ({recorded.get('workdir') or recorded.get('checkpoint')}"
                f"), the run names {name}",
                path=self.manifest_path,
                field="detector.digest",
            )

    def aligned(
        self, graphs: Sequence[SceneGraph], *, expected_dim: int | None = None
    ) -> LazyFeatures:
        """The lazy features of ``graphs`` (every image checked against the index, shard widths
        against the manifest; no row is read)."""
        if expected_dim is not None and expected_dim != self.feature_dim:
            raise DataError(
                f"features of width {self.feature_dim}, the model expects {expected_dim}",
                path=self.manifest_path,
                field="feature_dim",
            )
        keys = []
        for graph in graphs:
            entry = self._index.get(graph.image_id)
            if entry is None:
                raise DataError(
                    "no features for this image (a store of other images, or the image was "
                    "bad at extraction)",
                    path=self.path,
                    record=graph.image_id,
                )
            if entry[2] != graph.num_objects:
                raise DataError(
                    f"{entry[2]} feature rows for {graph.num_objects} objects",
                    path=self._files[entry[0]],
                    record=graph.image_id,
                    field="features",
                )
            self._array(entry[0])
            keys.append(graph.image_id)
        return LazyFeatures(self, keys)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}


class LazyFeatures(Sequence):
    """``features[i]`` = float32 rows of the i-th image, read from the store when asked."""

    def __init__(self, store: FeatureStore, image_ids: Sequence[str]):
        self.store = store
        self.image_ids = list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyFeatures(self.store, self.image_ids[index])
        return np.asarray(self.store[self.image_ids[index]], np.float32)

    def take(self, indices: Sequence[int]) -> LazyFeatures:
        """The lazy features of ``indices`` (nothing read)."""
        return LazyFeatures(self.store, [self.image_ids[int(i)] for i in indices])


def take(features: Sequence[np.ndarray], indices: Sequence[int]) -> Sequence[np.ndarray]:
    """``[features[i] for i in indices]``, lazy for :class:`LazyFeatures`."""
    if isinstance(features, LazyFeatures):
        return features.take(indices)
    return [features[int(i)] for i in indices]


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Opens a store directory (:class:`FeatureStore`)."""
    return FeatureStore(path)
