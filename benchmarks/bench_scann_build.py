"""ScaNN memory-bank builds: reproducible (k-means++ init, one training thread) vs ScaNN's default.

``python benchmarks/bench_scann_build.py [--repeats 5]``

The bank has the GQA-200-mini demo's size (26,806 relation keys) and dimension 64, with many exact
duplicates (3,000 distinct vectors), as relation embeddings of identical geometry have. Builds of
the two configurations alternate, so machine load affects both alike. For each configuration the
script reports the median build time and how many distinct neighbour tables (top-20 of 3,000
queries) its builds produced: 1 means every build gave the same neighbours.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import numpy as np

from sgg_jax.retrieval.index import ScannIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=26_806)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(3000, args.dim))
    keys = distinct[rng.integers(0, 3000, args.size)].astype(np.float32)
    queries, own = keys[:3000], np.arange(3000)
    rows = {}
    for _ in range(args.repeats):
        for deterministic in (True, False):
            index = ScannIndex(deterministic=deterministic)
            start = time.perf_counter()
            index.build(keys)
            seconds = time.perf_counter() - start
            ids, _ = index.search(queries, 20, exclude_ids=own)
            digest = hashlib.sha1(ids.tobytes()).hexdigest()
            times, digests = rows.setdefault(deterministic, ([], set()))
            times.append(seconds)
            digests.add(digest)
    reproducible = statistics.median(rows[True][0])
    default = statistics.median(rows[False][0])
    print(f"bank {args.size} x {args.dim}, {args.repeats} builds each (alternating)")
    print("| ScaNN build | median build time | distinct neighbour tables |")
    print("|---|---:|---:|")
    print(f"| default (random init, all threads) | {default:.3f} s | {len(rows[False][1])} |")
    print(f"| deterministic (k-means++, 1 thread) | {reproducible:.3f} s | {len(rows[True][1])} |")
    print(f"ratio deterministic / default: {reproducible / default:.2f}x")


if __name__ == "__main__":
    main()
