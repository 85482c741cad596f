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
(``<data_dir>/<name>/<version>/metadata.json``) under :data:`VOCAB_METADATA_KEY`.

Reading never runs code named by a data file. TFDS's own read path (``builder_from_directory``)
imports the module that ``features.json`` names in ``pythonClassName``; this module does not use
it. The features are built from :func:`features` (our definition), a ``features.json`` that
differs from it is rejected, the splits and shard files come from ``dataset_info.json`` read as
plain JSON, and the array_record files are read with ``array_record`` and decoded by TFDS's numpy
path with our features.
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
FEATURES_FILENAME = "features.json"
INFO_FILENAME = "dataset_info.json"
FILE_FORMAT = "array_record"
_VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")
_SPLIT_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
_FILEPATH_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def features() -> Any:
    """The TFDS features of one scene graph record (the record format of the module docstring).

    :mod:`data_prep` writes its datasets with these features; :func:`open_source` decodes records
    with them and accepts only a ``features.json`` equal to their serialisation.

    Returns:
      ``tfds.features.FeaturesDict`` with the keys of :data:`FEATURE_KEYS`.
    """
    import tensorflow_datasets as tfds  # imported here: only the TFDS paths need it

    return tfds.features.FeaturesDict(
        {
            "image_id": tfds.features.Text(),
            "width": np.int32,
            "height": np.int32,
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "relations": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
            "image_path": tfds.features.Text(),
        }
    )


def features_json() -> dict[str, Any]:
    """The JSON value TFDS writes to ``features.json`` for :func:`features`."""
    from google.protobuf import json_format

    return json.loads(json.dumps(json_format.MessageToDict(features().to_proto())))


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
    i.e. the order of the raw file. The source pickles (for grain worker processes): the open
    files and the features are rebuilt on first use.
    """

    def __init__(self, files: Sequence[str], *, path: str, split: str, num_records: int):
        """Opens the shard files of one split.

        Args:
          files: the split's array_record shard files, in order.
          path: the dataset folder ``<data_dir>/<name>/<version>``.
          split: the split name.
          num_records: the record count ``dataset_info.json`` gives for the split.

        Raises:
          DataError: a shard file is missing or unreadable, or the files hold another number of
            records than ``num_records``.
        """
        self._files = tuple(files)
        self.path = path
        self.split = split
        self._records: Any = None
        self._features: Any = None
        self._length = len(self._reader())
        if self._length != num_records:
            raise DataError(
                f"split {split!r} holds {self._length} records, {INFO_FILENAME} says {num_records}",
                path=path,
                field="shardLengths",
            )

    def _reader(self) -> Any:
        if self._records is None:
            from array_record.python import array_record_data_source

            for file in self._files:
                if not os.path.isfile(file):
                    raise DataError("shard file not found", path=file)
            try:
                self._records = array_record_data_source.ArrayRecordDataSource(list(self._files))
            except Exception as exc:  # array_record raises assorted types for a corrupt file
                raise DataError(
                    f"not a readable array_record file: {type(exc).__name__}", path=self.path
                ) from None
        return self._records

    def _decode(self, raw: bytes, index: int) -> SceneGraph:
        if self._features is None:
            self._features = features()
        try:
            example = self._features.deserialize_example_np(raw)
        except Exception as exc:  # a corrupt record surfaces as assorted protobuf / numpy errors
            raise DataError(
                f"cannot be decoded: {type(exc).__name__}",
                path=self.path,
                record=f"#{index}",
                record_kind="record",
            ) from None
        return decode_example(example, path=self.path, index=index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_records": None, "_features": None}

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
        return self._decode(self._reader()[index], index)

    def __getitems__(self, keys: Sequence[int]) -> list[SceneGraph]:
        indices = [self._index(key) for key in keys]
        if not indices:
            return []
        raws = self._reader().__getitems__(indices)
        return [self._decode(raw, index) for index, raw in zip(indices, raws, strict=True)]

    def __iter__(self) -> Iterator[SceneGraph]:
        chunk = 256
        for start in range(0, self._length, chunk):
            yield from self.__getitems__(range(start, min(start + chunk, self._length)))

    def check_unique_image_ids(self) -> None:
        """Reads every record once; raises :class:`DataError` naming the split's folder and the
        first image id that two records share."""
        seen: set[str] = set()
        for graph in self:
            if graph.image_id in seen:
                raise DataError(
                    f"image id appears twice in split {self.split!r}",
                    path=self.path,
                    record=graph.image_id,
                    field="image_id",
                )
            seen.add(graph.image_id)

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
    return read_vocab_of_folder(dataset_dir(data_dir, name))


def read_vocab_of_folder(folder: str | os.PathLike) -> Vocab:
    """The vocabulary in ``<folder>/metadata.json`` (``folder`` as :func:`dataset_dir`)."""
    path = os.path.join(os.fspath(folder), METADATA_FILENAME)
    try:
        with open(path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot be read: {type(exc).__name__}", path=path) from None
    return vocab_from_metadata(metadata, path=path)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"cannot be read: {type(exc).__name__}", path=path) from None


def check_features(folder: str) -> None:
    """Checks that ``<folder>/features.json`` is the serialisation of :func:`features`.

    The file is only compared, never interpreted: no class or module it names is imported.

    Raises:
      DataError: naming ``features.json`` when it is missing, unreadable or differs.
    """
    path = os.path.join(folder, FEATURES_FILENAME)
    if _read_json(path) != features_json():
        raise DataError(
            "differs from the scene-graph record features sgg_jax writes "
            "(sgg_jax.data.tfds_source.features); refusing to read the dataset",
            path=path,
        )


def _split_files(folder: str, info: Any, split: str) -> tuple[list[str], int]:
    """The shard files of ``split`` and its record count, from ``dataset_info.json``."""
    path = os.path.join(folder, INFO_FILENAME)
    if not isinstance(info, dict):
        raise DataError(f"expected a JSON object, got {type(info).__name__}", path=path)
    file_format = info.get("fileFormat")
    if file_format != FILE_FORMAT:
        raise DataError(
            f"stored as {file_format}, expected {FILE_FORMAT}", path=folder, field="file_format"
        )
    name = info.get("name")
    if not isinstance(name, str) or not _SPLIT_PATTERN.match(name):
        raise DataError(f"invalid dataset name {name!r}", path=path, field="name")
    entries = info.get("splits")
    if not isinstance(entries, list):
        raise DataError("expected a list of splits", path=path, field="splits")
    splits = {}
    for position, entry in enumerate(entries):
        entry_name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(entry_name, str) or not _SPLIT_PATTERN.match(entry_name):
            raise DataError(
                f"invalid split name {entry_name!r}", path=path, field=f"splits[{position}].name"
            )
        if entry_name in splits:
            raise DataError(f"split {entry_name!r} appears twice", path=path, field="splits")
        splits[entry_name] = entry
    if split not in splits:
        raise ConfigError("split", f"{folder} has splits {sorted(splits)}, not {split!r}")
    entry = splits[split]
    template = entry.get("filepathTemplate", _FILEPATH_TEMPLATE)
    if template != _FILEPATH_TEMPLATE:
        raise DataError(
            f"unsupported shard file template {template!r}",
            path=path,
            field=f"splits.{split}.filepathTemplate",
        )
    raw_lengths = entry.get("shardLengths", [])
    lengths = [] if isinstance(raw_lengths, list) else None
    for count in raw_lengths if lengths is not None else ():
        # TFDS writes the counts (int64 in its proto) as decimal strings.
        if isinstance(count, str) and count.isascii() and count.isdigit():
            lengths.append(int(count))
        elif isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            lengths.append(count)
        else:
            lengths = None
            break
    if lengths is None:
        raise DataError(
            "expected a list of non-negative record counts",
            path=path,
            field=f"splits.{split}.shardLengths",
        )
    total = len(lengths)
    files = [
        os.path.join(folder, f"{name}-{split}.{FILE_FORMAT}-{k:05d}-of-{total:05d}")
        for k in range(total)
    ]
    return files, sum(lengths)


def open_source(
    data_dir: str | os.PathLike, name: str, split: str, *, check_unique_ids: bool = True
) -> tuple[SceneGraphSource, Vocab]:
    """Opens one split of a dataset written by :mod:`data_prep` for random access.

    Nothing the dataset folder names is imported: ``features.json`` must equal our features
    (:func:`check_features`), ``dataset_info.json`` is read as plain JSON.

    Args:
      data_dir: the folder given to ``data_prep`` as ``--out``.
      name: ``"gqa200"`` / ``"vg150"``, optionally ``"<name>:<version>"``.
      split: a split of the dataset (``"train"``, ``"val"``, ``"test"``, ...).
      check_unique_ids: read every record's image id once and reject a split in which two
        records share one.

    Returns:
      ``(source, vocab)``: ``source[i]`` is the i-th scene graph of the split, in file order.

    Raises:
      DataError: the dataset is missing, not stored as array_record, its features differ from
        ours, its metadata is invalid, or two of its records share an image id.
      ConfigError: the dataset has no split ``split``.
    """
    folder = dataset_dir(data_dir, name)
    vocab = read_vocab(data_dir, name)
    check_features(folder)
    info = _read_json(os.path.join(folder, INFO_FILENAME))
    files, num_records = _split_files(folder, info, split)
    source = SceneGraphSource(files, path=folder, split=split, num_records=num_records)
    if check_unique_ids:
        source.check_unique_image_ids()
    return source, vocab
