"""Input-pipeline throughput on GQA-200-mini: the grain pipeline vs a plain loop over the same work.

Both sides do identical per-image work (``pipeline.prepare_example`` then ``pipeline.collate``); the
plain loop has no grain, no threads and no prefetching, so the ratio shows what grain's reading
threads buy (or cost) on this machine. Prints one JSON line per configuration.

    python benchmarks/bench_pipeline.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from sgg_jax.data import gqa200, pipeline


def _plain_loop(graphs, config: pipeline.PipelineConfig) -> int:
    order = np.random.default_rng(config.seed).permutation(len(graphs))
    images = 0
    for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
        examples = [
            pipeline.prepare_example(graphs[i], image_index=int(i), epoch=0, config=config)
            for i in order[start : start + config.batch_size]
        ]
        pipeline.collate(examples)
        images += config.batch_size
    return images


def _grain(graphs, config: pipeline.PipelineConfig) -> int:
    loader = pipeline.make_loader(graphs, config)
    images = 0
    for batch in loader:
        images += int(batch.graph_mask.sum())
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    graphs, vocab = gqa200.load_bundled("train")
    for train, max_pairs in ((True, 256), (False, 1560)):
        for threads in (0, 2, 4):
            config = pipeline.PipelineConfig(
                batch_size=8,
                max_objects=40,
                max_pairs=max_pairs,
                max_fg=64,
                train=train,
                shuffle=True,
                num_epochs=args.epochs,
                num_predicates=vocab.num_predicates,
                read_threads=threads,
                shard_index=0,
                shard_count=1,
            )
            start = time.perf_counter()
            plain_images = sum(_plain_loop(graphs, config) for _ in range(args.epochs))
            plain_seconds = time.perf_counter() - start
            start = time.perf_counter()
            grain_images = _grain(graphs, config)
            grain_seconds = time.perf_counter() - start
            assert grain_images == plain_images, (grain_images, plain_images)
            print(
                json.dumps(
                    {
                        "bench": "pipeline",
                        "mode": "train" if train else "eval",
                        "max_pairs": max_pairs,
                        "read_threads": threads,
                        "images": grain_images,
                        "plain_loop_images_per_s": round(plain_images / plain_seconds, 1),
                        "grain_images_per_s": round(grain_images / grain_seconds, 1),
                        "speedup_vs_plain_loop": round(plain_seconds / grain_seconds, 3),
                        "cpus": os.cpu_count(),
                        "machine": platform.machine(),
                    }
                )
            )


if __name__ == "__main__":
    main()
