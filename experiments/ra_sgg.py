"""RA-SGG: retrieval-augmented scene graph generation via multi-prototype learning.

``python -m experiments.ra_sgg --flagfile=experiments/flags/ra_sgg_gqa200_mini.flags``

Methods (``--method``):

* ``ra_sgg`` — the full method (Yoon et al., "RA-SGG", AAAI 2025): phase 1 trains PE-Net as below;
  phase 2 continues from it with a memory bank of every annotated training relation (searched with
  ScaNN or exactly on the host, or, with ``--retrieval=in_step``, exactly inside the jitted train
  step; refreshed every ``--bank_refresh_steps``), label-inconsistency selection,
  inverse-propensity augmentation of tail predicates and the multi-prototype loss
  (``sgg_jax.projects.ra_sgg.ra_sgg``). ``--ablations`` trains the variants without selection, without
  inverse-propensity weighting and a same-length PE-Net continuation (the control), and every
  variant is evaluated on test next to PE-Net and FREQ. From pixels too (``--feature_source=roi``,
  PredCls / SGCls / SGDet: ``experiments/flags/ra_sgg_synthetic_{predcls,sgcls,sgdet}.flags``).
* ``penet`` — phase 1 of RA-SGG alone: the PE-Net base model (Zheng et al., CVPR 2023) trained on the
  device mesh with checkpoints (auto-resume from ``--workdir``), periodic evaluation on val, a final
  evaluation on test next to the frequency baseline (FREQ: the predicate distribution of the
  (subject class, object class) pair in the training split), ``results.json`` / ``results.md``, plots
  and an export of the predict function (``<workdir>/export``, loadable with
  ``sgg_jax.load_exported``).
* ``data`` — the data stage only: load the splits, run one pass of the input pipeline over each,
  print a summary and write ``data_summary.json``.

This file holds the flags only: :func:`config_from_flags` turns them into a
:class:`sgg_jax.projects.ra_sgg.experiment.RASGGExperimentConfig` (a bad value is one line on stderr naming
the flag, exit status 2, before any data is read) and :func:`sgg_jax.projects.ra_sgg.experiment.run` does
the work.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import cli, common
from sgg_jax.projects.ra_sgg import experiment as ra_sgg
from sgg_jax.projects.ra_sgg.experiment import Phase2Config, RASGGExperimentConfig


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares every flag of the experiment on ``flag_values``."""
    common.define_data_flags(flag_values)
    flags.DEFINE_enum(
        "method", "penet", ["ra_sgg", "penet", "data"], "What to run.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "model_size", "small", ["small", "official"], "PE-Net sizes.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "glove", None, "GloVe text file to initialise the word embeddings.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "bundled_predicate_vectors",
        False,
        "Initialise predicate embeddings from the bundled 300-d GloVe vectors of the VG150 predicates "
        "(names not among them get seeded random vectors). Ignored when --glove is given.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "frequency_bias",
        False,
        "Add the training split's log predicate frequencies of each (subject, object) class pair to the "
        "logits at inference (PREDICT_USE_BIAS; off in the official PE-Net and RA-SGG code).",
        flag_values=flag_values,
    )
    common.define_optim_flags(1e-3, flag_values)
    flags.DEFINE_integer("num_steps", 1000, "Training updates.", flag_values=flag_values)
    flags.DEFINE_integer(
        "eval_every",
        0,
        "Evaluate on val every N updates (0 = only at the end).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "checkpoint_every",
        500,
        "Checkpoint every N updates (and at the end).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("keep_checkpoints", 2, "Newest checkpoints kept.", flag_values=flag_values)
    flags.DEFINE_integer(
        "log_every", 20, "Write training metrics every N updates.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "export", True, "Export the predict function at the end.", flag_values=flag_values
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=flag_values)
    # RA-SGG phase 2 (--method=ra_sgg)
    flags.DEFINE_integer(
        "phase2_steps",
        2000,
        "Phase-2 updates, starting from the phase-1 model.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "phase2_learning_rate",
        None,
        "Phase-2 learning rate (default --learning_rate).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "phase2_warmup_steps", 0, "Phase-2 linear warmup updates.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "phase2_batch_size",
        None,
        "Phase-2 images per batch (default --batch_size; official: 6).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "variant",
        "paper",
        "RA-SGG rule: the paper's equations (label inconsistency, inverse propensity) or the official "
        "code's (confidence threshold, tail set, class-balanced sampling, background relabelling).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "threshold",
        0.3,
        "Official variant: confidence < threshold may change a label.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "tail_ids",
        [],
        "Official variant: tail predicate ids (default: the official list of VG150 / GQA-200, else the "
        "rarest --tail_fraction of predicates).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "tail_fraction",
        1 / 3,
        "Tail = the rarest fraction of predicates (no list).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "bank",
        "full",
        "Memory bank: every training relation, refreshed every --bank_refresh_steps ('full'), or the "
        "official one: built once from the phase-1 model, --memory_size entries per triplet.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "memory_size",
        8,
        "Official bank: entries kept per triplet (MEMORY_SIZE).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "scann_brute_force_threshold",
        2000,
        "Banks smaller than this are searched by brute force inside ScaNN; larger ones train a tree.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "phase2_decay_steps",
        [],
        "Phase-2 milestones (learning rate x 0.1).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_neighbours",
        20,
        "K relations retrieved (paper: 20 PredCls, 10 SGCls).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "tau",
        0.5,
        "Label-inconsistency threshold: d >= tau selects a candidate.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "no_selection",
        False,
        "Ablation: augment every foreground relation.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "no_ipss",
        False,
        "Ablation: sample from the raw retrieved histogram.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "weighting",
        None,
        ["inverse_propensity", "class_balanced", "uniform"],
        "Sampling weights of the augmented predicate (default: inverse_propensity with "
        "--variant=paper, class_balanced with --variant=official).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "tail_only",
        False,
        "Only relabel toward rarer predicates (official code).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "relabel_background",
        False,
        "Relabel one background pair per image (official code).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "lambda_mode",
        "beta",
        ["beta", "fixed"],
        "lambda ~ Beta(20, 5) or fixed.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "lambda_value", 0.8, "lambda with --lambda_mode=fixed.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "bank_refresh_steps",
        0,
        "Rebuild the memory bank every N updates (0: never).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "retrieval_backend",
        "scann",
        ["scann", "exact"],
        "Memory-bank search backend.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "retrieval",
        "host",
        ["host", "in_step"],
        "Where phase 2 retrieves: 'host' (a second forward, the memory-bank search and the soft "
        "targets on the host, --retrieval_backend) or 'in_step' (exact search, selection and soft "
        "targets inside the jitted train step on a bank held on the devices; PredCls / SGCls).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "ablations",
        [],
        "Extra phase-2 runs: paper / official (the other RA-SGG variant), no_selection, no_ipss, "
        "continue_penet (plain PE-Net).",
        flag_values=flag_values,
    )


def config_from_flags(flag_values: flags.FlagValues) -> RASGGExperimentConfig:
    """The experiment config of parsed flags; raises ConfigError naming the first bad flag."""
    data = common.data_config_from_flags(flag_values)
    optim = common.optim_config_from_flags(flag_values)
    phase2 = {
        field.name: flag_values[field.name].value for field in dataclasses.fields(Phase2Config)
    }
    for name in ("phase2_decay_steps", "tail_ids"):
        phase2[name] = common.integers(flag_values, name)
    phase2["ablations"] = tuple(phase2["ablations"])
    names = [
        field.name
        for field in dataclasses.fields(RASGGExperimentConfig)
        if field.name not in ("data", "optim", "phase2")
    ]
    return RASGGExperimentConfig(
        data=data,
        optim=optim,
        phase2=Phase2Config(**phase2),
        **{name: flag_values[name].value for name in names},
    )


def main(argv):
    def body():
        config = config_from_flags(flags.FLAGS)
        if flags.FLAGS.distributed:
            from sgg_jax.train import initialize_distributed

            initialize_distributed(True)
        ra_sgg.run(config, flags.FLAGS.workdir)

    return cli.run_command(argv, body)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(main)
