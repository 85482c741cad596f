"""Random access to scene graphs stored as a TFDS ``array_record`` dataset (no TensorFlow needed).

:mod:`data_prep` turns the raw VG150 / GQA-200 files into TFDS datasets with one scene graph per
record; this module is the read side. :func:`open_source` returns a random-access source of
:class:`~sgg_jax.structures.SceneGraph` (``len`` and ``__getitem__``, which is all the grain input
pipeline needs) and the dataset's :class:`~sgg_jax.structures.Vocab`.

The record format is defined here, once, and :mod:`data_prep.common` writes it:

* ``image_id``: text; ``width``, ``height``: int32;
* ``boxes``: float32[N, 4] xyxy pixels; ``labels``: int32[N] 1-based;
* ``relations``: int32[R, 3] ``(subject_idx, object_idx, predicate)``, predicate 1-based;
* ``image_path``: text, ``""`` when the graph has none.

The vocabulary (names and train-split counts) lives in the dataset's metadata
(``<data_dir>/<name>/<version>/metadata.json``) under :data:`VOCAB_METADATA_KEY`. Records are read
with ``DatasetBuilder.as_data_source`` (array_record random access), decoded by TFDS's numpy path.
"""

from __future__ import annotations

import collections.abc
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph, Vocab

FEATURE_KEYS = ("image_id", "width", "height", "boxes", "labels", "relations", "image_path")
VOCAB_METADATA_KEY = "vocab"
METADATA_FILENAME = "metadata.json"
_VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")


def vocab_to_metadata(vocab: Vocab) -> dict[str, Any]:
    """The JSON form of a vocabulary stored in the dataset metadata.

    Args:
      vocab: vocabulary with counts.

    Returns:
      ``{"vocab": {"object_names": [...], "predicate_names": [...], "object_counts": [...],
      "predicate_counts": [...]}}`` with plain Python values.
    """
    return {
        VOCAB_METADATA_KEY: {
            "object_names": list(vocab.object_names),
            "predicate_names": list(vocab.predicate_names),
            "object_counts": [int(c) for c in vocab.object_counts],
            "predicate_counts": [int(c) for c in vocab.predicate_counts],
        }
    }


def vocab_from_metadata(metadata: Mapping[str, Any] | None, *, path: str) -> Vocab:
    """Rebuilds the :class:`Vocab` written by :func:`vocab_to_metadata`.

    Args:
      metadata: the dataset's metadata dictionary.
      path: the metadata file, for error messages.

    Returns:
      The vocabulary.

    Raises:
      DataError: the metadata has no (valid) vocabulary.
    """
    if not isinstance(metadata, Mapping) or VOCAB_METADATA_KEY not in metadata:
        raise DataError("the dataset metadata holds no vocabulary", path=path, field="vocab")
    entry = metadata[VOCAB_METADATA_KEY]
    if not isinstance(entry, Mapping):
        raise DataError("expected an object", path=path, field=VOCAB_METADATA_KEY)
    values = {}
    for key in ("object_names", "predicate_names", "object_counts", "predicate_counts"):
        if key not in entry:
            raise DataError("missing key", path=path, field=f"{VOCAB_METADATA_KEY}.{key}")
        values[key] = entry[key]
    try:
        return Vocab(**values)
    except (TypeError, ValueError) as exc:
        raise DataError(str(exc), path=path, field=VOCAB_METADATA_KEY) from None


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def decode_example(
    example: Mapping[str, Any], *, path: str | None = None, index: int | None = None
) -> SceneGraph:
    """One decoded TFDS record (a dict of numpy values) -> :class:`SceneGraph`.

    Args:
      example: the record as TFDS's numpy decoding returns it (text fields as ``bytes``).
      path: dataset folder, for error messages.
      index: record index, for error messages.

    Returns:
      The scene graph; ``image_path`` is ``None`` where the record holds ``""``.

    Raises:
      DataError: a field is missing or has the wrong shape.
    """
    record = f"#{index}" if index is not None else None
    missing = [key for key in FEATURE_KEYS if key not in example]
    if missing:
        raise DataError(
            "missing from the record",
            path=path,
            record=record,
            field=missing[0],
            record_kind="record",
        )
    image_id = _text(example["image_id"])
    arrays = {}
    for key, tail in (("boxes", (4,)), ("labels", ()), ("relations", (3,))):
        array = np.asarray(example[key])
        if array.size == 0:
            array = array.reshape((0, *tail))
        if array.ndim != 1 + len(tail) or array.shape[1:] != tail:
            want = "[N" + "".join(f", {d}" for d in tail) + "]"
            raise DataError(
                f"expected shape {want}, got {list(array.shape)}",
                path=path,
                record=image_id,
                field=key,
            )
        arrays[key] = array
    if arrays["labels"].shape[0] != arrays["boxes"].shape[0]:
        raise DataError(
            f"{arrays['labels'].shape[0]} labels for {arrays['boxes'].shape[0]} boxes",
            path=path,
            record=image_id,
            field="labels",
        )
    return SceneGraph(
        image_id=image_id,
        width=int(example["width"]),
        height=int(example["height"]),
        image_path=_text(example["image_path"]) or None,
        **arrays,
    )


class SceneGraphSource(collections.abc.Sequence):
    """Random-access source of :class:`SceneGraph` over one split of an array_record dataset.

    ``len(source)`` is the number of images, ``source[i]`` decodes record ``i`` (negative indices
    count from the end; a slice returns a list), and ``source.__getitems__(keys)`` reads many
    records in one call (grain uses it when present). Records are in the order they were written,
    i.e. the order of the raw file. The source pickles (for grain worker processes).
    """

    def __init__(self, records: Any, *, path: str, split: str):
        """Wraps a TFDS data source.

        Args:
          records: ``DatasetBuilder.as_data_source(split)``.
          path: the dataset folder ``<data_dir>/<name>/<version>``.
          split: the split name.
        """
        self._records = records
        self._length = len(records)
        self.path = path
        self.split = split

    def __len__(self) -> int:
        return self._length

    def _index(self, key: Any) -> int:
        try:
            index = int(key.__index__())
        except (AttributeError, TypeError):
            raise TypeError(f"record index must be an integer, got {type(key).__name__}") from None
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"record {key} outside the {self._length} records of {self.split!r}")
        return index

    def __getitem__(self, key: Any) -> SceneGraph | list[SceneGraph]:
        if isinstance(key, slice):
            return self.__getitems__(range(*key.indices(self._length)))
        index = self._index(key)
        return decode_example(self._records[index], path=self.path, index=index)

    def __getitems__(self, keys: Sequence[int]) -> list[SceneGraph]:
        indices = [self._index(key) for key in keys]
        if not indices:
            return []
        examples = self._records.__getitems__(indices)
        return [
            decode_example(example, path=self.path, index=index)
            for index, example in zip(indices, examples, strict=True)
        ]

    def __iter__(self) -> Iterator[SceneGraph]:
        chunk = 256
        for start in range(0, self._length, chunk):
            yield from self.__getitems__(range(start, min(start + chunk, self._length)))

    def __repr__(self) -> str:
        return f"SceneGraphSource({self.path!r}, split={self.split!r}, records={self._length})"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def dataset_dir(data_dir: str | os.PathLike, name: str) -> str:
    """The folder of a prepared dataset: ``<data_dir>/<name>/<version>``.

    Args:
      data_dir: the folder given to ``data_prep`` as ``--out``.
      name: ``"gqa200"`` / ``"vg150"``, or ``"<name>:<version>"`` for a given version; without a
        version the highest prepared one is used.

    Returns:
      The dataset folder (it holds ``dataset_info.json``).

    Raises:
      DataError: no prepared dataset of that name (and version) is in ``data_dir``.
    """
    data_dir = os.fspath(data_dir)
    name, _, version = name.partition(":")
    root = os.path.join(data_dir, name)
    if version:
        candidates = [version]
    else:
        try:
            candidates = sorted(
                (v for v in os.listdir(root) if _VERSION_PATTERN.match(v)),
                key=_version_key,
                reverse=True,
            )
        except (FileNotFoundError, NotADirectoryError):
            candidates = []
    for candidate in candidates:
        folder = os.path.join(root, candidate)
        if os.path.isfile(os.path.join(folder, "dataset_info.json")):
            return folder
    want = f"version {version}" if version else "any version"
    raise DataError(
        f"no prepared dataset ({want}; build it with python -m data_prep.{name})", path=root
    )


def read_vocab(data_dir: str | os.PathLike, name: str) -> Vocab:
    """The vocabulary of a prepared dataset, from its ``metadata.json`` (no record is read).

    Args:
      data_dir: the folder given to ``data_prep`` as ``--out``.
      name: dataset name, optionally ``"<name>:<version>"``.

    Returns:
      The vocabulary with the counts stored at build time.
    """
    path = os.path.join(dataset_dir(data_dir, name), METADATA_FILENAME)
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot be read: {type(exc).__name__}", path=path) from None
    return vocab_from_metadata(metadata, path=path)


def open_source(
    data_dir: str | os.PathLike, name: str, split: str
) -> tuple[SceneGraphSource, Vocab]:
    """Opens one split of a dataset written by :mod:`data_prep` for random access.

    Args:
      data_dir: the folder given to ``data_prep`` as ``--out``.
      name: ``"gqa200"`` / ``"vg150"``, optionally ``"<name>:<version>"``.
      split: a split of the dataset (``"train"``, ``"val"``, ``"test"``, ...).

    Returns:
      ``(source, vocab)``: ``source[i]`` is the i-th scene graph of the split, in file order.

    Raises:
      DataError: the dataset is missing, not stored as array_record, or its metadata is invalid.
      ConfigError: the dataset has no split ``split``.
    """
    import tensorflow_datasets as tfds  # imported here: only the read path needs it

    folder = dataset_dir(data_dir, name)
    vocab = read_vocab(data_dir, name)
    try:
        builder = tfds.builder_from_directory(folder)
    except Exception as exc:  # TFDS raises assorted types for an unreadable dataset_info.json.
        raise DataError(
            f"not a readable TFDS dataset: {type(exc).__name__}: {exc}".splitlines()[0], path=folder
        ) from None
    available = sorted(builder.info.splits.keys())
    if split not in available:
        raise ConfigError("split", f"{folder} has splits {available}, not {split!r}")
    file_format = builder.info.file_format
    if file_format is None or file_format.value != "array_record":
        raise DataError(
            f"stored as {getattr(file_format, 'value', file_format)}, expected array_record",
            path=folder,
            field="file_format",
        )
    records = builder.as_data_source(split)
    return SceneGraphSource(records, path=folder, split=split), vocab
