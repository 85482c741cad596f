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

With ``--retrieval`` it also times RA-SGG's phase-2 step as the training loop runs it: the batch
transform (:class:`sgg_jax.projects.ra_sgg.ra_sgg.RetrievalAugmenter`: embed the batch's foreground
slots with the current model, ScaNN search of the memory bank over every GQA-200-mini training
relation, label augmentation, soft targets) followed by the train step with the multi-prototype
loss, and reports ``phase2_step_ms / phase1_step_ms`` with the breakdown. The memory-bank build
(embedding the whole training split and indexing it) is reported separately: it runs once per
``--bank_refresh_steps``.

``--dtype bfloat16`` runs the steps in mixed precision (:func:`make_train_step` here): float32
master parameters and optimizer state, the dense layers' matmuls (forward and backward) in
bfloat16, the loss in float32. The matmul reference uses the same dtype.

    python benchmarks/bench_train_step.py [--size small|official] [--batch 8] [--pairs 512]
        [--steps 20] [--dtype float32|bfloat16] [--retrieval] [--fg 64]

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.data import gqa200, pipeline
from sgg_jax.relation.losses import make_penet_loss
from sgg_jax.relation.penet import PENet, PENetConfig
from sgg_jax.train import OptimConfig, create_train_state, make_mesh, make_optimizer, shard_batch
from sgg_jax.train.loop import make_step, model_loss


def _cast_floats(tree, dtype):
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    return jax.tree.map(cast, tree)


def make_train_step(model, loss_fn, optimizer, *, mesh, learning_rate_fn, dtype=jnp.float32):
    """``sgg_jax.train.loop.make_train_step``, with the model's dense layers computing in ``dtype``.

    float32 is the library's step unchanged. Another dtype is mixed precision in the manner of
    PyTorch's autocast: float32 master parameters, gradients and optimizer state; on entry to
    ``model.apply`` the floating-point parameters are cast to ``dtype`` and every ``nn.Dense`` /
    ``nn.Conv`` call casts its input to ``dtype`` (so its matmul runs in ``dtype``; the model casts
    boxes and features to float32 itself, which alone would promote the matmuls back to float32);
    the other ops follow JAX's type promotion, and the outputs are cast back to float32 for the loss.
    """
    if dtype == jnp.float32:
        return make_step(
            model_loss(model, loss_fn), optimizer, mesh=mesh, learning_rate_fn=learning_rate_fn
        )

    def loss_in_float32(outputs, aux, batch):
        return loss_fn(*_cast_floats((outputs, aux), jnp.float32), batch)

    compute = model_loss(model, loss_in_float32)

    def matmuls_in_dtype(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.Dense, nn.Conv)) and context.method_name == "__call__":
            args = _cast_floats(args, dtype)
        return next_fun(*args, **kwargs)

    def mixed_precision_loss(params, collections, batch, dropout_key):
        with nn.intercept_methods(matmuls_in_dtype):
            return compute(_cast_floats(params, dtype), collections, batch, dropout_key)

    return make_step(mixed_precision_loss, optimizer, mesh=mesh, learning_rate_fn=learning_rate_fn)


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
    parser.add_argument("--retrieval", action="store_true", help="also time the RA-SGG step")
    parser.add_argument("--fg", type=int, default=None, help="max_fg (default min(256, pairs))")
    parser.add_argument("--backend", choices=("scann", "exact"), default="scann")
    args = parser.parse_args()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    graphs, vocab = gqa200.load_bundled("train")
    config = pipeline.PipelineConfig(
        batch_size=args.batch,
        max_objects=40,
        max_pairs=args.pairs,
        max_fg=args.fg or min(256, args.pairs),
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

    step = make_train_step(
        model, loss_fn, optimizer, mesh=mesh, learning_rate_fn=schedule, dtype=dtype
    )
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
        "dtype": args.dtype,
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
    if args.retrieval:
        print(json.dumps(_phase2_row(args, row, graphs, vocab, model, model_config, batches)))


def _phase2_row(args, phase1, graphs, vocab, model, model_config, batches) -> dict:
    from sgg_jax.projects.ra_sgg.memory_bank import MemoryBank
    from sgg_jax.projects.ra_sgg.ra_sgg import RASGGConfig, RetrievalAugmenter, make_embed_fn

    mesh = make_mesh()
    optimizer, schedule = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=1e-3), 1000)
    state = create_train_state(model, optimizer, batches[0], seed=0, mesh=mesh)
    step = make_train_step(
        model,
        make_penet_loss(model_config, multi_prototype=True),
        optimizer,
        mesh=mesh,
        learning_rate_fn=schedule,
        dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
    )
    embed = make_embed_fn(model, mesh, shard_batch)
    bank = MemoryBank(
        graphs,
        max_objects=40,
        num_predicates=vocab.num_predicates,
        backend=args.backend,
        batch_size=args.batch,
    )
    augmenter = RetrievalAugmenter(
        bank,
        embed,
        vocab.predicate_counts,
        RASGGConfig(num_neighbours=20),
        foreground_slots=args.fg or min(256, args.pairs),
    )
    timings = {"embed": 0.0, "transform": 0.0}

    def timed_embed(variables, batch):
        start = time.perf_counter()
        out = embed(variables, batch)
        timings["embed"] += time.perf_counter() - start
        return out

    augmenter.embed = timed_embed
    # step 1 builds the bank (timed on its own), then two warm-up steps compile everything
    start = time.perf_counter()
    first, _ = augmenter(state.variables, 1, batches[0])
    bank_seconds = time.perf_counter() - start
    bank_stats = dict(bank.last_refresh)
    state, metrics = step(state, shard_batch(first, mesh))
    second, _ = augmenter(state.variables, 2, batches[1])
    state, metrics = step(state, shard_batch(second, mesh))
    jax.block_until_ready(metrics)
    timings = {"embed": 0.0, "transform": 0.0}
    start = time.perf_counter()
    for index, host in enumerate(batches[2:], start=3):
        begin = time.perf_counter()
        augmented, _ = augmenter(state.variables, index, host)
        timings["transform"] += time.perf_counter() - begin
        state, metrics = step(state, shard_batch(augmented, mesh))
        jax.block_until_ready(state.params)  # the next transform needs these parameters anyway
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / args.steps
    transform_ms = timings["transform"] / args.steps * 1e3
    embed_ms = timings["embed"] / args.steps * 1e3
    return {
        "bench": "ra_sgg_phase2_step",
        "size": args.size,
        "dtype": args.dtype,
        "batch": args.batch,
        "pairs_per_image": args.pairs,
        "foreground_slots": augmenter.foreground_slots,
        "backend": args.backend,
        "bank_entries": bank.size,
        "bank_build_s": round(bank_seconds, 2),
        "bank_embed_s": round(bank_stats["bank/embed_seconds"], 2),
        "bank_index_s": round(bank_stats["bank/index_seconds"], 2),
        "phase1_step_ms": phase1["step_ms"],
        "phase2_step_ms": round(seconds * 1e3, 2),
        "ratio_phase2_to_phase1": round(seconds * 1e3 / phase1["step_ms"], 3),
        "transform_ms": round(transform_ms, 2),
        "transform_embed_ms": round(embed_ms, 2),
        "transform_search_and_augment_ms": round(transform_ms - embed_ms, 2),
        "target_ratio": 1.15,
        "loss_last": float(np.asarray(metrics["loss"])),
    }


if __name__ == "__main__":
    main()
