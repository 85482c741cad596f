"""The data and optimizer flags every relation experiment shares, and their configs.

``define_data_flags`` / ``define_optim_flags`` declare the flags on a ``FlagValues``;
:func:`data_config_from_flags` and :func:`optim_config_from_flags` turn the parsed flags into the
typed configs of :mod:`sgg_jax.experiment.relation` and :mod:`sgg_jax.train.optim`, raising a
one-line :class:`~sgg_jax.errors.ConfigError` naming the flag for any bad value.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.errors import ConfigError
from sgg_jax.experiment.relation import DATASETS, DataConfig
from sgg_jax.train.optim import OptimConfig

FLAGS = flags.FLAGS


def define_data_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Dataset, task and budget flags (the fields of :class:`DataConfig`, plus ``workdir`` and
    ``distributed``) on ``flag_values``."""
    flags.DEFINE_enum(
        "dataset",
        "gqa200_mini",
        list(DATASETS),
        "Dataset to use (synthetic_pixels: the rendered images of --detector_workdir).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "gqa200_train", None, "GQA_200_Train.json (dataset=gqa200).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "gqa200_test", None, "GQA_200_Test.json (dataset=gqa200).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "gqa200_id_info", None, "GQA_200_ID_Info.json (dataset=gqa200).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "vg150_h5", None, "VG-SGG-with-attri.h5 (dataset=vg150).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "vg150_dicts",
        None,
        "VG-SGG-dicts-with-attri.json (dataset=vg150).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "vg150_image_data", None, "image_data.json (dataset=vg150).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "vg150_image_dir",
        None,
        "Folder of the VG images, <dir>/<image_id>.jpg (dataset=vg150; needed by "
        "feature_source=roi and data_prep.extract_features).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "gqa200_image_dir",
        None,
        "Folder of the GQA images, <dir>/<image_id>.jpg (dataset=gqa200).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "tfds_data_dir",
        None,
        "data_dir of a data_prep dataset (dataset=tfds).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "tfds_name", None, "name of a data_prep dataset (dataset=tfds).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_val",
        5000,
        "Validation images taken from train (gqa200, vg150).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "synthetic_images",
        2000,
        "Images of dataset=synthetic (all splits).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "synthetic_context_bias",
        [],
        "dataset=synthetic: 'lo,hi' = the head-minority regime, where the annotator of each "
        "(subject, object) class context records a group's head predicate with a probability "
        "drawn in [lo, hi] (default: --synthetic_annotator_bias everywhere).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "synthetic_annotator_bias",
        0.7,
        "dataset=synthetic: probability of recording a group's head predicate instead of the "
        "true one.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "task", "predcls", ["predcls", "sgcls", "sgdet"], "SGG task.", flag_values=flag_values
    )
    flags.DEFINE_string("workdir", "/tmp/sgg_jax/run", "Output directory.", flag_values=flag_values)
    flags.DEFINE_integer(
        "seed", 0, "Seed of shuffling, pair sampling and initialisation.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "batch_size", 8, "Images per batch (global, split over devices).", flag_values=flag_values
    )
    flags.DEFINE_integer("max_objects", 40, "Object budget per image.", flag_values=flag_values)
    flags.DEFINE_integer(
        "max_pairs", 256, "Pair budget per training image.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "max_fg", 64, "Foreground pairs sampled per training image.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "eval_max_pairs", 1560, "Pair budget per evaluation image.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "eval_batch_size", 8, "Images per evaluation batch.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "eval_images",
        0,
        "Evaluate periodically on the first N val images (0 = all).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "allow_config_change",
        False,
        "Resume a --workdir trained with other settings: config.json gets the new ones and the "
        "old ones are appended to config_history.jsonl (without it, a changed setting stops the "
        "run naming it).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() (multi-host).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "feature_source",
        "geometry",
        ["geometry", "precomputed", "roi"],
        "Object/union feature source (roi: pooled from pixels by the detector of "
        "--detector_workdir or --detector_checkpoint; needed by --task=sgdet).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "object_features",
        None,
        "Precomputed object features: an .npz or a store directory of "
        "data_prep.extract_features (feature_source=precomputed).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "detector_workdir",
        None,
        "Workdir of experiments.detector: its newest checkpoint initialises the detector of "
        "--feature_source=roi; with --dataset=synthetic_pixels its images are the data.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "detector_checkpoint",
        None,
        "roi: a Scene-Graph-Benchmark / maskrcnn_benchmark Faster R-CNN checkpoint (.pth, or its "
        ".npz from sgg_jax.detection.convert.save_npz) instead of --detector_workdir: its config "
        "is inferred from the weights, images are prepared in SGB's convention (BGR, pixel "
        "mean, shorter side 600, longer at most 1000).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "image_size",
        0,
        "roi: images resized to this longer side and padded to a square (0 = the detector "
        "workdir's --image_size, or 1000 with --detector_checkpoint).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "freeze_detector",
        True,
        "roi: keep the pretrained detector fixed (SGB).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "union_features",
        None,
        ["sgb", "shared_head"],
        "roi: union features of the pairs. sgb (the default): Scene-Graph-Benchmark's union "
        "extractor (all FPN levels, rectangle masks of the two boxes, own fc6/fc7 copied from "
        "the detector's box head); shared_head: the detector's box head on the union box plus "
        "the pair geometry through an MLP.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "detections_per_image",
        0,
        "sgdet: detections per image (0 = the detector's); every ordered pair is a candidate.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_image_pixels",
        DEFAULT_MAX_PIXELS,
        "roi: refuse image files of more pixels (width x height) than this, from their header.",
        flag_values=flag_values,
    )


def define_optim_flags(learning_rate: float, flag_values: flags.FlagValues = FLAGS) -> None:
    """Optimizer and schedule flags on ``flag_values``; see :func:`optim_config_from_flags`."""
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Optimizer.", flag_values=flag_values)
    flags.DEFINE_float(
        "learning_rate", learning_rate, "Base learning rate.", flag_values=flag_values
    )
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.", flag_values=flag_values)
    flags.DEFINE_float("weight_decay", 1e-4, "Weight decay.", flag_values=flag_values)
    flags.DEFINE_integer("warmup_steps", 500, "Linear warmup updates.", flag_values=flag_values)
    flags.DEFINE_float(
        "warmup_factor", 0.1, "Learning-rate factor at step 0.", flag_values=flag_values
    )
    flags.DEFINE_list(
        "decay_steps",
        [],
        "Milestones where the learning rate is multiplied by 0.1.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "clip_norm", 5.0, "Global-norm gradient clipping (0 = off).", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "scale_lr_by_batch",
        False,
        "Multiply the learning rate of every parameter by --batch_size (SGB's "
        "rl_factor = SOLVER.IMS_PER_BATCH).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "bias_rules",
        "none",
        ["none", "sgb"],
        "sgb: parameters whose path contains 'bias' get no weight decay and "
        "--bias_lr_factor x the learning rate (SGB make_optimizer); none: all parameters alike.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "bias_lr_factor",
        2.0,
        "Learning-rate factor of biases with --bias_rules=sgb (SGB BIAS_LR_FACTOR: 2 in "
        "defaults.py, 1 in the relation configs).",
        flag_values=flag_values,
    )


def integers(flag_values: flags.FlagValues, name: str) -> tuple[int, ...]:
    """A list flag of integers, or a ConfigError naming it."""
    values = flag_values[name].value
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError(name, f"expected integers, got {values}") from None


def data_config_from_flags(flag_values: flags.FlagValues) -> DataConfig:
    """The :class:`DataConfig` of the flags of :func:`define_data_flags` (validated)."""
    context_bias = None
    raw = flag_values.synthetic_context_bias
    if raw:
        try:
            context_bias = tuple(float(v) for v in raw)
        except ValueError:
            context_bias = ()
        if len(context_bias) != 2:
            raise ConfigError("synthetic_context_bias", f"expected two numbers 'lo,hi', got {raw}")
    names = [f.name for f in dataclasses.fields(DataConfig) if f.name != "synthetic_context_bias"]
    return DataConfig(
        **{name: flag_values[name].value for name in names},
        synthetic_context_bias=context_bias,
    )


def optim_config_from_flags(flag_values: flags.FlagValues) -> OptimConfig:
    """The :class:`~sgg_jax.train.optim.OptimConfig` of the flags of :func:`define_optim_flags`.

    ``--batch_size`` (the global images per update) is the ``images_per_batch`` that
    ``--scale_lr_by_batch`` multiplies the learning rate by.
    """
    decay_steps = integers(flag_values, "decay_steps")
    batch_size = flag_values.batch_size
    if flag_values.scale_lr_by_batch and batch_size < 1:
        raise ConfigError(
            "batch_size",
            f"must be >= 1 to scale the learning rate by it (--scale_lr_by_batch), "
            f"got {batch_size}",
        )
    return OptimConfig(
        optimizer=flag_values.optimizer,
        learning_rate=flag_values.learning_rate,
        momentum=flag_values.momentum,
        weight_decay=flag_values.weight_decay,
        warmup_steps=flag_values.warmup_steps,
        warmup_factor=flag_values.warmup_factor,
        decay_steps=decay_steps,
        clip_norm=flag_values.clip_norm,
        scale_lr_by_batch=flag_values.scale_lr_by_batch,
        images_per_batch=max(batch_size, 1),
        bias_rules=flag_values.bias_rules,
        bias_lr_factor=flag_values.bias_lr_factor,
    )
