"""Per-object RoI features of a frozen detector, written to a sharded store that training reads lazily.

Usage::

  python -m data_prep.extract_features --dataset=vg150 --vg150_h5=... --vg150_dicts=... \\
      --vg150_image_data=... --vg150_image_dir=VG_100K --detector_workdir=DETECTOR_RUN \\
      --out=~/sgg_data/vg150_roi [--splits=train,val,test] [--shard_images=1000] [--dtype=float16]

then train with ``--feature_source=precomputed --object_features=<out>``.

The data flags are those of every relation experiment (``experiments/common.py``; a
:class:`~sgg_jax.experiment.relation.DataConfig`), so the dataset and the detector are named as in
training; the detector is read through :class:`~sgg_jax.experiment.relation.PixelInputs` (its
config, input convention, image size and checkpoint; any checkpoint source that class accepts).
Every ground-truth box of every image gets the box head's fc7 features, as the ``roi`` feature
source computes them (:class:`sgg_jax.relation.features.RoIFeatures`: ``detector.features`` then
``detector.box_features`` on the resized image), jitted and batched (``--eval_batch_size``
images per call; object padding rounded up to a power of two, so a few compilations).

Store: :mod:`sgg_jax.data.feature_store` (manifest with the detector's identity and digest, feature
dim, dtype, per split its image ids; one ``.npy`` + index per ``--shard_images`` images). Memory
holds one shard's features at a time (bounded, whatever the number of images:
``benchmarks/bench_extract_features.py``).

* **Resumable**: a shard is complete once its index file is written (after its ``.npy``); a rerun
  with the same flags skips complete shards, so a killed run continues where it stopped. A
  directory of another extraction (another detector, dim, dtype, shard size or image list) is
  refused naming the manifest field.
* **Bad images** (missing, unreadable header, another size than annotated, or failing to decode):
  skipped, one line each (file and reason), listed in the manifest (``bad_images``); the run
  finishes the other images and exits with status 1 naming them. VG150's known wrong
  ``image_data.json`` sizes are corrected as Scene-Graph-Benchmark does
  (:mod:`sgg_jax.data.image_check`).
* **Union features are not stored.** VG150 has ~108k images with ~12 objects, so ~130 ordered
  pairs per image on average (SGB evaluates all of them): 108k x 130 x 4096 x 2 bytes (float16) is
  ~115 GB, against ~10 GB for the object features; the ``precomputed`` source derives union
  features from the two object features and the pair geometry instead
  (:class:`~sgg_jax.relation.features.PrecomputedFeatures`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from experiments.common import data_config_from_flags, define_data_flags
from sgg_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS


def _define_flags(flag_values: flags.FlagValues) -> None:
    define_data_flags(flag_values)
    flag_values.set_default("feature_source", "roi")  # the detector reads pixels
    flags.DEFINE_string(
        "out", None, "Store directory (created; rerun to resume).", flag_values=flag_values
    )
    flags.DEFINE_list(
        "splits", ["train", "val", "test"], "Splits to extract.", flag_values=flag_values
    )
    flags.DEFINE_integer("shard_images", 1000, "Images per shard.", flag_values=flag_values)
    flags.DEFINE_enum(
        "dtype", "float16", ["float16", "float32"], "Stored dtype.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "max_images", 0, "Only the first N images of each split (0 = all).", flag_values=flag_values
    )


def _bucket(count: int) -> int:
    """Object padding of a shard: the next power of two, at least 8."""
    size = 8
    while size < count:
        size *= 2
    return size


def build_extractor(pixels: Any, batch_size: int) -> Callable[..., Any]:
    """``fn(images, boxes, mask) -> f32[B, N, D]`` of the frozen detector of ``pixels``, jitted."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from sgg_jax.detection.detector import FasterRCNN

    class _Features(nn.Module):
        detector: Any

        @nn.compact
        def __call__(self, images, boxes, mask):
            detector = FasterRCNN(self.detector, name="detector")
            return detector.box_features(detector.features(images), boxes, mask)

    class _Extractor(nn.Module):
        """The detector under ``features/detector``, where PixelInputs.merge_detector puts it."""

        detector: Any

        @nn.compact
        def __call__(self, images, boxes, mask):
            return _Features(self.detector, name="features")(images, boxes, mask)

    module = _Extractor(pixels.detector)
    size = pixels.image_size
    shapes = jax.eval_shape(
        module.init,
        jax.random.PRNGKey(0),
        jnp.zeros((batch_size, size, size, 3), jnp.float32),
        jnp.zeros((batch_size, 8, 4), jnp.float32),
        jnp.zeros((batch_size, 8), bool),
    )
    variables = pixels.merge_detector(shapes)
    apply = jax.jit(module.apply)
    return lambda images, boxes, mask: apply(variables, images, boxes, mask)


def _shard_features(
    graphs: Sequence[Any], pixels: Any, extractor: Callable[..., Any], batch_size: int, vocab
) -> list[Any]:
    """The float32[N_i, D] features of every graph of a shard (raises the DataError of a bad
    image)."""
    import numpy as np

    from sgg_jax.data import pipeline

    max_objects = _bucket(max(g.num_objects for g in graphs))
    loader = pipeline.make_loader(
        graphs,
        pipeline.PipelineConfig.evaluation(
            batch_size,
            max_objects,
            max_objects * (max_objects - 1),
            num_predicates=vocab.num_predicates,
            read_threads=0,
        ),
    )
    transform = pixels.transform(graphs)
    out: list[Any] = [None] * len(graphs)
    for batch in loader:
        batch, _ = transform(None, 0, batch)
        features = np.asarray(extractor(batch.images, batch.boxes, batch.object_mask), np.float32)
        for row, index in enumerate(np.asarray(batch.image_index)):
            if index < 0:
                continue
            graph = graphs[int(index)]
            count = graph.num_objects
            if not np.array_equal(np.asarray(batch.labels)[row, :count], graph.labels):
                raise AssertionError(f"object order changed in the pipeline ({graph.image_id})")
            out[int(index)] = features[row, :count]
    return out


def extract(
    data: Any,
    out: str,
    *,
    splits: Sequence[str] = ("train", "val", "test"),
    shard_images: int = 1000,
    dtype: str = "float16",
    max_images: int = 0,
    interrupt_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Extracts the features of ``data``'s splits into the store ``out`` (module docstring).

    Args:
      data: a :class:`~sgg_jax.experiment.relation.DataConfig` naming the dataset and detector
        (its ``feature_source`` is taken as ``roi``).
      out: store directory.
      splits, shard_images, dtype, max_images: the flags of the same names.
      interrupt_after: stop (KeyboardInterrupt) once this many images of this run were written,
        as a killed run would (the resume test).
      progress: show a progress bar.

    Returns:
      ``{"written": shards written, "skipped": complete shards found, "bad": bad images}``.
    """
    from sgg_jax.data import feature_store, image_check
    from sgg_jax.data.image_io import load_image
    from sgg_jax.experiment import relation

    if shard_images <= 0:
        raise ConfigError("shard_images", f"must be positive, got {shard_images}")
    if data.feature_source != "roi":
        data = dataclasses.replace(data, feature_source="roi")
    pixels = relation.PixelInputs(data)
    all_splits, vocab = relation.load_splits(data, check_images=False)
    unknown = sorted(set(splits) - set(all_splits))
    if unknown:
        raise ConfigError(
            "splits", f"unknown splits {unknown}; expected some of {sorted(all_splits)}"
        )
    kind = "vg150" if relation.is_vg150(data.dataset, vocab) else data.dataset
    chosen = {}
    for split in splits:
        graphs = all_splits[split]
        chosen[split] = graphs[:max_images] if max_images else graphs
    identity = relation.detector_identity(data)
    writer = feature_store.StoreWriter(
        out,
        detector=identity,
        feature_dim=pixels.detector.representation_size,
        dtype=dtype,
        shard_images=shard_images,
        splits={split: [g.image_id for g in graphs] for split, graphs in chosen.items()},
    )
    batch_size = data.eval_batch_size
    extractor = build_extractor(pixels, batch_size)
    total = sum(len(g) for g in chosen.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="extract", file=sys.stderr)
    written = skipped = done_images = 0
    for split, graphs in chosen.items():
        for shard in range(writer.num_shards(split)):
            start = shard * shard_images
            stop = min(len(graphs), start + shard_images)
            if writer.done(split, shard):
                skipped += 1
                if bar is not None:
                    bar.update(stop - start)
                continue
            members = [graphs[i] for i in range(start, stop)]
            errors: list[tuple[int, DataError]] = []
            members = list(
                image_check.check_image_sizes(
                    members,
                    dataset=kind,
                    max_pixels=data.max_image_pixels,
                    warn=True,
                    errors=errors,
                )
            )
            bad = {index: error for index, error in errors}
            while True:
                good = [i for i in range(len(members)) if i not in bad]
                try:
                    features = (
                        _shard_features(
                            [members[i] for i in good], pixels, extractor, batch_size, vocab
                        )
                        if good
                        else []
                    )
                    break
                except DataError:  # a file that fails to decode: find it, then redo the shard
                    before = len(bad)
                    for i in good:
                        try:
                            load_image(members[i].image_path, max_pixels=data.max_image_pixels)
                        except DataError as error:
                            bad[i] = error
                    if len(bad) == before:
                        raise
            for _, error in sorted(bad.items()):
                (bar.write if bar is not None else print)(f"bad image: {error}", file=sys.stderr)
            writer.write_shard(
                split,
                shard,
                [members[i].image_id for i in good],
                features,
                [
                    {
                        "split": split,
                        "image_id": members[i].image_id,
                        "path": members[i].image_path or "",
                        "error": str(error),
                    }
                    for i, error in sorted(bad.items())
                ],
            )
            written += 1
            done_images += stop - start
            if bar is not None:
                bar.update(stop - start)
            if interrupt_after is not None and done_images >= interrupt_after:
                raise KeyboardInterrupt(f"stopped after {done_images} images")
    if bar is not None:
        bar.close()
    bad_images = writer.finish()
    return {"written": written, "skipped": skipped, "bad": bad_images}


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        if not FLAGS.out:
            raise ConfigError("out", "is required (the store directory)")
        data = data_config_from_flags(FLAGS)
        if data.feature_source != "roi":
            data = dataclasses.replace(data, feature_source="roi")
        result = extract(
            data,
            FLAGS.out,
            splits=FLAGS.splits,
            shard_images=FLAGS.shard_images,
            dtype=FLAGS.dtype,
            max_images=FLAGS.max_images,
        )
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{FLAGS.out}: {result['written']} shards written, {result['skipped']} already complete, "
        f"{len(result['bad'])} bad images"
    )
    if result["bad"]:
        names = ", ".join(b["path"] or b["image_id"] for b in result["bad"])
        print(
            f"error: {len(result['bad'])} images skipped (listed in manifest.json): {names}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    _define_flags(FLAGS)
    app.run(main)
