"""Memory-bank search: ScaNN and exact (sgg_jax.retrieval) side by side with faiss IVF / HNSW.

Data: relation-like embeddings, synthetic. Each of the 50 VG150 predicates is a cluster whose size
follows the real VG150 predicate counts (bundled ``VG-SGG-dicts-with-attri.json``: "on" is 36 % of
the relations, the rarest predicates < 0.01 %); a cluster is a mixture of 8 sub-centres (subject /
object class combinations) around a predicate centre, plus isotropic noise, so that neighbours are
meaningful and the density is long-tailed like a real relation bank. Queries (4,096 = one training
step of 8 images x 512 pairs) are fresh draws from the same distribution, not bank members.
Similarity is cosine (inner product of L2-normalised vectors) for every backend.

Measured per (bank size M, dimension D, backend):

* build time (index construction from the float32 keys, normalisation included);
* queries/s: the 4,096 queries searched for k = 20, best of ``--repeats`` after one warm-up;
  ``exact`` at large M x D is timed on ``--max_exact_queries`` queries and its throughput
  extrapolated linearly (marked ``extrapolated``: exact cost is linear in the number of queries);
* recall@20 against the exact top-20 (the ground truth, computed by ``ExactIndex`` on
  ``--recall_queries`` queries);
* memory: bytes of the serialised index (ScaNN: the saved searcher folder; faiss:
  ``serialize_index``; exact: the float32 keys).

    python benchmarks/bench_retrieval.py [--sizes 100000,1000000] [--dims 256,2048]
        [--backends scann,exact,faiss_ivf,faiss_hnsw] [--quick] [--out results.json]

faiss-cpu is not a dependency of sgg_jax: ``pip install -e '.[bench]'``. Prints one JSON line per
measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time

import numpy as np

from sgg_jax.data import vg150
from sgg_jax.retrieval.index import ExactIndex, ScannIndex, l2_normalise

K = 20


def relation_like(
    size: int, dim: int, seed: int, counts: np.ndarray, chunk: int = 200_000
) -> np.ndarray:
    """float32[size, dim] clustered embeddings with the VG150 predicate long tail (module doc)."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(1234)  # the same clusters for bank and queries
    num_clusters, num_sub = counts.shape[0], 8
    centres = world.normal(size=(num_clusters, dim)).astype(np.float32)
    subs = centres[:, None, :] + 0.6 * world.normal(size=(num_clusters, num_sub, dim)).astype(
        np.float32
    )
    probabilities = counts / counts.sum()
    out = np.empty((size, dim), np.float32)
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        cluster = rng.choice(num_clusters, size=n, p=probabilities)
        sub = rng.integers(0, num_sub, size=n)
        noise = rng.normal(size=(n, dim)).astype(np.float32)
        out[start : start + n] = subs[cluster, sub] + 0.5 * noise
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)]
    return float(np.sum(hits) / truth.size)


def _folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _timed_search(search, queries, repeats: int) -> float:
    search(queries[: min(256, len(queries))])  # warm-up (compilation, caches)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        search(queries)
        best = min(best, time.perf_counter() - start)
    return best


class _Faiss:
    def __init__(self, kind: str, keys: np.ndarray):
        import faiss

        self.faiss = faiss
        dim = keys.shape[1]
        if kind == "faiss_ivf":
            nlist = int(np.clip(round(np.sqrt(keys.shape[0])), 1, 4096))
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = keys[np.random.default_rng(0).permutation(keys.shape[0])[:100_000]]
            self.index.train(sample)
            self.index.add(keys)
            self.index.nprobe = max(1, int(np.ceil(0.1 * nlist)))  # 10 % of lists, like ScannIndex
            self.parameters = {"nlist": nlist, "nprobe": self.index.nprobe}
        else:
            self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 40
            self.index.add(keys)
            self.index.hnsw.efSearch = 64
            self.parameters = {"M": 32, "efConstruction": 40, "efSearch": 64}

    def search(self, queries: np.ndarray) -> np.ndarray:
        return self.index.search(queries, K)[1]

    def nbytes(self) -> int:
        return int(self.faiss.serialize_index(self.index).nbytes)


def bench_one(size, dim, backends, args, counts) -> list[dict]:
    keys = l2_normalise(relation_like(size, dim, seed=0, counts=counts))
    queries = l2_normalise(relation_like(args.queries, dim, seed=1, counts=counts))
    recall_queries = queries[: args.recall_queries]
    rows = []
    exact = ExactIndex(chunk_size=8192, query_chunk_size=256).build(keys)
    truth, _ = exact.search(recall_queries, K)
    for backend in backends:
        gc.collect()
        row = {"bench": "retrieval", "M": size, "D": dim, "backend": backend, "k": K}
        row["queries"] = args.queries
        start = time.perf_counter()
        if backend == "exact":
            count = min(args.queries, args.max_exact_queries)
            seconds = _timed_search(lambda q: exact.search(q, K), queries[:count], args.repeats)
            row["queries_per_s"] = count / seconds
            row["throughput"] = "measured" if count == args.queries else f"extrapolated ({count})"
            row["recall@20"] = 1.0
            row["index_bytes"] = int(keys.nbytes)
            row["build_s"] = None
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        if backend == "scann":
            index = ScannIndex().build(keys)
            build = time.perf_counter() - start
            row["parameters"] = index.derived_parameters(size)

            def search(q, index=index):
                return index.search(q, K)[0]

            with tempfile.TemporaryDirectory() as folder:
                index.save(folder)
                row["index_bytes"] = _folder_bytes(folder)
        else:
            index = _Faiss(backend, keys)
            build = time.perf_counter() - start
            row["parameters"] = index.parameters
            search = index.search
            row["index_bytes"] = index.nbytes()
        row["build_s"] = build
        seconds = _timed_search(search, queries, args.repeats)
        row["queries_per_s"] = args.queries / seconds
        row["throughput"] = "measured"
        row["recall@20"] = _recall(search(recall_queries), truth)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del index
    exact_qps = next((r["queries_per_s"] for r in rows if r["backend"] == "exact"), None)
    for row in rows:
        row["speedup_vs_exact"] = None if not exact_qps else row["queries_per_s"] / exact_qps
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| M | D | backend | recall@20 | queries/s | × exact | build | index size |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        build = "—" if r["build_s"] is None else f"{r['build_s']:.1f} s"
        speed = "—" if r["speedup_vs_exact"] is None else f"{r['speedup_vs_exact']:.1f}"
        note = "" if r["throughput"] == "measured" else " (extrapolated)"
        lines.append(
            f"| {r['M']:,} | {r['D']} | {r['backend']} | {r['recall@20']:.3f} | "
            f"{r['queries_per_s']:,.0f}{note} | {speed} | {build} | "
            f"{r['index_bytes'] / 2**20:,.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dims", default="256,2048")
    parser.add_argument("--backends", default="scann,exact,faiss_ivf,faiss_hnsw")
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--recall_queries", type=int, default=1024)
    parser.add_argument("--max_exact_queries", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20k x 64, 512 queries")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dims, args.queries, args.recall_queries = "20000", "64", 512, 512
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if any(b.startswith("faiss") for b in backends):
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise SystemExit("faiss backends need faiss-cpu: pip install -e '.[bench]'") from None
    counts = vg150.load_bundled_vocab().predicate_counts[1:].astype(np.float64)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            rows.extend(bench_one(size, dim, backends, args, counts))
    table = markdown(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"machine": platform.machine(), "rows": rows}, handle, indent=2)
    target = [r for r in rows if r["M"] == 1_000_000 and r["D"] == 256 and r["backend"] == "scann"]
    if target:
        r = target[0]
        met = r["recall@20"] >= 0.95 and (r["speedup_vs_exact"] or 0) >= 10
        print(
            f"target (ScaNN recall@20 >= 0.95 at >= 10x exact throughput, 1M x 256): "
            f"recall {r['recall@20']:.3f}, {r['speedup_vs_exact']:.1f}x -> "
            f"{'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
