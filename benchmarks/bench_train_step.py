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

With ``--retrieval --in_step`` it times, instead, three steps side by side in interleaved rounds
(:func:`_interleaved_row`): the PE-Net step, the host path above, and the phase-2 step with the
retrieval inside the jitted step (``--retrieval=in_step``, :mod:`sgg_jax.projects.ra_sgg.in_step`: the
same bank held on the devices, exact top-K of the training forward's own embeddings, selection,
augmentation and soft targets in the step, no second forward; its transform only adds the bank
arrays and the own entry ids), each run as the training loop runs it, and reports both ratios to
the PE-Net step (medians over the rounds, so that the load of a shared machine moves all three);
these three run in float32 whatever ``--dtype``.

    python benchmarks/bench_train_step.py [--size small|official] [--batch 8] [--pairs 512]
        [--steps 20] [--dtype float32|bfloat16] [--retrieval] [--in_step] [--rounds 4] [--fg 64]

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument(
        "--in_step",
        action="store_true",
        help="with --retrieval: phase 1, the host path and the in-step retrieval, interleaved",
    )
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (--in_step)")
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
    if args.retrieval and args.in_step:
        print(
            json.dumps(
                _interleaved_row(
                    args, row, graphs, vocab, model, model_config, batches, phase1=(step, state)
                )
            )
        )
    elif args.retrieval:
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


def _interleaved_row(
    args, phase1_row, graphs, vocab, model, model_config, batches, *, phase1
) -> dict:
    """Phase 1, phase 2 on the host path and phase 2 in the step, timed in interleaved rounds.

    Each kind runs as :func:`sgg_jax.train.fit` runs it: dispatch the step, prepare the next batch
    (batch transform + placement on the devices), wait for the step's metrics. Rounds of
    ``steps / rounds`` updates of each kind alternate (in a rotating order), so a change of the
    machine's load hits all three alike; the medians over rounds are reported. ``phase1`` is the
    already compiled PE-Net ``(step, state)`` of :func:`main`.
    """
    from sgg_jax.projects.ra_sgg import in_step
    from sgg_jax.projects.ra_sgg.memory_bank import MemoryBank
    from sgg_jax.projects.ra_sgg.ra_sgg import RASGGConfig, RetrievalAugmenter, make_embed_fn

    mesh = make_mesh()
    foreground_slots = args.fg or min(256, args.pairs)
    embed = make_embed_fn(model, mesh, shard_batch)

    def bank():
        return MemoryBank(
            graphs,
            max_objects=40,
            num_predicates=vocab.num_predicates,
            backend=args.backend,
            batch_size=args.batch,
        )

    host_config = RASGGConfig(num_neighbours=20)
    in_step_config = RASGGConfig(num_neighbours=20, retrieval="in_step")
    kinds = {
        "host": (
            make_penet_loss(model_config, multi_prototype=True),
            RetrievalAugmenter(
                bank(),
                embed,
                vocab.predicate_counts,
                host_config,
                foreground_slots=foreground_slots,
            ),
        ),
        "in_step": (
            in_step.make_in_step_loss(
                make_penet_loss(model_config, multi_prototype=True),
                in_step_config,
                vocab.predicate_counts,
                in_step.tail_of(in_step_config, vocab.predicate_counts, vocab.num_predicates),
                mesh,
                foreground_slots=foreground_slots,
            ),
            in_step.InStepRetrieval(bank(), embed, in_step_config, mesh),
        ),
    }
    runners = {"phase1": {"step": phase1[0], "state": phase1[1], "transform": None, "update": 0}}
    for name, (loss, transform) in kinds.items():
        optimizer, schedule = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=1e-3), 1000)
        state = create_train_state(model, optimizer, batches[0], seed=0, mesh=mesh)
        step = make_train_step(model, loss, optimizer, mesh=mesh, learning_rate_fn=schedule)
        runners[name] = {"state": state, "step": step, "transform": transform, "update": 0}

    def prepare(runner, batch):
        runner["update"] += 1
        if runner["transform"] is not None:
            batch, _ = runner["transform"](runner["state"].variables, runner["update"], batch)
        return shard_batch(batch, mesh)

    def run(runner, count, offset):
        """``count`` updates as the training loop runs them; seconds."""
        start = time.perf_counter()
        device_batch = prepare(runner, batches[offset % len(batches)])
        for index in range(count):
            runner["state"], metrics = runner["step"](runner["state"], device_batch)
            if index + 1 < count:
                device_batch = prepare(runner, batches[(offset + index + 1) % len(batches)])
            runner["metrics"] = {name: float(value) for name, value in metrics.items()}
        return time.perf_counter() - start

    setup = {}
    for name, runner in runners.items():  # bank builds, compilation, warm-up
        start = time.perf_counter()
        run(runner, 2, 0)
        setup[name] = time.perf_counter() - start
    rounds = max(1, args.rounds)
    per_round = max(1, args.steps // rounds)
    times = {name: [] for name in runners}
    order = list(runners)
    for round_index in range(rounds):
        for name in order[round_index % 3 :] + order[: round_index % 3]:
            seconds = run(runners[name], per_round, 2 + round_index * per_round)
            times[name].append(seconds / per_round * 1e3)
    median = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "bench": "ra_sgg_phase2_host_vs_in_step",
        "size": args.size,
        "dtype": "float32",
        "batch": args.batch,
        "pairs_per_image": args.pairs,
        "foreground_slots": foreground_slots,
        "devices": jax.device_count(),
        "rounds": rounds,
        "steps_per_round": per_round,
        "bank_entries": kinds["host"][1].bank.size,
        "phase1_step_ms": round(median["phase1"], 2),
        "phase2_host_step_ms": round(median["host"], 2),
        "phase2_in_step_step_ms": round(median["in_step"], 2),
        "ratio_host_to_phase1": round(median["host"] / median["phase1"], 3),
        "ratio_in_step_to_phase1": round(median["in_step"] / median["phase1"], 3),
        "per_round_ms": {name: [round(v, 1) for v in values] for name, values in times.items()},
        "setup_s": {name: round(v, 1) for name, v in setup.items()},
        "target_ratio": 1.05,
        "loss_last": {name: round(r["metrics"]["loss"], 4) for name, r in runners.items()},
        "in_step_selected_fraction_last": round(
            runners["in_step"]["metrics"]["loss/ra/selected_fraction"], 3
        ),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


if __name__ == "__main__":
    main()
