"""Detector pretraining on synthetic pixels: Faster R-CNN (FPN) trained and evaluated by box mAP@0.5.

``python -m experiments.detector --flagfile=experiments/flags/detector_synthetic.flags``

Synthetic scene graphs (VG150 class frequencies, the ``--num_classes`` most frequent classes)
rendered to ``--image_size`` pixels, a Faster R-CNN of ``--preset`` trained from scratch with the
library trainer, and its test box mAP@0.5 next to two pixel-blind chance baselines;
``results.json``, ``results.md``, ``plots/`` and checkpoints (a rerun resumes) in ``--workdir``.

This file holds the flags only: :func:`config_from_flags` turns them into a
:class:`sgg_jax.projects.detector.experiment.DetectorExperimentConfig` (a bad value is one line on
stderr naming the flag, exit status 2, before any data is generated or anything is compiled) and
:func:`sgg_jax.projects.detector.experiment.run` does the work (its module docstring describes
every stage).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import cli
from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.projects.detector import experiment as detector
from sgg_jax.projects.detector.experiment import DetectorExperimentConfig


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares every flag of the experiment on ``flag_values``."""
    flags.DEFINE_string(
        "workdir", "/tmp/sgg_jax/detector", "Output directory.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of the data, the initialisation and the sampling.", flag_values=flag_values
    )
    # data
    flags.DEFINE_integer(
        "synthetic_images",
        1500,
        "Synthetic images generated (all splits).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_classes",
        20,
        "Keep the objects of the K most frequent train classes (0 = all 150).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "image_size", 128, "Side of the rendered square images in pixels.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "min_object_size",
        6.0,
        "Drop objects whose rendered box is smaller on a side (pixels).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_objects",
        12,
        "Object budget per image (extra objects are dropped).",
        flag_values=flag_values,
    )
    # model
    flags.DEFINE_string(
        "preset", "tiny", "DetectorConfig preset: tiny, resnet50_fpn, ...", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "backbone_scale",
        2,
        "tiny preset only: multiply the backbone widths by this.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "fpn_channels", None, "Override the preset's FPN channels.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "representation_size",
        None,
        "Override the preset's fc6 / fc7 width.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_proposals",
        None,
        "Override the RPN proposals per image (train = test).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "freeze_at",
        0,
        "Frozen backbone stages (0: train everything, no pretraining).",
        flag_values=flag_values,
    )
    # optimisation
    flags.DEFINE_enum("optimizer", "adamw", ["adamw", "sgd"], "Optimizer.", flag_values=flag_values)
    flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.", flag_values=flag_values)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.", flag_values=flag_values)
    flags.DEFINE_float("weight_decay", 1e-4, "Weight decay.", flag_values=flag_values)
    flags.DEFINE_integer("warmup_steps", 50, "Linear warm-up updates.", flag_values=flag_values)
    flags.DEFINE_float(
        "clip_norm", 10.0, "Global-norm gradient clipping (0 = off).", flag_values=flag_values
    )
    flags.DEFINE_integer("batch_size", 8, "Images per update.", flag_values=flag_values)
    flags.DEFINE_integer("num_steps", 600, "Training updates.", flag_values=flag_values)
    flags.DEFINE_integer(
        "checkpoint_every",
        200,
        "Checkpoint every N updates (and at the end).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("keep_checkpoints", 2, "Newest checkpoints kept.", flag_values=flag_values)
    flags.DEFINE_integer(
        "log_every", 25, "Log the losses every N updates.", flag_values=flag_values
    )
    # evaluation
    flags.DEFINE_bool(
        "fast_compile",
        False,
        "Compile with XLA's backend optimisations off (much faster compiles, slower steps: smoke runs).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "eval_batch_size", 16, "Images per evaluation batch.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "eval_images", 0, "Evaluate on the first N test images (0 = all).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "detections_per_image", 20, "Detections kept per test image.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "score_thresh",
        0.05,
        "Detections need a class probability above this.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_plots", 4, "Test images drawn with their detections.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "plot_score_thresh",
        0.3,
        "Only detections above this score are drawn.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_image_pixels",
        DEFAULT_MAX_PIXELS,
        "Refuse image files of more pixels (width x height) than this, from their header.",
        flag_values=flag_values,
    )


def config_from_flags(flag_values: flags.FlagValues) -> DetectorExperimentConfig:
    """The experiment config of parsed flags; raises ConfigError naming the first bad flag."""
    return DetectorExperimentConfig(
        **{
            field.name: flag_values[field.name].value
            for field in dataclasses.fields(DetectorExperimentConfig)
        }
    )


def main(argv):
    return cli.run_command(
        argv,
        lambda: detector.run(config_from_flags(flags.FLAGS), flags.FLAGS.workdir),
        extra_errors=(FloatingPointError,),
    )


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(main)
