"""Reader of GQA-200 in the SHA-GCL layout, and the bundled "GQA-200-mini" dataset.

GQA-200 (200 object classes, 100 predicates) is the GQA split introduced with SHA-GCL for long-tailed
scene graph generation. A split file (``GQA_200_Train.json`` / ``GQA_200_Test.json``) holds parallel
lists over images:

* ``filenames_all``: image file names (``<Visual Genome id>.jpg``),
* ``img_info_all``: ``{"width": int, "height": int}``,
* ``gt_boxes_all``: ``[[x1, y1, x2, y2], ...]`` pixels,
* ``gt_classes_all``: object classes 1..200,
* ``relationships_all``: rows ``[subject_idx, object_idx, predicate]`` with predicate 1..100.

``GQA_200_ID_Info.json`` holds ``ind_to_classes`` (201 names incl. ``__background__``),
``ind_to_predicates`` (101) and the train-split counts ``obj_count`` / ``rel_count`` keyed by name.

The package bundles the complete GQA-200 test split (8,209 images; GQA, Hudson & Manning, CC BY 4.0;
split from SHA-GCL). :func:`load_bundled` re-splits it deterministically by image id into
train / val / test = 70 / 10 / 20 % ("GQA-200-mini"), so every experiment can run offline on real
scene graphs.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import zlib

import numpy as np

from sgg_jax.data.fileio import load_json, require
from sgg_jax.data.validation import ReadReport, build_graph
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph, Vocab

_SPLIT_KEYS = (
    "filenames_all",
    "img_info_all",
    "gt_boxes_all",
    "gt_classes_all",
    "relationships_all",
)
_FIELD_NAMES = {
    "boxes": "gt_boxes_all",
    "labels": "gt_classes_all",
    "relations": "relationships_all",
    "predicates": "relationships_all",
    "width": "img_info_all.width",
    "height": "img_info_all.height",
}
BUNDLED_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def read_vocab(id_info_path: str | os.PathLike) -> Vocab:
    """Reads ``GQA_200_ID_Info.json`` into a :class:`Vocab` with its train-split counts.

    Args:
      id_info_path: path of the id-info file (plain or ``.gz``).

    Returns:
      Vocab with 200 classes and 100 predicates (for the real file).
    """
    path = os.fspath(id_info_path)
    info = load_json(path)
    vocab_lists = {}
    for key in ("ind_to_classes", "ind_to_predicates"):
        names = require(info, key, path)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError("expected a non-empty list of names", path=path, field=key)
        if names[0] != "__background__":
            raise DataError(
                f"index 0 must be '__background__', got {names[0]!r}", path=path, field=key
            )
        if len(set(names)) != len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            raise DataError(f"name {duplicate!r} appears twice", path=path, field=key)
        vocab_lists[key] = names
    counts = {}
    for key, names_key in (("obj_count", "ind_to_classes"), ("rel_count", "ind_to_predicates")):
        by_name = info.get(key, {}) if isinstance(info, dict) else {}
        if not isinstance(by_name, dict):
            raise DataError("expected an object of counts keyed by name", path=path, field=key)
        for name, count in by_name.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise DataError(
                    f"count of {name!r} is not a non-negative integer: {count!r}"[:200],
                    path=path,
                    field=key,
                )
        counts[key] = np.array([by_name.get(name, 0) for name in vocab_lists[names_key]], np.int64)
        counts[key][0] = 0
    return Vocab(
        object_names=tuple(vocab_lists["ind_to_classes"]),
        predicate_names=tuple(vocab_lists["ind_to_predicates"]),
        object_counts=counts["obj_count"],
        predicate_counts=counts["rel_count"],
    )


def read(
    split_json_path: str | os.PathLike,
    id_info_path: str | os.PathLike,
    *,
    strict: bool = False,
    drop_self_relations: bool = False,
    filter_empty_rels: bool = False,
    image_dir: str | None = None,
    report: ReadReport | None = None,
) -> tuple[list[SceneGraph], Vocab]:
    """Reads one GQA-200 split file in the SHA-GCL layout.

    Args:
      split_json_path: ``GQA_200_{Train,Test}.json`` (plain or ``.gz``).
      id_info_path: ``GQA_200_ID_Info.json`` (plain or ``.gz``).
      strict: raise on annotation quirks instead of repairing them
        (see :mod:`sgg_jax.data.validation`).
      drop_self_relations: drop relations whose subject is its object.
      filter_empty_rels: drop images without relations (training practice).
      image_dir: folder of the images; sets ``SceneGraph.image_path`` to
        ``<image_dir>/<image_id>.jpg`` (the image id is the file name of ``filenames_all``).
      report: filled with counts of what was read, repaired and dropped.

    Returns:
      ``(graphs, vocab)``; the vocabulary carries the train-split counts of the id-info file.

    Raises:
      DataError: naming the file, the image id and the field.
    """
    vocab = read_vocab(id_info_path)
    path = os.fspath(split_json_path)
    data = load_json(path)
    columns = {key: require(data, key, path) for key in _SPLIT_KEYS}
    for key, column in columns.items():
        if not isinstance(column, list):
            raise DataError(f"expected a list, got {type(column).__name__}", path=path, field=key)
    num_images = len(columns["filenames_all"])
    for key, column in columns.items():
        if len(column) != num_images:
            raise DataError(
                f"has {len(column)} entries but filenames_all has {num_images}",
                path=path,
                field=key,
            )
    if num_images == 0:
        raise DataError("the split has no images", path=path, field="filenames_all")

    report = ReadReport() if report is None else report
    graphs = []
    seen: set[str] = set()
    for position, (filename, info, boxes, labels, relations) in enumerate(
        zip(*columns.values(), strict=True)
    ):
        if not isinstance(filename, str) or not filename:
            raise DataError(
                f"expected a non-empty file name, got {filename!r}"[:200],
                path=path,
                record=f"#{position}",
                field="filenames_all",
            )
        image_id = os.path.splitext(os.path.basename(filename))[0]
        if not image_id:
            raise DataError(
                f"no image id in the file name {filename!r}",
                path=path,
                record=f"#{position}",
                field="filenames_all",
            )
        if image_id in seen:
            raise DataError(
                "image id appears twice", path=path, record=image_id, field="filenames_all"
            )
        seen.add(image_id)
        if not isinstance(relations, list):
            raise DataError(
                f"expected a list, got {type(relations).__name__}",
                path=path,
                record=image_id,
                field="relationships_all",
            )
        if filter_empty_rels and not relations:
            report.dropped_images_without_relations += 1
            continue
        graphs.append(
            build_graph(
                path=path,
                image_id=image_id,
                width=require(info, "width", path, image_id),
                height=require(info, "height", path, image_id),
                boxes=boxes,
                labels=labels,
                relations=relations,
                num_classes=vocab.num_classes,
                num_predicates=vocab.num_predicates,
                strict=strict,
                drop_self_relations=drop_self_relations,
                report=report,
                image_path=None
                if image_dir is None
                else os.path.join(image_dir, f"{image_id}.jpg"),
                field_names=_FIELD_NAMES,
            )
        )
    if not graphs:
        raise DataError("no image with relations in the split", path=path, field="filenames_all")
    report.log(path)
    return graphs, vocab


def _resource(name: str) -> str:
    return str(importlib.resources.files("sgg_jax.data") / "resources" / name)


@functools.lru_cache(maxsize=2)
def _bundled_all(strict: bool) -> tuple[tuple[SceneGraph, ...], Vocab]:
    graphs, vocab = read(
        _resource("GQA_200_Test.json.gz"), _resource("GQA_200_ID_Info.json.gz"), strict=strict
    )
    return tuple(graphs), vocab


def split_of(image_id: str) -> str:
    """The GQA-200-mini split of an image: a fixed function of its id (CRC-32 bucket of 10,000).

    Args:
      image_id: image id string.

    Returns:
      ``"train"`` (70 %), ``"val"`` (10 %) or ``"test"`` (20 %).
    """
    bucket = zlib.crc32(str(image_id).encode("utf-8")) % 10_000
    if bucket < 7_000:
        return "train"
    if bucket < 8_000:
        return "val"
    return "test"


def load_bundled(split: str) -> tuple[list[SceneGraph], Vocab]:
    """GQA-200-mini: the bundled real GQA-200 test split re-split 70/10/20 by image id.

    The split of an image is :func:`split_of` its id, so it does not depend on file order and is the
    same on every machine. Annotation quirks are repaired as in :func:`read` (default policy). The
    vocabulary's counts are recomputed from the train part, whichever split is asked for.

    Args:
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.

    Returns:
      ``(graphs, vocab)`` with graphs in file order.
    """
    if split not in (*BUNDLED_SPLIT_FRACTIONS, "all"):
        raise ConfigError("split", f"expected train, val, test or all, got {split!r}")
    graphs, vocab = _bundled_all(False)
    train = [g for g in graphs if split_of(g.image_id) == "train"]
    vocab = vocab.with_counts_from(train)
    if split == "all":
        return list(graphs), vocab
    return [g for g in graphs if split_of(g.image_id) == split], vocab
