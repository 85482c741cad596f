"""CCE loss + Scorer on MotifNet and PE-Net, with the focal-loss baseline: the ablation table.

``python -m experiments.cce_scorer --flagfile=experiments/flags/cce_scorer_gqa200_mini.flags``

Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to Contrast and Score",
ACCV 2020. For every base model of ``--base_models`` (``motifs``: MotifNet, Zellers et al. 2018;
``penet``: PE-Net, Zheng et al. 2023) every row of ``--rows`` is trained from scratch with the same
data order, seed and schedule, evaluated on the test split, and reported side by side:

========================  ===========================================================  =========
row                       training loss (:func:`sgg_jax.losses.make_cce_scorer_loss`)  Scorer
========================  ===========================================================  =========
``ce``                    L_other (MotifNet: relation CE (+ object CE); PE-Net: its    no
                          own losses)
``cce``                   L_other + λ1·L_CCE                                           no
``scorer``                L_other + λ2·L_BCE                                           yes (SA)
``cce_scorer``            L_other + λ1·L_CCE + λ2·L_BCE                                yes (SA)
``cce_scorer_no_sa``      L_other + λ1·L_CCE + λ2·L_BCE, point-wise Scorer ("w/o SA")  yes
``focal``                 L_other with focal (γ) instead of the relation CE            no
========================  ===========================================================  =========

Rows with the Scorer are ranked at test time by ``--ranking`` (see
:func:`sgg_jax.models.cce_scorer.rank_predicate_scores`; the paper's test-time score is
``scorer_x_predicate``) and, with ``--all_rankings``, also under the other two rankings (one model
pass, three evaluations), as extra rows ``<base>/<row>/<ranking>``.

Outputs in ``--workdir``: ``<base>/<row>/`` (checkpoints, ``metrics.jsonl``, TensorBoard; a rerun
resumes or reuses a finished row), ``results.json`` (the project's schema; runs keyed
``<base>/<row>``; ``cce_scorer`` block with the deltas against ``ce``), ``results.md`` (one table
per base model), ``plots/per_predicate_recall_<base>.png`` (per-predicate R@100 of +CCE+Scorer with
the change against CE: the paper's Fig. 4) and ``plots/confusion_train_<base>_<row>.png`` / ``.npy``
(predicate confusion of CE and +CCE on the training images' ground-truth pairs: Fig. 5).

Deviations from the paper (documented where they are made): no pixels, so object / union features
are geometry features (or precomputed ones) and the Scorer's global image feature is the mean of
the object features; the Scorer's inputs are detached from the base model by default
(``--scorer_detach``); PE-Net's base loss is its own four terms rather than a CE.
"""

from __future__ import annotations

import dataclasses
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
ROWS = ("ce", "cce", "scorer", "cce_scorer", "cce_scorer_no_sa", "focal")
RANKINGS = ("predicate", "scorer_x_predicate", "scorer")
ROW_LABELS = {
    "ce": "CE",
    "cce": "+CCE",
    "scorer": "+Scorer",
    "cce_scorer": "+CCE+Scorer",
    "cce_scorer_no_sa": "+CCE+Scorer w/o SA",
    "focal": "Focal",
}
BASE_LABELS = {"motifs": "MotifNet", "penet": "PE-Net"}
# row -> (use_cce, use_focal, scorer: None | "attention" | "pointwise")
ROW_SPECS = {
    "ce": (False, False, None),
    "cce": (True, False, None),
    "scorer": (False, False, "attention"),
    "cce_scorer": (True, False, "attention"),
    "cce_scorer_no_sa": (True, False, "pointwise"),
    "focal": (False, True, None),
}

flags.DEFINE_list("base_models", list(BASE_MODELS), f"Base relation models, some of {BASE_MODELS}.")
flags.DEFINE_list("rows", list(ROWS), f"Ablation rows, some of {ROWS}.")
flags.DEFINE_enum("model_size", "small", ["small", "official"], "Base model and Scorer sizes.")
flags.DEFINE_bool(
    "frequency_bias",
    True,
    "Frequency bias of the training split (MotifNet: trainable, in training and at inference; "
    "PE-Net: at inference only, as the official code).",
)
flags.DEFINE_bool(
    "bundled_predicate_vectors",
    False,
    "PE-Net: initialise the predicate embeddings from the bundled 300-d GloVe vectors.",
)
# CCE + Scorer options
flags.DEFINE_float("lambda_cce", 100.0, "λ1, weight of L_CCE (paper 100).")
flags.DEFINE_float("lambda_bce", 1.0, "λ2, weight of the Scorer's BCE (paper 1).")
flags.DEFINE_float("margin", 0.0, "α, the CCE margin (paper 0).")
flags.DEFINE_enum(
    "cce_background", "skip", ["skip", "include"], "CCE on background pairs (losses.cce)."
)
flags.DEFINE_float("gamma", 4.0, "γ of the focal-loss row.")
flags.DEFINE_enum(
    "focal_class_weights",
    "none",
    ["none", "inverse_sqrt_frequency"],
    "Class weights of the focal row: none, or w_c ∝ 1/sqrt(n_c) over the training predicate counts "
    "(normalised to a mean of 1 over the training relations; background weight 1).",
)
flags.DEFINE_enum(
    "ranking",
    "predicate",
    list(RANKINGS),
    "Test-time ranking of the rows with the Scorer: predicate (the evaluator's usual predicate "
    "score x object scores), scorer_x_predicate (predicate scores x sigmoid(scorer), the paper's), "
    "scorer (pairs ranked by the Scorer alone, each pair's predicate order kept).",
)
flags.DEFINE_bool("all_rankings", True, "Also evaluate Scorer rows under the other rankings.")
flags.DEFINE_bool(
    "scorer_detach", True, "Stop the Scorer's gradient at its inputs (base model untouched)."
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
    ["cce_scorer"],
    "Scorer rows also evaluated under the other rankings (with --all_rankings).",
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

    use_cce, use_focal, scorer = ROW_SPECS[row]
    return CCEScorerLossConfig(
        base=base,
        use_cce=use_cce,
        use_scorer=scorer is not None,
        use_focal=use_focal,
        lambda_cce=FLAGS.lambda_cce,
        lambda_bce=FLAGS.lambda_bce,
        margin=FLAGS.margin,
        background=FLAGS.cce_background,
        gamma=FLAGS.gamma,
        class_weights=class_weights,
    )


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
        ("base_models", BASE_MODELS),
        ("rows", ROWS),
        ("extra_ranking_rows", ROWS),
    ):
        values = getattr(FLAGS, name)
        unknown = sorted(set(values) - set(allowed))
        if unknown or (not values and name != "extra_ranking_rows"):
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
    from sgg_jax.models.motifs import MotifsConfig
    from sgg_jax.models.penet import PENetConfig

    extra = {}
    if FLAGS.frequency_bias:
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
    return make(
        vocab.num_classes,
        vocab.num_predicates,
        task=FLAGS.task,
        feature_source=FLAGS.feature_source,
        **extra,
    )


def _build_model(base: str, base_config, row: str):
    from sgg_jax.models.cce_scorer import CCEScorerModel
    from sgg_jax.models.motifs import MotifNet
    from sgg_jax.models.penet import PENet

    module = {"motifs": MotifNet, "penet": PENet}[base](base_config)
    return CCEScorerModel(
        module, scorer_config=_scorer_config(row), detach_scorer_inputs=FLAGS.scorer_detach
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
    from sgg_jax.train import shard_batch

    def scorers(batch):
        scores, labels, object_scores = predict(variables, shard_batch(batch, mesh))
        labels, object_scores = np.asarray(labels), np.asarray(object_scores)
        return {
            r: (np.asarray(s), labels, object_scores)
            for r, s in scores.items()
            if only is None or r == only
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


def _run_row(context, base, base_config, row):
    """Trains one row (or resumes / reuses it) and evaluates it on test; returns runs by key."""
    from sgg_jax.losses import make_cce_scorer_loss
    from sgg_jax.train import TrainConfig, train

    vocab = context["vocab"]
    model = _build_model(base, base_config, row)
    loss_config = _loss_config(base, row, focal_class_weights(vocab.predicate_counts))
    loss_fn = make_cce_scorer_loss(loss_config, base_config)
    has_scorer = ROW_SPECS[row][2] is not None
    rankings = [FLAGS.ranking] if has_scorer else ["predicate"]
    if has_scorer and FLAGS.all_rankings and row in FLAGS.extra_ranking_rows:
        rankings += [r for r in RANKINGS if r != FLAGS.ranking]
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
        "scorer_detach": FLAGS.scorer_detach,
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
    )
    train_seconds = time.perf_counter() - start
    variables = state.variables
    start = time.perf_counter()
    metrics = evaluate_bucketed(
        _multi_scorer(predict, variables, mesh),
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
        base_config = _base_config(base, vocab, frequency)
        for row in FLAGS.rows:
            row_runs, timing, confusion = _run_row(context, base, base_config, row)
            runs.update(row_runs)
            timings[f"{base}/{row}"] = timing
            if confusion is not None:
                confusions[(base, row)] = confusion
    return _report(runs, timings, confusions, vocab, num_test=len(splits["test"]))


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
    document["cce_scorer"] = {
        "ranking": FLAGS.ranking,
        "scorer_detach": FLAGS.scorer_detach,
        "lambda_cce": FLAGS.lambda_cce,
        "lambda_bce": FLAGS.lambda_bce,
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
        f"{FLAGS.num_steps} updates per row, model size {FLAGS.model_size}; Scorer rows ranked by "
        f"`{FLAGS.ranking}` (rows `.../<ranking>`: the same model under another ranking). "
        "Values in %.\n",
    ]
    for base in FLAGS.base_models:
        rows = {
            key.removeprefix(f"{base}/"): m for key, m in runs.items() if key.split("/")[0] == base
        }
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
