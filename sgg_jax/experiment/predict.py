"""Scene graphs of images from an exported SGDet model: JSON plus drawings.

The library behind ``python -m experiments.predict``: :class:`PredictConfig` (checked when built:
one-line :class:`~sgg_jax.errors.ConfigError` naming the flag) and :func:`run`, with its pieces —
:func:`check_export` (the export contract), :func:`load_predictor`, :func:`export_budget`,
:func:`model_inputs` (one batch of images at an exported budget), :func:`image_graph` (one image's
scene graph in its original pixels) and :func:`output_stems`.

The export is the folder written by :func:`sgg_jax.train.export.export` from an SGDet model (the
detector finds the objects, so no annotation is needed); it is loaded with
:func:`sgg_jax.train.export.load_exported`, which needs neither the model code nor flax.

Export contract. ``manifest.json`` lists an ``images`` input and ``config.json`` holds::

    {"task": "sgdet",
     "vocab": {"object_names": [...], "predicate_names": [...]},   # index 0 "__background__"
     "image_transform": {"image_size": S, "mean": [3 floats], "std": [3 floats],
                         "scale_255": true, "bgr": false}, ...}

Anything else (another task, no ``images`` input, no vocab / image transform) is refused with an
error naming ``export_dir``.

Pipeline.

0. ``out`` is checked first (:func:`sgg_jax.data.fileio.check_writable_dir`): a file there, or a
   folder that cannot be written, is a ConfigError naming ``out`` before any work.
1. Every image is read with :func:`sgg_jax.data.image_io.load_image` (grayscale and RGBA
   become RGB) *before* anything is loaded, computed or written; an image of more than
   ``max_image_pixels`` pixels is refused from its header, before it is decoded.
2. Preprocessing is the training one, :class:`sgg_jax.data.images.ImageBatchTransform` with the
   export's ``image_transform``: the longer side is resized to ``S`` (aspect kept, bilinear), the
   image is padded to ``S x S`` (zeros after normalisation), pixels become
   ``(rgb / 255 - mean) / std``; ``image_size`` = round(original (h, w) * scale).
3. Batches of ``batch_size`` images (default: the export's batch size; it must be an exported
   budget's B) are run through the exported function; the last batch is padded with empty rows.
   The GT-style inputs are zeros (SGDet ignores them) except ``object_mask[b, 0]``, True for
   real images (the model's ``graph_mask``).
4. Per image: the detections of ``object_mask`` are the objects (label and score of the relation
   model's object classifier, the detector's label and score recorded next to them), boxes mapped
   back to the original pixels (divided by the scale, clipped to the image). Objects scored below
   ``score_thresh`` are dropped with the pairs touching them; the remaining pairs (``pair_mask``)
   are ranked by :func:`sgg_jax.evaluation.viz.top_triplets` (best foreground predicate times both
   object scores) and the best ``top_k`` kept. An image left without objects has an empty graph.

Outputs in ``out`` (created):

* ``scene_graphs.json``: ``{"export_dir", "images": [{"path", "width", "height", "objects":
  [{"index", "box": [x1, y1, x2, y2], "label", "label_id", "score", "detector_label",
  "detector_score"}], "relations": [{"subject", "object", "predicate", "predicate_id", "score",
  "text"}]}]}``; relations in rank order, ``subject`` / ``object`` index ``objects``.
* ``<stem>_scene_graph.png``: the original image with the boxes and the top-K relations
  (:func:`sgg_jax.evaluation.viz.draw_prediction`; no boxes for an empty graph; a large image is
  drawn on a copy downscaled to a longer side of
  :data:`~sgg_jax.evaluation.viz.MAX_DRAWING_SIDE` pixels) and
  ``<stem>_graph.png``: the node-link graph (:func:`sgg_jax.evaluation.viz.draw_graph`). Images
  sharing a stem get ``_1``, ``_2``, ...

One line per image is printed (objects, relations, best triplet), then where the files went.

Layer: ``experiment`` (it combines :mod:`sgg_jax.train.export`, :mod:`sgg_jax.data.images` and
:mod:`sgg_jax.evaluation.viz`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.errors import ConfigError, check_positive_int

JSON_FILE = "scene_graphs.json"
_MANIFEST = "manifest.json"
_CONFIG = "config.json"


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """One prediction run; every field is the flag of the same name. Checked when built.

    Attributes:
      export_dir: export folder of an SGDet model (``manifest.json``, ``config.json``, ...).
      images: image files, in output order.
      out: output folder (created).
      top_k: relations kept (and drawn) per image, best first.
      score_thresh: objects whose object score is below this are dropped.
      batch_size: images per call (None: the export's; it must be an exported budget's B).
      max_image_pixels: images of more pixels (width x height) are refused, from their header.
    """

    export_dir: str | None = None
    images: tuple[str, ...] = ()
    out: str | None = None
    top_k: int = 10
    score_thresh: float = 0.3
    batch_size: int | None = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.export_dir is not None:
            object.__setattr__(self, "export_dir", os.fspath(self.export_dir))
        object.__setattr__(self, "images", tuple(os.fspath(p) for p in self.images))
        if self.out is not None:
            object.__setattr__(self, "out", os.fspath(self.out))
        self.validate()

    def validate(self) -> None:
        """One-line ConfigErrors naming the flag (the export and the images are checked by
        :func:`run`, before anything is written)."""
        if not self.export_dir:
            raise ConfigError("export_dir", "is required")
        if not self.images:
            raise ConfigError("images", "at least one image file is required")
        if not self.out:
            raise ConfigError("out", "is required")
        if self.top_k < 0:
            raise ConfigError("top_k", f"must be >= 0, got {self.top_k}")
        if not math.isfinite(self.score_thresh):
            raise ConfigError("score_thresh", f"must be a finite number, got {self.score_thresh}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        check_positive_int("max_image_pixels", self.max_image_pixels)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def _export_error(export_dir: str, message: str) -> ConfigError:
    return ConfigError("export_dir", f"{export_dir}: {message}")


def _read_json(export_dir: str, name: str) -> Any:
    path = os.path.join(export_dir, name)
    if not os.path.isfile(path):
        raise _export_error(export_dir, f"no {name} (not an sgg_jax export folder)")
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise _export_error(export_dir, f"unreadable {name}: {exc}") from None


def check_export(export_dir: str) -> dict[str, Any]:
    """Reads and checks the export's manifest and config (no loading, no compile).

    Returns:
      ``{"object_names", "predicate_names", "image_size", "mean", "std", "scale_255", "bgr"}``.

    Raises:
      ConfigError: naming ``export_dir`` when it is not an SGDet export with an ``images`` input.
    """
    if not os.path.isdir(export_dir):
        raise _export_error(export_dir, "no such folder")
    manifest = _read_json(export_dir, _MANIFEST)
    config = _read_json(export_dir, _CONFIG)
    if not isinstance(manifest, dict) or not isinstance(config, dict):
        raise _export_error(export_dir, "manifest.json and config.json must hold JSON objects")
    if "images" not in (manifest.get("inputs") or ()):
        raise _export_error(export_dir, "the exported model takes no 'images' input")
    if config.get("task") != "sgdet":
        raise _export_error(
            export_dir, f"config task is {config.get('task')!r}, predicting needs an 'sgdet' export"
        )
    vocab = config.get("vocab")
    names = {}
    for key in ("object_names", "predicate_names"):
        values = vocab.get(key) if isinstance(vocab, dict) else None
        if not isinstance(values, list) or len(values) < 2:
            raise _export_error(export_dir, f"config.json has no vocab.{key} list")
        names[key] = tuple(str(v) for v in values)
    transform = config.get("image_transform")
    if not isinstance(transform, dict):
        raise _export_error(export_dir, "config.json has no image_transform")
    size = transform.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _export_error(export_dir, f"image_transform.image_size must be >= 1, got {size!r}")
    stats = {}
    for key in ("mean", "std"):
        values = transform.get(key)
        try:
            array = np.asarray(values, np.float64).reshape(3)
        except (TypeError, ValueError):
            array = None
        if array is None or not np.isfinite(array).all() or (key == "std" and (array <= 0).any()):
            raise _export_error(
                export_dir, f"image_transform.{key} must be three finite numbers, got {values!r}"
            )
        stats[key] = tuple(float(v) for v in array)
    spec = {
        **names,
        "image_size": size,
        **stats,
        "scale_255": bool(transform.get("scale_255", True)),
        "bgr": bool(transform.get("bgr", False)),
    }
    if transform.get("input_convention") is not None:
        from sgg_jax.data.images import InputConvention

        try:
            spec["input_convention"] = InputConvention.coerce(transform["input_convention"])
        except ConfigError as exc:
            raise _export_error(
                export_dir, f"image_transform.input_convention is invalid: {exc}"
            ) from None
    return spec


def load_predictor(export_dir: str):
    """The exported predict function (:func:`~sgg_jax.train.export.load_exported`); a broken
    export is a ConfigError naming ``export_dir``."""
    from sgg_jax.train.export import load_exported

    try:
        return load_exported(export_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _export_error(export_dir, f"cannot be loaded: {reason}") from None


def export_budget(predictor, export_dir: str, batch_size: int | None) -> tuple[int, int, int]:
    """The exported ``(B, objects, pairs)`` budget of ``batch_size`` images (None: the first one)."""
    budgets = list(predictor.budgets)
    if batch_size is None:
        return budgets[0]
    for budget in budgets:
        if budget[0] == batch_size:
            return budget
    raise ConfigError(
        "batch_size",
        f"{export_dir} exports batch sizes {sorted({b[0] for b in budgets})}, got {batch_size}",
    )


# ----------------------------------------------------------------------------------------------
# Images, batches, graphs
# ----------------------------------------------------------------------------------------------


def image_sizes(
    paths: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[tuple[int, int]]:
    """``(height, width)`` of every image; raises the DataError of the first bad file."""
    from sgg_jax.data.image_io import load_image

    return [
        tuple(int(v) for v in load_image(path, max_pixels=max_pixels).shape[:2]) for path in paths
    ]


def image_graphs(paths: Sequence[str], sizes: Sequence[tuple[int, int]]):
    """Annotation-free SceneGraphs of the images: what ImageBatchTransform reads."""
    from sgg_jax.structures import SceneGraph

    return [
        SceneGraph(
            image_id=str(index),
            width=width,
            height=height,
            boxes=np.zeros((0, 4), np.float32),
            labels=np.zeros((0,), np.int32),
            relations=np.zeros((0, 3), np.int32),
            image_path=os.fspath(path),
        )
        for index, (path, (height, width)) in enumerate(zip(paths, sizes, strict=True))
    ]


def model_inputs(transform, indices: Sequence[int], budget: tuple[int, int, int]):
    """``(inputs, scales)`` of one batch: the predictor's arrays and the resize factor per row.

    Rows past ``len(indices)`` are padding (``object_mask`` all False, an all-zero image).
    """
    from sgg_jax.structures import SceneGraphBatch

    batch_size, max_objects, max_pairs = budget
    side = transform.image_size
    image_index = np.full(batch_size, -1, np.int32)
    image_index[: len(indices)] = indices
    real = image_index >= 0
    image_size = np.full((batch_size, 2), side, np.int32)
    for row, index in enumerate(indices):
        graph = transform.graphs[index]
        image_size[row] = (graph.height, graph.width)
    object_mask = np.zeros((batch_size, max_objects), bool)
    object_mask[:, 0] = real
    batch = SceneGraphBatch(
        boxes=np.zeros((batch_size, max_objects, 4), np.float32),
        labels=np.zeros((batch_size, max_objects), np.int32),
        object_mask=object_mask,
        pairs=np.zeros((batch_size, max_pairs, 2), np.int32),
        pair_labels=np.zeros((batch_size, max_pairs), np.int32),
        pair_mask=np.zeros((batch_size, max_pairs), bool),
        image_size=image_size,
        graph_mask=real,
        image_index=image_index,
        num_truncated_objects=np.zeros(batch_size, np.int32),
        num_truncated_pairs=np.zeros(batch_size, np.int32),
    )
    batch, _ = transform(None, 0, batch)  # training's resize / pad / normalise
    inputs = {
        name: np.asarray(getattr(batch, name))
        for name in ("boxes", "labels", "object_mask", "pairs", "pair_mask", "image_size")
    }
    inputs["images"] = np.asarray(batch.images, np.float32)
    return inputs, transform.scales(batch)


def _name(names: Sequence[str], index: int, kind: str) -> str:
    return names[index] if 0 < index < len(names) else f"{kind}{index}"


def image_graph(
    outputs: dict[str, np.ndarray],
    row: int,
    scale: float,
    height: int,
    width: int,
    vocab: tuple[Sequence[str], Sequence[str]],
    *,
    top_k: int,
    score_thresh: float,
):
    """The scene graph of batch row ``row`` in the original image's pixels.

    Returns:
      ``(prediction, triplets, objects, relations)``: the :class:`~sgg_jax.structures.Prediction`
      of the kept objects, :func:`~sgg_jax.evaluation.viz.top_triplets` and the JSON records.
    """
    from sgg_jax.evaluation.viz import top_triplets
    from sgg_jax.structures import Prediction

    object_names, predicate_names = vocab
    mask = np.asarray(outputs["object_mask"][row], bool)
    scores = np.asarray(outputs["object_scores"][row], np.float32)
    kept = np.flatnonzero(mask & (scores >= score_thresh))
    new_index = np.full(mask.shape[0], -1, np.int64)
    new_index[kept] = np.arange(kept.size)

    boxes = np.asarray(outputs["boxes"][row], np.float32)[kept] / np.float32(scale)
    boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], np.float32))
    labels = np.asarray(outputs["object_labels"][row], np.int32)[kept]
    object_scores = scores[kept]
    detector_labels = np.asarray(outputs["detection_labels"][row], np.int32)[kept]
    detector_scores = np.asarray(outputs["detection_scores"][row], np.float32)[kept]

    pair_mask = np.asarray(outputs["pair_mask"][row], bool)
    pairs = np.asarray(outputs["pairs"][row], np.int64)[pair_mask]
    predicate_scores = np.asarray(outputs["predicate_scores"][row], np.float32)[pair_mask]
    pairs = new_index[pairs].reshape(-1, 2)  # [Q, 2] indices into the kept objects, -1 dropped
    valid = (pairs >= 0).all(axis=1)
    prediction = Prediction(
        boxes=boxes.reshape(-1, 4),
        labels=labels,
        object_scores=object_scores,
        pairs=pairs[valid].astype(np.int32),
        predicate_scores=predicate_scores[valid],  # [Q', C]
    )
    triplets = top_triplets(prediction, (object_names, predicate_names), k=top_k)

    objects = [
        {
            "index": index,
            "box": [round(float(v), 2) for v in boxes[index]],
            "label": _name(object_names, int(labels[index]), "class"),
            "label_id": int(labels[index]),
            "score": float(object_scores[index]),
            "detector_label": _name(object_names, int(detector_labels[index]), "class"),
            "detector_score": float(detector_scores[index]),
        }
        for index in range(kept.size)
    ]
    relations = [
        {
            "subject": subject,
            "object": obj,
            "predicate": _name(predicate_names, predicate, "predicate"),
            "predicate_id": predicate,
            "score": score,
            "text": text,
        }
        for subject, obj, predicate, score, text in triplets
    ]
    return prediction, triplets, objects, relations


def output_stems(paths: Sequence[str]) -> list[str]:
    """File-name stems of the images, made unique with ``_1``, ``_2``, ... suffixes."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "image"
        candidate, suffix = stem, 0
        while candidate in used:
            suffix += 1
            candidate = f"{stem}_{suffix}"
        used.add(candidate)
        stems.append(candidate)
    return stems


# ----------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------


def run(config: PredictConfig) -> dict[str, Any]:
    """Predicts the scene graphs of ``config.images``, writes ``scene_graphs.json`` and the PNGs
    into ``config.out`` and prints one line per image; returns the JSON record.

    Raises:
      DataError: naming the first unreadable image, before anything is loaded or written.
      ConfigError: naming ``out`` (a file, or not writable), ``export_dir`` (not an SGDet
        export with images, or broken) or ``batch_size`` (not an exported budget's), before
        anything is written.
    """
    from sgg_jax.data.fileio import check_writable_dir
    from sgg_jax.data.image_io import load_image
    from sgg_jax.data.images import ImageBatchTransform
    from sgg_jax.evaluation.viz import draw_graph, draw_prediction

    export_dir, paths, out_dir = config.export_dir, list(config.images), config.out
    top_k, score_thresh = config.top_k, config.score_thresh
    max_pixels = config.max_image_pixels
    check_writable_dir(out_dir, "out")
    spec = check_export(export_dir)
    sizes = image_sizes(
        paths, max_pixels
    )  # every image is readable before anything is loaded or written
    predictor = load_predictor(export_dir)
    budget = export_budget(predictor, export_dir, config.batch_size)
    if "input_convention" in spec:
        legacy = {"convention": spec["input_convention"]}
    else:
        legacy = {k: spec[k] for k in ("mean", "std", "scale_255", "bgr")}
    transform = ImageBatchTransform(
        image_graphs(paths, sizes), spec["image_size"], max_pixels=max_pixels, **legacy
    )
    vocab = (spec["object_names"], spec["predicate_names"])
    stems = output_stems(paths)

    records = []
    drawings = []
    for start in range(0, len(paths), budget[0]):
        indices = list(range(start, min(start + budget[0], len(paths))))
        inputs, scales = model_inputs(transform, indices, budget)
        try:
            outputs = predictor(inputs)
        except ValueError as exc:  # shapes of the export and its config disagree
            raise _export_error(export_dir, str(exc).splitlines()[0]) from None
        outputs = {key: np.asarray(value) for key, value in outputs.items()}
        missing = {"boxes", "object_mask", "pairs", "pair_mask", "detection_labels"} - set(outputs)
        if missing:
            raise _export_error(export_dir, f"the model returns no {sorted(missing)}")
        for row, index in enumerate(indices):
            height, width = sizes[index]
            prediction, triplets, objects, relations = image_graph(
                outputs,
                row,
                float(scales[row]),
                height,
                width,
                vocab,
                top_k=top_k,
                score_thresh=score_thresh,
            )
            records.append(
                {
                    "path": paths[index],
                    "width": width,
                    "height": height,
                    "objects": objects,
                    "relations": relations,
                }
            )
            drawings.append((index, prediction, triplets))

    os.makedirs(out_dir, exist_ok=True)
    for index, prediction, triplets in drawings:
        image = load_image(paths[index], max_pixels=max_pixels)
        draw_prediction(
            image,
            prediction,
            vocab,
            top_k=top_k,
            out_path=os.path.join(out_dir, f"{stems[index]}_scene_graph.png"),
        )
        draw_graph(
            prediction.labels,
            vocab,
            triplets,
            out_path=os.path.join(out_dir, f"{stems[index]}_graph.png"),
        )
        record = records[index]
        best = (
            f"{record['relations'][0]['text']} ({record['relations'][0]['score']:.3f})"
            if record["relations"]
            else "-"
        )
        print(
            f"{paths[index]}: {len(record['objects'])} objects, {len(record['relations'])} "
            f"relations, top: {best}"
        )
    result = {"export_dir": export_dir, "images": records}
    json_path = os.path.join(out_dir, JSON_FILE)
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=2)
    print(f"wrote {json_path} and {2 * len(paths)} PNGs (<stem>_scene_graph.png, <stem>_graph.png)")
    return result
