"""The synthetic pixel dataset: synthetic scene graphs, filtered for a detector, rendered to PNGs.

One recipe shared by detector pretraining (``experiments/detector.py``) and the relation
experiments on pixels (``--dataset=synthetic_pixels``), so both see the same images, classes and
splits:

1. :func:`sgg_jax.data.synthetic.generate` with ``num_images`` and ``seed``, split 70 / 10 / 20
   into train / val / test (:func:`~sgg_jax.data.synthetic.train_val_test`).
2. ``num_classes = K`` keeps the objects of the K most frequent classes of the train split,
   relabelled ``1..K`` by descending frequency (ties: class id); the other objects and the
   relations touching them are removed *before* rendering, so they are not painted either
   (0 = all classes).
3. Objects whose rendered box is smaller than ``min_object_size`` pixels on a side are dropped and
   at most the ``max_objects`` largest are kept; images left without an object are dropped.
4. Every graph is rendered (:mod:`sgg_jax.data.synthetic_pixels`) as an ``image_size`` square PNG
   into ``image_dir``; boxes become those of the rendered image and ``image_path`` is set. The
   folder is a cache: when its ``manifest.json`` equals this recipe and every PNG exists, nothing
   is rendered again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraph, Vocab

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class PixelDatasetConfig:
    """The recipe (module docstring); invalid values raise :class:`ConfigError` naming the field.

    Attributes:
      num_images: synthetic graphs generated (all splits).
      seed: seed of the graphs and of the rendering.
      num_classes: K most frequent train classes kept (0 = all).
      image_size: side of the square PNGs.
      min_object_size: smallest rendered box side kept, in pixels.
      max_objects: largest objects kept per image.
    """

    num_images: int = 1500
    seed: int = 0
    num_classes: int = 20
    image_size: int = 128
    min_object_size: float = 6.0
    max_objects: int = 12

    def __post_init__(self):
        for field, low in (("num_images", 10), ("image_size", 32), ("max_objects", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(field, f"must be an integer >= {low}, got {value!r}")
        if not isinstance(self.num_classes, int | np.integer) or not 0 <= self.num_classes <= 150:
            raise ConfigError("num_classes", f"must be in [0, 150], got {self.num_classes!r}")
        if not isinstance(self.seed, int | np.integer):
            raise ConfigError("seed", f"must be an integer, got {self.seed!r}")
        size = self.min_object_size
        if not isinstance(size, int | float) or not np.isfinite(size) or size < 0:
            raise ConfigError("min_object_size", f"must be a number >= 0, got {size!r}")

    def manifest(self) -> dict[str, Any]:
        """The cache key written next to the PNGs (the historical flag names)."""
        return {
            "synthetic_images": int(self.num_images),
            "seed": int(self.seed),
            "num_classes": int(self.num_classes),
            "image_size": int(self.image_size),
            "min_object_size": float(self.min_object_size),
            "max_objects": int(self.max_objects),
        }

    @classmethod
    def from_manifest(cls, values: dict[str, Any]) -> PixelDatasetConfig:
        """The config of a :meth:`manifest` (e.g. the detector experiment's flags)."""
        try:
            return cls(
                num_images=int(values["synthetic_images"]),
                seed=int(values["seed"]),
                num_classes=int(values["num_classes"]),
                image_size=int(values["image_size"]),
                min_object_size=float(values["min_object_size"]),
                max_objects=int(values["max_objects"]),
            )
        except KeyError as error:
            raise ConfigError("manifest", f"has no {error.args[0]!r}") from None


def _subset(graph: SceneGraph, keep: np.ndarray, labels: np.ndarray) -> SceneGraph:
    """The graph with the objects ``keep`` (labels ``labels[keep]``) and the relations among them."""
    index = np.full(len(keep), -1, np.int64)
    index[keep] = np.arange(int(keep.sum()))
    relations = graph.relations
    if len(relations):
        relations = relations[keep[relations[:, 0]] & keep[relations[:, 1]]].copy()
        relations[:, 0] = index[relations[:, 0]]
        relations[:, 1] = index[relations[:, 1]]
    return graph.replace(
        boxes=graph.boxes[keep], labels=labels[keep], relations=relations.reshape(-1, 3)
    )


def select_classes(splits, object_names, num_classes: int):
    """Keeps the K most frequent train classes (relabelled 1..K) -> (splits, names, old ids)."""
    counts = np.zeros(len(object_names), np.int64)
    for graph in splits["train"]:
        counts += np.bincount(graph.labels, minlength=len(object_names))
    counts[0] = 0
    order = np.argsort(-counts[1:], kind="stable") + 1
    order = order[counts[order] > 0]
    kept = order[:num_classes] if num_classes else order
    relabel = np.zeros(len(object_names), np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1)
    names = ("__background__", *(object_names[k] for k in kept))

    def restrict(graph):
        labels = relabel[graph.labels]
        return _subset(graph, labels > 0, labels)

    return (
        {split: [restrict(graph) for graph in graphs] for split, graphs in splits.items()},
        names,
        kept,
    )


def drop_small(graph: SceneGraph, size: int, min_side: float, max_objects: int):
    """Drops objects smaller than ``min_side`` rendered pixels and keeps the ``max_objects`` largest;
    None when no object is left."""
    from sgg_jax.data.synthetic_pixels import scale_graph

    scaled = scale_graph(graph, size).boxes
    width, height = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
    keep = np.minimum(width, height) >= min_side
    if keep.sum() > max_objects:
        largest = np.argsort(-np.where(keep, width * height, -1.0), kind="stable")[:max_objects]
        keep = np.zeros_like(keep)
        keep[largest] = True
    if not keep.any():
        return None
    return _subset(graph, keep, graph.labels)


def file_name(image_id: str) -> str:
    """The PNG name of an image id (characters outside ``[A-Za-z0-9._-]`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id) + ".png"


def render_cached(splits, image_dir: str, manifest: dict) -> dict[str, list[SceneGraph]]:
    """Renders every split into ``image_dir`` unless its manifest matches; graphs with paths."""
    from sgg_jax.data.synthetic_pixels import render_dataset, scale_graph

    manifest_path = os.path.join(image_dir, MANIFEST)
    all_graphs = [g for graphs in splits.values() for g in graphs]
    cached = False
    if os.path.exists(manifest_path):
        with open(manifest_path) as handle:
            cached = json.load(handle) == manifest
        cached = cached and all(
            os.path.exists(os.path.join(image_dir, file_name(g.image_id))) for g in all_graphs
        )
    start = time.perf_counter()
    size = manifest["image_size"]
    if cached:
        rendered = [
            scale_graph(g, size).replace(image_path=os.path.join(image_dir, file_name(g.image_id)))
            for g in all_graphs
        ]
    else:
        os.makedirs(image_dir, exist_ok=True)
        rendered = list(render_dataset(all_graphs, image_dir, size=size, seed=manifest["seed"]))
        with open(manifest_path, "w") as handle:
            json.dump(manifest, handle, indent=1)
    out, offset = {}, 0
    for split, graphs in splits.items():
        out[split] = rendered[offset : offset + len(graphs)]
        offset += len(graphs)
    verb = "read from cache" if cached else "rendered"
    print(f"{len(rendered)} images {verb} in {time.perf_counter() - start:.1f} s ({image_dir})")
    return out


def pixel_splits(
    config: PixelDatasetConfig, image_dir: str
) -> tuple[dict[str, list[SceneGraph]], Vocab, dict[str, Any]]:
    """The rendered splits of the recipe.

    Args:
      config: the recipe.
      image_dir: where the PNGs are (or are rendered to).

    Returns:
      ``(splits, vocab, info)``: ``{"train", "val", "test"} -> graphs`` with ``image_path`` and
      boxes in the rendered pixels; the vocabulary of the kept classes and the synthetic
      predicates with train-split counts; ``info`` (classes, VG150 ids of the kept classes,
      share of train boxes kept, images and boxes per split).
    """
    from sgg_jax.data.synthetic import SyntheticConfig, generate, train_val_test

    start = time.perf_counter()
    dataset = generate(SyntheticConfig(num_images=config.num_images, seed=config.seed))
    parts = train_val_test(dataset)
    splits = {name: list(part.graphs) for name, part in zip(SPLITS, parts, strict=True)}
    total_boxes = sum(g.num_objects for g in splits["train"])
    splits, names, kept = select_classes(splits, dataset.vocab.object_names, config.num_classes)
    kept_boxes = sum(g.num_objects for g in splits["train"])
    for split in splits:
        filtered = [
            drop_small(g, config.image_size, config.min_object_size, config.max_objects)
            for g in splits[split]
            if g.num_objects
        ]
        splits[split] = [g for g in filtered if g is not None]
    print(
        f"synthetic: {config.num_images} graphs generated in {time.perf_counter() - start:.1f} s; "
        f"top {len(names) - 1} classes keep {kept_boxes}/{total_boxes} train boxes "
        f"({100 * kept_boxes / max(total_boxes, 1):.0f}%); after size filter: "
        + ", ".join(
            f"{s} {len(g)} images / {sum(x.num_objects for x in g)} boxes / "
            f"{sum(x.num_relations for x in g)} relations"
            for s, g in splits.items()
        )
    )
    rendered = render_cached(splits, image_dir, config.manifest())
    vocab = Vocab(names, dataset.vocab.predicate_names).with_counts_from(rendered["train"])
    info = {
        "classes": list(names[1:]),
        "vg150_class_ids": [int(k) for k in kept],
        "train_box_fraction_kept": kept_boxes / max(total_boxes, 1),
        "images": {s: len(g) for s, g in rendered.items()},
        "boxes": {s: sum(x.num_objects for x in g) for s, g in rendered.items()},
        "relations": {s: sum(x.num_relations for x in g) for s, g in rendered.items()},
    }
    return rendered, vocab, info
