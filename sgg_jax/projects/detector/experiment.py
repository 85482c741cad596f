"""Detector pretraining on synthetic pixels: Faster R-CNN (FPN) trained and evaluated by box mAP@0.5.

The library behind ``python -m experiments.detector``: :class:`DetectorExperimentConfig` (checked
when built: one-line :class:`~sgg_jax.errors.ConfigError` naming the flag, before any data is
generated or anything is compiled) and :func:`run`.

The SGDet pipeline of Scene-Graph-Benchmark (Tang et al., CVPR 2020) starts from a Faster R-CNN
pretrained on the scene-graph images and judged by its box mAP@0.5. This experiment runs that stage
end to end on a CPU:

1. Data (:mod:`sgg_jax.data.pixel_dataset`, the recipe the relation experiments' ``--dataset=
   synthetic_pixels`` reuses): synthetic scene graphs (:mod:`sgg_jax.data.synthetic`, VG150 class
   frequencies), split 70 / 10 / 20 into train / val / test. ``num_classes=K`` keeps only the
   objects of the K most frequent classes of the train split (relabelled ``1..K`` by descending
   frequency; the other objects and the relations touching them are removed *before* rendering, so
   they are not painted either) and ``min_object_size`` drops objects whose rendered box is smaller
   than that many pixels on a side. Images left without an object are dropped. The long tail of the
   150 VG classes (hundreds of classes with a handful of boxes) cannot be learnt in minutes on a
   CPU; K = 20-50 still covers most boxes.
2. Pixels: every graph is rendered (:mod:`sgg_jax.data.synthetic_pixels`, one appearance per
   class) as an ``image_size`` square PNG into ``<workdir>/images``. The folder is a cache: when
   its ``manifest.json`` matches the data and render options, the PNGs are read instead.
3. Model: :class:`~sgg_jax.detection.detector.FasterRCNN` of ``preset`` (default ``tiny``: a
   one-block-per-stage ResNet FPN; ``backbone_scale`` multiplies its widths, ``fpn_channels``,
   ``representation_size`` and ``num_proposals`` override the preset) trained from random
   initialisation (``freeze_at=0``: nothing is pretrained, so nothing is frozen by default; the
   optimizer is still masked with :func:`~sgg_jax.detection.detector.detector_trainable_mask`).
   Pixels enter as ``(rgb / 255 - ImageNet mean) / ImageNet std``.
4. Training: the library trainer (:func:`sgg_jax.train.loop.fit`) with the optimizer of
   :func:`sgg_jax.train.optim.make_optimizer` (Adam(W) or SGD, ``schedule="cosine"``: linear
   warm-up and cosine decay, global-norm clipping) on one device; batches shuffled per epoch
   (:class:`sgg_jax.train.loaders.EpochBatches`), checkpoints in ``<workdir>/checkpoints`` (a
   rerun resumes from them), losses every ``log_every`` updates to stdout, ``metrics.jsonl``
   and TensorBoard.
5. Evaluation on test: VOC box mAP@0.5 (:func:`~sgg_jax.evaluation.detection.detection_map`) next
   to two chance baselines with as many detections per image as the detector may return:

   * ``chance: random boxes`` — boxes copied from random training objects (their size and
     position), random classes drawn from the training class frequencies, uniform scores: a
     detector that knows the box and class statistics but looks at no pixel.
   * ``chance: GT boxes, random labels`` — the test ground-truth boxes themselves, each with a
     class drawn from the training class frequencies and a uniform score: perfect localisation,
     chance classification (an upper bound for any pixel-blind classifier of perfect boxes).

   ``results.json`` (the project schema, metric ``mAP@0.5`` plus ``coco/mAP@[.5:.95]``),
   ``results.md`` and ``plots/detections_*.png`` (test images with the detections drawn by
   :func:`sgg_jax.evaluation.viz.draw_scene_graph`, next to their ground truth) are written to the
   workdir, with ``config.json`` (``flags``: the workdir and every field of the config, which the
   relation experiments' ``detector_workdir`` reads back).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np

from sgg_jax.data.fileio import check_writable_dir
from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.errors import ConfigError, check_positive_int

# ----------------------------------------------------------------------------------------------
# Config (validated before any data or compile)
# ----------------------------------------------------------------------------------------------

_POSITIVE = (
    "synthetic_images",
    "image_size",
    "max_objects",
    "batch_size",
    "num_steps",
    "learning_rate",
    "log_every",
    "eval_batch_size",
    "backbone_scale",
    "keep_checkpoints",
)
_NON_NEGATIVE_INTS = ("num_classes", "warmup_steps", "checkpoint_every", "eval_images", "num_plots")
_NON_NEGATIVE_NUMBERS = ("weight_decay", "clip_norm", "min_object_size", "momentum")


@dataclasses.dataclass(frozen=True)
class DetectorExperimentConfig:
    """Everything ``python -m experiments.detector`` runs; every field is the flag of the same name.

    Checked when built (:meth:`validate`). The field order is the flag order: :meth:`flag_values`
    (``config.json``'s ``flags``) lists them in it.

    Attributes:
      seed: seed of the data, the initialisation and the sampling.
      synthetic_images: synthetic images generated (all splits, >= 10).
      num_classes: keep the objects of the K most frequent train classes (0 = all 150).
      image_size: side of the rendered square images in pixels (>= 32).
      min_object_size: drop objects whose rendered box is smaller on a side (pixels).
      max_objects: object budget per image (extra objects are dropped).
      preset: :class:`~sgg_jax.detection.detector.DetectorConfig` preset.
      backbone_scale: ``tiny`` preset only: multiply the backbone widths by this.
      fpn_channels, representation_size: override the preset's FPN channels / fc6-fc7 width.
      num_proposals: override the RPN proposals per image (train = test).
      freeze_at: frozen backbone stages (0: train everything).
      optimizer, learning_rate, momentum, weight_decay, warmup_steps, clip_norm: the optimizer
        (:meth:`optim_config`, cosine schedule).
      batch_size, num_steps: images per update, training updates.
      checkpoint_every, keep_checkpoints, log_every: checkpoints and loss logging.
      fast_compile: compile with XLA's backend optimisations off (smoke runs).
      eval_batch_size, eval_images: images per evaluation batch; the first N test images (0 = all).
      detections_per_image, score_thresh: detections kept per test image and their threshold.
      num_plots, plot_score_thresh: test images drawn, and the score a drawn detection needs.
      max_image_pixels: rendered image files of more pixels are refused (a DataError naming the
        file, from its header: the ``<workdir>/images`` cache is read back).
    """

    seed: int = 0
    synthetic_images: int = 1500
    num_classes: int = 20
    image_size: int = 128
    min_object_size: float = 6.0
    max_objects: int = 12
    preset: str = "tiny"
    backbone_scale: int = 2
    fpn_channels: int | None = None
    representation_size: int | None = None
    num_proposals: int | None = None
    freeze_at: int = 0
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    clip_norm: float = 10.0
    batch_size: int = 8
    num_steps: int = 600
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 25
    fast_compile: bool = False
    eval_batch_size: int = 16
    eval_images: int = 0
    detections_per_image: int = 20
    score_thresh: float = 0.05
    num_plots: int = 4
    plot_score_thresh: float = 0.3
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line ConfigErrors naming the flag: the numbers, then the model, then the optimizer."""
        for name in _POSITIVE:
            value = getattr(self, name)
            if (
                value is None
                or value <= 0
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise ConfigError(name, f"must be positive, got {value}")
        for name in _NON_NEGATIVE_INTS:
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in _NON_NEGATIVE_NUMBERS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(name, f"must be a finite number >= 0, got {value}")
        if self.num_classes > 150:
            raise ConfigError(
                "num_classes", f"must be <= 150 (VG150 classes), got {self.num_classes}"
            )
        if self.image_size < 32:
            raise ConfigError("image_size", f"must be >= 32, got {self.image_size}")
        check_positive_int("max_image_pixels", self.max_image_pixels)
        if self.synthetic_images < 10:
            raise ConfigError("synthetic_images", f"must be >= 10, got {self.synthetic_images}")
        # The model of the largest class count the data may keep (the real one is known after it).
        self.detector_config(self.num_classes or 150)
        self.optim_config()

    def flag_values(self, workdir: str) -> dict[str, Any]:
        """The flags of the run, ``workdir`` first (``config.json``'s ``flags``)."""
        return {"workdir": workdir, **dataclasses.asdict(self)}

    def detector_config(self, num_classes: int):
        """The :class:`~sgg_jax.detection.detector.DetectorConfig` of ``num_classes`` foreground
        classes (raises ConfigError naming the bad option)."""
        from sgg_jax.detection.backbone import BackboneConfig
        from sgg_jax.detection.detector import DETECTOR_PRESETS, DetectorConfig

        if self.preset not in DETECTOR_PRESETS:
            raise ConfigError("preset", f"must be one of {DETECTOR_PRESETS}, got {self.preset!r}")
        base = DetectorConfig.preset(self.preset)
        backbone = base.backbone.replace(freeze_at=self.freeze_at)
        if self.preset == "tiny":
            scale = self.backbone_scale
            backbone = BackboneConfig.tiny(
                width_per_group=4 * scale,
                stem_channels=4 * scale,
                res2_out_channels=16 * scale,
                freeze_at=self.freeze_at,
            )
        overrides = {
            "backbone": backbone,
            "num_classes": num_classes + 1,
            "score_thresh": self.score_thresh,
            "detections_per_image": self.detections_per_image,
        }
        if self.fpn_channels is not None:
            overrides["fpn_channels"] = self.fpn_channels
        if self.representation_size is not None:
            overrides["representation_size"] = self.representation_size
        if self.num_proposals is not None:
            n = self.num_proposals
            overrides.update(
                rpn_pre_nms_top_n_train=2 * n,
                rpn_pre_nms_top_n_test=2 * n,
                rpn_post_nms_top_n_train=n,
                rpn_post_nms_top_n_test=n,
                rpn_fpn_post_nms_top_n_train=n,
                rpn_fpn_post_nms_top_n_test=n,
            )
        return base.replace(**overrides)

    def optim_config(self):
        """The :class:`~sgg_jax.train.optim.OptimConfig` of the run (cosine schedule)."""
        from sgg_jax.train.optim import OptimConfig

        return OptimConfig(
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            schedule="cosine",
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            # At least one warm-up update (from 0.1 x the rate), at most num_steps - 1.
            warmup_steps=max(1, min(self.warmup_steps, self.num_steps - 1)),
            warmup_factor=0.1,
            cosine_end_factor=0.01,
            clip_norm=self.clip_norm,
        )


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _gt_arrays(graphs, max_objects: int):
    """Padded host arrays: boxes [N, G, 4], labels [N, G], mask [N, G], image sizes [N, 2]."""
    n = len(graphs)
    boxes = np.zeros((n, max_objects, 4), np.float32)
    labels = np.zeros((n, max_objects), np.int32)
    for i, graph in enumerate(graphs):
        k = min(graph.num_objects, max_objects)
        boxes[i, :k] = graph.boxes[:k]
        labels[i, :k] = graph.labels[:k]
    sizes = np.array([[g.height, g.width] for g in graphs], np.float32)
    return boxes, labels, labels > 0, sizes


def load_data(config: DetectorExperimentConfig, workdir: str):
    """Generates, filters and renders the synthetic splits (PNGs cached in ``<workdir>/images``).

    Returns:
      ``(data, object_names, info)``: per split a dict of ``graphs``, ``pixels`` [N, S, S, 3] and
      the padded ground truth ``boxes``, ``labels``, ``mask``, ``sizes``.
    """
    from sgg_jax.data.image_io import load_image
    from sgg_jax.data.pixel_dataset import PixelDatasetConfig, pixel_splits

    recipe = PixelDatasetConfig(
        num_images=config.synthetic_images,
        seed=config.seed,
        num_classes=config.num_classes,
        image_size=config.image_size,
        min_object_size=config.min_object_size,
        max_objects=config.max_objects,
    )
    rendered, vocab, info = pixel_splits(recipe, os.path.join(workdir, "images"))
    data = {}
    for split, graphs in rendered.items():
        pixels = np.stack(
            [load_image(g.image_path, max_pixels=config.max_image_pixels) for g in graphs]
        )
        boxes, labels, mask, sizes = _gt_arrays(graphs, config.max_objects)
        data[split] = dict(graphs=graphs, pixels=pixels, boxes=boxes, labels=labels, mask=mask)
        data[split]["sizes"] = sizes
    return data, vocab.object_names, info


# ----------------------------------------------------------------------------------------------
# Model, optimizer, steps
# ----------------------------------------------------------------------------------------------


def build(config: DetectorExperimentConfig, detector, example_shape):
    """Model, initial TrainState on one device, the jitted train step and inference function.

    Args:
      config: the experiment (seed, optimizer, ``fast_compile``).
      detector: the :class:`~sgg_jax.detection.detector.DetectorConfig` to train.
      example_shape: ``(batch, height, width, 3)`` of a training batch.

    Returns:
      ``(model, state, train_step, detect, counts, mesh)``.
    """
    import jax
    import jax.numpy as jnp

    from sgg_jax.detection.detector import FasterRCNN, detector_trainable_mask
    from sgg_jax.train import loop
    from sgg_jax.train import mesh as mesh_lib
    from sgg_jax.train.optim import freeze, make_optimizer
    from sgg_jax.train.state import TrainState

    model = FasterRCNN(detector)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    images = jnp.zeros(example_shape, jnp.float32)
    sizes = jnp.full((example_shape[0], 2), example_shape[1], jnp.float32)
    options = {}
    if config.fast_compile:
        options["compiler_options"] = {
            "xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True,
        }
    init = jax.jit(lambda k: model.init(k, images, sizes, train=False), **options)
    variables = dict(init(init_key))
    params = variables.pop("params")
    optimizer, schedule = make_optimizer(config.optim_config(), config.num_steps)
    mask = detector_trainable_mask(detector, params)
    optimizer = freeze(optimizer, lambda _: mask)
    # One device: the batch is not split over a mesh.
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    state = mesh_lib.replicate(
        TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            collections=variables,
            rng=train_key,
        ),
        mesh,
    )

    def detector_loss(params, collections, batch, dropout_key):
        outputs = model.apply(
            {"params": params, **collections},
            batch["images"],
            batch["sizes"],
            train=True,
            gt_boxes=batch["boxes"],
            gt_labels=batch["labels"],
            gt_mask=batch["mask"],
            rng=dropout_key,
        )
        losses = dict(outputs["losses"])
        total = losses.pop("total")
        return total, (losses, {})

    train_step = loop.make_step(
        detector_loss,
        optimizer,
        mesh=mesh,
        learning_rate_fn=schedule,
        compiler_options=options.get("compiler_options"),
    )

    def detect(variables, images, sizes):
        return model.apply(variables, images, sizes, train=False)["detections"]

    def num_params(tree):
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))

    counts = {
        "params": num_params(params),
        "trainable": int(
            sum(
                np.prod(p.shape)
                for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
                if m
            )
        ),
    }
    return model, state, train_step, jax.jit(detect, **options), counts, mesh


def train_batches(train, batch_size: int, seed: int):
    """The training images as :class:`~sgg_jax.train.loaders.EpochBatches` of dict batches."""
    from sgg_jax.data.images import normalise_pixels
    from sgg_jax.train.loaders import EpochBatches

    def select(index):
        return {
            "images": normalise_pixels(train["pixels"][index]),
            "sizes": train["sizes"][index],
            "boxes": train["boxes"][index],
            "labels": train["labels"][index],
            "mask": train["mask"][index],
        }

    return EpochBatches(len(train["graphs"]), batch_size, select, seed)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def run_detector(detect, variables, split, batch_size: int, limit: int = 0):
    """Detections of every image of ``split`` as host (boxes, labels, scores) tuples.

    Batches of ``batch_size`` images; the last one is padded with image 0 (one program).
    """
    from sgg_jax.data.images import normalise_pixels

    n = len(split["graphs"]) if not limit else min(limit, len(split["graphs"]))
    results = []
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)
        valid = index < n
        index = np.where(valid, index, 0)  # pad the last batch with image 0: one program
        out = detect(variables, normalise_pixels(split["pixels"][index]), split["sizes"][index])
        out = {k: np.asarray(v) for k, v in out.items()}
        for row in np.flatnonzero(valid):
            keep = out["mask"][row]
            results.append(
                (out["boxes"][row][keep], out["labels"][row][keep], out["scores"][row][keep])
            )
    return results


def chance_detections(data, num_detections: int, num_classes: int, rng: np.random.Generator):
    """The two pixel-blind baselines of the module docstring (per test image)."""
    train = data["train"]
    train_boxes = train["boxes"][train["mask"]]
    train_labels = train["labels"][train["mask"]]
    prior = np.bincount(train_labels, minlength=num_classes + 1)[1:].astype(np.float64)
    prior /= prior.sum()
    random_boxes, gt_boxes = [], []
    for graph in data["test"]["graphs"]:
        picks = rng.integers(0, len(train_boxes), num_detections)
        random_boxes.append(
            (
                train_boxes[picks],
                rng.choice(num_classes, num_detections, p=prior) + 1,
                rng.uniform(size=num_detections),
            )
        )
        n = graph.num_objects
        gt_boxes.append((graph.boxes, rng.choice(num_classes, n, p=prior) + 1, rng.uniform(size=n)))
    return {"chance: random boxes": random_boxes, "chance: GT boxes, random labels": gt_boxes}


def _map_row(graphs, detections, num_classes):
    from sgg_jax.evaluation.detection import detection_map

    result = detection_map(graphs, detections, num_classes, coco=True)
    return {
        "mAP@0.5": result["mAP@0.5"],
        "coco/mAP@[.5:.95]": result["coco/mAP@[.5:.95]"],
        "coco/mAP@0.75": result["coco/mAP@0.75"],
        "detections_per_image": float(np.mean([len(d[1]) for d in detections])),
        "AP_per_class": result["AP_per_class"],
    }


def draw_examples(
    data, detections, names, out_dir: str, *, num_plots: int, score_thresh: float
) -> list[str]:
    """The first ``num_plots`` test images: detections above ``score_thresh`` (left) next to the
    ground truth (right), as ``<out_dir>/detections_<i>.png``; returns the paths."""
    from sgg_jax.data.image_io import write_png
    from sgg_jax.evaluation.viz import draw_scene_graph

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    test = data["test"]
    for i in range(min(num_plots, len(detections))):
        boxes, labels, scores = detections[i]
        keep = scores >= score_thresh
        graph = test["graphs"][i]
        det = draw_scene_graph(
            test["pixels"][i],
            boxes[keep],
            labels[keep],
            names,
            scores=scores[keep],
            scale=4,
            legend_width=0,
        )
        truth = draw_scene_graph(
            test["pixels"][i], graph.boxes, graph.labels, names, scale=4, legend_width=0
        )
        gap = np.full((det.shape[0], 8, 3), 255, np.uint8)
        path = os.path.join(out_dir, f"detections_{i}.png")
        write_png(path, np.concatenate([det, gap, truth], axis=1))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def run(config: DetectorExperimentConfig, workdir: str) -> dict[str, Any]:
    """Generates the data, trains, evaluates and writes every output of ``config`` to ``workdir``.

    Raises:
      ConfigError: ``batch_size`` larger than the training images left after filtering;
        ``workdir`` a file or not writable (checked before anything is generated).

    Returns:
      The ``results.json`` record.
    """
    import jax

    from sgg_jax.train.checkpoint import jsonable, write_json
    from sgg_jax.train.loop import TrainConfig, fit

    check_writable_dir(workdir, "workdir")
    wall_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    data, names, data_info = load_data(config, workdir)
    num_classes = len(names) - 1
    detector = config.detector_config(num_classes)
    train = data["train"]
    if len(train["graphs"]) < config.batch_size:
        raise ConfigError(
            "batch_size", f"is larger than the {len(train['graphs'])} training images left"
        )
    size = config.image_size
    model, state, train_step, detect, counts, mesh = build(
        config, detector, (config.batch_size, size, size, 3)
    )
    print(
        f"FasterRCNN ({config.preset}, backbone scale {config.backbone_scale}): "
        f"{counts['params']:,} parameters ({counts['trainable']:,} trainable), {num_classes} "
        f"classes + background, {detector.num_proposals_train} proposals, "
        f"{detector.roi_batch_size_per_image} RoIs / image"
    )
    run_config = {
        "flags": config.flag_values(workdir),
        "detector": jsonable(dataclasses.asdict(detector)),
        "optim": jsonable(config.optim_config()),
    }
    timing = {"first_step": None, "compile_s": 0.0}
    train_start = time.perf_counter()

    def on_step(step, state, metrics, eval_metrics):
        del state, metrics, eval_metrics
        if timing["first_step"] is None:
            timing["first_step"] = step
            timing["compile_s"] = time.perf_counter() - train_start
            if step > 1:
                print(f"resumed from checkpoint {step - 1}")

    def on_log(step, metrics):
        rate = metrics["perf/steps_per_sec"]
        print(
            f"step {step:5d}/{config.num_steps} "
            + " ".join(f"{k} {v:.3f}" for k, v in _loss_terms(metrics).items())
            + f" | {rate:.2f} steps/s ({rate * config.batch_size:.1f} img/s)",
            flush=True,
        )

    state, final_metrics = fit(
        state,
        train_step,
        train_batches(train, config.batch_size, config.seed),
        workdir=workdir,
        train_config=TrainConfig(
            num_steps=config.num_steps,
            seed=config.seed,
            checkpoint_every=config.checkpoint_every,
            max_to_keep=config.keep_checkpoints,
            log_every=config.log_every,
            progress=False,
        ),
        mesh=mesh,
        config=run_config,
        throughput=("images", lambda batch: len(batch["images"])),
        on_log=on_log,
        on_step=on_step,
    )
    last = _loss_terms(final_metrics)
    train_s = time.perf_counter() - train_start
    compile_s = timing["compile_s"]
    start_step = config.num_steps if timing["first_step"] is None else timing["first_step"] - 1
    if timing["first_step"] is not None:
        print(f"training: {train_s:.0f} s ({compile_s:.0f} s of it compiling the train step)")

    # -- evaluation ------------------------------------------------------------------------------
    eval_start = time.perf_counter()
    test = data["test"]
    if config.eval_images:
        limit = min(config.eval_images, len(test["graphs"]))
        test = {k: v[:limit] for k, v in test.items()}
        data = {**data, "test": test}
    detections = run_detector(detect, state.variables, test, config.eval_batch_size)
    eval_s = time.perf_counter() - eval_start
    runs = {f"Faster R-CNN ({config.preset})": _map_row(test["graphs"], detections, num_classes)}
    baselines = chance_detections(
        data, detector.detections_per_image, num_classes, np.random.default_rng([config.seed, 1])
    )
    for label, chance in baselines.items():
        runs[label] = _map_row(test["graphs"], chance, num_classes)
    plots = draw_examples(
        data,
        detections,
        names,
        os.path.join(workdir, "plots"),
        num_plots=config.num_plots,
        score_thresh=config.plot_score_thresh,
    )
    wall_s = time.perf_counter() - wall_start
    results = {
        "experiment": "detector",
        "dataset": "synthetic",
        "task": "detection",
        "seed": config.seed,
        "runs": {
            label: {k: v for k, v in row.items() if k != "AP_per_class"}
            for label, row in runs.items()
        },
        "AP_per_class": {label: row["AP_per_class"] for label, row in runs.items()},
        "data": data_info,
        "model": {"preset": config.preset, **counts},
        "timing": {
            "wall_s": wall_s,
            "train_s": train_s,
            "train_compile_s": compile_s,
            "eval_s": eval_s,
            "steps": config.num_steps - start_step,
            "load_average_1m": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(),
        },
        "last_train_metrics": last,
        "plots": plots,
    }
    write_json(os.path.join(workdir, "results.json"), results)
    write_markdown(results, os.path.join(workdir, "results.md"))
    print()
    with open(os.path.join(workdir, "results.md")) as handle:
        print(handle.read())
    return results


def _loss_terms(metrics: dict) -> dict:
    """The detector's losses (``total`` and each term) and ``grad_norm`` of trainer metrics."""
    terms = {name[len("loss/") :]: value for name, value in metrics.items() if name[:5] == "loss/"}
    if "loss" in metrics:
        terms["total"] = metrics["loss"]
    if "grad_norm" in metrics:
        terms["grad_norm"] = metrics["grad_norm"]
    return dict(sorted(terms.items()))


def write_markdown(results: dict, path: str) -> None:
    """``results.md``: the mAP table of ``results`` (the ``results.json`` record)."""
    lines = [
        f"# Detector pretraining on synthetic pixels (seed {results['seed']})",
        "",
        f"{results['data']['images']['test']} test images, {results['data']['boxes']['test']} boxes,"
        f" {len(results['data']['classes'])} classes; wall time {results['timing']['wall_s']:.0f} s"
        f" (training {results['timing']['train_s']:.0f} s, load average "
        f"{results['timing']['load_average_1m']:.1f} on {results['timing']['cpu_count']} cores).",
        "",
        "| run | mAP@0.5 | mAP@[.5:.95] | mAP@0.75 | detections / image |",
        "|---|---|---|---|---|",
    ]
    for label, row in results["runs"].items():
        lines.append(
            f"| {label} | {100 * row['mAP@0.5']:.1f} | {100 * row['coco/mAP@[.5:.95]']:.1f} | "
            f"{100 * row['coco/mAP@0.75']:.1f} | {row['detections_per_image']:.1f} |"
        )
    lines += [
        "",
        "Chance rows: random training boxes with classes drawn from the training class frequencies;"
        " the test ground-truth boxes with such random classes. Plots: "
        + ", ".join(os.path.basename(p) for p in results["plots"])
        + " (left: detections above the plot threshold, right: ground truth).",
    ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
