"""PE-Net PredCls train-step speed: step time, relations/s, and achieved FLOP/s vs the machine's matmul.

One run measures, side by side on the same devices:

* the machine's matmul throughput: a large ``jnp.dot`` (float32, square, jitted) timed over
  repeats; FLOPs = 2·n³;
* the PE-Net train step (``sgg_jax.train.make_train_step``: forward, PE-Net losses, backward,
  clipping, optimizer update) on GQA-200-mini batches of B images × P pairs; its FLOPs come from
  XLA's cost analysis of the compiled step. Achieved FLOP/s = FLOPs / step time, reported as a
  fraction of the matmul FLOP/s.

It also checks that batches with different real graph sizes (same budgets) reuse one compiled step:
the number of traces of the step is asserted to be 1.

    python benchmarks/bench_train_step.py [--size small|official] [--batch 8] [--pairs 512]
        [--steps 20] [--dtype float32|bfloat16]

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.data import gqa200, pipeline
from sgg_jax.losses import make_penet_loss
from sgg_jax.models.penet import PENet, PENetConfig
from sgg_jax.train import OptimConfig, create_train_state, make_mesh, make_optimizer, shard_batch
from sgg_jax.train.loop import make_train_step


def _matmul_flops_per_second(size: int, dtype, repeats: int = 10) -> float:
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), dtype)
    b = jax.random.normal(key_b, (size, size), dtype)
    matmul = jax.jit(jnp.dot)
    matmul(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a, b)
    out.block_until_ready()
    seconds = (time.perf_counter() - start) / repeats
    return 2.0 * size**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "official"), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--matmul", type=int, default=2048)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    graphs, vocab = gqa200.load_bundled("train")
    config = pipeline.PipelineConfig(
        batch_size=args.batch,
        max_objects=40,
        max_pairs=args.pairs,
        max_fg=min(256, args.pairs),
        seed=0,
        num_predicates=vocab.num_predicates,
        read_threads=0,
    )
    loader = pipeline.make_loader(graphs, config)
    batches = [batch for _, batch in zip(range(args.steps + 2), loader.iter_from(0), strict=False)]
    make_config = PENetConfig.small if args.size == "small" else PENetConfig.official
    model_config = make_config(vocab.num_classes, vocab.num_predicates)
    model = PENet(model_config)
    mesh = make_mesh()
    optimizer, schedule = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=1e-3), 1000)
    state = create_train_state(model, optimizer, batches[0], seed=0, mesh=mesh)
    traces = []

    def loss_fn(outputs, aux, batch):
        traces.append(1)
        return make_penet_loss(model_config)(outputs, aux, batch)

    step = make_train_step(model, loss_fn, optimizer, mesh=mesh, learning_rate_fn=schedule)
    device_batches = [shard_batch(b, mesh) for b in batches]
    compiled_flops = None
    try:
        lowered = step.lower(state, device_batches[0])
        analysis = lowered.compile().cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        compiled_flops = float(analysis.get("flops", 0.0)) or None
    except (AttributeError, TypeError, ValueError):
        compiled_flops = None

    state, metrics = step(state, device_batches[0])  # compile + warm up
    state, metrics = step(state, device_batches[1])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    real_pairs = 0
    for batch, host in zip(device_batches[2:], batches[2:], strict=True):
        state, metrics = step(state, batch)
        real_pairs += int(np.asarray(host.pair_mask).sum())
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / args.steps
    real_objects = [int(np.asarray(b.object_mask).sum()) for b in batches]
    assert len(traces) == 1, f"the train step was traced {len(traces)} times"

    matmul = _matmul_flops_per_second(args.matmul, dtype)
    row = {
        "bench": "penet_train_step",
        "size": args.size,
        "task": "predcls",
        "batch": args.batch,
        "pairs_per_image": args.pairs,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "step_ms": round(seconds * 1e3, 2),
        "relations_per_s": round(real_pairs / args.steps / seconds, 1),
        "step_gflop": None if compiled_flops is None else round(compiled_flops / 1e9, 3),
        "achieved_gflop_per_s": None
        if compiled_flops is None
        else round(compiled_flops / seconds / 1e9, 2),
        "matmul_gflop_per_s": round(matmul / 1e9, 2),
        "fraction_of_matmul": None
        if compiled_flops is None
        else round(compiled_flops / seconds / matmul, 3),
        "traces": len(traces),
        "real_objects_per_batch_min_max": [min(real_objects), max(real_objects)],
        "loss_last": float(np.asarray(metrics["loss"])),
        "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
