"""Reader of Visual Genome VG150 in the Xu et al. / Scene-Graph-Benchmark (SGB) layout.

VG150 (150 object classes, 50 predicates) is the Visual Genome split of Xu et al., "Scene Graph
Generation by Iterative Message Passing" (CVPR 2017), as distributed with its attributes by
Scene-Graph-Benchmark.pytorch (Tang et al., CVPR 2020). Three files describe it:

* ``VG-SGG-with-attri.h5`` — one row per image in ``split`` (0 = train, 2 = test),
  ``img_to_first_box`` / ``img_to_last_box`` and ``img_to_first_rel`` / ``img_to_last_rel``
  (inclusive ranges into the flat box and relation tables; -1 when an image has none), ``labels``
  int[B, 1] (1-based), ``boxes_1024`` int[B, 4] (centre-x, centre-y, width, height at a longest side of
  ``BOX_SCALE`` = 1024 px), ``relationships`` int[R, 2] (global box indices), ``predicates``
  int[R, 1] (1-based) and ``attributes`` int[B, 10] (not read: scene graphs carry no attributes).
* ``VG-SGG-dicts-with-attri.json`` — ``idx_to_label`` (150), ``idx_to_predicate`` (50), their
  inverses, and the train-split ``object_count`` / ``predicate_count`` keyed by name.
* ``image_data.json`` — per image ``image_id``, ``width``, ``height`` (and ``url``, ``coco_id``,
  ``flickr_id``). After the four corrupted images 1592, 1722, 4616 and 4617 are removed it lists the
  images in the order of the h5 rows.

Semantics follow SGB's ``VGDataset`` (``load_graphs`` / ``load_info`` / ``load_image_filenames``):

* Splits: ``test`` takes the rows with h5 ``split == 2``; ``train`` and ``val`` take ``split == 0``,
  ``val`` being the first ``num_val`` of them and ``train`` the rest. Images without boxes are always
  dropped. ``filter_empty_rels`` (default True, as SGB sets it for every split of a relation model,
  which makes the familiar 26,446-image test split) drops images without relations in any split;
  pass ``filter_empty_rels=False`` to keep them (e.g. to pretrain a detector). ``num_images`` keeps
  the first images of the h5 split before ``num_val`` is applied.
* Boxes: ``x1 = cx - w / 2``, ``y1 = cy - h / 2``, ``x2 = x1 + w``, ``y2 = y1 + h`` at the 1024 scale,
  then ``* max(width, height) / 1024`` with the size from ``image_data.json``. When the box dataset is
  integer (as in the released file) ``x1, y1`` are truncated toward zero, as SGB's in-place write
  into its integer array does, so the boxes match the benchmark's ground truth exactly.
* ``filter_duplicate_rels`` (train only) keeps one predicate per (subject, object) pair, sampled once
  with ``numpy.random.default_rng(seed)``. SGB resamples at every epoch; the training pipeline's dedup
  option is the closer match when that matters.

Every graph goes through :func:`sgg_jax.data.validation.build_graph`, so malformed records raise
:class:`~sgg_jax.errors.DataError` naming the file, the image id and the h5 field.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import os
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from sgg_jax.data.fileio import load_json, require
from sgg_jax.data.validation import ReadReport, build_graph, dedup_relations
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import BACKGROUND, SceneGraph, Vocab

BOX_SCALE = 1024
CORRUPTED_IMAGES = frozenset({"1592.jpg", "1722.jpg", "4616.jpg", "4617.jpg"})
BUNDLED_DICTS = "VG-SGG-dicts-with-attri.json.gz"

_SPLIT_NAMES = {0: "train", 1: "val", 2: "test"}
_H5_SPLIT_FLAG = {"train": 0, "val": 0, "test": 2}
_INDEX_KEYS = ("img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel")
_H5_KEYS = ("split", *_INDEX_KEYS, "labels", f"boxes_{BOX_SCALE}", "relationships", "predicates")
_FIELD_NAMES = {
    "boxes": f"boxes_{BOX_SCALE}",
    "labels": "labels",
    "relations": "relationships",
    "predicates": "predicates",
    "width": "width",
    "height": "height",
}


# ----------------------------------------------------------------------------------------------
# Vocabulary.
# ----------------------------------------------------------------------------------------------


def _names_by_index(info: dict, key: str, path: str) -> list[str]:
    """``idx_to_label`` / ``idx_to_predicate`` ({"1": name, ...}) as a list in index order."""
    mapping = require(info, key, path)
    if not isinstance(mapping, dict) or not mapping:
        raise DataError("expected a non-empty object {index: name}", path=path, field=key)
    expected = {str(index) for index in range(1, len(mapping) + 1)}
    if set(mapping) != expected:
        unexpected = sorted(set(mapping) - expected)[:3]
        raise DataError(
            f"keys must be the indices 1..{len(mapping)}; unexpected {unexpected}",
            path=path,
            field=key,
        )
    names = [mapping[str(index)] for index in range(1, len(mapping) + 1)]
    for index, name in enumerate(names, start=1):
        if not isinstance(name, str) or not name or name == BACKGROUND:
            raise DataError(f"index {index} has an invalid name {name!r}", path=path, field=key)
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(f"name {duplicate!r} appears twice", path=path, field=key)
    return names


def _check_inverse(info: dict, key: str, names: list[str], path: str) -> None:
    """``label_to_idx`` / ``predicate_to_idx``, when present, must invert the index-to-name map."""
    if key not in info:
        return
    inverse = info[key]
    expected = {name: index for index, name in enumerate(names, start=1)}
    if not isinstance(inverse, dict):
        raise DataError("expected an object {name: index}", path=path, field=key)
    inverse = {name: index for name, index in inverse.items() if name != BACKGROUND}
    wrong = [name for name, index in expected.items() if inverse.get(name) != index]
    wrong += [name for name in inverse if name not in expected]
    if wrong:
        raise DataError(
            f"disagrees with the index-to-name map at {wrong[0]!r}", path=path, field=key
        )


def _counts_by_name(info: dict, key: str, names: list[str], path: str) -> np.ndarray:
    """Counts keyed by name -> int64[len(names) + 1] (index 0 = background = 0)."""
    by_name = require(info, key, path)
    if not isinstance(by_name, dict):
        raise DataError("expected an object {name: count}", path=path, field=key)
    index_of = {name: index for index, name in enumerate(names, start=1)}
    counts = np.zeros(len(names) + 1, np.int64)
    for name, count in by_name.items():
        if name not in index_of:
            raise DataError(
                f"count for {name!r}, which is not in the vocabulary", path=path, field=key
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise DataError(
                f"count of {name!r} is not a non-negative integer", path=path, field=key
            )
        counts[index_of[name]] = count
    return counts


def _vocab_from_dicts(info: Any, path: str) -> Vocab:
    if not isinstance(info, dict):
        raise DataError(f"expected a JSON object, got {type(info).__name__}", path=path)
    object_names = _names_by_index(info, "idx_to_label", path)
    predicate_names = _names_by_index(info, "idx_to_predicate", path)
    _check_inverse(info, "label_to_idx", object_names, path)
    _check_inverse(info, "predicate_to_idx", predicate_names, path)
    return Vocab(
        object_names=(BACKGROUND, *object_names),
        predicate_names=(BACKGROUND, *predicate_names),
        object_counts=_counts_by_name(info, "object_count", object_names, path),
        predicate_counts=_counts_by_name(info, "predicate_count", predicate_names, path),
    )


def read_vocab(dicts_path: str | os.PathLike) -> Vocab:
    """Reads ``VG-SGG-dicts-with-attri.json`` into a :class:`Vocab` with its train-split counts.

    Args:
      dicts_path: path of the dicts file (plain or ``.gz``).

    Returns:
      Vocab with 150 classes and 50 predicates for the real file; names in index order after
      ``__background__``; counts from ``object_count`` / ``predicate_count`` (0 for a name without
      a count).

    Raises:
      DataError: the file is unreadable, or a key is missing or inconsistent.
    """
    path = os.fspath(dicts_path)
    return _vocab_from_dicts(load_json(path), path)


@functools.lru_cache(maxsize=1)
def load_bundled_vocab() -> Vocab:
    """The VG150 vocabulary bundled with the package (a gzip copy of the SGB dicts file).

    Returns:
      Vocab with 150 classes, 50 predicates and the train-split counts of the released file
      (``on``: 712,409 relations).
    """
    resource = importlib.resources.files("sgg_jax.data") / "resources" / BUNDLED_DICTS
    label = f"sgg_jax.data/resources/{BUNDLED_DICTS}"
    try:
        with resource.open("rb") as compressed, gzip.open(compressed, "rt", encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot be read: {type(exc).__name__}", path=label) from None
    return _vocab_from_dicts(info, label)


# ----------------------------------------------------------------------------------------------
# image_data.json and the h5 file.
# ----------------------------------------------------------------------------------------------


def _aligned_image_data(path: str) -> list[dict]:
    """``image_data.json`` without the corrupted images: entry ``k`` describes h5 image row ``k``."""
    entries = load_json(path)
    if not isinstance(entries, list):
        raise DataError(
            f"expected a list of images, got {type(entries).__name__}",
            path=path,
            field="image_data",
        )
    aligned, seen = [], set()
    for position, entry in enumerate(entries):
        image_id = require(entry, "image_id", path, record=f"#{position}")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or image_id == "":
            raise DataError(
                f"invalid image id {image_id!r}", path=path, record=f"#{position}", field="image_id"
            )
        image_id = str(image_id)
        if f"{image_id}.jpg" in CORRUPTED_IMAGES:
            continue
        if image_id in seen:
            raise DataError("image id appears twice", path=path, record=image_id, field="image_id")
        seen.add(image_id)
        aligned.append(entry)
    return aligned


def _image_size(entry: dict, path: str, image_id: str) -> tuple[int, int]:
    """(width, height) of an image_data entry, checked to be positive integers."""
    size = []
    for key in ("width", "height"):
        value = require(entry, key, path, record=image_id)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"not a number: {value!r}", path=path, record=image_id, field=key)
        if not np.isfinite(value) or value <= 0 or value != int(value):
            raise DataError(
                f"must be a positive integer, got {value!r}", path=path, record=image_id, field=key
            )
        size.append(int(value))
    return size[0], size[1]


def _read_h5(path: str) -> dict[str, np.ndarray]:
    """Reads the datasets the reader needs, whole, with one-line errors."""
    arrays = {}
    try:
        h5_file = h5py.File(path, "r")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except OSError as exc:
        raise DataError(
            f"not a readable HDF5 file (truncated or corrupt): {exc}", path=path
        ) from None
    with h5_file:
        for key in _H5_KEYS:
            try:
                dataset = h5_file.get(key)
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                raise DataError(
                    f"cannot be read (truncated or corrupt file): {exc}", path=path, field=key
                ) from None
            if dataset is None:
                raise DataError("dataset missing from the HDF5 file", path=path, field=key)
            if not isinstance(dataset, h5py.Dataset):
                raise DataError("expected a dataset, found a group", path=path, field=key)
            try:
                arrays[key] = np.asarray(dataset[()])
            except (OSError, RuntimeError, ValueError, TypeError) as exc:
                raise DataError(
                    f"cannot be read (truncated or corrupt file): {exc}", path=path, field=key
                ) from None
    return arrays


def _column(array: np.ndarray, path: str, key: str, *, integer: bool) -> np.ndarray:
    """A dataset stored as [N] or [N, k] -> its first column [N]."""
    if array.ndim == 2 and array.shape[1] >= 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(
            f"expected shape [N] or [N, 1], got {list(array.shape)}", path=path, field=key
        )
    if integer and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"expected integers, got dtype {array.dtype}", path=path, field=key)
    if not integer and not np.issubdtype(array.dtype, np.number):
        raise DataError(f"expected numbers, got dtype {array.dtype}", path=path, field=key)
    return array


def _check_tables(arrays: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """Shape and dtype checks of the h5 tables; returns them flattened where SGB takes [:, 0]."""
    tables = {"split": _column(arrays["split"], path, "split", integer=True)}
    num_rows = tables["split"].shape[0]
    for key in _INDEX_KEYS:
        tables[key] = _column(arrays[key], path, key, integer=True).astype(np.int64)
        if tables[key].shape[0] != num_rows:
            raise DataError(
                f"has {tables[key].shape[0]} rows but 'split' has {num_rows}", path=path, field=key
            )
    box_key = f"boxes_{BOX_SCALE}"
    boxes = arrays[box_key]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise DataError(
            f"expected numbers of shape [B, 4], got {boxes.dtype} {list(boxes.shape)}",
            path=path,
            field=box_key,
        )
    tables[box_key] = boxes
    tables["labels"] = _column(arrays["labels"], path, "labels", integer=False)
    if tables["labels"].shape[0] != boxes.shape[0]:
        raise DataError(
            f"has {tables['labels'].shape[0]} rows but '{box_key}' has {boxes.shape[0]}",
            path=path,
            field="labels",
        )
    pairs = arrays["relationships"]
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.number):
        raise DataError(
            f"expected numbers of shape [R, 2], got {pairs.dtype} {list(pairs.shape)}",
            path=path,
            field="relationships",
        )
    tables["relationships"] = pairs
    tables["predicates"] = _column(arrays["predicates"], path, "predicates", integer=False)
    if tables["predicates"].shape[0] != pairs.shape[0]:
        raise DataError(
            f"has {tables['predicates'].shape[0]} rows but 'relationships' has {pairs.shape[0]}",
            path=path,
            field="predicates",
        )
    return tables


def _check_ranges(
    tables: dict[str, np.ndarray], rows: np.ndarray, image_ids: list[str], path: str
) -> None:
    """Checks the first/last index ranges of the h5 rows ``rows``; raises at the first bad one."""
    first_box, last_box = tables["img_to_first_box"][rows], tables["img_to_last_box"][rows]
    first_rel, last_rel = tables["img_to_first_rel"][rows], tables["img_to_last_rel"][rows]
    num_boxes = tables[f"boxes_{BOX_SCALE}"].shape[0]
    num_rels = tables["relationships"].shape[0]
    has_boxes, has_rels = first_box >= 0, first_rel >= 0
    checks: list[tuple[np.ndarray, str, Callable[[int], str]]] = [
        (first_box < -1, "img_to_first_box", lambda k: f"invalid index {first_box[k]}"),
        (
            ~has_boxes & (last_box != -1),
            "img_to_last_box",
            lambda k: f"is {last_box[k]} but img_to_first_box is -1 (no boxes)",
        ),
        (
            has_boxes & (last_box < first_box),
            "img_to_last_box",
            lambda k: f"{last_box[k]} is before img_to_first_box {first_box[k]}",
        ),
        (
            has_boxes & (last_box >= num_boxes),
            "img_to_last_box",
            lambda k: f"{last_box[k]} is beyond the {num_boxes} boxes of the file",
        ),
        (first_rel < -1, "img_to_first_rel", lambda k: f"invalid index {first_rel[k]}"),
        (
            ~has_rels & (last_rel != -1),
            "img_to_last_rel",
            lambda k: f"is {last_rel[k]} but img_to_first_rel is -1 (no relations)",
        ),
        (
            has_rels & ~has_boxes,
            "img_to_first_rel",
            lambda k: f"is {first_rel[k]} on an image without boxes",
        ),
        (
            has_rels & (last_rel < first_rel),
            "img_to_last_rel",
            lambda k: f"{last_rel[k]} is before img_to_first_rel {first_rel[k]}",
        ),
        (
            has_rels & (last_rel >= num_rels),
            "img_to_last_rel",
            lambda k: f"{last_rel[k]} is beyond the {num_rels} relations of the file",
        ),
    ]
    for bad, field, message in checks:
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(message(k), path=path, record=image_ids[rows[k]], field=field)


def _cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] centre-size boxes -> xyxy (float64), truncating x1, y1 for integer input like SGB."""
    centre_size = boxes.astype(np.float64)
    top_left = centre_size[:, :2] - centre_size[:, 2:] / 2
    if np.issubdtype(boxes.dtype, np.integer):
        top_left = np.trunc(top_left)
    return np.concatenate([top_left, top_left + centre_size[:, 2:]], axis=1)


# ----------------------------------------------------------------------------------------------
# The reader.
# ----------------------------------------------------------------------------------------------


def _split_name(split: Any) -> str:
    if isinstance(split, (int, np.integer)) and not isinstance(split, bool):
        if int(split) in _SPLIT_NAMES:
            return _SPLIT_NAMES[int(split)]
    elif isinstance(split, str) and split.lower() in _H5_SPLIT_FLAG:
        return split.lower()
    raise ConfigError("split", f"expected 0/'train', 1/'val' or 2/'test', got {split!r}")


def read(
    h5_path: str | os.PathLike,
    dicts_path: str | os.PathLike,
    image_data_path: str | os.PathLike,
    split: int | str,
    *,
    num_val: int = 0,
    filter_empty_rels: bool = True,
    filter_duplicate_rels: bool = False,
    seed: int = 0,
    num_images: int = -1,
    strict: bool = False,
    drop_self_relations: bool = False,
    image_dir: str | os.PathLike | None = None,
    report: ReadReport | None = None,
) -> tuple[list[SceneGraph], Vocab]:
    """Reads one split of VG150 from the SGB files.

    Args:
      h5_path: ``VG-SGG-with-attri.h5``.
      dicts_path: ``VG-SGG-dicts-with-attri.json`` (plain or ``.gz``).
      image_data_path: ``image_data.json`` (plain or ``.gz``).
      split: 0 / ``"train"``, 1 / ``"val"`` or 2 / ``"test"``.
      num_val: the first ``num_val`` train images form ``val`` and are left out of ``train``
        (SGB uses 5000); ignored for ``test``; ``val`` needs ``num_val > 0``.
      filter_empty_rels: drop images without relations, in every split (see module docstring).
      filter_duplicate_rels: keep one predicate per (subject, object) pair, sampled with ``seed``;
        ``train`` only.
      seed: seed of the ``numpy.random.Generator`` that ``filter_duplicate_rels`` samples with.
      num_images: keep the first ``num_images`` images of the h5 split (-1: all), before
        ``num_val`` is applied, as SGB does.
      strict: raise on annotation quirks instead of repairing them
        (see :mod:`sgg_jax.data.validation`).
      drop_self_relations: drop relations whose subject is its object.
      image_dir: folder of the VG images; sets ``SceneGraph.image_path`` to
        ``<image_dir>/<image_id>.jpg``.
      report: updated in place with what was read, repaired and dropped;
        ``dropped_images_without_boxes`` / ``dropped_images_without_relations`` count the images of
        the h5 split dropped for holding no box (always) / no relation (``filter_empty_rels``),
        before ``num_images`` / ``num_val``.

    Returns:
      ``(graphs, vocab)``: the scene graphs in h5 order (boxes float32[N, 4] xyxy pixels, labels
      int32[N] in 1..150, relations int32[R, 3]) and the vocabulary. For ``train`` the vocabulary's
      counts are recomputed from the returned graphs (``num_val`` and the filters change them);
      otherwise they are the train-split counts of the dicts file.

    Raises:
      ConfigError: an invalid ``split``, ``num_val``, ``num_images`` or ``filter_duplicate_rels``.
      DataError: a malformed file or record, naming the file, the image id and the field.
    """
    split_name = _split_name(split)
    if isinstance(num_val, bool) or not isinstance(num_val, (int, np.integer)) or num_val < 0:
        raise ConfigError("num_val", f"must be a non-negative integer, got {num_val!r}")
    if split_name == "val" and num_val == 0:
        raise ConfigError("num_val", "the 'val' split is the first num_val train images; pass > 0")
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
        raise ConfigError("num_images", f"must be an integer, got {num_images!r}")
    if num_images == 0 or num_images < -1:
        raise ConfigError("num_images", f"must be -1 (all) or positive, got {num_images}")
    if filter_duplicate_rels and split_name != "train":
        raise ConfigError(
            "filter_duplicate_rels", f"applies to the train split only, not {split_name!r}"
        )

    h5_path, image_data_path = os.fspath(h5_path), os.fspath(image_data_path)
    vocab = read_vocab(dicts_path)
    image_data = _aligned_image_data(image_data_path)
    tables = _check_tables(_read_h5(h5_path), h5_path)
    num_rows = tables["split"].shape[0]
    if len(image_data) != num_rows:
        raise DataError(
            f"{len(image_data)} images after removing the corrupted ones "
            f"{sorted(CORRUPTED_IMAGES)}, but {h5_path} has {num_rows}",
            path=image_data_path,
            field="image_data",
        )
    image_ids = [str(entry["image_id"]) for entry in image_data]

    # Image selection (SGB load_graphs): h5 split -> has boxes [-> has relations] -> num_images
    # -> num_val.
    flag = _H5_SPLIT_FLAG[split_name]
    pool = np.flatnonzero(tables["split"] == flag)
    _check_ranges(tables, pool, image_ids, h5_path)
    has_boxes = tables["img_to_first_box"][pool] >= 0
    keep = has_boxes.copy()
    if filter_empty_rels:
        keep &= tables["img_to_first_rel"][pool] >= 0
    report = ReadReport() if report is None else report
    report.dropped_images_without_boxes += int((~has_boxes).sum())
    report.dropped_images_without_relations += int((has_boxes & ~keep).sum())
    rows = pool[keep]
    if num_images > 0:
        rows = rows[:num_images]
    if split_name == "val":
        rows = rows[:num_val]
    elif split_name == "train" and num_val > 0:
        rows = rows[num_val:]
    if rows.shape[0] == 0:
        raise DataError(
            f"no {split_name} images: {pool.shape[0]} rows with split == {flag}, "
            f"{int(keep.sum())} with boxes{' and relations' if filter_empty_rels else ''}, "
            f"num_images={num_images}, num_val={num_val}",
            path=h5_path,
            field="split",
        )

    box_key = f"boxes_{BOX_SCALE}"
    rng = np.random.default_rng(seed)
    graphs = []
    for row in rows:
        image_id = image_ids[row]
        width, height = _image_size(image_data[row], image_data_path, image_id)
        box_start = int(tables["img_to_first_box"][row])
        box_stop = int(tables["img_to_last_box"][row]) + 1
        # SGB get_groundtruth: box / BOX_SCALE * max(w, h).
        boxes = (
            _cxcywh_to_xyxy(tables[box_key][box_start:box_stop]) / BOX_SCALE * max(width, height)
        )
        rel_start = int(tables["img_to_first_rel"][row])
        if rel_start >= 0:
            rel_stop = int(tables["img_to_last_rel"][row]) + 1
            pairs = tables["relationships"][rel_start:rel_stop].astype(np.float64) - box_start
            predicates = tables["predicates"][rel_start:rel_stop].astype(np.float64)
            relations = np.concatenate([pairs, predicates[:, None]], axis=1)
        else:
            relations = np.zeros((0, 3), np.float64)
        graph = build_graph(
            path=h5_path,
            image_id=image_id,
            width=width,
            height=height,
            boxes=boxes,
            labels=tables["labels"][box_start:box_stop],
            relations=relations,
            num_classes=vocab.num_classes,
            num_predicates=vocab.num_predicates,
            strict=strict,
            drop_self_relations=drop_self_relations,
            report=report,
            image_path=None if image_dir is None else os.path.join(image_dir, f"{image_id}.jpg"),
            field_names=_FIELD_NAMES,
        )
        if filter_duplicate_rels:
            unique = dedup_relations(graph.relations, rng)
            dropped = graph.num_relations - unique.shape[0]
            if dropped:
                # build_graph counted the graph as read; count what is returned.
                report.relations -= dropped
                report.dropped_duplicate_relations += dropped
                graph = graph.replace(relations=unique)
        graphs.append(graph)

    if split_name == "train":
        vocab = vocab.with_counts_from(graphs)
    report.log(h5_path)
    return graphs, vocab
