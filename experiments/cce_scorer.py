"""CCE loss + Scorer on MotifNet and PE-Net, with the focal-loss baseline: the ablation table.

``python -m experiments.cce_scorer --flagfile=experiments/flags/cce_scorer_gqa200_mini.flags``

Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to Contrast and Score",
ACCV 2020. For every base model of ``--base_models`` (``motifs``: MotifNet, Zellers et al. 2018;
``penet``: PE-Net, Zheng et al. 2023) every row of ``--rows`` is trained from scratch with the same
data order, seed and schedule, evaluated on the test split, and reported side by side
(:func:`sgg_jax.projects.cce_scorer.losses.make_cce_scorer_loss`; L_other = MotifNet's relation CE (+ object CE),
PE-Net's own losses, whose relation CE is L_e_sim):

====================  =====================================================  ===================
row                   training loss, ``--cce_variant=official`` (default)    Scorer
====================  =====================================================  ===================
``ce``                L_other                                                no
``cce``               L_other − relation CE + λ1·L_CCE (all relations)       no
``scorer``            L_other + λ2·L_BCE                                     SA, detached*
``cce_scorer``        L_other − relation CE + λ1·L_CCE + λ2·L_BCE            SA, detached*
``cce_scorer_no_sa``  as ``cce_scorer``, point-wise Scorer ("w/o SA")        detached*
``cce_scorer_joint``  as ``cce_scorer``, Scorer trained jointly              SA, joint
``focal``             L_other − relation CE + λ_focal·focal (γ)              no
====================  =====================================================  ===================

The official variant is the authors' code (``stevehuanghe/scene_graph`` ``train_rels.py:239-252``:
``-loss cce`` trains ``λ1·mean relu(CE(y) − CE(ŷ) + m1)`` over every relation, background
included, *instead of* the relation CE; ``-loss focal`` trains ``λ1·focal``, λ1 = 100 by default,
``config.py:248``). ``--cce_variant=paper`` keeps the relation CE and adds λ1·L_CCE over the
foreground relations (``--cce_background=include`` adds the background ones). ``*`` = detached
unless ``--noscorer_detach``.

Rows with the Scorer are ranked at test time by ``--ranking`` (default ``scorer``: pairs ranked by
the Scorer's score alone, as the paper ranks test triplets; see
:func:`sgg_jax.projects.cce_scorer.model.rank_predicate_scores`) and, for the rows of
``--extra_ranking_rows``, also under each of ``--extra_rankings`` (default ``scorer_x_predicate``:
predicate × Scorer) from the same model pass, as extra rows ``<base>/<row>/<ranking>``.

The paper's claims rest on four rows per base model and seed: ``ce``, ``cce``, ``cce_scorer``
(headline ranked by the Scorer, plus ``cce_scorer/scorer_x_predicate``) and ``scorer`` (the Scorer's
ranking on a CE model). A seed sweep runs only those::

    python -m experiments.cce_scorer --flagfile=experiments/flags/cce_scorer_gqa200_mini.flags \
      --rows=ce,cce,cce_scorer,scorer --seed=1 --workdir=/tmp/sgg_jax/cce_scorer_seed1

Outputs in ``--workdir``: ``<base>/<row>/`` (checkpoints, ``metrics.jsonl``, TensorBoard; a rerun
resumes or reuses a finished row), ``results.json`` (the project's schema; one run per row keyed
``<base>/<row>`` (headline ranking) and ``<base>/<row>/<ranking>`` (extra rankings); a
``cce_scorer`` block with the settings, the ranking of every run and the deltas against ``ce``),
``results.md`` (one table per base model), ``plots/per_predicate_recall_<base>.png``
(per-predicate R@100 of +CCE+Scorer with the change against CE: the paper's Fig. 4) and
``plots/confusion_train_<base>_<row>.png`` / ``.npy`` (predicate confusion of CE and +CCE on the
training images' ground-truth pairs: Fig. 5).

From pixels (``--feature_source=roi --detector_workdir=<experiments.detector run>``, PredCls,
SGCls and SGDet; ``experiments/flags/cce_scorer_synthetic_{predcls,sgcls,sgdet}.flags``) every row
runs on the RoI features of the pretrained detector (frozen with ``--freeze_detector``) and the
Scorer's global image feature is the detector backbone's pooled top map
(:func:`sgg_jax.relation.features.pooled_image_feature`); in SGDet the relation pairs, the losses'
targets and the Scorer's ranking are those of the model's detections, and the training confusion
matrices are skipped (they are taken on ground-truth pairs).

Deviations from the paper (documented where they are made): without pixels (geometry or
precomputed features) the Scorer's global image feature is the mean of the object features; the
Scorer's inputs are detached from the base model by default
(``--scorer_detach``; ``cce_scorer_joint`` trains it jointly, the plain reading of
``train_rels.py:254-257``); PE-Net's base loss is its own four terms rather than a CE.

This file holds the flags only: :func:`config_from_flags` turns them into a
:class:`sgg_jax.projects.cce_scorer.experiment.CCEScorerExperimentConfig` (a bad value is one line on stderr
naming the flag, exit status 2, before any data is read) and
:func:`sgg_jax.projects.cce_scorer.experiment.run` does the work.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import cli, common
from sgg_jax.projects.cce_scorer import experiment as cce_scorer
from sgg_jax.projects.cce_scorer.experiment import (
    BASE_MODELS,
    CCE_BACKGROUND_MODES,
    CCE_NEGATIVE_POOLS,
    CCE_VARIANTS,
    RANKINGS,
    ROWS,
    SCORER_ROWS,
    CCEScorerExperimentConfig,
)

# Flags whose value is a list (tuples in the config).
_LIST_FLAGS = ("base_models", "rows", "extra_rankings", "extra_ranking_rows")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares every flag of the experiment on ``flag_values``."""
    common.define_data_flags(flag_values)
    flags.DEFINE_list(
        "base_models",
        list(BASE_MODELS),
        f"Base relation models, some of {BASE_MODELS}.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "rows",
        list(ROWS),
        f"Ablation rows, some of {ROWS}; the paper's claims rest on ce,cce,cce_scorer,scorer.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "model_size",
        "small",
        ["small", "official"],
        "Base model and Scorer sizes.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "frequency_bias",
        True,
        "MotifNet's trainable frequency bias of the training split, in training and at inference "
        "(Scene-Graph-Benchmark's MotifPredictor).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "penet_frequency_bias",
        False,
        "PE-Net: add the frequency bias at inference (PREDICT_USE_BIAS; off in the official PE-Net, "
        "whose predictor never reads it).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "bundled_predicate_vectors",
        False,
        "PE-Net: initialise the predicate embeddings from the bundled 300-d GloVe vectors.",
        flag_values=flag_values,
    )
    # CCE + Scorer options (string choices are checked by CCEScorerExperimentConfig: one-line ConfigError, exit 2)
    flags.DEFINE_string(
        "cce_variant",
        "official",
        f"One of {list(CCE_VARIANTS)}: official = CCE replaces the relation CE and averages over all "
        "relations, background included (the authors' train_rels.py); paper = relation CE + λ1·CCE.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "cce_background",
        None,
        f"CCE on background pairs, one of {list(CCE_BACKGROUND_MODES)} (losses.cce); unset = the "
        "variant's (official: include; paper: skip). 'skip' is a paper-variant option.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "cce_negatives",
        "foreground",
        f"Hardest-negative pool of CCE, one of {list(CCE_NEGATIVE_POOLS)} (losses.hardest_negative; "
        "the official rule is in an unpublished file).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "lambda_cce", 100.0, "λ1, weight of L_CCE (official 100).", flag_values=flag_values
    )
    flags.DEFINE_float(
        "lambda_bce", 1.0, "λ2, weight of the Scorer's BCE (official 1).", flag_values=flag_values
    )
    flags.DEFINE_float(
        "lambda_focal",
        100.0,
        "Weight of the focal loss (official 100: the same λ1, train_rels.py:248).",
        flag_values=flag_values,
    )
    flags.DEFINE_float("margin", 0.0, "α, the CCE margin (official 0).", flag_values=flag_values)
    flags.DEFINE_float(
        "gamma", 4.0, "γ of the focal-loss row (official default 2).", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "focal_class_weights",
        "none",
        ["none", "inverse_sqrt_frequency"],
        "Class weights of the focal row: none, or w_c ∝ 1/sqrt(n_c) over the training predicate counts "
        "(normalised to a mean of 1 over the training relations; background weight 1).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "ranking",
        "scorer",
        f"Headline test-time ranking of the rows with the Scorer, one of {list(RANKINGS)}: scorer "
        "(pairs ranked by the Scorer alone, each pair's predicate order kept; the paper's), "
        "scorer_x_predicate (predicate scores x sigmoid(scorer)), predicate (the Scorer ignored).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "extra_rankings",
        ["scorer_x_predicate"],
        "Other rankings the rows of --extra_ranking_rows are also evaluated under (same model pass), "
        "reported as <base>/<row>/<ranking>; empty = none.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "scorer_detach",
        True,
        "Stop the Scorer's gradient at its inputs (base model untouched); the row cce_scorer_joint is "
        "always trained jointly.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "scorer_hidden_dim",
        None,
        "Scorer H (default: small 128, official 512).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "scorer_attention_dim",
        None,
        "Scorer A (default: small 64, official 256).",
        flag_values=flag_values,
    )
    # Optimisation
    common.define_optim_flags(1e-2, flag_values)
    flags.DEFINE_integer("num_steps", 1000, "Training updates per row.", flag_values=flag_values)
    flags.DEFINE_integer(
        "eval_every",
        0,
        "Evaluate on val every N updates (0 = never; test at the end).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "checkpoint_every",
        0,
        "Checkpoint every N updates (0 = only at the end).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "keep_checkpoints", 1, "Newest checkpoints kept per row.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "log_every", 100, "Write training metrics every N updates.", flag_values=flag_values
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=flag_values)
    flags.DEFINE_list(
        "eval_object_buckets",
        [],
        "Object-count buckets of the evaluation batches, ascending and < max_objects (e.g. 20): "
        "images with at most 20 (kept) objects are batched with max_objects=20 and 20*19 pairs, the "
        "others with the full budgets. Same pairs and predictions, less padding; one more compile.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "extra_ranking_rows",
        list(SCORER_ROWS),
        "Scorer rows also evaluated under --extra_rankings (rows without the Scorer are ignored).",
        flag_values=flag_values,
    )
    # Figures
    flags.DEFINE_bool(
        "confusion",
        True,
        "Training-set confusion matrices of CE and +CCE (Fig. 5).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "confusion_images",
        0,
        "Training images the confusion matrices use (0 = all, first N).",
        flag_values=flag_values,
    )


def config_from_flags(flag_values: flags.FlagValues) -> CCEScorerExperimentConfig:
    """The experiment config of parsed flags; raises ConfigError naming the first bad flag."""
    data = common.data_config_from_flags(flag_values)
    optim = common.optim_config_from_flags(flag_values)
    names = [
        field.name
        for field in dataclasses.fields(CCEScorerExperimentConfig)
        if field.name not in ("data", "optim", "eval_object_buckets", *_LIST_FLAGS)
    ]
    return CCEScorerExperimentConfig(
        data=data,
        optim=optim,
        eval_object_buckets=common.integers(flag_values, "eval_object_buckets"),
        **{name: tuple(flag_values[name].value) for name in _LIST_FLAGS},
        **{name: flag_values[name].value for name in names},
    )


def main(argv):
    def body():
        config = config_from_flags(flags.FLAGS)
        if flags.FLAGS.distributed:
            from sgg_jax.train import initialize_distributed

            initialize_distributed(True)
        cce_scorer.run(config, flags.FLAGS.workdir)

    return cli.run_command(argv, body)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(main)
