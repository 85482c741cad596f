"""Detector inference throughput: backbone + FPN + RPN proposals + RoIAlign box features.

``python -m benchmarks.bench_detector --out=benchmarks/results/detector_cpu.json``

Times the part of the SGDet forward pass that every relation model reads: the feature maps, the RPN
proposals (top-k, decoding, NMS) and the fc7 features of every proposal (RoIAlign + fc6 / fc7),
i.e. :class:`~sgg_jax.detection.detector.FasterRCNN` up to :meth:`~FasterRCNN.box_features` (no class
scores, box regression or detection NMS). Rows: presets x image sizes x batch sizes, float32 on the
default backend, plus bfloat16 rows when the backend is a GPU (on a CPU the bfloat16 rows are
skipped and the report says no GPU was present). Weights are random (speed does not depend on
them); images are random normalised pixels of the full square size.

Per row: ``compile_s`` (lowering + XLA compile of the jitted forward), ``first_run_s`` (first call
after compile), then ``iters`` timed calls after ``warmup`` untimed ones; ``images_per_s`` is
``batch * iters / total`` and ``ms_per_batch`` the median call. Prints one JSON line per row and a
markdown table at the end; ``--out`` writes all rows (and the machine) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.detection import detector as det
from sgg_jax.detection.detector import DetectorConfig, FasterRCNN


def forward_fn(config: DetectorConfig):
    """``(variables, images, sizes) -> (proposals, mask, box_features)`` of ``config``."""
    model = FasterRCNN(config)

    def features_and_proposals(module, images, image_sizes):
        features = module.features(images)
        logits, deltas, anchors = module._rpn(features)
        stacked_anchors = det._stack_levels(anchors, 0.0)

        def propose(image_logits, image_deltas, image_size):
            return det._proposals_one_image(
                det._stack_levels(image_logits, -jnp.inf),
                det._stack_levels(image_deltas, 0.0),
                stacked_anchors,
                image_size,
                pre_n=config.rpn_pre_nms_top_n_test,
                post_n=config.rpn_post_nms_top_n_test,
                final_n=config.num_proposals_test,
                config=config,
            )

        proposals, _, mask = jax.vmap(propose)(logits, deltas, image_sizes)
        return proposals, mask, module.box_features(features, proposals, mask)

    def forward(variables, images, image_sizes):
        return model.apply(variables, images, image_sizes, method=features_and_proposals)

    return model, forward


def _touch_all(module, images):
    """Creates every variable cheaply (eager, 64 px, one box): shapes do not depend on the size."""
    features = module.features(images)
    module._rpn(features)
    boxes = jnp.array([[[0.0, 0.0, 16.0, 16.0]]])
    hidden = module.box_features(features, boxes, jnp.ones((1, 1), bool))
    return module.object_logits(hidden), module.box_regression(hidden)


def _timed(compiled, arguments, iters: int, warmup: int) -> tuple[float, list[float], object]:
    """(first-call seconds, per-call seconds of ``iters`` timed calls, last output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*arguments))
    first = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*arguments))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*arguments))
        times.append(time.perf_counter() - start)
    return first, times, out


def bench_row(
    preset: str, size: int, batch: int, dtype: str, iters: int, warmup: int, stages: bool = False
) -> dict:
    base = DetectorConfig.preset(preset)
    config = base.replace(backbone=base.backbone.replace(dtype=dtype))
    model, forward = forward_fn(config)
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    sizes = jnp.full((batch, 2), size, jnp.float32)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 64, 64, 3)), method=_touch_all)
    jitted = jax.jit(forward)
    start = time.perf_counter()
    compiled = jitted.lower(variables, images, sizes).compile()
    compile_s = time.perf_counter() - start
    first_run_s, times, out = _timed(compiled, (variables, images, sizes), iters, warmup)
    total = sum(times)
    row = {
        "preset": preset,
        "image_size": size,
        "batch": batch,
        "dtype": dtype,
        "backend": jax.default_backend(),
        "proposals": config.num_proposals_test,
        "representation_size": config.representation_size,
        "compile_s": round(compile_s, 2),
        "first_run_s": round(first_run_s, 3),
        "iters": iters,
        "warmup": warmup,
        "ms_per_batch": round(1000 * statistics.median(times), 1),
        "images_per_s": round(batch * iters / total, 3),
        "box_features_finite": bool(np.isfinite(np.asarray(out[2])).all()),
    }
    if stages:  # backbone + FPN alone, to split the time between features and proposals / RoIs
        features = jax.jit(lambda v, x: model.apply(v, x, method=model.features))
        start = time.perf_counter()
        compiled = features.lower(variables, images).compile()
        row["features_compile_s"] = round(time.perf_counter() - start, 2)
        _, times, _ = _timed(compiled, (variables, images), iters, warmup)
        row["features_ms_per_batch"] = round(1000 * statistics.median(times), 1)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| preset | size | batch | dtype | backend | compile s | ms / batch | images / s | iters "
        "| backbone+FPN ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        features = r.get("features_ms_per_batch")
        lines.append(
            f"| {r['preset']} | {r['image_size']} | {r['batch']} | {r['dtype']} | {r['backend']} "
            f"| {r['compile_s']:.1f} | {r['ms_per_batch']:.1f} | {r['images_per_s']:.2f} "
            f"| {r['iters']} | {'-' if features is None else f'{features:.1f}'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,resnet50_fpn,resnext101_fpn")
    parser.add_argument("--sizes", default="256,592", help="square image sides")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the first")
    parser.add_argument(
        "--slow_iters",
        default="",
        help="comma list preset:size=iters overriding --iters (e.g. resnext101_fpn:592=1)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time backbone + FPN alone (features_ms_per_batch)",
    )
    parser.add_argument("--out", default=None, help="JSON file for all rows")
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    for preset in presets:
        if preset not in det.DETECTOR_PRESETS:
            print(
                f"error: unknown preset {preset!r} (one of {det.DETECTOR_PRESETS})", file=sys.stderr
            )
            return 2
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        batches = [int(b) for b in args.batches.split(",") if b]
        overrides = {}
        for item in filter(None, args.slow_iters.split(",")):
            key, value = item.split("=")
            preset, size = key.split(":")
            overrides[(preset, int(size))] = int(value)
    except ValueError as error:
        print(f"error: bad --sizes / --batches / --slow_iters: {error}", file=sys.stderr)
        return 2
    if any(s < 32 for s in sizes) or any(b < 1 for b in batches) or args.iters < 1:
        print("error: sizes must be >= 32, batches and iters >= 1", file=sys.stderr)
        return 2
    backend = jax.default_backend()
    dtypes = ["float32"] + (["bfloat16"] if backend == "gpu" else [])
    if backend != "gpu":
        print(f"no GPU present (backend {backend!r}): bfloat16 GPU rows not measured")
    rows = []
    for preset in presets:
        for size in sizes:
            iters = overrides.get((preset, size), args.iters)
            warmup = 0 if (preset, size) in overrides else args.warmup
            for batch in batches:
                for dtype in dtypes:
                    row = bench_row(preset, size, batch, dtype, iters, warmup, args.stages)
                    row["load_average_1m"] = round(os.getloadavg()[0], 2)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print()
    print(markdown(rows))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        machine = {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": backend,
            "devices": [str(d) for d in jax.devices()],
        }
        with open(args.out, "w") as handle:
            json.dump({"machine": machine, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
