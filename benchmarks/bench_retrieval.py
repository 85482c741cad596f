"""Memory-bank search: ScaNN and exact (sgg_jax.retrieval) side by side with faiss IVF / HNSW.

Data: relation-like embeddings, synthetic. Each of the 50 VG150 predicates is a cluster whose share
of the bank follows the real VG150 train-split predicate counts (bundled
``VG-SGG-dicts-with-attri.json``: "on" 34.8 % of the relations, the rarest predicate 0.085 %); a
cluster is a mixture of 8 sub-centres (think subject / object class combinations) around a predicate
centre, plus isotropic gaussian noise, so neighbours are meaningful and the density is long-tailed
like a real relation bank (expected cosine: 0.85 within a sub-centre, 0.62 within a cluster, 0 across
clusters). Queries (4,096 = one training step of 8 images x 512 pairs) are fresh draws from the same
distribution, not bank members. Every backend ranks by cosine similarity (inner product of
L2-normalised vectors); k = 20.

Measured per (bank size M, dimension D, backend), each (M, D) in a fresh subprocess:

* build: index construction from the float32 keys (normalisation included where the backend does it);
* queries/s: the 4,096 queries searched for k = 20 in one call, best of ``--repeats`` (fewer once
  the timed calls of one search together pass ``--repeat_budget_s``) after one warm-up call on the
  first 1,024 queries. ``exact`` is timed on ``--max_exact_queries`` queries (default all); with
  fewer, its queries/s is measured on that subset and applies unchanged to 4,096 (exact cost is
  linear in the queries: ``throughput`` says ``extrapolated``);
* recall@20: overlap with the exact top-20 (``ExactIndex``, the ground truth, recall 1 by definition)
  on ``--recall_queries`` queries (default all 4,096);
* memory: bytes of the serialised index (ScaNN: the folder written by ``index.save``; faiss:
  ``faiss.serialize_index``; exact: the float32 keys it holds) and, second, the growth of the
  process peak RSS over build + search (VmHWM reset before the build);
* ``scann`` also gets two diagnostic throughputs of its raw ScaNN searcher (no wrapper work):
  ``search_batched`` (what ``ScannIndex`` calls, one thread) and ``search_batched_parallel``.

Backends: ``scann`` (``make_index("scann")``, parameters derived from M), ``exact``
(``make_index("exact")``, always run: it is the ground truth), ``faiss_ivf`` (``IndexIVFFlat``,
nlist = round(sqrt(M)), one row per ``--ivf_nprobe_fractions`` entry: 5 % = ScannIndex's
``leaves_fraction``, and 10 %), ``faiss_hnsw`` (``IndexHNSWFlat``, M = 32, efConstruction = 40, one
row per ``--hnsw_ef_search`` entry) and, optional, ``faiss_flat`` (faiss's exact BLAS search, to see
how fast our exact baseline is). Several search settings of one backend share one build.

A backend whose estimated peak memory exceeds ``--memory_budget_gib`` is skipped and reported. When
the exact index of the whole bank would not fit, the ground truth is computed with ``ExactIndex``
shards of ``--exact_shard_gib`` built and searched one at a time, merged with ``merge_topk`` (the
shard times add up; labelled in the row). Where faiss IVF's plain ``add`` would not fit (its lists
grow with up to 2x slack), its lists are reserved at their exact sizes first (labelled). A
configuration whose process dies (e.g. killed for memory) is recorded as ``failed``. ScaNN builds
are reproducible (``ScannIndex(deterministic=True)``, the default since these rows were measured:
k-means++ initialisation and one training thread); with ScaNN's random initialisation, measured
here, recall varied by about +-0.005 between builds (``bench_scann_build.py``).

    python benchmarks/bench_retrieval.py [--sizes 100000,1000000] [--dims 256,2048]
        [--backends scann,exact,faiss_ivf,faiss_hnsw,faiss_flat] [--max_exact_queries 4096]
        [--quick] [--out benchmarks/results/bench_retrieval.json [--update]]

Large banks: ``--bank_on_disk DIR`` generates the bank into a memory-mapped ``.npy`` (page cache,
not process memory) and ``--scann_spill_dir DIR`` builds ``ScannIndex(spill_dir=DIR)``; with both the
1M x 2048 ScaNN row fits 24 GiB (``--no_scann_save`` skips the index-size measurement);
``--keep_backends`` with ``--update`` keeps the other backends' rows of the re-run (M, D).

Build memory: ``--build_memory [--sizes 100000] [--dims 2048] [--build_modes copy,in_place,spill]``
builds each backend once per mode in its own process and reports the growth of the peak RSS over
``Index.build`` divided by the bank's bytes (and the same for ``RssAnon``); ``--import_root`` /
``--code_label`` measure another checkout (e.g. the previous code) the same way.

faiss-cpu is not a dependency of sgg_jax: ``pip install -e '.[bench]'``. Prints one JSON line per
measurement and a markdown table at the end; ``--out`` writes everything as one JSON file
(``--update`` keeps the rows of the configurations not run now, to re-run one (M, D)).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

K = 20
NUM_SUB_CENTRES = 8
SUB_CENTRE_SPREAD = 0.6
NOISE = 0.5
WORLD_SEED = 1234  # the cluster geometry, shared by bank and queries
BANK_SEED, QUERY_SEED = 0, 1
WARMUP_QUERIES = 1024
GIB = 2**30
REPEAT_BUDGET_S = float("inf")  # set by --repeat_budget_s
DEFAULT_BACKENDS = "scann,exact,faiss_ivf,faiss_hnsw"
TARGET = {"M": 1_000_000, "D": 256, "recall@20": 0.95, "speedup_vs_exact": 10.0}

DATA_DESCRIPTION = (
    "synthetic relation-like embeddings: 50 clusters (one per VG150 predicate) sized by the VG150 "
    "train-split predicate counts (bundled VG-SGG-dicts-with-attri.json), each a mixture of "
    f"{NUM_SUB_CENTRES} sub-centres (centre + {SUB_CENTRE_SPREAD} N(0, I)) plus {NOISE} N(0, I) "
    "noise, L2-normalised; queries are fresh draws from the same distribution (not bank members)"
)


# ---------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------


def predicate_shares() -> np.ndarray:
    """float64[50]: the VG150 train-split predicate frequencies (background excluded), summing to 1."""
    from sgg_jax.data import vg150

    counts = vg150.load_bundled_vocab().predicate_counts[1:].astype(np.float64)
    return counts / counts.sum()


def relation_like(
    size: int, dim: int, seed: int, shares: np.ndarray, chunk: int = 65_536, out=None
) -> np.ndarray:
    """float32[size, dim] unit-norm clustered embeddings with the VG150 long tail (module doc).

    Generated and normalised in float32 chunks, so the only large allocation is the result
    (``out`` when given, e.g. a memory-mapped ``.npy``).
    """
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(WORLD_SEED)
    num_clusters = shares.shape[0]
    centres = world.standard_normal((num_clusters, 1, dim), dtype=np.float32)
    subs = centres + SUB_CENTRE_SPREAD * world.standard_normal(
        (num_clusters, NUM_SUB_CENTRES, dim), dtype=np.float32
    )
    out = np.empty((size, dim), np.float32) if out is None else out
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        cluster = rng.choice(num_clusters, size=n, p=shares)
        sub = rng.integers(0, NUM_SUB_CENTRES, size=n)
        block = out[start : start + n]
        rng.standard_normal((n, dim), dtype=np.float32, out=block)
        block *= np.float32(NOISE)
        block += subs[cluster, sub]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


# ---------------------------------------------------------------------------------------------------
# Measurement helpers.
# ---------------------------------------------------------------------------------------------------


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true top-k ids present in the found row."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=1).sum()
    return float(hits / truth.size)


def folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Growth of the peak resident set size over a block (VmHWM reset at the start, Linux)."""

    def __enter__(self):
        gc.collect()
        _malloc_trim()  # hand memory freed by earlier backends back, so it cannot hide growth
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = (_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.reset:
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:  # ru_maxrss is the lifetime peak: an upper bound when it cannot be reset
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(0, peak - self.before)
        self.measure = "VmHWM reset before build" if self.reset else "ru_maxrss (not reset)"
        return False


class AnonPeak:
    """Peak of the process's anonymous resident memory (``RssAnon``) over a block, sampled.

    VmHWM also counts mapped file pages (clean page cache the kernel can drop); this samples
    ``RssAnon`` every ``interval`` seconds from a thread, a lower bound of its true peak.
    """

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, (_status_kib("RssAnon") or 0) * 1024)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.before = (_status_kib("RssAnon") or 0) * 1024
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, (_status_kib("RssAnon") or 0) * 1024)
        self.delta = max(0, self.peak - self.before)
        return False


BUILD_MODES = {
    "copy": "build(keys): the normalised keys in a new array (default)",
    "in_place": "build(keys, copy=False): the caller's float32 keys normalised in place",
    "spill": "ScannIndex(spill_dir=...): normalised keys written to a .npy, memory-mapped for ScaNN",
}


def run_build_memory(size: int, dim: int, backend: str, mode: str, args) -> dict:
    """One build's memory (in its own process): peak RSS growth over ``Index.build`` / bank bytes."""
    from sgg_jax.retrieval.index import make_index

    keys = relation_like(size, dim, BANK_SEED, args.shares)
    bank = keys.nbytes
    options, build_kwargs = {}, {}
    spill = None
    if mode == "in_place":
        build_kwargs["copy"] = False
    if mode == "spill":
        spill = tempfile.TemporaryDirectory()
        options["spill_dir"] = spill.name
    index = make_index(backend, **options)
    # Libraries loaded before the measurement: their code is not the build's memory.
    if backend == "scann":
        import scann  # noqa: F401
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    with PeakRss() as peak, AnonPeak() as anon:
        t0 = time.perf_counter()
        index.build(keys, **build_kwargs)
        build_s = time.perf_counter() - t0
    gc.collect()
    _malloc_trim()
    held = (_status_kib("VmRSS") or 0) * 1024 - peak.before
    if spill is not None:
        spill.cleanup()
    return {
        "M": size,
        "D": dim,
        "backend": backend,
        "mode": mode,
        "mode_what": BUILD_MODES[mode],
        "bank_bytes": bank,
        "build_s": build_s,
        "peak_rss_growth_bytes": peak.delta,
        "peak_rss_growth_x_bank": peak.delta / bank,
        "peak_rss_measure": peak.measure,
        "peak_anon_growth_x_bank": anon.delta / bank,
        "held_after_build_x_bank": held / bank,
        "parameters": index.parameters,
    }


def build_memory_main(args) -> None:
    """``--build_memory``: each (M, D, backend, mode) built once in its own process."""
    records = []
    root = os.path.abspath(args.import_root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as folder:
        for size in _ints(args.sizes):
            for dim in _ints(args.dims):
                for backend in args.backends:
                    for mode in args.build_modes:
                        if mode == "spill" and backend != "scann":
                            continue
                        out = os.path.join(folder, "row.json")
                        command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
                        command += ["--child", f"{size},{dim},{backend},{mode}"]
                        command += ["--child_out", out]
                        done = subprocess.run(command, check=False, env=env, cwd=root)
                        if done.returncode == 0 and os.path.exists(out):
                            with open(out, encoding="utf-8") as handle:
                                row = json.load(handle)
                            os.remove(out)
                        else:
                            row = {"M": size, "D": dim, "backend": backend, "mode": mode}
                            row["failed"] = f"process exited with {done.returncode}"
                        row["code"] = args.code_label
                        print(json.dumps(row), flush=True)
                        records.append(row)
    lines = [
        "| M | D | backend | build | code | peak RSS growth / bank | peak anon / bank "
        "| held after / bank | build time |",
        "|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        head = f"| {r['M']:,} | {r['D']} | {r['backend']} | {r['mode']} | {r['code']} "
        if "failed" in r:
            lines.append(head + f"| {r['failed']} | | | |")
            continue
        lines.append(
            head + f"| {r['peak_rss_growth_x_bank']:.2f}x | {r['peak_anon_growth_x_bank']:.2f}x "
            f"| {r['held_after_build_x_bank']:.2f}x | {r['build_s']:.1f} s |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        old = []
        if args.update and os.path.exists(args.out):
            with open(args.out, encoding="utf-8") as handle:
                old = json.load(handle)["rows"]
        fresh = {(r["M"], r["D"], r["backend"], r["mode"], r["code"]) for r in records}
        rows = [
            r for r in old if (r["M"], r["D"], r["backend"], r["mode"], r["code"]) not in fresh
        ] + records
        result = {
            "benchmark": "index build memory",
            "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), **versions()},
            "data": DATA_DESCRIPTION,
            "what_is_measured": {
                "peak_rss_growth_x_bank": "growth of the process peak RSS (VmHWM reset before) "
                "over Index.build, divided by the bank's bytes (the caller's float32 [M, D] "
                "array, which exists before the build and is not counted)",
                "peak_anon_growth_x_bank": "the same for RssAnon, sampled every 5 ms (excludes "
                "mapped file pages, i.e. the page cache of spilled keys)",
                "held_after_build_x_bank": "RSS growth still held once the build returned "
                "(after gc and malloc_trim): the index itself",
                "mode": BUILD_MODES,
                "code": "which sgg_jax was measured (--code_label / --import_root)",
            },
            "rows": sorted(rows, key=lambda r: (r["M"], r["D"], r["backend"], r["code"])),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"# wrote {args.out}")


def timed(search, queries: np.ndarray, repeats: int):
    """(best seconds, all seconds, last result) of ``search(queries)`` after one warm-up call.

    Stops repeating early once the timed calls together take more than ``REPEAT_BUDGET_S``.
    """
    search(queries[:WARMUP_QUERIES])  # compilation (exact), caches, thread pools
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = search(queries)
        times.append(time.perf_counter() - start)
        if sum(times) > REPEAT_BUDGET_S:
            break
    return min(times), times, result


# ---------------------------------------------------------------------------------------------------
# Backends. Each returns rows (several when one build serves several search settings).
# ---------------------------------------------------------------------------------------------------


def estimated_peak_bytes(
    backend: str,
    size: int,
    dim: int,
    shard_bytes: int,
    presize_ivf: bool = False,
    bank_on_disk: bool = False,
    scann_spill: bool = False,
) -> int:
    """Rough peak of the process's (anonymous) memory while ``backend`` is built, bank included.

    From the code paths: ``Index.build`` validates the keys without a copy and normalises them
    chunk by chunk: ``ExactIndex`` writes the chunks straight into its device array (about one
    shard), ``ScannIndex`` into one float32 array (none with ``spill_dir``: page cache) which ScaNN
    copies; ScaNN's tree build holds a second transient copy and its tree and hashing training
    samples (``min(M, 100000)`` rows each) (``--build_memory`` measures these). faiss HNSW / flat
    store one copy, faiss IVF one copy plus the growth slack of its inverted lists (none when
    pre-sized, see ``_add_ivf_presized``). ``bank_on_disk``: the bank is a memory-mapped file
    (page cache the kernel can drop), not counted.
    """
    bank = size * dim * 4
    resident = 0 if bank_on_disk else bank
    sample = min(size, 100_000) * dim * 4
    if backend == "exact":
        return resident + int(1.2 * min(bank, shard_bytes))
    if backend == "scann":
        return resident + (0 if scann_spill else bank) + 2 * bank + 2 * sample + bank // 8
    if backend == "faiss_hnsw":
        return resident + bank + size * 32 * 2 * 4 * 2
    if backend == "faiss_ivf" and not presize_ivf:  # list growth slack: up to 2x the bank
        return resident + 2 * bank + sample
    return resident + bank + sample


def bench_exact(keys, queries, args, shard_rows: int) -> tuple[dict, np.ndarray]:
    """Times ``ExactIndex`` and returns its row and the ground-truth ids of the recall queries."""
    from sgg_jax.retrieval.index import make_index, merge_topk

    size, dim = keys.shape
    n_time = min(len(queries), args.max_exact_queries)
    n_recall = min(len(queries), args.recall_queries)
    row = {"backend": "exact", "parameters": {}, "timed_queries": n_time, "recall@20": 1.0}
    shards = [(start, min(size, start + shard_rows)) for start in range(0, size, shard_rows)]
    results, extra, build_s, search_s, rss, shard_runs = [], [], 0.0, 0.0, 0, []
    for start, stop in shards:
        with PeakRss() as peak:
            t0 = time.perf_counter()
            index = make_index("exact").build(
                keys[start:stop], np.arange(start, stop, dtype=np.int64)
            )
            build_s += time.perf_counter() - t0
            best, runs, result = timed(
                lambda q, index=index: index.search(q, K), queries[:n_time], args.repeats
            )
            search_s += best
            shard_runs.append(runs)
            results.append(result)
            if n_recall > n_time:  # ground truth only, untimed
                extra.append(index.search(queries[n_time:n_recall], K))
            row["parameters"] = dict(index.parameters)
            del index
            gc.collect()
        rss = max(rss, peak.delta)
    if len(shards) > 1:
        t0 = time.perf_counter()
        ids, _ = merge_topk([r[0] for r in results], [r[1] for r in results], K)
        search_s += time.perf_counter() - t0
        extra_ids = None
        if extra:
            extra_ids, _ = merge_topk([r[0] for r in extra], [r[1] for r in extra], K)
        row["parameters"].update(
            shards=len(shards),
            shard_rows=shard_rows,
            shards_note="built and searched one at a time, merged with merge_topk; times summed",
        )
    else:
        ids = results[0][0]
        extra_ids = extra[0][0] if extra else None
    truth = ids if extra_ids is None else np.concatenate([ids, extra_ids])
    row.update(
        build_s=build_s,
        queries_per_s=n_time / search_s,
        throughput=(
            "measured" if n_time == len(queries) else f"extrapolated (timed on {n_time} queries)"
        ),
        search_s_runs=shard_runs[0] if len(shards) == 1 else None,
        search_s_runs_per_shard=shard_runs if len(shards) > 1 else None,
        search_s_for_all_queries=search_s * len(queries) / n_time,
        index_bytes=int(size * dim * 4),
        index_bytes_what="float32 keys held by the index",
        peak_rss_delta_bytes=int(rss),
        threads=f"XLA CPU ({os.cpu_count()} cores)",
    )
    return row, truth[:n_recall]


def bench_scann(keys, queries, args, truth) -> list[dict]:
    from sgg_jax.retrieval.index import make_index

    n_recall = len(truth)
    with PeakRss() as peak:
        t0 = time.perf_counter()
        options = {"spill_dir": args.scann_spill_dir} if args.scann_spill_dir else {}
        index = make_index("scann", **options).build(keys)
        build_s = time.perf_counter() - t0
        best, runs, (ids, _) = timed(
            lambda q, index=index: index.search(q, K), queries, args.repeats
        )
    index_bytes = None
    if not args.no_scann_save:
        with tempfile.TemporaryDirectory() as folder:
            index.save(folder)
            index_bytes = folder_bytes(folder)
    derived = index.derived_parameters(len(keys))
    parameters = {**index.parameters, **derived}
    row = {
        "backend": "scann",
        "parameters": parameters,
        "build_s": build_s,
        "queries_per_s": len(queries) / best,
        "search_s_runs": runs,
        "throughput": "measured",
        "recall@20": recall_at_k(ids[:n_recall], truth),
        "index_bytes": index_bytes,
        "index_bytes_what": (
            "ScannIndex.save folder (searcher + ids + manifest)"
            if index_bytes is not None
            else "not measured (--no_scann_save)"
        ),
        "spill_dir": bool(args.scann_spill_dir),
        "peak_rss_delta_bytes": peak.delta,
        "threads": (
            "ScaNN's thread pool (ScannIndex calls search_batched_parallel)"
            if index.parallel_search and len(queries) >= index.PARALLEL_MIN_QUERIES
            else "1 (ScannIndex calls search_batched)"
        ),
    }
    # Diagnostic: the raw ScaNN searcher without the wrapper (private attribute, read only).
    searcher = getattr(index, "_searcher", None)
    if searcher is not None:
        fetch = {"final_num_neighbors": K}
        if not derived["brute_force"]:
            fetch["pre_reorder_num_neighbors"] = max(K, index.reorder_factor * K)
        raw = {}
        for name in ("search_batched", "search_batched_parallel"):
            method = getattr(searcher, name)
            seconds, _, (positions, _) = timed(
                lambda q, method=method: method(q, **fetch), queries, args.repeats
            )
            positions = np.asarray(positions, np.int64)
            raw[name] = {
                "queries_per_s": len(queries) / seconds,
                "recall@20": recall_at_k(positions[:n_recall], truth),
            }
        row["raw_searcher_diagnostic"] = raw
    del index
    gc.collect()
    return [row]


def serialized_faiss_bytes(index) -> int:
    """Size of ``faiss.serialize_index(index)``, counted while streaming (no copy of the index)."""
    import faiss

    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes the last buffered block
    return total


def _add_ivf_presized(index, keys: np.ndarray, chunk: int = 65_536) -> None:
    """``index.add(keys)`` for an ``IndexIVFFlat`` without the inverted lists' growth slack.

    ``add`` appends entry by entry, so each list's std::vector doubles its capacity and the lists can
    take up to twice the bank (the 1M x 2048 bank then no longer fits 24 GiB). Here the coarse
    assignment is computed first (the same work ``add`` does), every list is reserved at its exact
    size, and the entries are added with their precomputed lists: same index, exact memory.
    """
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    assign = np.concatenate(
        [
            index.quantizer.search(keys[s : s + chunk], 1)[1][:, 0]
            for s in range(0, len(keys), chunk)
        ]
    ).astype(np.int64)
    lists = faiss.downcast_InvertedLists(index.invlists)
    for list_no, count in enumerate(np.bincount(assign, minlength=index.nlist)):
        lists.resize(list_no, int(count))  # reserves exactly count entries ...
        lists.resize(list_no, 0)  # ... and empties the list again (capacity is kept)
    for s in range(0, len(keys), chunk):
        add_preassigned(index, keys[s : s + chunk], assign[s : s + chunk])


def bench_faiss(backend: str, keys, queries, args, truth) -> list[dict]:
    import faiss

    size, dim = keys.shape
    n_recall = len(truth)
    rows = []
    with PeakRss() as peak:
        t0 = time.perf_counter()
        if backend == "faiss_ivf":
            nlist = int(np.clip(round(np.sqrt(size)), 1, 65_536))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).permutation(size)[: max(nlist * 39, 100_000)]
            index.train(keys[np.sort(sample)])
            base = {"nlist": nlist, "training_sample": int(min(size, len(sample)))}
            if args.ivf_presize:
                _add_ivf_presized(index, keys)
                base["add"] = "lists pre-sized (exact capacity), add_preassigned"
            else:
                index.add(keys)
            settings = [
                {**base, "nprobe_fraction": f, "nprobe": max(1, int(np.ceil(f * nlist)))}
                for f in args.ivf_nprobe_fractions
            ]
        elif backend == "faiss_hnsw":
            index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = args.hnsw_ef_construction
            index.add(keys)
            base = {"M": args.hnsw_m, "efConstruction": args.hnsw_ef_construction}
            settings = [{**base, "efSearch": ef} for ef in args.hnsw_ef_search]
        else:  # faiss_flat: faiss's exact (BLAS) search, for reference
            index = faiss.IndexFlatIP(dim)
            index.add(keys)
            settings = [{}]
        build_s = time.perf_counter() - t0
        measured = []
        for setting in settings:
            if "nprobe" in setting:
                index.nprobe = setting["nprobe"]
            if "efSearch" in setting:
                index.hnsw.efSearch = setting["efSearch"]
            best, runs, (_, ids) = timed(
                lambda q, index=index: index.search(q, K), queries, args.repeats
            )
            measured.append((setting, best, runs, ids))
    index_bytes = serialized_faiss_bytes(index)
    for setting, best, runs, ids in measured:
        rows.append(
            {
                "backend": backend,
                "parameters": setting,
                "build_s": build_s,
                "queries_per_s": len(queries) / best,
                "search_s_runs": runs,
                "throughput": "measured",
                "recall@20": recall_at_k(ids[:n_recall], truth),
                "index_bytes": index_bytes,
                "index_bytes_what": "faiss.serialize_index size (streamed)",
                "peak_rss_delta_bytes": peak.delta,
                "peak_rss_note": "one build for all search settings of this backend",
                "threads": f"OpenMP {faiss.omp_get_max_threads()}",
            }
        )
    del index
    gc.collect()
    return rows


def run_config(size: int, dim: int, args) -> None:
    """One (M, D) configuration (in its own process); appends JSON lines to ``args.child_out``."""

    def emit(record: dict) -> None:
        record = {"M": size, "D": dim, "k": K, "queries": args.queries, **record}
        print(json.dumps(record), flush=True)
        with open(args.child_out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    budget = args.memory_budget_gib * GIB
    shard_bytes = int(args.exact_shard_gib * GIB)
    if 7 * size * dim * 4 <= budget:
        shard_bytes = size * dim * 4  # the whole bank fits in one ExactIndex
    shard_rows = max(K, shard_bytes // (dim * 4))
    args.ivf_presize = (
        estimated_peak_bytes("faiss_ivf", size, dim, shard_bytes) > budget
        or args.ivf_presize_always
    )
    runnable = []
    for backend in dict.fromkeys(["exact", *args.backends]):
        estimate = estimated_peak_bytes(
            backend,
            size,
            dim,
            shard_bytes,
            args.ivf_presize,
            bool(args.bank_on_disk),
            bool(args.scann_spill_dir),
        )
        if estimate > budget and not args.ignore_memory_estimate:
            emit(
                {
                    "backend": backend,
                    "skipped": (
                        f"estimated peak {estimate / GIB:.3g} GiB > budget "
                        f"{args.memory_budget_gib:g} GiB (--memory_budget_gib)"
                    ),
                }
            )
        else:
            runnable.append(backend)
    if "exact" not in runnable:  # the ground truth of every other row
        emit({"backend": "(all)", "skipped": "exact ground truth does not fit the memory budget"})
        return
    t0 = time.perf_counter()
    if args.bank_on_disk:  # a memory-mapped .npy: page cache, not process memory
        bank_dir = tempfile.TemporaryDirectory(dir=args.bank_on_disk)
        path = os.path.join(bank_dir.name, "bank.npy")
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, dim))
        relation_like(size, dim, BANK_SEED, args.shares, out=mapped)
        mapped.flush()
        del mapped
        keys = np.load(path, mmap_mode="r")
    else:
        keys = relation_like(size, dim, BANK_SEED, args.shares)
    queries = relation_like(args.queries, dim, QUERY_SEED, args.shares)
    print(f"# {size:,} x {dim}: data generated in {time.perf_counter() - t0:.1f} s", flush=True)
    row, truth = bench_exact(keys, queries, args, shard_rows)
    exact_qps = row["queries_per_s"]
    rows = [row] if "exact" in args.backends else []
    if rows:
        emit({**row, "speedup_vs_exact": 1.0})
    for backend in runnable:
        if backend == "exact":
            continue
        gc.collect()
        if backend == "scann":
            produced = bench_scann(keys, queries, args, truth)
        else:
            produced = bench_faiss(backend, keys, queries, args, truth)
        for row in produced:
            row["speedup_vs_exact"] = row["queries_per_s"] / exact_qps
            if "raw_searcher_diagnostic" in row:
                for raw in row["raw_searcher_diagnostic"].values():
                    raw["speedup_vs_exact"] = raw["queries_per_s"] / exact_qps
            emit(row)


# ---------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------


def _short_parameters(row: dict) -> str:
    p = row.get("parameters", {})
    backend = row["backend"]
    if backend == "scann":
        if p.get("brute_force"):
            return "brute force"
        return (
            f"leaves {p['num_leaves']}, search {p['num_leaves_to_search']}, "
            f"reorder {p['reorder_factor'] * K}"
        )
    if backend == "exact":
        if "shards" in p:
            return f"{p['shards']} shards of {p['shard_rows']:,}, one at a time"
        return f"chunk {p.get('chunk_size')}"
    if backend == "faiss_ivf":
        presized = ", lists pre-sized" if "add" in p else ""
        return f"nlist {p['nlist']}, nprobe {p['nprobe']}{presized}"
    if backend == "faiss_hnsw":
        return f"M {p['M']}, efC {p['efConstruction']}, efS {p['efSearch']}"
    return ""


def markdown(records: list[dict]) -> str:
    lines = [
        "| M | D | backend | parameters | recall@20 | queries/s | × exact | build | index size "
        "| peak RSS Δ |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        head = f"| {r['M']:,} | {r['D']} | {r['backend']} "
        if "skipped" in r or "failed" in r:
            lines.append(head + f"| — | {r.get('skipped') or r.get('failed')} | | | | | |")
            continue
        note = "" if r["throughput"] == "measured" else " (extrap.)"
        lines.append(
            head + f"| {_short_parameters(r)} | {r['recall@20']:.3f} | "
            f"{r['queries_per_s']:,.0f}{note} | {r['speedup_vs_exact']:.1f} | "
            f"{r['build_s']:.1f} s | "
            + ("n/m" if r["index_bytes"] is None else f"{r['index_bytes'] / 2**20:,.0f} MiB")
            + f" | {r['peak_rss_delta_bytes'] / 2**20:,.0f} MiB |"
        )
        for name, raw in r.get("raw_searcher_diagnostic", {}).items():
            lines.append(
                f"| {r['M']:,} | {r['D']} | scann raw `{name}` (diagnostic) | same index | "
                f"{raw['recall@20']:.3f} | {raw['queries_per_s']:,.0f} | "
                f"{raw['speedup_vs_exact']:.1f} | | | |"
            )
    return "\n".join(lines)


def target_verdict(records: list[dict]) -> dict:
    found = [
        r
        for r in records
        if r["M"] == TARGET["M"] and r["D"] == TARGET["D"] and r["backend"] == "scann"
    ]
    if not found or "recall@20" not in found[0]:
        return {**TARGET, "status": "not measured in this run"}
    r = found[0]
    met = (
        r["recall@20"] >= TARGET["recall@20"]
        and r["speedup_vs_exact"] >= TARGET["speedup_vs_exact"]
    )
    exact = next(
        e for e in records if e["M"] == r["M"] and e["D"] == r["D"] and e["backend"] == "exact"
    )
    return {
        **TARGET,
        "measured_recall@20": r["recall@20"],
        "measured_speedup_vs_exact": r["speedup_vs_exact"],
        "exact_throughput": exact["throughput"],
        "status": "met" if met else "not met",
    }


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("numpy", "jax", "jaxlib", "scann", "faiss-cpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="bank sizes M (default 100000,1000000)")
    parser.add_argument("--dims", default=None, help="dimensions D (default 256,2048)")
    parser.add_argument(
        "--backends",
        default=DEFAULT_BACKENDS,
        help="from scann,exact,faiss_ivf,faiss_hnsw,faiss_flat (exact always runs: ground truth)",
    )
    parser.add_argument("--queries", type=int, default=None, help="queries per call (4096)")
    parser.add_argument("--recall_queries", type=int, default=None, help="default: all queries")
    parser.add_argument(
        "--max_exact_queries",
        type=int,
        default=None,
        help="time exact on this many queries and extrapolate its throughput (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed searches after a warm-up")
    parser.add_argument(
        "--repeat_budget_s",
        type=float,
        default=60.0,
        help="stop repeating a search once its timed calls together exceed this",
    )
    parser.add_argument(
        "--ivf_nprobe_fractions",
        default="0.05,0.1",
        help="faiss IVF lists searched, as fractions of nlist (0.05 = ScannIndex's leaves_fraction)",
    )
    parser.add_argument(
        "--ivf_presize_always",
        action="store_true",
        help="reserve the IVF lists at exact size (default: only where plain add would not fit)",
    )
    parser.add_argument("--hnsw_m", type=int, default=32)
    parser.add_argument("--hnsw_ef_construction", type=int, default=40)
    parser.add_argument("--hnsw_ef_search", default="64,256")
    parser.add_argument("--memory_budget_gib", type=float, default=20.0)
    parser.add_argument("--exact_shard_gib", type=float, default=1.0)
    parser.add_argument("--ignore_memory_estimate", action="store_true")
    parser.add_argument(
        "--bank_on_disk",
        default=None,
        help="generate the bank into a memory-mapped .npy in this folder (page cache, not "
        "process memory), so a bank of half the RAM leaves room for the index build",
    )
    parser.add_argument(
        "--scann_spill_dir",
        default=None,
        help="ScannIndex(spill_dir=...): its normalised keys go to a file here, memory-mapped",
    )
    parser.add_argument(
        "--no_scann_save",
        action="store_true",
        help="skip ScannIndex.save (index size not measured; saves its serialisation memory)",
    )
    parser.add_argument(
        "--keep_backends",
        action="store_true",
        help="with --update: also keep the old rows of the (M, D) run now whose backend is not "
        "run now (e.g. re-run scann and exact at 1M x 2048, keep the faiss rows)",
    )
    parser.add_argument("--quick", action="store_true", help="20k x 64, 512 queries (< 60 s)")
    parser.add_argument("--out", default=None, help="write the results as one JSON file here")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of --out for the (M, D) not run now (re-run one configuration)",
    )
    parser.add_argument(
        "--build_memory",
        action="store_true",
        help="measure only the peak RSS of Index.build per backend and --build_modes "
        "(each build in its own process; --sizes 100000 --dims 2048 by default)",
    )
    parser.add_argument("--build_modes", default="copy,in_place,spill")
    parser.add_argument(
        "--import_root",
        default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        help="checkout whose sgg_jax is measured (default: this repository)",
    )
    parser.add_argument("--code_label", default="this checkout", help="names --import_root")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_memory:
        args.sizes = args.sizes or "100000"
        args.dims = args.dims or "2048"
        if args.backends == DEFAULT_BACKENDS:
            args.backends = "exact,scann"
    quick = {"sizes": "20000", "dims": "64", "queries": 512}
    full = {"sizes": "100000,1000000", "dims": "256,2048", "queries": 4096}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.recall_queries is None:
        args.recall_queries = args.queries
    if args.max_exact_queries is None:
        args.max_exact_queries = args.queries
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"scann", "exact", "faiss_ivf", "faiss_hnsw", "faiss_flat"}
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}")
    args.ivf_nprobe_fractions = _floats(args.ivf_nprobe_fractions)
    args.hnsw_ef_search = _ints(args.hnsw_ef_search)
    args.recall_queries = min(args.recall_queries, args.queries)

    global REPEAT_BUDGET_S
    REPEAT_BUDGET_S = args.repeat_budget_s
    args.build_modes = [m.strip() for m in args.build_modes.split(",") if m.strip()]
    if set(args.build_modes) - set(BUILD_MODES):
        parser.error(f"unknown --build_modes {sorted(set(args.build_modes) - set(BUILD_MODES))}")
    if args.child and args.build_memory:
        args.shares = predicate_shares()
        size, dim, backend, mode = args.child.split(",")
        row = run_build_memory(int(size), int(dim), backend, mode, args)
        with open(args.child_out, "w", encoding="utf-8") as handle:
            json.dump(row, handle)
        return
    if args.child:
        args.shares = predicate_shares()
        size, dim = (int(x) for x in args.child.split(","))
        run_config(size, dim, args)
        return
    if args.build_memory:
        build_memory_main(args)
        return

    if any(b.startswith("faiss") for b in args.backends):
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise SystemExit("faiss backends need faiss-cpu: pip install -e '.[bench]'") from None
    print(f"# data: {DATA_DESCRIPTION}", flush=True)
    records, started, load_before = [], time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        for size in _ints(args.sizes):
            for dim in _ints(args.dims):
                child_out = os.path.join(folder, f"{size}_{dim}.jsonl")
                open(child_out, "w").close()
                command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
                command += ["--child", f"{size},{dim}", "--child_out", child_out]
                t0 = time.perf_counter()
                root = os.path.abspath(args.import_root)
                env = {
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                }
                done = subprocess.run(command, check=False, env=env)
                with open(child_out, encoding="utf-8") as handle:
                    got = [json.loads(line) for line in handle if line.strip()]
                records.extend(got)
                if done.returncode != 0:
                    records.append(
                        {
                            "M": size,
                            "D": dim,
                            "backend": "(rest of this configuration)",
                            "failed": f"process exited with {done.returncode} after "
                            f"{time.perf_counter() - t0:.0f} s",
                        }
                    )
    table = markdown(records)
    verdict = target_verdict(records)
    print(table)
    print(
        "target (ScaNN recall@20 >= 0.95 at >= 10x exact throughput, 1M x 256): "
        + (
            verdict["status"]
            if "measured_recall@20" not in verdict
            else f"recall {verdict['measured_recall@20']:.3f} at "
            f"{verdict['measured_speedup_vs_exact']:.1f}x -> {verdict['status']}"
        )
    )
    if args.out:
        write_json(args, records, started, load_before)


def write_json(args, records: list[dict], started: float, load_before) -> None:
    """Writes ``--out``; with ``--update``, rows of (M, D) not run now are kept from the old file."""
    run = {
        "command": "python benchmarks/bench_retrieval.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "wall_s": round(time.time() - started, 1),
        "configs": sorted({(r["M"], r["D"]) for r in records}),
        "load_average_1_5_15_min_at_start": [round(x, 2) for x in load_before],
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    runs, rows = [run], list(records)
    if args.update and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as handle:
            old = json.load(handle)
        if old.get("data") != DATA_DESCRIPTION:
            raise SystemExit(f"--update: {args.out} was measured on other data")
        fresh = {(r["M"], r["D"]) for r in records}
        run_now = {(r["M"], r["D"], r["backend"]) for r in records}
        kept = [
            r
            for r in old["rows"]
            if (r["M"], r["D"]) not in fresh
            or (args.keep_backends and (r["M"], r["D"], r["backend"]) not in run_now)
        ]
        for r in kept:
            if (r["M"], r["D"]) in fresh and "kept_from" not in r:
                r["kept_from"] = "an earlier run (see runs); speedup_vs_exact vs that run's exact"
        rows = sorted(rows + kept, key=lambda r: (r["M"], r["D"]))  # stable: backend order kept
        for old_run in reversed(old["runs"]):
            configs = [c for c in old_run["configs"] if tuple(c) not in fresh or args.keep_backends]
            if configs:  # a run whose every configuration was re-run is dropped
                runs.insert(0, {**old_run, "configs": configs})
    table = markdown(rows)
    result = {
        "benchmark": "retrieval",
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), **versions()},
        "runs": runs,
        "data": DATA_DESCRIPTION,
        "what_is_measured": {
            "queries_per_s": f"{args.queries} queries in one search call, k={K}, best of up to "
            f"{args.repeats} (fewer once the timed calls exceed {args.repeat_budget_s:g} s; "
            f"see search_s_runs) after a warm-up call on the first {WARMUP_QUERIES} queries",
            "exact_throughput": "measured on all queries unless 'throughput' says "
            "'extrapolated (timed on N queries)': then measured on N and applied to all "
            "(exact search is linear in the queries)",
            "recall@20": f"vs ExactIndex top-{K} on the first {args.recall_queries} queries",
            "index_bytes": "serialised index size (see index_bytes_what)",
            "peak_rss_delta_bytes": "process peak RSS growth during build + searches "
            "(VmHWM reset before the build; the bank itself is not included)",
            "speedup_vs_exact": "queries_per_s / exact queries_per_s of the same (M, D)",
            "skipped / failed": "rows with 'skipped' (memory estimate over the budget) or "
            "'failed' (the configuration's process died, e.g. killed for memory)",
        },
        "target": target_verdict(rows),
        "table_markdown": table,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(f"# wrote {args.out}" + (" (updated)" if len(runs) > 1 else ""))


if __name__ == "__main__":
    main()
