"""Pieces every experiment shares: data flags and loading, loaders, model evaluation, baselines.

Experiments stay thin: they define their method flags, build a model and a loss, and call these
helpers for the data, the training loop's evaluation function and the final results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from sgg_jax.data import datasets, pipeline
from sgg_jax.errors import ConfigError
from sgg_jax.evaluation import evaluate, frequency_groups
from sgg_jax.evaluation.collect import batch_predictions, detection_predictions
from sgg_jax.structures import SceneGraph, SceneGraphBatch, Vocab

FLAGS = flags.FLAGS


def define_data_flags() -> None:
    """Dataset, task and budget flags (shared by every SGG experiment)."""
    flags.DEFINE_enum(
        "dataset",
        "gqa200_mini",
        [*datasets.DATASETS, "synthetic_pixels"],
        "Dataset to use (synthetic_pixels: the rendered images of --detector_workdir).",
    )
    flags.DEFINE_string("gqa200_train", None, "GQA_200_Train.json (dataset=gqa200).")
    flags.DEFINE_string("gqa200_test", None, "GQA_200_Test.json (dataset=gqa200).")
    flags.DEFINE_string("gqa200_id_info", None, "GQA_200_ID_Info.json (dataset=gqa200).")
    flags.DEFINE_string("vg150_h5", None, "VG-SGG-with-attri.h5 (dataset=vg150).")
    flags.DEFINE_string("vg150_dicts", None, "VG-SGG-dicts-with-attri.json (dataset=vg150).")
    flags.DEFINE_string("vg150_image_data", None, "image_data.json (dataset=vg150).")
    flags.DEFINE_string("tfds_data_dir", None, "data_dir of a data_prep dataset (dataset=tfds).")
    flags.DEFINE_string("tfds_name", None, "name of a data_prep dataset (dataset=tfds).")
    flags.DEFINE_integer("num_val", 5000, "Validation images taken from train (gqa200, vg150).")
    flags.DEFINE_integer("synthetic_images", 2000, "Images of dataset=synthetic (all splits).")
    flags.DEFINE_list(
        "synthetic_context_bias",
        [],
        "dataset=synthetic: 'lo,hi' = the head-minority regime, where the annotator of each "
        "(subject, object) class context records a group's head predicate with a probability "
        "drawn in [lo, hi] (default: --synthetic_annotator_bias everywhere).",
    )
    flags.DEFINE_float(
        "synthetic_annotator_bias",
        0.7,
        "dataset=synthetic: probability of recording a group's head predicate instead of the "
        "true one.",
    )
    flags.DEFINE_enum("task", "predcls", ["predcls", "sgcls", "sgdet"], "SGG task.")
    flags.DEFINE_string("workdir", "/tmp/sgg_jax/run", "Output directory.")
    flags.DEFINE_integer("seed", 0, "Seed of shuffling, pair sampling and initialisation.")
    flags.DEFINE_integer("batch_size", 8, "Images per batch (global, split over devices).")
    flags.DEFINE_integer("max_objects", 40, "Object budget per image.")
    flags.DEFINE_integer("max_pairs", 256, "Pair budget per training image.")
    flags.DEFINE_integer("max_fg", 64, "Foreground pairs sampled per training image.")
    flags.DEFINE_integer("eval_max_pairs", 1560, "Pair budget per evaluation image.")
    flags.DEFINE_integer("eval_batch_size", 8, "Images per evaluation batch.")
    flags.DEFINE_integer(
        "eval_images", 0, "Evaluate periodically on the first N val images (0 = all)."
    )
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
    flags.DEFINE_enum(
        "feature_source",
        "geometry",
        ["geometry", "precomputed", "roi"],
        "Object/union feature source (roi: pooled from pixels by the detector of "
        "--detector_workdir; needed by --task=sgdet).",
    )
    flags.DEFINE_string(
        "object_features", None, "Precomputed object features .npz (feature_source=precomputed)."
    )
    flags.DEFINE_string(
        "detector_workdir",
        None,
        "Workdir of experiments.detector: its newest checkpoint initialises the detector of "
        "--feature_source=roi; with --dataset=synthetic_pixels its images are the data.",
    )
    flags.DEFINE_integer(
        "image_size",
        0,
        "roi: images resized to this longer side and padded to a square (0 = the detector "
        "workdir's --image_size).",
    )
    flags.DEFINE_bool("freeze_detector", True, "roi: keep the pretrained detector fixed (SGB).")
    flags.DEFINE_integer(
        "detections_per_image",
        0,
        "sgdet: detections per image (0 = the detector's); every ordered pair is a candidate.",
    )


def define_optim_flags(learning_rate: float) -> None:
    """Optimizer and schedule flags (shared by the SGG experiments); see :func:`optim_config`."""
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Optimizer.")
    flags.DEFINE_float("learning_rate", learning_rate, "Base learning rate.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_float("weight_decay", 1e-4, "Weight decay.")
    flags.DEFINE_integer("warmup_steps", 500, "Linear warmup updates.")
    flags.DEFINE_float("warmup_factor", 0.1, "Learning-rate factor at step 0.")
    flags.DEFINE_list("decay_steps", [], "Milestones where the learning rate is multiplied by 0.1.")
    flags.DEFINE_float("clip_norm", 5.0, "Global-norm gradient clipping (0 = off).")
    flags.DEFINE_bool(
        "scale_lr_by_batch",
        False,
        "Multiply the learning rate of every parameter by --batch_size (SGB's "
        "rl_factor = SOLVER.IMS_PER_BATCH).",
    )
    flags.DEFINE_enum(
        "bias_rules",
        "none",
        ["none", "sgb"],
        "sgb: parameters whose path contains 'bias' get no weight decay and "
        "--bias_lr_factor x the learning rate (SGB make_optimizer); none: all parameters alike.",
    )
    flags.DEFINE_float(
        "bias_lr_factor",
        2.0,
        "Learning-rate factor of biases with --bias_rules=sgb (SGB BIAS_LR_FACTOR: 2 in "
        "defaults.py, 1 in the relation configs).",
    )


def optim_config():
    """The :class:`sgg_jax.train.OptimConfig` of the flags of :func:`define_optim_flags`.

    ``--batch_size`` (the global images per update) is the ``images_per_batch`` that
    ``--scale_lr_by_batch`` multiplies the learning rate by.
    """
    from sgg_jax.train import OptimConfig

    try:
        decay_steps = tuple(int(s) for s in FLAGS.decay_steps)
    except ValueError:
        raise ConfigError("decay_steps", f"expected integers, got {FLAGS.decay_steps}") from None
    if FLAGS.scale_lr_by_batch and FLAGS.batch_size < 1:
        raise ConfigError(
            "batch_size",
            f"must be >= 1 to scale the learning rate by it (--scale_lr_by_batch), "
            f"got {FLAGS.batch_size}",
        )
    return OptimConfig(
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay,
        warmup_steps=FLAGS.warmup_steps,
        warmup_factor=FLAGS.warmup_factor,
        decay_steps=decay_steps,
        clip_norm=FLAGS.clip_norm,
        scale_lr_by_batch=FLAGS.scale_lr_by_batch,
        images_per_batch=max(FLAGS.batch_size, 1),
        bias_rules=FLAGS.bias_rules,
        bias_lr_factor=FLAGS.bias_lr_factor,
    )


def synthetic_options() -> dict[str, Any]:
    """The :class:`~sgg_jax.data.synthetic.SyntheticConfig` fields the flags set (validated)."""
    from sgg_jax.data.synthetic import SyntheticConfig

    options: dict[str, Any] = {"annotator_bias": FLAGS.synthetic_annotator_bias}
    if FLAGS.synthetic_context_bias:
        try:
            values = tuple(float(v) for v in FLAGS.synthetic_context_bias)
        except ValueError:
            values = ()
        if len(values) != 2:
            raise ConfigError(
                "synthetic_context_bias",
                f"expected two numbers 'lo,hi', got {FLAGS.synthetic_context_bias}",
            )
        options["context_bias_range"] = values
    try:
        SyntheticConfig(**options)
    except ConfigError as error:
        name = {"context_bias_range": "synthetic_context_bias"}.get(
            error.option, f"synthetic_{error.option}"
        )
        raise ConfigError(name, str(error).split(": ", 1)[1]) from None
    return options


def check_data_flags() -> None:
    """One-line ConfigErrors for bad values, before anything is loaded or compiled."""
    synthetic_options()
    for name in ("batch_size", "max_objects", "max_pairs", "max_fg", "eval_max_pairs"):
        if getattr(FLAGS, name) <= 0:
            raise ConfigError(name, f"must be positive, got {getattr(FLAGS, name)}")
    if FLAGS.max_fg > FLAGS.max_pairs:
        raise ConfigError("max_fg", f"{FLAGS.max_fg} exceeds max_pairs={FLAGS.max_pairs}")
    if FLAGS.eval_batch_size <= 0:
        raise ConfigError("eval_batch_size", f"must be positive, got {FLAGS.eval_batch_size}")
    if FLAGS.eval_images < 0:
        raise ConfigError("eval_images", f"must be >= 0, got {FLAGS.eval_images}")
    if FLAGS.feature_source == "precomputed":
        if not FLAGS.object_features:
            raise ConfigError("object_features", "is required with --feature_source=precomputed")
        if not os.path.exists(FLAGS.object_features):
            raise ConfigError("object_features", f"{FLAGS.object_features} does not exist")
    if FLAGS.task == "sgdet" and FLAGS.feature_source != "roi":
        raise ConfigError(
            "task", "sgdet detects objects from pixels: it needs --feature_source=roi"
        )
    if FLAGS.dataset == "synthetic_pixels" and FLAGS.feature_source != "roi":
        raise ConfigError(
            "dataset", "synthetic_pixels is the pixel dataset of --feature_source=roi"
        )
    if FLAGS.feature_source == "roi":
        if not FLAGS.detector_workdir:
            raise ConfigError("detector_workdir", "is required with --feature_source=roi")
        path = os.path.join(FLAGS.detector_workdir, "config.json")
        if not os.path.exists(path):
            raise ConfigError(
                "detector_workdir",
                f"{FLAGS.detector_workdir} has no config.json (not an experiments.detector run)",
            )
    for name in ("image_size", "detections_per_image"):
        if getattr(FLAGS, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(FLAGS, name)}")
    if FLAGS.detections_per_image == 1:
        raise ConfigError("detections_per_image", "must be 0 (the detector's) or >= 2")
    required = {
        "gqa200": ("gqa200_train", "gqa200_test", "gqa200_id_info"),
        "vg150": ("vg150_h5", "vg150_dicts", "vg150_image_data"),
        "tfds": ("tfds_data_dir", "tfds_name"),
    }.get(FLAGS.dataset, ())
    for name in required:
        if not getattr(FLAGS, name):
            raise ConfigError(name, f"is required with --dataset={FLAGS.dataset}")
        if name != "tfds_name" and not os.path.exists(getattr(FLAGS, name)):
            raise ConfigError(name, f"{getattr(FLAGS, name)} does not exist")


def data_paths() -> dict[str, str]:
    """The raw-file flags as the ``paths`` of :func:`sgg_jax.data.datasets.load`."""
    values = {
        "train": FLAGS.gqa200_train,
        "test": FLAGS.gqa200_test,
        "id_info": FLAGS.gqa200_id_info,
        "h5": FLAGS.vg150_h5,
        "dicts": FLAGS.vg150_dicts,
        "image_data": FLAGS.vg150_image_data,
        "data_dir": FLAGS.tfds_data_dir,
        "name": FLAGS.tfds_name,
    }
    return {k: v for k, v in values.items() if v}


def load_splits() -> tuple[dict[str, Sequence[SceneGraph]], Vocab]:
    """Train / val / test graphs of ``--dataset`` and the vocabulary (train counts)."""
    if FLAGS.dataset == "synthetic_pixels":
        from sgg_jax.data.pixel_dataset import PixelDatasetConfig, pixel_splits

        detector_flags = detector_run_config()["flags"]
        recipe = PixelDatasetConfig.from_manifest(detector_flags)
        image_dir = os.path.join(FLAGS.detector_workdir, "images")
        splits, vocab, _ = pixel_splits(recipe, image_dir)
        return splits, vocab
    splits = {}
    vocab = None
    for split in datasets.SPLITS:
        graphs, split_vocab = datasets.load(
            FLAGS.dataset,
            split,
            paths=data_paths(),
            num_val=FLAGS.num_val,
            seed=FLAGS.seed,
            synthetic_images=FLAGS.synthetic_images,
            synthetic_options=synthetic_options(),
        )
        splits[split] = graphs
        if split == "train":
            vocab = split_vocab
    return splits, vocab


def object_features_for(
    splits: Mapping[str, Sequence[SceneGraph]],
) -> dict[str, list[np.ndarray] | None]:
    """Per split, the precomputed object features aligned with its graphs (None without them)."""
    if FLAGS.feature_source != "precomputed":
        return {split: None for split in splits}
    from sgg_jax.data import feature_store

    table = feature_store.load_object_features(FLAGS.object_features)
    return {
        split: feature_store.features_for(graphs, table, path=FLAGS.object_features)
        for split, graphs in splits.items()
    }


def train_pipeline_config(vocab: Vocab, **options: Any) -> pipeline.PipelineConfig:
    """The training pipeline of the flags (SGB pair sampling, reshuffled every epoch)."""
    return pipeline.PipelineConfig(
        batch_size=FLAGS.batch_size,
        max_objects=FLAGS.max_objects,
        max_pairs=FLAGS.max_pairs,
        max_fg=FLAGS.max_fg,
        seed=FLAGS.seed,
        num_predicates=vocab.num_predicates,
        **options,
    )


def eval_pipeline_config(vocab: Vocab) -> pipeline.PipelineConfig:
    """All ordered pairs, every image once, in order."""
    return pipeline.PipelineConfig.evaluation(
        FLAGS.eval_batch_size,
        FLAGS.max_objects,
        FLAGS.eval_max_pairs,
        num_predicates=vocab.num_predicates,
        read_threads=0,
    )


Scorer = Callable[[SceneGraphBatch], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
MultiScorer = Callable[
    [SceneGraphBatch], Mapping[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
]


def predicate_groups_of(vocab: Vocab) -> dict[str, Any] | None:
    """Head / body / tail predicates by training-frequency thirds (None with fewer than 3)."""
    counts = vocab.predicate_counts
    positive = np.sort(counts[1:][counts[1:] > 0])
    if positive.size < 3:
        return None
    head_above = int(positive[(2 * positive.size) // 3])
    tail_below = int(positive[positive.size // 3])
    return frequency_groups(counts, thresholds=(max(head_above - 1, tail_below), tail_below))


def evaluate_scorer(
    scorer: Scorer,
    graphs: Sequence[SceneGraph],
    vocab: Vocab,
    *,
    mode: str,
    zeroshot_triplets: np.ndarray | None = None,
    object_features: Sequence[np.ndarray] | None = None,
    image_transform: Callable[[Sequence[SceneGraph]], Any] | None = None,
) -> dict[str, Any]:
    """Runs ``scorer`` over every image of ``graphs`` and evaluates its predictions.

    Args:
      scorer: ``scorer(host_batch) -> (predicate_scores[B,P,C], object_labels[B,N] | None,
        object_scores[B,N] | None)`` as numpy arrays, or (SGDet) the dict of
        :func:`predict_outputs` whose ``boxes`` / ``pairs`` are the model's own.
      graphs: the evaluated split.
      vocab: vocabulary (predicate names and train counts give the head/body/tail groups).
      mode: ``predcls`` or ``sgcls``.
      zeroshot_triplets: optional int[Z, 3] for zR@K.
      object_features: precomputed object features aligned with ``graphs``.
      image_transform: ``image_transform(graphs) -> ImageBatchTransform`` adding the pixels of
        every batch (``"roi"`` feature source); SGDet boxes are mapped back with its scales.

    Returns:
      The evaluator's metrics.
    """
    return evaluate_scorers(
        lambda batch: {"": scorer(batch)},
        graphs,
        vocab,
        mode=mode,
        zeroshot_triplets=zeroshot_triplets,
        object_features=object_features,
        image_transform=image_transform,
    )[""]


def evaluate_scorers(
    scorers: MultiScorer,
    graphs: Sequence[SceneGraph],
    vocab: Vocab,
    *,
    mode: str,
    zeroshot_triplets: np.ndarray | None = None,
    object_features: Sequence[np.ndarray] | None = None,
    image_transform: Callable[[Sequence[SceneGraph]], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_scorer` for several scorings of one pass (e.g. one model, several rankings).

    Args:
      scorers: ``scorers(host_batch) -> {name: (predicate_scores, object_labels, object_scores)}``
        with the same names for every batch.
      graphs, vocab, mode, zeroshot_triplets, object_features, image_transform: as
        :func:`evaluate_scorer`.

    Returns:
      ``{name: metrics}``.
    """
    predictions: dict[str, dict[int, Any]] = {}
    loader = pipeline.make_loader(
        graphs, eval_pipeline_config(vocab), object_features=object_features
    )
    transform = image_transform(graphs) if image_transform is not None else None
    for batch in loader:
        scales = None
        if transform is not None:
            scales = transform.scales(batch)
            batch, _ = transform(None, 0, batch)
        for name, result in scorers(batch).items():
            if isinstance(result, Mapping):  # SGDet: the model's own boxes and pairs
                found = detection_predictions(batch, result, scales)
            else:
                found = batch_predictions(graphs, batch, *result)
            predictions.setdefault(name, {}).update(found)
    return {
        name: evaluate_predictions(
            graphs,
            [by_index[i] for i in range(len(graphs))],
            vocab,
            mode=mode,
            zeroshot_triplets=zeroshot_triplets,
        )
        for name, by_index in predictions.items()
    }


def evaluate_predictions(
    graphs: Sequence[SceneGraph],
    predictions: Sequence[Any],
    vocab: Vocab,
    *,
    mode: str,
    zeroshot_triplets: np.ndarray | None = None,
) -> dict[str, Any]:
    """The evaluator's metrics of ``predictions`` (one per graph), with the head/body/tail groups."""
    return evaluate(
        graphs,
        predictions,
        mode=mode,
        num_predicates=vocab.num_predicates,
        zeroshot_triplets=zeroshot_triplets,
        predicate_names=vocab.predicate_names,
        predicate_groups=predicate_groups_of(vocab),
    )


def model_scorer(model, variables_fn: Callable[[], Mapping[str, Any]], mesh, shard) -> Scorer:
    """A scorer running ``model`` (eval mode) on the mesh; softmax over the relation logits.

    Returns the ``(scores, labels, object_scores)`` of :func:`evaluate_scorer`, or in SGDet the
    host dict of :func:`predict_outputs`.

    Args:
      model: the flax module (outputs follow the model contract).
      variables_fn: returns the current variables (e.g. of the train state).
      mesh: the device mesh.
      shard: ``shard(batch, mesh)`` placing a host batch on the mesh.
    """

    predict = jax.jit(predict_outputs(model))

    def scorer(batch: SceneGraphBatch):
        outputs = jax.device_get(predict(variables_fn(), shard(batch, mesh)))
        if "boxes" in outputs:  # SGDet: objects and pairs are the model's (detection_predictions)
            return {k: np.asarray(v) for k, v in outputs.items()}
        return (
            np.asarray(outputs["predicate_scores"]),
            np.asarray(outputs["object_labels"]),
            np.asarray(outputs["object_scores"]),
        )

    return scorer


def zeroshot_for(splits: Mapping[str, Sequence[SceneGraph]]) -> np.ndarray | None:
    """Zero-shot triplets of the test split: (s-class, o-class, predicate) never seen in train.

    The VG150 benchmark has a published list (bundled); for other datasets the list is derived from
    the splits, which is the same definition.
    """
    if FLAGS.dataset == "vg150":
        from sgg_jax.data import zeroshot

        return zeroshot.load_bundled_vg150()

    def triplets(graphs):
        rows = [
            np.stack(
                [g.labels[g.relations[:, 0]], g.labels[g.relations[:, 1]], g.relations[:, 2]], 1
            )
            for g in graphs
            if g.num_relations
        ]
        return {tuple(r) for r in np.concatenate(rows).tolist()} if rows else set()

    unseen = sorted(triplets(splits["test"]) - triplets(splits["train"]))
    return np.asarray(unseen, np.int32).reshape(-1, 3) if unseen else None


def predict_outputs(model) -> Callable[[Mapping[str, Any], SceneGraphBatch], dict[str, Any]]:
    """``predict_fn(variables, batch) -> outputs`` of a relation model for export and evaluation.

    Outputs: ``predicate_scores`` f32[B, P, C] (softmax of the relation logits), ``object_labels``
    and ``object_scores`` [B, N]; in SGDet also the batch over the detections: ``boxes`` [B, D, 4]
    (pixels of the image the detector saw), ``object_mask`` [B, D], ``pairs`` [B, P, 2],
    ``pair_mask`` [B, P], and the detector's ``detection_labels`` / ``detection_scores`` [B, D].
    """
    sgdet_keys = ("boxes", "object_mask", "pairs", "pair_mask")
    sgdet_keys += ("detection_labels", "detection_scores")

    def predict_fn(variables, batch):
        outputs, _ = model.apply(variables, batch, train=False)
        result = {
            "predicate_scores": jax.nn.softmax(outputs["relation_logits"], axis=-1),
            "object_labels": outputs["object_labels"],
            "object_scores": outputs["object_scores"],
        }
        result.update({key: outputs[key] for key in sgdet_keys if key in outputs})
        return result

    return predict_fn


# ----------------------------------------------------------------------------------------------
# Pixels: --feature_source=roi (SGCls / SGDet from images)
# ----------------------------------------------------------------------------------------------


def detector_run_config() -> dict[str, Any]:
    """``config.json`` of ``--detector_workdir`` (the detector experiment's flags and config)."""
    import json

    path = os.path.join(FLAGS.detector_workdir, "config.json")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("detector_workdir", f"cannot read {path}: {error}") from None
    if not isinstance(config, dict) or "detector" not in config or "flags" not in config:
        raise ConfigError("detector_workdir", f"{path} is not an experiments.detector config")
    return config


class PixelInputs:
    """What ``--feature_source=roi`` adds to a relation experiment.

    * ``detector``: the :class:`~sgg_jax.detection.detector.DetectorConfig` of ``--detector_workdir``
      (``--detections_per_image`` overrides its detections per image);
    * ``image_size``: the longer side images are resized to (``--image_size`` or the detector
      run's);
    * :meth:`transform`: the :class:`~sgg_jax.data.images.ImageBatchTransform` of a split;
    * :meth:`merge_detector`: fresh relation-model variables with the detector run's newest
      checkpoint under ``features/detector`` (every collection: params, frozen BN constants).
    """

    def __init__(self):
        from sgg_jax.detection.detector import DetectorConfig

        config = detector_run_config()
        detector = DetectorConfig.from_dict(config["detector"])
        if FLAGS.detections_per_image:
            detector = detector.replace(detections_per_image=FLAGS.detections_per_image)
        self.detector = detector
        self.image_size = int(FLAGS.image_size or config["flags"].get("image_size", 0))
        if self.image_size <= 0:
            raise ConfigError("image_size", "is required: the detector run records none")
        self.workdir = FLAGS.detector_workdir

    def transform(self, graphs: Sequence[SceneGraph]):
        from sgg_jax.data.images import ImageBatchTransform

        return ImageBatchTransform(graphs, self.image_size)

    def example_batch(self, graphs: Sequence[SceneGraph], loader) -> SceneGraphBatch:
        """The first batch of ``loader`` (over ``graphs``) with its pixels (model init)."""
        return self.transform(graphs)(None, 0, loader.dataset[0])[0]

    def transform_config(self) -> dict[str, Any]:
        """How the export's images must be prepared (``experiments.predict`` reads it)."""
        from sgg_jax.data.images import IMAGENET_MEAN, IMAGENET_STD

        return {
            "image_size": self.image_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "scale_255": True,
            "bgr": False,
        }

    def merge_detector(self, fresh: Mapping[str, Any]) -> dict[str, Any]:
        """``fresh`` with the pretrained detector's variables under ``features/detector``."""
        from sgg_jax.train.checkpoint import Checkpointer

        with Checkpointer(self.workdir, read_only=True) as checkpointer:
            if checkpointer.latest_step() is None:
                raise ConfigError("detector_workdir", f"{self.workdir} holds no checkpoint")
            pretrained = jax.device_get(checkpointer.restore_variables())
        from flax import traverse_util

        merged = {name: dict(collection) for name, collection in fresh.items()}
        for name, collection in merged.items():
            target = collection.get("features", {}).get("detector")
            if target is None:
                continue
            # SGCls pools features only: the model holds a subset (no RPN, no predictor) of the
            # detector's variables; every one it holds must come from the checkpoint.
            source = traverse_util.flatten_dict(dict(pretrained.get(name, {})))
            wanted = traverse_util.flatten_dict(dict(target))
            missing = [p for p in wanted if p not in source]
            wrong = [
                p for p in wanted if p in source and np.shape(source[p]) != np.shape(wanted[p])
            ]
            if missing or wrong:
                first = "/".join((missing or wrong)[0])
                raise ConfigError(
                    "detector_workdir",
                    f"the detector checkpoint of {self.workdir} does not fit the detector config: "
                    f"{len(missing)} '{name}' variables missing, {len(wrong)} of another shape "
                    f"(first: {first})",
                )
            features = dict(collection["features"])
            features["detector"] = traverse_util.unflatten_dict({p: source[p] for p in wanted})
            merged[name]["features"] = features
        return merged


def sgdet_config():
    """The :class:`~sgg_jax.relation.sgdet.SGDetConfig` of the flags: ``--max_pairs`` candidates
    per training image with at most ``--max_fg`` foreground (SGB: 256 and 64)."""
    from sgg_jax.relation.sgdet import SGDetConfig

    return SGDetConfig(train_pairs=FLAGS.max_pairs, train_fg=FLAGS.max_fg)
