"""CCE loss + Scorer on MotifNet and PE-Net, with the focal-loss baseline: the ablation table.

``python -m experiments.cce_scorer --flagfile=experiments/flags/cce_scorer_gqa200_mini.flags``

Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to Contrast and Score",
ACCV 2020. For every base model of ``--base_models`` (``motifs``: MotifNet, Zellers et al. 2018;
``penet``: PE-Net, Zheng et al. 2023) every row of ``--rows`` is trained from scratch with the same
data order, seed and schedule, evaluated on the test split, and reported side by side
(:func:`sgg_jax.losses.make_cce_scorer_loss`; L_other = MotifNet's relation CE (+ object CE),
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
:func:`sgg_jax.models.cce_scorer.rank_predicate_scores`) and, for the rows of
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

Deviations from the paper (documented where they are made): no pixels, so object / union features
are geometry features (or precomputed ones) and the Scorer's global image feature is the mean of
the object features; the Scorer's inputs are detached from the base model by default
(``--scorer_detach``; ``cce_scorer_joint`` trains it jointly, the plain reading of
``train_rels.py:254-257``); PE-Net's base loss is its own four terms rather than a CE.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from experiments import common
from sgg_jax.data import pipeline
from sgg_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS
common.define_data_flags()

BASE_MODELS = ("motifs", "penet")
ROWS = ("ce", "cce", "scorer", "cce_scorer", "cce_scorer_no_sa", "cce_scorer_joint", "focal")
SCORER_ROWS = ("scorer", "cce_scorer", "cce_scorer_no_sa", "cce_scorer_joint")
RANKINGS = ("predicate", "scorer_x_predicate", "scorer")
CCE_VARIANTS = ("official", "paper")
CCE_BACKGROUND_MODES = ("skip", "include")
CCE_NEGATIVE_POOLS = ("foreground", "any")
ROW_LABELS = {
    "ce": "CE",
    "cce": "+CCE",
    "scorer": "+Scorer",
    "cce_scorer": "+CCE+Scorer",
    "cce_scorer_no_sa": "+CCE+Scorer w/o SA",
    "cce_scorer_joint": "+CCE+Scorer joint",
    "focal": "Focal",
}
RANKING_LABELS = {
    "predicate": "predicate",
    "scorer_x_predicate": "predicate × Scorer",
    "scorer": "Scorer",
}
BASE_LABELS = {"motifs": "MotifNet", "penet": "PE-Net"}
# row -> (use_cce, use_focal, scorer: None | "attention" | "pointwise",
#         detach the Scorer's inputs: None = --scorer_detach, False = joint training)
ROW_SPECS = {
    "ce": (False, False, None, None),
    "cce": (True, False, None, None),
    "scorer": (False, False, "attention", None),
    "cce_scorer": (True, False, "attention", None),
    "cce_scorer_no_sa": (True, False, "pointwise", None),
    "cce_scorer_joint": (True, False, "attention", False),
    "focal": (False, True, None, None),
}

flags.DEFINE_list("base_models", list(BASE_MODELS), f"Base relation models, some of {BASE_MODELS}.")
flags.DEFINE_list(
    "rows",
    list(ROWS),
    f"Ablation rows, some of {ROWS}; the paper's claims rest on ce,cce,cce_scorer,scorer.",
)
flags.DEFINE_enum("model_size", "small", ["small", "official"], "Base model and Scorer sizes.")
flags.DEFINE_bool(
    "frequency_bias",
    True,
    "MotifNet's trainable frequency bias of the training split, in training and at inference "
    "(Scene-Graph-Benchmark's MotifPredictor).",
)
flags.DEFINE_bool(
    "penet_frequency_bias",
    False,
    "PE-Net: add the frequency bias at inference (PREDICT_USE_BIAS; off in the official PE-Net, "
    "whose predictor never reads it).",
)
flags.DEFINE_bool(
    "bundled_predicate_vectors",
    False,
    "PE-Net: initialise the predicate embeddings from the bundled 300-d GloVe vectors.",
)
# CCE + Scorer options (string choices are checked by check_flags: one-line ConfigError, exit 2)
flags.DEFINE_string(
    "cce_variant",
    "official",
    f"One of {list(CCE_VARIANTS)}: official = CCE replaces the relation CE and averages over all "
    "relations, background included (the authors' train_rels.py); paper = relation CE + λ1·CCE.",
)
flags.DEFINE_string(
    "cce_background",
    None,
    f"CCE on background pairs, one of {list(CCE_BACKGROUND_MODES)} (losses.cce); unset = the "
    "variant's (official: include; paper: skip). 'skip' is a paper-variant option.",
)
flags.DEFINE_string(
    "cce_negatives",
    "foreground",
    f"Hardest-negative pool of CCE, one of {list(CCE_NEGATIVE_POOLS)} (losses.hardest_negative; "
    "the official rule is in an unpublished file).",
)
flags.DEFINE_float("lambda_cce", 100.0, "λ1, weight of L_CCE (official 100).")
flags.DEFINE_float("lambda_bce", 1.0, "λ2, weight of the Scorer's BCE (official 1).")
flags.DEFINE_float(
    "lambda_focal",
    100.0,
    "Weight of the focal loss (official 100: the same λ1, train_rels.py:248).",
)
flags.DEFINE_float("margin", 0.0, "α, the CCE margin (official 0).")
flags.DEFINE_float("gamma", 4.0, "γ of the focal-loss row (official default 2).")
flags.DEFINE_enum(
    "focal_class_weights",
    "none",
    ["none", "inverse_sqrt_frequency"],
    "Class weights of the focal row: none, or w_c ∝ 1/sqrt(n_c) over the training predicate counts "
    "(normalised to a mean of 1 over the training relations; background weight 1).",
)
flags.DEFINE_string(
    "ranking",
    "scorer",
    f"Headline test-time ranking of the rows with the Scorer, one of {list(RANKINGS)}: scorer "
    "(pairs ranked by the Scorer alone, each pair's predicate order kept; the paper's), "
    "scorer_x_predicate (predicate scores x sigmoid(scorer)), predicate (the Scorer ignored).",
)
flags.DEFINE_list(
    "extra_rankings",
    ["scorer_x_predicate"],
    "Other rankings the rows of --extra_ranking_rows are also evaluated under (same model pass), "
    "reported as <base>/<row>/<ranking>; empty = none.",
)
flags.DEFINE_bool(
    "scorer_detach",
    True,
    "Stop the Scorer's gradient at its inputs (base model untouched); the row cce_scorer_joint is "
    "always trained jointly.",
)
flags.DEFINE_integer("scorer_hidden_dim", None, "Scorer H (default: small 128, official 512).")
flags.DEFINE_integer("scorer_attention_dim", None, "Scorer A (default: small 64, official 256).")
# Optimisation
common.define_optim_flags(learning_rate=1e-2)
flags.DEFINE_integer("num_steps", 1000, "Training updates per row.")
flags.DEFINE_integer(
    "eval_every", 0, "Evaluate on val every N updates (0 = never; test at the end)."
)
flags.DEFINE_integer("checkpoint_every", 0, "Checkpoint every N updates (0 = only at the end).")
flags.DEFINE_integer("keep_checkpoints", 1, "Newest checkpoints kept per row.")
flags.DEFINE_integer("log_every", 100, "Write training metrics every N updates.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_list(
    "eval_object_buckets",
    [],
    "Object-count buckets of the evaluation batches, ascending and < max_objects (e.g. 20): "
    "images with at most 20 (kept) objects are batched with max_objects=20 and 20*19 pairs, the "
    "others with the full budgets. Same pairs and predictions, less padding; one more compile.",
)
flags.DEFINE_list(
    "extra_ranking_rows",
    list(SCORER_ROWS),
    "Scorer rows also evaluated under --extra_rankings (rows without the Scorer are ignored).",
)
# Figures
flags.DEFINE_bool("confusion", True, "Training-set confusion matrices of CE and +CCE (Fig. 5).")
flags.DEFINE_integer(
    "confusion_images", 0, "Training images the confusion matrices use (0 = all, first N)."
)

TABLE_COLUMNS = [f"{m}@{k}" for m in ("R", "mR") for k in (20, 50, 100)]
TABLE_COLUMNS += ["mR@all", "ngR@50", "ngR@100", "ngmR@50", "ngmR@100", "F@100"]
DELTA_COLUMNS = ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "mR@all", "ngmR@100")


# ----------------------------------------------------------------------------------------------
# Configuration (checked before any data is read)
# ----------------------------------------------------------------------------------------------


def _loss_config(base: str, row: str, class_weights=None):
    from sgg_jax.losses import CCEScorerLossConfig

    use_cce, use_focal, scorer, _ = ROW_SPECS[row]
    return CCEScorerLossConfig(
        base=base,
        use_cce=use_cce,
        use_scorer=scorer is not None,
        use_focal=use_focal,
        cce_variant=FLAGS.cce_variant,
        lambda_cce=FLAGS.lambda_cce,
        lambda_bce=FLAGS.lambda_bce,
        lambda_focal=FLAGS.lambda_focal,
        margin=FLAGS.margin,
        background=FLAGS.cce_background,
        cce_negatives=FLAGS.cce_negatives,
        gamma=FLAGS.gamma,
        class_weights=class_weights,
    )


def _scorer_detach(row: str) -> bool:
    """Whether the row's Scorer inputs are detached (``--scorer_detach`` unless the row says)."""
    override = ROW_SPECS[row][3]
    return FLAGS.scorer_detach if override is None else override


def _rankings(row: str) -> list[str]:
    """The row's rankings, headline first: ``--ranking`` (+ ``--extra_rankings``) with the
    Scorer, ``predicate`` without."""
    if ROW_SPECS[row][2] is None:
        return ["predicate"]
    rankings = [FLAGS.ranking]
    if row in FLAGS.extra_ranking_rows:
        rankings += [r for r in FLAGS.extra_rankings if r != FLAGS.ranking]
    return rankings


def _scorer_config(row: str):
    from sgg_jax.models.scorer import ScorerConfig

    kind = ROW_SPECS[row][2]
    if kind is None:
        return None
    small = FLAGS.model_size == "small"
    hidden = FLAGS.scorer_hidden_dim or (128 if small else 512)
    attention = FLAGS.scorer_attention_dim or (64 if small else 256)
    return ScorerConfig(
        hidden_dim=hidden, attention_dim=attention, use_attention=kind == "attention"
    )


def check_flags() -> None:
    """One-line ConfigErrors for every bad flag, before any data is read or anything compiled."""
    common.check_data_flags()
    if FLAGS.feature_source == "roi":
        raise ConfigError(
            "feature_source",
            "'roi' (SGCls / SGDet from pixels) runs in experiments.ra_sgg --method=penet; this "
            "experiment's Table 2 rows use the geometry or precomputed features",
        )
    common.optim_config()
    for name in ("num_steps",):
        if getattr(FLAGS, name) <= 0:
            raise ConfigError(name, f"must be positive, got {getattr(FLAGS, name)}")
    _object_buckets()
    for name in ("eval_every", "checkpoint_every", "confusion_images"):
        if getattr(FLAGS, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(FLAGS, name)}")
    for name, allowed in (
        ("cce_variant", CCE_VARIANTS),
        ("cce_negatives", CCE_NEGATIVE_POOLS),
        ("ranking", RANKINGS),
    ):
        if getattr(FLAGS, name) not in allowed:
            raise ConfigError(name, f"must be one of {list(allowed)}, got {getattr(FLAGS, name)!r}")
    if FLAGS.cce_background is not None:
        if FLAGS.cce_background not in CCE_BACKGROUND_MODES:
            raise ConfigError(
                "cce_background",
                f"must be one of {list(CCE_BACKGROUND_MODES)}, got {FLAGS.cce_background!r}",
            )
        if FLAGS.cce_variant == "official" and FLAGS.cce_background == "skip":
            raise ConfigError(
                "cce_background",
                "'skip' needs --cce_variant=paper: the official CCE averages over every relation, "
                "background included",
            )
    for name, allowed in (
        ("base_models", BASE_MODELS),
        ("rows", ROWS),
        ("extra_ranking_rows", ROWS),
        ("extra_rankings", RANKINGS),
    ):
        values = getattr(FLAGS, name)
        unknown = sorted(set(values) - set(allowed))
        if unknown or (not values and name in ("base_models", "rows")):
            raise ConfigError(name, f"unknown {unknown}; expected some of {list(allowed)}")
        if len(set(values)) != len(values):
            raise ConfigError(name, f"lists a value twice: {values}")
    for base in FLAGS.base_models:
        for row in FLAGS.rows:
            _loss_config(base, row)  # λ1, λ2, α, γ, background
            _scorer_config(row)  # Scorer sizes


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _base_config(base: str, vocab, frequency):
    """The base model's config and the tables its ``with_tables`` puts into fresh variables."""
    from sgg_jax.models.motifs import MotifsConfig
    from sgg_jax.models.penet import PENetConfig

    extra = {}
    if FLAGS.penet_frequency_bias if base == "penet" else FLAGS.frequency_bias:
        extra["frequency_bias"] = frequency.log_bias
    if base == "penet" and FLAGS.bundled_predicate_vectors:
        from sgg_jax.data import word_vectors

        table = word_vectors.load_bundled_predicate_vectors(300)
        rng = np.random.default_rng(FLAGS.seed)
        known = np.stack(list(table.values()))
        extra["predicate_word_vectors"] = np.stack(
            [
                table[name] if name in table else rng.normal(0, known.std(), 300).astype(np.float32)
                for name in vocab.predicate_names
            ]
        )
    kind = {"motifs": MotifsConfig, "penet": PENetConfig}[base]
    make = kind.small if FLAGS.model_size == "small" else kind.official
    vectors = extra.get("predicate_word_vectors")
    sizes = {} if vectors is None else {"embed_dim": int(np.shape(vectors)[-1])}
    config = make(
        vocab.num_classes,
        vocab.num_predicates,
        task=FLAGS.task,
        feature_source=FLAGS.feature_source,
        frequency_bias="frequency_bias" in extra,
        **sizes,
    )
    return config, extra


def _build_model(base: str, base_config, row: str):
    from sgg_jax.models.cce_scorer import CCEScorerModel
    from sgg_jax.models.motifs import MotifNet
    from sgg_jax.models.penet import PENet

    module = {"motifs": MotifNet, "penet": PENet}[base](base_config)
    return CCEScorerModel(
        module, scorer_config=_scorer_config(row), detach_scorer_inputs=_scorer_detach(row)
    )


def focal_class_weights(predicate_counts: np.ndarray) -> tuple[float, ...] | None:
    """``--focal_class_weights``: None, or ``w_c ∝ 1/sqrt(max(n_c, 1))`` (mean 1 per relation).

    Args:
      predicate_counts: int[C] training counts (column 0 = background, weight 1).

    Returns:
      C weights or None.
    """
    if FLAGS.focal_class_weights == "none":
        return None
    counts = np.asarray(predicate_counts, np.float64)
    raw = 1.0 / np.sqrt(np.maximum(counts[1:], 1.0))
    total = counts[1:].sum()
    scale = total / max(float((raw * counts[1:]).sum()), 1e-12) if total > 0 else 1.0
    return (1.0, *(float(w) for w in raw * scale))


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _object_buckets() -> list[int]:
    """``--eval_object_buckets`` as ascending ints ending with ``--max_objects``."""
    try:
        buckets = [int(b) for b in FLAGS.eval_object_buckets]
    except ValueError:
        raise ConfigError(
            "eval_object_buckets", f"expected integers, got {FLAGS.eval_object_buckets}"
        ) from None
    if buckets != sorted(set(buckets)) or any(not 2 <= b < FLAGS.max_objects for b in buckets):
        raise ConfigError(
            "eval_object_buckets",
            f"must be ascending integers in [2, max_objects={FLAGS.max_objects}), got {buckets}",
        )
    return [*buckets, FLAGS.max_objects]


def collect_predictions(scorers, graphs, vocab, features) -> dict[str, list]:
    """Per scoring name, one Prediction per graph, batching images by object-count bucket.

    An image whose (kept) objects fit a smaller bucket is evaluated in batches of that bucket's
    budgets (``b`` objects, ``min(b·(b−1), eval_max_pairs)`` pairs): the same ordered pairs as with
    the full budgets, with less padding (the full budget pads every image to ``eval_max_pairs``).
    """
    from sgg_jax.evaluation.collect import batch_predictions

    buckets = _object_buckets()
    kept = np.minimum([g.num_objects for g in graphs], FLAGS.max_objects)
    bucket_of = np.searchsorted(buckets, kept)
    predictions: dict[str, list] = {}
    for bucket_index, max_objects in enumerate(buckets):
        members = np.flatnonzero(bucket_of == bucket_index)
        if members.size == 0:
            continue
        subset = [graphs[i] for i in members]
        subset_features = None if features is None else [features[i] for i in members]
        max_pairs = FLAGS.eval_max_pairs
        if max_objects < FLAGS.max_objects:
            max_pairs = min(max_objects * (max_objects - 1), FLAGS.eval_max_pairs)
        config = pipeline.PipelineConfig.evaluation(
            FLAGS.eval_batch_size,
            max_objects,
            max_pairs,
            num_predicates=vocab.num_predicates,
            read_threads=0,
        )
        for batch in pipeline.make_loader(subset, config, object_features=subset_features):
            for name, (scores, labels, object_scores) in scorers(batch).items():
                found = batch_predictions(subset, batch, scores, labels, object_scores)
                slots = predictions.setdefault(name, [None] * len(graphs))
                for local, prediction in found.items():
                    slots[int(members[local])] = prediction
    return predictions


def evaluate_bucketed(scorers, graphs, vocab, features, zeroshot=None) -> dict[str, dict]:
    """``{name: metrics}`` of every scoring over ``graphs`` (:func:`collect_predictions`)."""
    return {
        name: common.evaluate_predictions(
            graphs, found, vocab, mode=FLAGS.task, zeroshot_triplets=zeroshot
        )
        for name, found in collect_predictions(scorers, graphs, vocab, features).items()
    }


def _predict_fn(model, rankings):
    """Jitted ``(variables, batch) -> ({ranking: scores[B,P,C]}, labels, object_scores)``."""
    import jax

    from sgg_jax.models.cce_scorer import rank_predicate_scores

    @jax.jit
    def predict(variables, batch):
        outputs, _ = model.apply(variables, batch, train=False)
        distribution = jax.nn.softmax(outputs["relation_logits"], axis=-1)
        scorer_logits = outputs.get("scorer_logits")
        scores = {r: rank_predicate_scores(distribution, scorer_logits, r) for r in rankings}
        return scores, outputs["object_labels"], outputs["object_scores"]

    return predict


def _multi_scorer(predict, variables, mesh, only=None):
    """``batch -> {ranking: (scores, labels, object_scores)}``; ``only``: a ranking or a list."""
    from sgg_jax.train import shard_batch

    keep = None if only is None else ({only} if isinstance(only, str) else set(only))

    def scorers(batch):
        scores, labels, object_scores = predict(variables, shard_batch(batch, mesh))
        labels, object_scores = np.asarray(labels), np.asarray(object_scores)
        return {
            r: (np.asarray(s), labels, object_scores)
            for r, s in scores.items()
            if keep is None or r in keep
        }

    return scorers


def training_confusion(predict, variables, mesh, graphs, vocab, features) -> np.ndarray:
    """Predicate confusion on the ground-truth pairs of ``graphs`` (report.predicate_confusion)."""
    from sgg_jax.evaluation import report

    scorers = _multi_scorer(predict, variables, mesh, only="predicate")
    predictions = collect_predictions(scorers, graphs, vocab, features)["predicate"]
    return report.predicate_confusion(graphs, predictions, vocab.num_predicates)


def confusion_summary(confusion: np.ndarray, predicate_counts: np.ndarray) -> dict[str, float]:
    """Scalars of a confusion matrix: accuracy, and how often a non-head relation goes to the head.

    ``head`` = the 5 most frequent training predicates. ``to_head_rate`` = the share of ground-truth
    relations of the other predicates predicted as one of the head predicates (what CCE should
    lower, Fig. 5).
    """
    confusion = np.asarray(confusion, np.float64)
    total = confusion[1:].sum()
    correct = np.trace(confusion[1:, 1:])
    order = 1 + np.argsort(-np.asarray(predicate_counts)[1:], kind="stable")
    head = order[:5]
    others = np.setdiff1d(np.arange(1, confusion.shape[0]), head)
    other_total = confusion[others].sum()
    to_head = confusion[np.ix_(others, head)].sum()
    return {
        "train_accuracy": float(correct / total) if total else 0.0,
        "to_head_rate": float(to_head / other_total) if other_total else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


def _run_row(context, base, base_config, row, tables=None):
    """Trains one row (or resumes / reuses it) and evaluates it on test; returns runs by key."""
    from sgg_jax.losses import make_cce_scorer_loss
    from sgg_jax.models import motifs, penet
    from sgg_jax.train import TrainConfig, train

    vocab = context["vocab"]
    with_tables = {"motifs": motifs.with_tables, "penet": penet.with_tables}[base]
    model = _build_model(base, base_config, row)
    loss_config = _loss_config(base, row, focal_class_weights(vocab.predicate_counts))
    loss_fn = make_cce_scorer_loss(loss_config, base_config)
    rankings = _rankings(row)  # ce / cce (the confusion matrices' rows): ["predicate"]
    predict = _predict_fn(model, rankings)
    mesh = context["mesh"]
    eval_fn = None
    if FLAGS.eval_every:

        def eval_fn(state, step):
            metrics = evaluate_bucketed(
                _multi_scorer(predict, state.variables, mesh, only=rankings[0]),
                context["val_graphs"],
                vocab,
                context["val_features"],
            )[rankings[0]]
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

    run_config = {
        "experiment": "cce_scorer",
        "dataset": FLAGS.dataset,
        "task": FLAGS.task,
        "base": base,
        "row": row,
        "loss": dataclasses.asdict(loss_config),
        "scorer": None if model.scorer_config is None else vars(model.scorer_config),
        "scorer_detach": model.detach_scorer_inputs,
        "rankings": rankings,
        "model": {k: v for k, v in vars(base_config).items() if not isinstance(v, np.ndarray)},
    }
    start = time.perf_counter()
    state, last = train(
        model,
        loss_fn,
        context["loader"],
        workdir=os.path.join(FLAGS.workdir, base, row),
        train_config=TrainConfig(
            num_steps=FLAGS.num_steps,
            seed=FLAGS.seed,
            checkpoint_every=FLAGS.checkpoint_every,
            max_to_keep=FLAGS.keep_checkpoints,
            eval_every=FLAGS.eval_every,
            log_every=FLAGS.log_every,
            progress=FLAGS.progress,
        ),
        optim_config=common.optim_config(),
        eval_fn=eval_fn,
        mesh=mesh,
        config=run_config,
        init_variables=functools.partial(with_tables, scope="base", **tables) if tables else None,
    )
    train_seconds = time.perf_counter() - start
    variables = state.variables
    start = time.perf_counter()
    metrics = evaluate_bucketed(
        _multi_scorer(predict, variables, mesh, only=rankings),
        context["splits"]["test"],
        vocab,
        context["features"]["test"],
        context["zeroshot"],
    )
    eval_seconds = time.perf_counter() - start
    runs = {f"{base}/{row}": metrics[rankings[0]]}
    for ranking in rankings[1:]:
        runs[f"{base}/{row}/{ranking}"] = metrics[ranking]
    timing = {"train_seconds": train_seconds, "eval_seconds": eval_seconds}
    for name in ("loss", "grad_norm"):
        if name in last:
            timing[f"final_{name}"] = float(last[name])
    confusion = None
    if FLAGS.confusion and row in ("ce", "cce"):
        graphs = context["splits"]["train"]
        features = context["features"]["train"]
        if FLAGS.confusion_images:
            graphs = graphs[: FLAGS.confusion_images]
            features = None if features is None else features[: FLAGS.confusion_images]
        confusion = training_confusion(predict, variables, mesh, graphs, vocab, features)
    label = f"{BASE_LABELS[base]} {ROW_LABELS[row]}"
    print(
        f"{label}: trained {train_seconds:.0f} s, evaluated {eval_seconds:.0f} s; "
        + ", ".join(f"{c} {100 * metrics[rankings[0]][c]:.2f}" for c in ("R@100", "mR@100"))
    )
    return runs, timing, confusion


def run(splits, vocab) -> dict:
    """Trains and evaluates every (base model, row); writes results, tables and figures."""
    from sgg_jax.models.frequency import FrequencyBaseline
    from sgg_jax.train import make_mesh

    frequency = FrequencyBaseline.from_graphs(
        splits["train"], vocab.num_classes, vocab.num_predicates
    )
    features = common.object_features_for(splits)
    val_graphs, val_features = splits["val"], features["val"]
    if FLAGS.eval_images:
        val_graphs = val_graphs[: FLAGS.eval_images]
        val_features = None if val_features is None else val_features[: FLAGS.eval_images]
    context = {
        "splits": splits,
        "vocab": vocab,
        "features": features,
        "val_graphs": val_graphs,
        "val_features": val_features,
        "mesh": make_mesh(),
        "zeroshot": common.zeroshot_for(splits),
        "loader": pipeline.make_loader(
            splits["train"],
            common.train_pipeline_config(vocab),
            object_features=features["train"],
        ),
    }
    runs, timings, confusions = {}, {}, {}
    for base in FLAGS.base_models:
        base_config, tables = _base_config(base, vocab, frequency)
        for row in FLAGS.rows:
            row_runs, timing, confusion = _run_row(context, base, base_config, row, tables)
            runs.update(row_runs)
            timings[f"{base}/{row}"] = timing
            if confusion is not None:
                confusions[(base, row)] = confusion
    return _report(runs, timings, confusions, vocab, num_test=len(splits["test"]))


def _run_info(key: str) -> dict:
    """Row, ranking, Scorer training and table label of a run key ``<base>/<row>[/<ranking>]``."""
    _, row, *extra = key.split("/")
    has_scorer = ROW_SPECS[row][2] is not None
    ranking = extra[0] if extra else (FLAGS.ranking if has_scorer else "predicate")
    label = ROW_LABELS[row]
    if extra:
        label += f" [ranked by {RANKING_LABELS[ranking]}]"
    info = {"row": row, "ranking": ranking, "label": label}
    if has_scorer:
        info["scorer_detach"] = _scorer_detach(row)
    return info


def _report(runs, timings, confusions, vocab, *, num_test):
    from sgg_jax.evaluation import report

    plots = os.path.join(FLAGS.workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    deltas, confusion_scalars = {}, {}
    for base in FLAGS.base_models:
        ce = runs.get(f"{base}/ce")
        for row in FLAGS.rows:
            if ce is None or row == "ce":
                continue
            deltas[f"{base}/{row}"] = {
                column: runs[f"{base}/{row}"][column] - ce[column] for column in DELTA_COLUMNS
            }
        final = runs.get(f"{base}/cce_scorer")
        cce_only = runs.get(f"{base}/cce")
        if final is not None and cce_only is not None:  # the Scorer's effect on top of CCE
            deltas[f"{base}/cce_scorer-cce"] = {
                column: final[column] - cce_only[column] for column in DELTA_COLUMNS
            }
        if ce is not None and final is not None:
            report.plot_per_predicate_recall(
                os.path.join(plots, f"per_predicate_recall_{base}.png"),
                final["per_predicate_R@100"],
                vocab.predicate_names,
                vocab.predicate_counts,
                baseline=ce["per_predicate_R@100"],
                label=f"{BASE_LABELS[base]} +CCE+Scorer ({FLAGS.ranking})",
                baseline_label=f"{BASE_LABELS[base]} CE",
                num_images=final["per_predicate_num_images"],
            )
    for (base, row), confusion in confusions.items():
        stem = os.path.join(plots, f"confusion_train_{base}_{row}")
        np.save(stem + ".npy", confusion)
        report.plot_confusion(
            stem + ".png", confusion, vocab.predicate_names, vocab.predicate_counts
        )
        confusion_scalars[f"{base}/{row}"] = confusion_summary(confusion, vocab.predicate_counts)

    document = report.write_results(
        FLAGS.workdir,
        experiment="cce_scorer",
        dataset=FLAGS.dataset,
        task=FLAGS.task,
        seed=FLAGS.seed,
        runs=runs,
    )
    resolved = _loss_config(FLAGS.base_models[0], "cce")
    document["cce_scorer"] = {
        "ranking": FLAGS.ranking,
        "extra_rankings": [r for r in FLAGS.extra_rankings if r != FLAGS.ranking],
        "runs": {key: _run_info(key) for key in runs},
        "scorer_detach": FLAGS.scorer_detach,
        "cce_variant": resolved.cce_variant,
        "cce_background": resolved.background,
        "cce_negatives": resolved.cce_negatives,
        "lambda_cce": FLAGS.lambda_cce,
        "lambda_bce": FLAGS.lambda_bce,
        "lambda_focal": FLAGS.lambda_focal,
        "margin": FLAGS.margin,
        "gamma": FLAGS.gamma,
        "num_steps": FLAGS.num_steps,
        "model_size": FLAGS.model_size,
        "delta_vs_ce": deltas,
        "train_confusion": confusion_scalars,
        "timing": timings,
    }
    with open(os.path.join(FLAGS.workdir, "results.json"), "w") as handle:
        json.dump(document, handle, indent=2)

    sections = [
        f"# cce_scorer — {FLAGS.dataset}, {FLAGS.task}, seed {FLAGS.seed}, {num_test} test images\n",
        f"{FLAGS.num_steps} updates per row, model size {FLAGS.model_size}, CCE variant "
        f"`{resolved.cce_variant}` (background `{resolved.background}`); rows with the Scorer are "
        f"ranked by {RANKING_LABELS[FLAGS.ranking]} (rows `[ranked by ...]` otherwise: the same "
        "model under another ranking). Values in %.\n",
    ]
    for base in FLAGS.base_models:
        rows = {_run_info(key)["label"]: m for key, m in runs.items() if key.split("/")[0] == base}
        sections.append(f"## {BASE_LABELS[base]}\n")
        sections.append(report.metrics_table(rows, columns=TABLE_COLUMNS))
    text = "\n".join(sections)
    with open(os.path.join(FLAGS.workdir, "results.md"), "w") as handle:
        handle.write(text)
    print("\n" + text)
    for key, delta in deltas.items():
        print(
            f"{key}{'' if '-' in key else ' - ce'} (points): "
            + ", ".join(f"{c} {100 * delta[c]:+.2f}" for c in ("mR@20", "mR@50", "mR@100", "R@100"))
        )
    for key, scalars in confusion_scalars.items():
        print(
            f"{key} training confusion: accuracy {100 * scalars['train_accuracy']:.1f}%, "
            f"non-head predicted as head {100 * scalars['to_head_rate']:.1f}%"
        )
    print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}")
    return document


def main(argv):
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the console
    if len(argv) > 1:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        check_flags()
        if FLAGS.distributed:
            from sgg_jax.train import initialize_distributed

            initialize_distributed(True)
        splits, vocab = common.load_splits()
        run(splits, vocab)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
