"""One entry point for every dataset an experiment can name: ``load(name, split, ...)``.

Names:

* ``gqa200_mini`` — the bundled real GQA-200 test split re-split 70/10/20 by image id (offline).
* ``gqa200`` — GQA-200 from the SHA-GCL files: ``paths={"train": ..., "test": ..., "id_info": ...}``;
  ``val`` is carved from the train file as its first ``num_val`` images.
* ``vg150`` — VG150 from ``paths={"h5": ..., "dicts": ..., "image_data": ...}`` (Scene-Graph-Benchmark
  semantics; ``num_val`` images of train form ``val``).
* ``synthetic`` — seeded long-tailed synthetic scene graphs (:mod:`sgg_jax.data.synthetic`).
* ``tfds`` — a dataset built by ``data_prep`` (array_record): ``paths={"data_dir": ..., "name": ...}``.

Images (``paths["image_dir"]``, the ``--vg150_image_dir`` / ``--gqa200_image_dir`` flags): every
graph's ``image_path`` is ``<image_dir>/<image_id>.jpg``. VG150 follows Scene-Graph-Benchmark's
``VGDataset`` (``'{}.jpg'.format(img['image_id'])`` joined to ``img_dir``,
KaihuaTang/Scene-Graph-Benchmark.pytorch maskrcnn_benchmark/data/datasets/visual_genome.py:309-313,
commit 6f75881);
GQA-200 joins the file name of ``filenames_all`` (``<image_id>.jpg``). ``tfds`` records carry the
path written by ``data_prep --image_dir``. The image sizes are checked against the annotations by
:func:`sgg_jax.data.image_check.check_image_sizes` before training reads pixels.

Every loader returns ``(graphs, vocab)`` where the vocabulary's counts are those of the train split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraph, Vocab

DATASETS = ("gqa200_mini", "gqa200", "vg150", "synthetic", "tfds")
SPLITS = ("train", "val", "test")


def _path(paths: Mapping[str, str] | None, key: str, dataset: str) -> str:
    if not paths or not paths.get(key):
        raise ConfigError(f"{dataset}_{key}", f"the path of '{key}' is required for {dataset}")
    return paths[key]


def load(
    name: str,
    split: str,
    *,
    paths: Mapping[str, str] | None = None,
    num_val: int = 0,
    seed: int = 0,
    synthetic_images: int = 2000,
    synthetic_options: Mapping[str, Any] | None = None,
) -> tuple[Sequence[SceneGraph], Vocab]:
    """Loads one split of a named dataset.

    Args:
      name: one of :data:`DATASETS`.
      split: ``train``, ``val`` or ``test``.
      paths: raw file locations for ``gqa200``, ``vg150`` and ``tfds`` (see the module docstring).
      num_val: images of the train file used as validation (``gqa200``, ``vg150``).
      seed: seed of the synthetic generator.
      synthetic_images: number of synthetic images over all splits.
      synthetic_options: further :class:`~sgg_jax.data.synthetic.SyntheticConfig` fields (e.g.
        ``context_bias_range``).

    Returns:
      ``(graphs, vocab)``; ``graphs`` is a random-access sequence of SceneGraph.
    """
    if split not in SPLITS:
        raise ConfigError("split", f"expected one of {SPLITS}, got {split!r}")
    if name == "gqa200_mini":
        from sgg_jax.data import gqa200

        return gqa200.load_bundled(split)
    if name == "gqa200":
        from sgg_jax.data import gqa200

        id_info = _path(paths, "id_info", name)
        image_dir = (paths or {}).get("image_dir")
        if split == "test":
            graphs, vocab = gqa200.read(_path(paths, "test", name), id_info, image_dir=image_dir)
            return graphs, vocab
        graphs, vocab = gqa200.read(
            _path(paths, "train", name), id_info, filter_empty_rels=True, image_dir=image_dir
        )
        if split == "val":
            if num_val <= 0:
                raise ConfigError("num_val", "must be positive to make a val split of gqa200")
            return graphs[:num_val], vocab
        return graphs[num_val:], vocab
    if name == "vg150":
        from sgg_jax.data import vg150

        return vg150.read(
            _path(paths, "h5", name),
            _path(paths, "dicts", name),
            _path(paths, "image_data", name),
            split,
            num_val=num_val,
            image_dir=(paths or {}).get("image_dir"),
        )
    if name == "synthetic":
        from sgg_jax.data import synthetic

        parts = synthetic.train_val_test(
            synthetic.generate(
                synthetic.SyntheticConfig(
                    num_images=synthetic_images, seed=seed, **dict(synthetic_options or {})
                )
            )
        )
        part = parts[SPLITS.index(split)]
        return list(part.graphs), part.vocab
    if name == "tfds":
        from sgg_jax.data import tfds_source

        return tfds_source.open_source(
            _path(paths, "data_dir", name), _path(paths, "name", name), split
        )
    raise ConfigError("dataset", f"expected one of {DATASETS}, got {name!r}")
