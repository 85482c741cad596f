"""Memory and speed of ``data_prep.extract_features`` and of the feature store it writes.

Prints:

1. **Peak RSS of extraction** (``resource.getrusage`` of a fresh process each) over the first 250
   and the first 1,000 train images of a ``synthetic_pixels`` detector run: extraction holds one
   shard at a time, so the peak does not grow with the number of images.
2. **Header size check** (:func:`sgg_jax.data.image_check.check_image_sizes`) of 1,000 generated
   640x480 JPEGs: seconds per 1,000 images (a 108k-image VG150 takes ~100x that).
3. **Reading a store** in training: RSS before / after opening a 5,000-image x 10-object x 1024
   float16 store (~100 MB) and aligning it to its graphs (lazy: memory-mapped shards, nothing
   read), and the type of one image's rows (``np.memmap``).

Usage::

  python -m experiments.detector --flagfile=experiments/flags/detector_smoke.flags \\
      --workdir=/tmp/det2100 --synthetic_images=2100 --num_steps=2 --checkpoint_every=2
  python benchmarks/bench_extract_features.py --detector_workdir=/tmp/det2100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's sgg_jax and data_prep


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(detector_workdir: str, out: str, images: int) -> None:
    """One extraction in this process; prints its peak RSS (MB) and seconds as JSON."""
    from data_prep.extract_features import extract
    from sgg_jax.experiment.relation import DataConfig

    data = DataConfig(
        dataset="synthetic_pixels",
        detector_workdir=detector_workdir,
        feature_source="roi",
        eval_batch_size=8,
    )
    start = time.perf_counter()
    result = extract(
        data, out, splits=("train",), shard_images=100, max_images=images, progress=False
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": images, "peak_rss_mb": peak, "seconds": seconds, **result}))


def _extraction(detector_workdir: str, counts: list[int]) -> None:
    for count in counts:
        with tempfile.TemporaryDirectory() as out:
            command = [
                sys.executable,
                __file__,
                "--child",
                f"--detector_workdir={detector_workdir}",
                f"--out={out}",
                f"--images={count}",
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-3000:])
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"extraction of {row['images']:5d} images: peak RSS {row['peak_rss_mb']:7.1f} MB, "
                f"{row['seconds']:6.1f} s ({row['written']} shards of 100 images)"
            )


def _header_check(count: int) -> None:
    from PIL import Image

    from sgg_jax.data.image_check import check_image_sizes
    from sgg_jax.structures import SceneGraph

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        graphs = []
        for index in range(count):
            path = os.path.join(folder, f"{index}.jpg")
            pixels = rng.integers(0, 255, (480, 640, 3), np.uint8)
            Image.fromarray(pixels).save(path, quality=85)
            graphs.append(
                SceneGraph(
                    image_id=str(index),
                    width=640,
                    height=480,
                    boxes=np.asarray([[0, 0, 10, 10]], np.float32),
                    labels=np.asarray([1], np.int32),
                    relations=np.zeros((0, 3), np.int32),
                    image_path=path,
                )
            )
        os.sync()
        start = time.perf_counter()
        check_image_sizes(graphs, dataset="vg150")
        seconds = time.perf_counter() - start
    print(
        f"header size check of {count} 640x480 JPEGs: {seconds:.3f} s "
        f"({seconds / count * 1000:.2f} s per 1,000 images; files in the page cache)"
    )


def _store_reading() -> None:
    from sgg_jax.data import feature_store
    from sgg_jax.structures import SceneGraph

    images, objects, dim = 5000, 10, 1024
    with tempfile.TemporaryDirectory() as folder:
        ids = [str(i) for i in range(images)]
        writer = feature_store.StoreWriter(
            folder,
            detector={"digest": "bench"},
            feature_dim=dim,
            dtype="float16",
            shard_images=1000,
            splits={"train": ids},
        )
        rows = np.ones((objects, dim), np.float16)
        for shard in range(writer.num_shards("train")):
            members = writer.shard_images_of("train", shard)
            writer.write_shard("train", shard, members, [rows] * len(members))
        writer.finish()
        del writer, rows
        graphs = [
            SceneGraph(
                image_id=i,
                width=10,
                height=10,
                boxes=np.zeros((objects, 4), np.float32),
                labels=np.ones(objects, np.int32),
                relations=np.zeros((0, 3), np.int32),
            )
            for i in ids
        ]
        size_mb = (
            sum(
                os.path.getsize(os.path.join(folder, "shards", n))
                for n in os.listdir(os.path.join(folder, "shards"))
            )
            / 2**20
        )
        before = _rss_mb()
        store = feature_store.load_object_features(folder)
        lazy = feature_store.features_for(graphs, store, path=folder)
        after = _rss_mb()
        first = store[ids[0]]
        print(
            f"store of {images} images ({size_mb:.0f} MB on disk): RSS {before:.0f} MB before "
            f"opening, {after:.0f} MB after opening and aligning (+{after - before:.1f} MB); "
            f"rows are {type(first).__name__}, features_for returns {type(lazy).__name__}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector_workdir", required=True)
    parser.add_argument("--counts", default="250,1000")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.detector_workdir, args.out, args.images)
        return
    _extraction(args.detector_workdir, [int(c) for c in args.counts.split(",")])
    _header_check(1000)
    _store_reading()


if __name__ == "__main__":
    main()
