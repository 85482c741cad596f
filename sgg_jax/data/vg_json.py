"""Readers of the raw Visual Genome JSON (``relationships.json``) and of COCO captions joined to VG.

Maheshwari et al., "Scene Graph Embeddings Using Relative Similarity Supervision" (AAAI 2021) train
scene-graph embeddings on the Visual Genome images that also belong to COCO, supervised by the
similarity of their COCO captions. Users with the full data read it with these two functions:

* :func:`read_relationships` — VG v1.4 ``relationships.json`` (a JSON list, one entry per image:
  ``{"image_id": int, "relationships": [{"relationship_id", "predicate": str, "synsets",
  "subject": {"object_id", "x", "y", "w", "h", "name" | "names": [...], "synsets"},
  "object": {...}}, ...]}``) -> list of :class:`~sgg_jax.structures.SceneGraph`.
* :func:`read_coco_captions` — COCO ``captions_{train,val}2017.json`` joined with VG
  ``image_data.json`` through its ``coco_id`` -> VG image id -> captions, the mapping read by
  :func:`sgg_jax.data.captions.attach` and :func:`sgg_jax.projects.sg_embed.similarity.caption_similarity`.

Conventions of :func:`read_relationships`:

* Names (objects and predicates) are normalised: lower-cased, stripped, internal whitespace collapsed
  to one space. An object's name is ``name``, or ``names[0]`` when it has a ``names`` list. Then the
  optional ``aliases`` mapping (normalised keys and values, one table for objects and predicates, as
  e.g. VG150's object / predicate alias lists) is applied once.
* Objects are nodes, one per ``object_id`` within an image (an object shared by several relations is
  one node; its name and box come from its first occurrence), in order of first occurrence (subject
  before object). ``relationships.json`` lists only objects that take part in a relation.
* Boxes: ``x1 = x``, ``y1 = y``, ``x2 = x + w``, ``y2 = y + h`` in pixels — the convention of
  Scene-Graph-Benchmark's VG preprocessing (a box of width ``w`` spans ``x .. x + w``), without its
  rescaling to 1024 px. Negative ``w`` / ``h`` is malformed; boxes beyond the image are repaired or
  rejected by :func:`sgg_jax.data.validation.build_graph` (``strict``).
* Image size: from ``image_data.json`` (``image_data_path``) when given — do give it for geometry
  features. Without it the size is the extent of the image's boxes, ``ceil(max x2)`` by
  ``ceil(max y2)`` (at least 1 px): an estimate, never larger than the real image.
* Vocabulary: with ``vocab`` (e.g. :func:`sgg_jax.data.vg150.load_bundled_vocab`), an object whose
  name is not in it is dropped with all its relations, and a relation whose predicate is not in it is
  dropped (its objects stay nodes); both are counted in the report. Without ``vocab`` one is built
  from the read images: the object names seen on at least ``min_count`` objects and the predicates
  seen on at least ``min_count`` relations (counted after normalisation and aliases, over the read
  images), of which at most the ``num_object_classes`` / ``num_predicates`` most frequent (ties by
  name; None = no limit), each listed alphabetically as in VG150's dictionaries, with counts
  recomputed from the returned graphs. The defaults (150 / 50, ``min_count=1``) give a vocabulary of
  VG150's sizes; Maheshwari et al. keep every object and relation type seen at least 25 times
  (``num_object_classes=None, num_predicates=None, min_count=25``). Empty names are never in a
  vocabulary; a built vocabulary without any object or any predicate is a ``DataError``.
* Every image read is returned, also when no relation survives (the experiment filters). Several
  relations on one pair are kept (multi-label truth). Self-relations (subject ``object_id`` ==
  object ``object_id``) are handled by ``build_graph`` (kept and counted; raise when ``strict``;
  dropped with ``drop_self_relations``).

Malformed content raises :class:`~sgg_jax.errors.DataError` naming the file, the image (its id, or
``#<position>`` when the id itself is bad) and the field, e.g. ``relationships[3].subject.w``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sgg_jax.data.fileio import load_json, require
from sgg_jax.data.validation import ReadReport, build_graph
from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.structures import BACKGROUND, SceneGraph, Vocab

_FIELD_NAMES = {
    "boxes": "x, y, w, h",
    "labels": "name",
    "relations": "relationships",
    "predicates": "predicate",
    "width": "image_data.width",
    "height": "image_data.height",
}
_BOX_KEYS = ("x", "y", "w", "h")


@dataclasses.dataclass
class VGReadReport(ReadReport):
    """:class:`ReadReport` plus what the vocabulary filter dropped (all counts).

    Attributes:
      dropped_objects: objects (nodes) whose name is not in the vocabulary.
      dropped_relations_unknown_object: relations dropped because their subject or object was.
      dropped_relations_unknown_predicate: relations with both objects kept but a predicate not in
        the vocabulary.
      requested_images_not_in_file: ids of ``image_ids`` that the file does not hold.
    """

    dropped_objects: int = 0
    dropped_relations_unknown_object: int = 0
    dropped_relations_unknown_predicate: int = 0
    requested_images_not_in_file: int = 0


def normalise_name(name: str) -> str:
    """Lower-cases, strips and collapses internal whitespace: ``" Tall  Man "`` -> ``"tall man"``."""
    return " ".join(name.lower().split())


# ----------------------------------------------------------------------------------------------
# Parsing one relationships.json entry into compact arrays.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _ParsedImage:
    """One image before the vocabulary is applied: names are ids into the reader's name tables."""

    image_id: str
    boxes: np.ndarray  # float64[N, 4] xyxy
    object_names: np.ndarray  # int64[N] ids into the object name table
    relations: np.ndarray  # int64[R, 3] (subject node, object node, predicate name id)


def _image_id(entry: Any, path: str, position: int) -> str:
    record = f"#{position}"
    if not isinstance(entry, dict):
        raise DataError(
            f"expected a JSON object, got {type(entry).__name__}", path=path, record=record
        )
    key = "id" if "image_id" not in entry and "id" in entry else "image_id"
    if key not in entry:
        raise DataError("missing key", path=path, record=record, field="image_id")
    image_id = entry[key]
    if isinstance(image_id, bool) or not isinstance(image_id, int | str) or image_id == "":
        raise DataError(f"invalid image id {image_id!r}", path=path, record=record, field=key)
    return str(image_id)


def _intern(name: str, table: dict[str, int]) -> int:
    index = table.get(name)
    if index is None:
        index = table[name] = len(table)
    return index


class _Parser:
    """Parses the entries of one file into :class:`_ParsedImage` s.

    Names are interned: the tables map a normalised (and aliased) name to an id, and the caches map
    each raw name seen in the file to that id, so most objects cost a few dict look-ups and no string
    copy. Well-formed records (integer coordinates, as in the released file) take the fast path; any
    other record goes through the checked path, which accepts finite floats and raises the
    :class:`DataError` of a malformed one.
    """

    def __init__(self, path: str, aliases: Mapping[str, str]):
        self.path = path
        self.aliases = aliases
        self.object_table: dict[str, int] = {}
        self.predicate_table: dict[str, int] = {}
        self._object_cache: dict[str, int] = {}
        self._predicate_cache: dict[str, int] = {}

    def _fail(self, image_id: str, field: str, message: str) -> DataError:
        return DataError(message, path=self.path, record=image_id, field=field)

    def _name_id(self, value: Any, image_id: str, field: str, *, predicate: bool) -> int:
        if not isinstance(value, str):
            raise self._fail(image_id, field, f"expected a string, got {value!r}")
        cache = self._predicate_cache if predicate else self._object_cache
        name_id = cache.get(value)
        if name_id is None:
            name = normalise_name(value)
            name = self.aliases.get(name, name)
            name_id = cache[value] = _intern(
                name, self.predicate_table if predicate else self.object_table
            )
        return name_id

    def _predicate_checked(self, relationship: Any, image_id: str, k: int) -> int:
        field = f"relationships[{k}]"
        if not isinstance(relationship, dict):
            raise self._fail(
                image_id, field, f"expected a JSON object, got {type(relationship).__name__}"
            )
        if "predicate" not in relationship:
            raise self._fail(image_id, f"{field}.predicate", "missing key")
        return self._name_id(
            relationship["predicate"], image_id, f"{field}.predicate", predicate=True
        )

    def _endpoint_checked(
        self, relationship: dict, role: str, image_id: str, k: int
    ) -> tuple[int, int, list[float]]:
        """``(object_id, name id, xyxy box)`` of ``relationship[role]``, every field checked."""
        field = f"relationships[{k}].{role}"
        if role not in relationship:
            raise self._fail(image_id, field, "missing key")
        entity = relationship[role]
        if not isinstance(entity, dict):
            raise self._fail(
                image_id, field, f"expected a JSON object, got {type(entity).__name__}"
            )
        if "object_id" not in entity:
            raise self._fail(image_id, f"{field}.object_id", "missing key")
        object_id = entity["object_id"]
        if isinstance(object_id, bool) or not isinstance(object_id, int):
            raise self._fail(image_id, f"{field}.object_id", f"not an integer: {object_id!r}")
        if "name" in entity:
            name_id = self._name_id(entity["name"], image_id, f"{field}.name", predicate=False)
        elif "names" in entity:
            names = entity["names"]
            if not isinstance(names, list) or not names:
                raise self._fail(
                    image_id, f"{field}.names", f"expected a non-empty list of names, got {names!r}"
                )
            name_id = self._name_id(names[0], image_id, f"{field}.names[0]", predicate=False)
        else:
            raise self._fail(image_id, f"{field}.name", "missing key (neither 'name' nor 'names')")
        values = []
        for key in _BOX_KEYS:
            if key not in entity:
                raise self._fail(image_id, f"{field}.{key}", "missing key")
            value = entity[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise self._fail(image_id, f"{field}.{key}", f"not a finite number: {value!r}")
            values.append(float(value))
        x, y, w, h = values
        for key, size in (("w", w), ("h", h)):
            if size < 0:
                raise self._fail(image_id, f"{field}.{key}", f"must be >= 0, got {size:g}")
        return object_id, name_id, [x, y, x + w, y + h]

    def parse(self, entry: dict, image_id: str) -> _ParsedImage:
        relationships = require(entry, "relationships", self.path, image_id)
        if not isinstance(relationships, list):
            raise self._fail(
                image_id, "relationships", f"expected a list, got {type(relationships).__name__}"
            )
        object_cache, predicate_cache = self._object_cache, self._predicate_cache
        node_of: dict[int, int] = {}
        boxes: list[list[float]] = []
        names: list[int] = []
        relations: list[tuple[int, int, int]] = []
        for k, relationship in enumerate(relationships):
            try:
                predicate = predicate_cache[relationship["predicate"]]
            except (KeyError, TypeError):
                predicate = self._predicate_checked(relationship, image_id, k)
            endpoints = []
            for role in ("subject", "object"):
                # Fast path: a dict with integer object_id / x / y / w / h (w, h >= 0) and a known
                # raw name. Anything else (floats included) is checked field by field.
                try:
                    entity = relationship[role]
                    object_id = entity["object_id"]
                    x, y, w, h = entity["x"], entity["y"], entity["w"], entity["h"]
                    name_id = object_cache[
                        entity["name"] if "name" in entity else entity["names"][0]
                    ]
                    fast = (
                        type(object_id) is int
                        and type(x) is int
                        and type(y) is int
                        and type(w) is int
                        and type(h) is int
                        and w >= 0
                        and h >= 0
                    )
                except (KeyError, TypeError, IndexError):
                    fast = False
                if fast:
                    box = [x, y, x + w, y + h]
                else:
                    object_id, name_id, box = self._endpoint_checked(
                        relationship, role, image_id, k
                    )
                # The first occurrence of an object_id defines the node (name and box).
                node = node_of.get(object_id)
                if node is None:
                    node = node_of[object_id] = len(boxes)
                    boxes.append(box)
                    names.append(name_id)
                endpoints.append(node)
            relations.append((endpoints[0], endpoints[1], predicate))
        return _ParsedImage(
            image_id=image_id,
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
            object_names=np.asarray(names, np.int64),
            relations=np.asarray(relations, np.int64).reshape(-1, 3),
        )


# ----------------------------------------------------------------------------------------------
# image_data.json.
# ----------------------------------------------------------------------------------------------


def _read_image_data(path: str) -> dict[str, dict]:
    """``image_data.json`` as VG image id (str) -> entry, in file order; ids checked and unique."""
    entries = load_json(path)
    if not isinstance(entries, list):
        raise DataError(
            f"expected a list of images, got {type(entries).__name__}",
            path=path,
            field="image_data",
        )
    by_id: dict[str, dict] = {}
    for position, entry in enumerate(entries):
        image_id = _image_id(entry, path, position)
        if image_id in by_id:
            raise DataError("image id appears twice", path=path, record=image_id, field="image_id")
        by_id[image_id] = entry
    return by_id


def _image_size(entry: dict, path: str, image_id: str) -> tuple[int, int]:
    size = []
    for key in ("width", "height"):
        value = require(entry, key, path, record=image_id)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
            or value != int(value)
        ):
            raise DataError(
                f"must be a positive integer, got {value!r}", path=path, record=image_id, field=key
            )
        size.append(int(value))
    return size[0], size[1]


def _box_extent(boxes: np.ndarray) -> tuple[int, int]:
    if boxes.shape[0] == 0:
        return 1, 1
    return max(1, math.ceil(boxes[:, 2].max())), max(1, math.ceil(boxes[:, 3].max()))


# ----------------------------------------------------------------------------------------------
# Vocabulary.
# ----------------------------------------------------------------------------------------------


def _most_frequent(
    table: dict[str, int], counts: np.ndarray, limit: int | None, min_count: int
) -> list[str]:
    """The non-empty names counted at least ``min_count`` times, at most the ``limit`` with the
    highest counts (ties by name; None = all), sorted by name."""
    ranked = sorted(
        (-int(counts[index]), name)
        for name, index in table.items()
        if name and counts[index] >= min_count
    )
    return sorted(name for _, name in ranked[:limit])


def _lookup(table: dict[str, int], names: Sequence[str]) -> np.ndarray:
    """int64[len(table)]: name id -> 1-based vocabulary index, 0 when the name is not in ``names``."""
    index_of: dict[str, int] = {}
    for index, name in enumerate(names):
        if index > 0:
            index_of.setdefault(normalise_name(name), index)
    lookup = np.zeros(len(table), np.int64)
    for name, name_id in table.items():
        lookup[name_id] = index_of.get(name, 0) if name else 0
    return lookup


def _check_aliases(aliases: Any) -> dict[str, str]:
    if aliases is None:
        return {}
    if not isinstance(aliases, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise ConfigError("aliases", "must map names (str) to names (str)")
    return {normalise_name(k): normalise_name(v) for k, v in aliases.items()}


# ----------------------------------------------------------------------------------------------
# Public readers.
# ----------------------------------------------------------------------------------------------


def read_relationships(
    path: str | os.PathLike,
    *,
    vocab: Vocab | None = None,
    num_object_classes: int | None = 150,
    num_predicates: int | None = 50,
    min_count: int = 1,
    aliases: Mapping[str, str] | None = None,
    image_ids: Iterable[str | int] | None = None,
    image_data_path: str | os.PathLike | None = None,
    strict: bool = False,
    drop_self_relations: bool = False,
) -> tuple[list[SceneGraph], Vocab, VGReadReport]:
    """Reads Visual Genome ``relationships.json`` into scene graphs (conventions: module docstring).

    Args:
      path: ``relationships.json`` (plain or ``.gz``).
      vocab: vocabulary to map names into; None = build one from the read images.
      num_object_classes, num_predicates: most names of the built vocabulary (None = no limit;
        ignored with ``vocab``).
      min_count: fewest objects / relations a name needs to enter the built vocabulary (>= 1;
        ignored with ``vocab``; the paper's: 25).
      aliases: name -> name applied after normalisation (objects and predicates).
      image_ids: read only these images (file order is kept); None = every image.
      image_data_path: VG ``image_data.json`` giving the image sizes; None = box extent.
      strict: raise on annotation quirks instead of repairing them
        (see :mod:`sgg_jax.data.validation`).
      drop_self_relations: drop relations whose subject is its object.

    Returns:
      ``(graphs, vocab, report)``: one graph per read image in file order (``labels`` int32[N]
      1-based, ``boxes`` float32[N, 4] xyxy, ``relations`` int32[R, 3]), the vocabulary used, and the
      counts of what was read, repaired and dropped.

    Raises:
      DataError: naming the file, the image and the field of malformed content; a built vocabulary
        that would hold no object or no predicate name (``min_count`` too high).
      ConfigError: a bad vocabulary size, ``min_count`` or ``aliases``.
    """
    aliases = _check_aliases(aliases)
    if vocab is None:
        for name, value in (
            ("num_object_classes", num_object_classes),
            ("num_predicates", num_predicates),
        ):
            if value is not None:
                check_int(name, value, minimum=1)
        check_int("min_count", min_count, minimum=1)
    path = os.fspath(path)
    wanted = None if image_ids is None else {str(image_id) for image_id in image_ids}
    image_data = None if image_data_path is None else _read_image_data(os.fspath(image_data_path))

    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(
            f"expected a JSON list of images, got {type(data).__name__}", path=path, field="images"
        )
    if not data:
        raise DataError("the file has no images", path=path, field="images")

    parser = _Parser(path, aliases)
    parsed: list[_ParsedImage] = []
    seen: set[str] = set()
    for position in range(len(data)):
        entry = data[position]
        data[position] = None  # release the parsed JSON image by image (the real file is ~700 MB)
        image_id = _image_id(entry, path, position)
        if image_id in seen:
            raise DataError("image id appears twice", path=path, record=image_id, field="image_id")
        seen.add(image_id)
        if wanted is not None and image_id not in wanted:
            continue
        parsed.append(parser.parse(entry, image_id))
    del data
    report = VGReadReport()
    if wanted is not None:
        report.requested_images_not_in_file = len(wanted - seen)
        if not parsed:
            raise DataError("none of the requested image_ids is in the file", path=path)

    if vocab is None:
        object_counts = np.zeros(len(parser.object_table), np.int64)
        predicate_counts = np.zeros(len(parser.predicate_table), np.int64)
        for image in parsed:
            object_counts += np.bincount(image.object_names, minlength=object_counts.shape[0])
            predicate_counts += np.bincount(
                image.relations[:, 2], minlength=predicate_counts.shape[0]
            )
        built = Vocab(
            object_names=(
                BACKGROUND,
                *_most_frequent(parser.object_table, object_counts, num_object_classes, min_count),
            ),
            predicate_names=(
                BACKGROUND,
                *_most_frequent(
                    parser.predicate_table, predicate_counts, num_predicates, min_count
                ),
            ),
        )
        for kind, names in (("object", built.object_names), ("predicate", built.predicate_names)):
            if len(names) == 1:
                raise DataError(
                    f"no {kind} name is seen at least {min_count} times in the "
                    f"{len(parsed)} images read: the built vocabulary would be empty",
                    path=path,
                    field="vocabulary",
                )
    else:
        built = None
    use_vocab = vocab if vocab is not None else built
    object_label = _lookup(parser.object_table, use_vocab.object_names)
    predicate_label = _lookup(parser.predicate_table, use_vocab.predicate_names)

    graphs = []
    for image in parsed:
        labels = object_label[image.object_names]
        keep = labels > 0
        new_index = np.cumsum(keep) - 1
        relations = image.relations
        endpoints_kept = keep[relations[:, 0]] & keep[relations[:, 1]]
        predicates = predicate_label[relations[:, 2]]
        keep_relation = endpoints_kept & (predicates > 0)
        report.dropped_objects += int((~keep).sum())
        report.dropped_relations_unknown_object += int((~endpoints_kept).sum())
        report.dropped_relations_unknown_predicate += int(
            (endpoints_kept & (predicates == 0)).sum()
        )
        boxes = image.boxes[keep]
        if image_data is None:
            width, height = _box_extent(boxes)
        else:
            entry = image_data.get(image.image_id)
            if entry is None:
                raise DataError(
                    "image not listed in image_data.json",
                    path=os.fspath(image_data_path),
                    record=image.image_id,
                    field="image_id",
                )
            width, height = _image_size(entry, os.fspath(image_data_path), image.image_id)
        graphs.append(
            build_graph(
                path=path,
                image_id=image.image_id,
                width=width,
                height=height,
                boxes=boxes,
                labels=labels[keep],
                relations=np.stack(
                    [
                        new_index[relations[keep_relation, 0]],
                        new_index[relations[keep_relation, 1]],
                        predicates[keep_relation],
                    ],
                    axis=1,
                ),
                num_classes=use_vocab.num_classes,
                num_predicates=use_vocab.num_predicates,
                strict=strict,
                drop_self_relations=drop_self_relations,
                report=report,
                field_names=_FIELD_NAMES,
            )
        )
    if built is not None:
        use_vocab = built.with_counts_from(graphs)
    report.log(path)
    return graphs, use_vocab, report


def _annotation_error(path: str, record: str, field: str, message: str) -> DataError:
    return DataError(message, path=path, record=record, field=field, record_kind="annotation")


def read_coco_captions(
    captions_path: str | os.PathLike | Sequence[str | os.PathLike],
    image_data_path: str | os.PathLike,
) -> dict[str, tuple[str, ...]]:
    """COCO captions of the Visual Genome images that are COCO images.

    Args:
      captions_path: COCO ``captions_train2017.json`` / ``captions_val2017.json`` (plain or ``.gz``;
        ``{"images": [...], "annotations": [{"image_id": int, "caption": str}, ...]}``), or a list of
        such files.
      image_data_path: VG ``image_data.json`` (``[{"image_id" | "id": int, "coco_id": int | null,
        ...}, ...]``).

    Returns:
      VG image id (str) -> captions, whitespace-normalised as :func:`sgg_jax.data.captions.read`
      does, in file order (files in the given order). Ordered as ``image_data.json``; VG images
      without a ``coco_id``, or whose COCO image has no caption in the files, are absent.

    Raises:
      DataError: naming the file, the record (image id or annotation index) and the field.
    """
    if isinstance(captions_path, str | os.PathLike):
        caption_paths = [os.fspath(captions_path)]
    else:
        caption_paths = [os.fspath(p) for p in captions_path]
    if not caption_paths:
        raise ConfigError("captions_path", "no caption file given")
    by_coco_id: dict[int, list[str]] = {}
    for caption_path in caption_paths:
        data = load_json(caption_path)
        annotations = require(data, "annotations", caption_path)
        if not isinstance(annotations, list):
            raise DataError(
                f"expected a list, got {type(annotations).__name__}",
                path=caption_path,
                field="annotations",
            )
        for position, annotation in enumerate(annotations):
            record = f"#{position}"
            if not isinstance(annotation, dict):
                raise _annotation_error(
                    caption_path,
                    record,
                    "annotations",
                    f"expected a JSON object, got {annotation!r}",
                )
            for key in ("image_id", "caption"):
                if key not in annotation:
                    raise _annotation_error(caption_path, record, key, "missing key")
            coco_id, text = annotation["image_id"], annotation["caption"]
            if isinstance(coco_id, bool) or not isinstance(coco_id, int):
                raise _annotation_error(
                    caption_path, record, "image_id", f"not an integer: {coco_id!r}"
                )
            if not isinstance(text, str) or not text.strip():
                raise _annotation_error(
                    caption_path,
                    f"{record} (COCO image {coco_id})",
                    "caption",
                    f"not a non-empty string: {text!r}",
                )
            by_coco_id.setdefault(coco_id, []).append(" ".join(text.split()))

    image_data_path = os.fspath(image_data_path)
    captions: dict[str, tuple[str, ...]] = {}
    for image_id, entry in _read_image_data(image_data_path).items():
        coco_id = require(entry, "coco_id", image_data_path, image_id)
        if coco_id is None:
            continue
        if isinstance(coco_id, bool) or not isinstance(coco_id, int):
            raise DataError(
                f"expected an integer or null, got {coco_id!r}",
                path=image_data_path,
                record=image_id,
                field="coco_id",
            )
        texts = by_coco_id.get(coco_id)
        if texts:
            captions[image_id] = tuple(texts)
    return captions
