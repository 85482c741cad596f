"""CCE loss + Scorer on MotifNet and PE-Net, with the focal-loss baseline: the ablation table.

The library behind ``python -m experiments.cce_scorer`` (whose docstring describes the rows, the
official and paper variants, the rankings and the outputs): :class:`CCEScorerExperimentConfig`
(checked when built: one-line :class:`~sgg_jax.errors.ConfigError` naming the flag, before any data
is read) and :func:`run`.

Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to Contrast and Score",
ACCV 2020. For every base model of ``base_models`` (``motifs``: MotifNet, Zellers et al. 2018;
``penet``: PE-Net, Zheng et al. 2023) every row of ``rows`` is trained from scratch with the same
data order, seed and schedule, evaluated on the test split, and reported side by side
(:func:`sgg_jax.projects.cce_scorer.losses.make_cce_scorer_loss`). Rows with the Scorer are ranked at test time by
``ranking`` and, for the rows of ``extra_ranking_rows``, also under each of ``extra_rankings``
from the same model pass (one pass of :func:`sgg_jax.experiment.relation.evaluate_scorers`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import numpy as np

from sgg_jax.data import pipeline
from sgg_jax.data.fileio import check_writable_dir
from sgg_jax.errors import ConfigError
from sgg_jax.experiment import relation
from sgg_jax.experiment.relation import DataConfig
from sgg_jax.train.optim import OptimConfig

BASE_MODELS = ("motifs", "penet")
ROWS = ("ce", "cce", "scorer", "cce_scorer", "cce_scorer_no_sa", "cce_scorer_joint", "focal")
SCORER_ROWS = ("scorer", "cce_scorer", "cce_scorer_no_sa", "cce_scorer_joint")
RANKINGS = ("predicate", "scorer_x_predicate", "scorer")
CCE_VARIANTS = ("official", "paper")
CCE_BACKGROUND_MODES = ("skip", "include")
CCE_NEGATIVE_POOLS = ("foreground", "any")
FOCAL_CLASS_WEIGHTS = ("none", "inverse_sqrt_frequency")
MODEL_SIZES = ("small", "official")
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
#         detach the Scorer's inputs: None = scorer_detach, False = joint training)
ROW_SPECS = {
    "ce": (False, False, None, None),
    "cce": (True, False, None, None),
    "scorer": (False, False, "attention", None),
    "cce_scorer": (True, False, "attention", None),
    "cce_scorer_no_sa": (True, False, "pointwise", None),
    "cce_scorer_joint": (True, False, "attention", False),
    "focal": (False, True, None, None),
}
TABLE_COLUMNS = [f"{m}@{k}" for m in ("R", "mR") for k in (20, 50, 100)]
TABLE_COLUMNS += ["mR@all", "ngR@50", "ngR@100", "ngmR@50", "ngmR@100", "F@100"]
DELTA_COLUMNS = ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "mR@all", "ngmR@100")


@dataclasses.dataclass(frozen=True)
class CCEScorerExperimentConfig:
    """Everything ``python -m experiments.cce_scorer`` runs; checked when built (:meth:`validate`).

    Every field is the flag of the same name (``experiments/cce_scorer.py`` documents them).

    Attributes:
      data: dataset, task and budgets; ``feature_source`` geometry, precomputed or roi (the
        pixels of ``detector_workdir``: PredCls, SGCls and SGDet on the pretrained detector).
      optim: the optimizer of every row (``images_per_batch`` = ``data.batch_size``).
      base_models, rows: some of :data:`BASE_MODELS` and :data:`ROWS`.
      model_size: base model and Scorer sizes, ``small`` or ``official``.
      frequency_bias: MotifNet's trainable frequency bias.
      penet_frequency_bias: PE-Net adds the frequency bias at inference.
      bundled_predicate_vectors: PE-Net's predicate embeddings from the bundled GloVe vectors.
      cce_variant, cce_background, cce_negatives, lambda_cce, lambda_bce, lambda_focal, margin,
        gamma, focal_class_weights: the losses (:class:`sgg_jax.projects.cce_scorer.losses.CCEScorerLossConfig`).
      ranking, extra_rankings, extra_ranking_rows: test-time rankings of the Scorer rows.
      scorer_detach, scorer_hidden_dim, scorer_attention_dim: the Scorer (None = the size's).
      num_steps, eval_every, checkpoint_every, keep_checkpoints, log_every, progress: training.
      eval_object_buckets: object-count buckets of the evaluation batches (ascending, in
        ``[2, max_objects)``).
      confusion, confusion_images: training-set confusion matrices of CE and +CCE (on the
        ground-truth pairs: not in SGDet, whose pairs are the detections').
    """

    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig(learning_rate=1e-2, warmup_steps=500, images_per_batch=8)
    base_models: tuple[str, ...] = BASE_MODELS
    rows: tuple[str, ...] = ROWS
    model_size: str = "small"
    frequency_bias: bool = True
    penet_frequency_bias: bool = False
    bundled_predicate_vectors: bool = False
    cce_variant: str = "official"
    cce_background: str | None = None
    cce_negatives: str = "foreground"
    lambda_cce: float = 100.0
    lambda_bce: float = 1.0
    lambda_focal: float = 100.0
    margin: float = 0.0
    gamma: float = 4.0
    focal_class_weights: str = "none"
    ranking: str = "scorer"
    extra_rankings: tuple[str, ...] = ("scorer_x_predicate",)
    scorer_detach: bool = True
    scorer_hidden_dim: int | None = None
    scorer_attention_dim: int | None = None
    num_steps: int = 1000
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    log_every: int = 100
    progress: bool = True
    eval_object_buckets: tuple[int, ...] = ()
    extra_ranking_rows: tuple[str, ...] = SCORER_ROWS
    confusion: bool = True
    confusion_images: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line ConfigErrors naming the flag (``data`` and ``optim`` check themselves)."""
        if self.num_steps <= 0:
            raise ConfigError("num_steps", f"must be positive, got {self.num_steps}")
        buckets = list(self.eval_object_buckets)
        max_objects = self.data.max_objects
        if buckets != sorted(set(buckets)) or any(not 2 <= b < max_objects for b in buckets):
            raise ConfigError(
                "eval_object_buckets",
                f"must be ascending integers in [2, max_objects={max_objects}), got {buckets}",
            )
        for name in ("eval_every", "checkpoint_every", "confusion_images"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        for name, allowed in (
            ("model_size", MODEL_SIZES),
            ("focal_class_weights", FOCAL_CLASS_WEIGHTS),
            ("cce_variant", CCE_VARIANTS),
            ("cce_negatives", CCE_NEGATIVE_POOLS),
            ("ranking", RANKINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    name, f"must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if self.cce_background is not None:
            if self.cce_background not in CCE_BACKGROUND_MODES:
                raise ConfigError(
                    "cce_background",
                    f"must be one of {list(CCE_BACKGROUND_MODES)}, got {self.cce_background!r}",
                )
            if self.cce_variant == "official" and self.cce_background == "skip":
                raise ConfigError(
                    "cce_background",
                    "'skip' needs --cce_variant=paper: the official CCE averages over every "
                    "relation, background included",
                )
        for name, allowed in (
            ("base_models", BASE_MODELS),
            ("rows", ROWS),
            ("extra_ranking_rows", ROWS),
            ("extra_rankings", RANKINGS),
        ):
            values = list(getattr(self, name))
            unknown = sorted(set(values) - set(allowed))
            if unknown or (not values and name in ("base_models", "rows")):
                raise ConfigError(name, f"unknown {unknown}; expected some of {list(allowed)}")
            if len(set(values)) != len(values):
                raise ConfigError(name, f"lists a value twice: {values}")
        for base in self.base_models:
            for row in self.rows:
                self.loss_config(base, row)  # λ1, λ2, α, γ, background
                self.scorer_config(row)  # Scorer sizes

    def loss_config(self, base: str, row: str, class_weights=None):
        """The :class:`~sgg_jax.projects.cce_scorer.losses.CCEScorerLossConfig` of one (base model, row)."""
        from sgg_jax.projects.cce_scorer.losses import CCEScorerLossConfig

        use_cce, use_focal, scorer, _ = ROW_SPECS[row]
        return CCEScorerLossConfig(
            base=base,
            use_cce=use_cce,
            use_scorer=scorer is not None,
            use_focal=use_focal,
            cce_variant=self.cce_variant,
            lambda_cce=self.lambda_cce,
            lambda_bce=self.lambda_bce,
            lambda_focal=self.lambda_focal,
            margin=self.margin,
            background=self.cce_background,
            cce_negatives=self.cce_negatives,
            gamma=self.gamma,
            class_weights=class_weights,
        )

    def scorer_detach_of(self, row: str) -> bool:
        """Whether the row's Scorer inputs are detached (``scorer_detach`` unless the row says)."""
        override = ROW_SPECS[row][3]
        return self.scorer_detach if override is None else override

    def rankings(self, row: str) -> list[str]:
        """The row's rankings, headline first: ``ranking`` (+ ``extra_rankings``) with the
        Scorer, ``predicate`` without."""
        if ROW_SPECS[row][2] is None:
            return ["predicate"]
        rankings = [self.ranking]
        if row in self.extra_ranking_rows:
            rankings += [r for r in self.extra_rankings if r != self.ranking]
        return rankings

    def scorer_config(self, row: str):
        """The row's :class:`~sgg_jax.projects.cce_scorer.scorer.ScorerConfig` (None without a Scorer)."""
        from sgg_jax.projects.cce_scorer.scorer import ScorerConfig

        kind = ROW_SPECS[row][2]
        if kind is None:
            return None
        small = self.model_size == "small"
        hidden = self.scorer_hidden_dim or (128 if small else 512)
        attention = self.scorer_attention_dim or (64 if small else 256)
        return ScorerConfig(
            hidden_dim=hidden, attention_dim=attention, use_attention=kind == "attention"
        )

    def focal_class_weights_of(self, predicate_counts: np.ndarray) -> tuple[float, ...] | None:
        """``focal_class_weights``: None, or ``w_c ∝ 1/sqrt(max(n_c, 1))`` (mean 1 per relation).

        Args:
          predicate_counts: int[C] training counts (column 0 = background, weight 1).

        Returns:
          C weights or None.
        """
        if self.focal_class_weights == "none":
            return None
        counts = np.asarray(predicate_counts, np.float64)
        raw = 1.0 / np.sqrt(np.maximum(counts[1:], 1.0))
        total = counts[1:].sum()
        scale = total / max(float((raw * counts[1:]).sum()), 1e-12) if total > 0 else 1.0
        return (1.0, *(float(w) for w in raw * scale))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _base_config(config: CCEScorerExperimentConfig, base: str, vocab, frequency, pixels=None):
    """The base model's config and the tables its ``with_tables`` puts into fresh variables
    (``pixels``: the :class:`~sgg_jax.experiment.relation.PixelInputs` of ``roi``)."""
    from sgg_jax.relation.motifs import MotifsConfig
    from sgg_jax.relation.penet import PENetConfig

    extra = {}
    if config.penet_frequency_bias if base == "penet" else config.frequency_bias:
        extra["frequency_bias"] = frequency.log_bias
    if base == "penet" and config.bundled_predicate_vectors:
        extra["predicate_word_vectors"], _ = relation.bundled_predicate_vectors(
            vocab.predicate_names, config.data.seed
        )
    kind = {"motifs": MotifsConfig, "penet": PENetConfig}[base]
    make = kind.small if config.model_size == "small" else kind.official
    vectors = extra.get("predicate_word_vectors")
    sizes = {} if vectors is None else {"embed_dim": int(np.shape(vectors)[-1])}
    if pixels is not None:
        sizes.update(pixels.model_fields())
    base_config = make(
        vocab.num_classes,
        vocab.num_predicates,
        task=config.data.task,
        feature_source=config.data.feature_source,
        frequency_bias="frequency_bias" in extra,
        **sizes,
    )
    return base_config, extra


def _build_model(config: CCEScorerExperimentConfig, base: str, base_config, row: str):
    from sgg_jax.projects.cce_scorer.model import CCEScorerModel
    from sgg_jax.relation.motifs import MotifNet
    from sgg_jax.relation.penet import PENet

    module = {"motifs": MotifNet, "penet": PENet}[base](base_config)
    return CCEScorerModel(
        module,
        scorer_config=config.scorer_config(row),
        detach_scorer_inputs=config.scorer_detach_of(row),
    )


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def predict_fn(model, rankings):
    """Jitted ``(variables, batch) -> ({ranking: scores[B,P,C]}, objects)``.

    ``objects``: ``object_labels`` / ``object_scores`` [B, N] and, in SGDet, the model's own
    detections and pairs (``boxes``, ``object_mask``, ``pairs``, ``pair_mask``,
    ``detection_labels``, ``detection_scores``: :func:`sgg_jax.experiment.relation.predict_outputs`),
    which the scores of every ranking (the Scorer's included) refer to.
    """
    import jax

    from sgg_jax.projects.cce_scorer.model import rank_predicate_scores

    @jax.jit
    def predict(variables, batch):
        outputs, _ = model.apply(variables, batch, train=False)
        distribution = jax.nn.softmax(outputs["relation_logits"], axis=-1)
        scorer_logits = outputs.get("scorer_logits")
        scores = {r: rank_predicate_scores(distribution, scorer_logits, r) for r in rankings}
        objects = {k: v for k, v in outputs.items() if k in _OBJECT_KEYS}
        return scores, objects

    return predict


# What predict_fn returns besides the scores: relation.predict_outputs' keys but the scores.
_OBJECT_KEYS = ("object_labels", "object_scores", "boxes", "object_mask", "pairs", "pair_mask")
_OBJECT_KEYS += ("detection_labels", "detection_scores")


def multi_scorer(predict, variables, mesh, only=None) -> relation.MultiScorer:
    """``batch -> {ranking: (scores, labels, object_scores)}``, or in SGDet ``{ranking: the dict
    of relation.predict_outputs}`` over the model's detection pairs; ``only``: a ranking or a
    list."""
    from sgg_jax.train import shard_batch

    keep = None if only is None else ({only} if isinstance(only, str) else set(only))

    def scorers(batch):
        scores, objects = _to_numpy(predict(variables, shard_batch(batch, mesh)))
        scores = {r: s for r, s in scores.items() if keep is None or r in keep}
        if "boxes" in objects:  # SGDet: the model's detections and pairs
            return {r: {**objects, "predicate_scores": s} for r, s in scores.items()}
        labels, object_scores = objects["object_labels"], objects["object_scores"]
        return {r: (s, labels, object_scores) for r, s in scores.items()}

    return scorers


def _to_numpy(tree):
    """Numpy copies of this process's rows of a tree of device arrays."""
    from sgg_jax.train.mesh import process_local

    return process_local(tree)


def training_confusion(
    config: CCEScorerExperimentConfig,
    predict,
    variables,
    mesh,
    graphs,
    vocab,
    features,
    image_transform=None,
) -> np.ndarray:
    """Predicate confusion on the ground-truth pairs of ``graphs`` (report.predicate_confusion;
    PredCls / SGCls: the pairs are the ground truth's)."""
    from sgg_jax.evaluation import report

    predictions = relation.collect_predictions(
        multi_scorer(predict, variables, mesh, only="predicate"),
        graphs,
        vocab,
        config.data,
        object_features=features,
        image_transform=image_transform,
        object_buckets=config.eval_object_buckets,
    )["predicate"]
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


def _run_row(
    config: CCEScorerExperimentConfig, workdir: str, context, base, base_config, row, tables=None
):
    """Trains one row (or resumes / reuses it) and evaluates it on test; returns runs by key."""
    from sgg_jax.projects.cce_scorer.losses import make_cce_scorer_loss
    from sgg_jax.relation import motifs, penet
    from sgg_jax.train import TrainConfig, train

    data, vocab = config.data, context["vocab"]
    with_tables = {"motifs": motifs.with_tables, "penet": penet.with_tables}[base]
    model = _build_model(config, base, base_config, row)
    loss_config = config.loss_config(
        base, row, config.focal_class_weights_of(vocab.predicate_counts)
    )
    loss_fn = make_cce_scorer_loss(loss_config, base_config)
    rankings = config.rankings(row)  # ce / cce (the confusion matrices' rows): ["predicate"]
    predict = predict_fn(model, rankings)
    mesh, pixels = context["mesh"], context["pixels"]
    image_transform = None if pixels is None else pixels.transform

    def evaluate(variables, graphs, features, only, zeroshot=None):
        return relation.evaluate_scorers(
            multi_scorer(predict, variables, mesh, only=only),
            graphs,
            vocab,
            data,
            mode=data.task,
            zeroshot_triplets=zeroshot,
            object_features=features,
            image_transform=image_transform,
            object_buckets=config.eval_object_buckets,
        )

    eval_fn = None
    if config.eval_every:

        def eval_fn(state, step):
            metrics = evaluate(
                state.variables, context["val_graphs"], context["val_features"], rankings[0]
            )[rankings[0]]
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

    run_config = {
        "experiment": "cce_scorer",
        "dataset": data.dataset,
        "task": data.task,
        "base": base,
        "row": row,
        "loss": dataclasses.asdict(loss_config),
        "scorer": None if model.scorer_config is None else vars(model.scorer_config),
        "scorer_detach": model.detach_scorer_inputs,
        "rankings": rankings,
        "model": {k: v for k, v in vars(base_config).items() if not isinstance(v, np.ndarray)},
    }
    init_variables, pixel_options = None, {}
    if tables:
        init_variables = functools.partial(with_tables, scope="base", **tables)
    if pixels is not None:  # the pretrained detector under base/features/detector, then the tables
        run_config.update(pixels.source_config())
        pixel_options = pixels.train_options(context["splits"]["train"], context["loader"], "base")

        def init_variables(fresh):
            fresh = pixels.merge_detector(fresh, scope="base")
            return with_tables(fresh, scope="base", **tables) if tables else fresh

    start = time.perf_counter()
    state, last = train(
        model,
        loss_fn,
        context["loader"],
        workdir=os.path.join(workdir, base, row),
        train_config=TrainConfig(
            num_steps=config.num_steps,
            seed=data.seed,
            checkpoint_every=config.checkpoint_every,
            max_to_keep=config.keep_checkpoints,
            eval_every=config.eval_every,
            log_every=config.log_every,
            progress=config.progress,
            allow_config_change=config.data.allow_config_change,
        ),
        optim_config=config.optim,
        eval_fn=eval_fn,
        mesh=mesh,
        config=run_config,
        init_variables=init_variables,
        **pixel_options,
    )
    train_seconds = time.perf_counter() - start
    variables = state.variables
    start = time.perf_counter()
    metrics = evaluate(
        variables,
        context["splits"]["test"],
        context["features"]["test"],
        rankings,
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
    if config.confusion and row in ("ce", "cce") and data.task != "sgdet":
        graphs = context["splits"]["train"]
        features = context["features"]["train"]
        if config.confusion_images:
            graphs = graphs[: config.confusion_images]
            features = None if features is None else features[: config.confusion_images]
        confusion = training_confusion(
            config, predict, variables, mesh, graphs, vocab, features, image_transform
        )
    label = f"{BASE_LABELS[base]} {ROW_LABELS[row]}"
    print(
        f"{label}: trained {train_seconds:.0f} s, evaluated {eval_seconds:.0f} s; "
        + ", ".join(f"{c} {100 * metrics[rankings[0]][c]:.2f}" for c in ("R@100", "mR@100"))
    )
    return runs, timing, confusion


def run(config: CCEScorerExperimentConfig, workdir: str) -> dict[str, Any]:
    """Loads the data, trains and evaluates every (base model, row); writes results and figures.

    Returns:
      The ``results.json`` document.

    Raises:
      ConfigError: ``workdir`` is a file or cannot be written (checked before anything is loaded).
    """
    check_writable_dir(workdir, "workdir")
    splits, vocab = relation.load_splits(config.data)
    return run_rows(config, workdir, splits, vocab)


def run_rows(config: CCEScorerExperimentConfig, workdir: str, splits, vocab) -> dict[str, Any]:
    """:func:`run` on splits already loaded."""
    from sgg_jax.relation.frequency import FrequencyBaseline
    from sgg_jax.train import make_mesh

    data = config.data
    frequency = FrequencyBaseline.from_graphs(
        splits["train"], vocab.num_classes, vocab.num_predicates
    )
    features = relation.object_features_for(data, splits)
    val_graphs, val_features = splits["val"], features["val"]
    if data.eval_images:
        val_graphs = val_graphs[: data.eval_images]
        val_features = None if val_features is None else val_features[: data.eval_images]
    pixels = relation.PixelInputs(data) if data.feature_source == "roi" else None
    context = {
        "pixels": pixels,
        "splits": splits,
        "vocab": vocab,
        "features": features,
        "val_graphs": val_graphs,
        "val_features": val_features,
        "mesh": make_mesh(),
        "zeroshot": relation.zeroshot_for(data.dataset, splits),
        "loader": pipeline.make_loader(
            splits["train"],
            relation.train_pipeline_config(data, vocab),
            object_features=features["train"],
        ),
    }
    runs, timings, confusions = {}, {}, {}
    for base in config.base_models:
        base_config, tables = _base_config(config, base, vocab, frequency, pixels)
        for row in config.rows:
            row_runs, timing, confusion = _run_row(
                config, workdir, context, base, base_config, row, tables
            )
            runs.update(row_runs)
            timings[f"{base}/{row}"] = timing
            if confusion is not None:
                confusions[(base, row)] = confusion
    return _report(config, workdir, runs, timings, confusions, vocab, num_test=len(splits["test"]))


def _run_info(config: CCEScorerExperimentConfig, key: str) -> dict:
    """Row, ranking, Scorer training and table label of a run key ``<base>/<row>[/<ranking>]``."""
    _, row, *extra = key.split("/")
    has_scorer = ROW_SPECS[row][2] is not None
    ranking = extra[0] if extra else (config.ranking if has_scorer else "predicate")
    label = ROW_LABELS[row]
    if extra:
        label += f" [ranked by {RANKING_LABELS[ranking]}]"
    info = {"row": row, "ranking": ranking, "label": label}
    if has_scorer:
        info["scorer_detach"] = config.scorer_detach_of(row)
    return info


def _report(config, workdir, runs, timings, confusions, vocab, *, num_test):
    from sgg_jax.evaluation import report

    data = config.data
    plots = os.path.join(workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    deltas, confusion_scalars = {}, {}
    for base in config.base_models:
        ce = runs.get(f"{base}/ce")
        for row in config.rows:
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
                label=f"{BASE_LABELS[base]} +CCE+Scorer ({config.ranking})",
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
        workdir,
        experiment="cce_scorer",
        dataset=data.dataset,
        task=data.task,
        seed=data.seed,
        runs=runs,
    )
    resolved = config.loss_config(config.base_models[0], "cce")
    document["cce_scorer"] = {
        "ranking": config.ranking,
        "extra_rankings": [r for r in config.extra_rankings if r != config.ranking],
        "runs": {key: _run_info(config, key) for key in runs},
        "scorer_detach": config.scorer_detach,
        "cce_variant": resolved.cce_variant,
        "cce_background": resolved.background,
        "cce_negatives": resolved.cce_negatives,
        "lambda_cce": config.lambda_cce,
        "lambda_bce": config.lambda_bce,
        "lambda_focal": config.lambda_focal,
        "margin": config.margin,
        "gamma": config.gamma,
        "num_steps": config.num_steps,
        "model_size": config.model_size,
        "delta_vs_ce": deltas,
        "train_confusion": confusion_scalars,
        "timing": timings,
    }
    with open(os.path.join(workdir, "results.json"), "w") as handle:
        json.dump(document, handle, indent=2)

    sections = [
        f"# cce_scorer — {data.dataset}, {data.task}, seed {data.seed}, {num_test} test images\n",
        f"{config.num_steps} updates per row, model size {config.model_size}, CCE variant "
        f"`{resolved.cce_variant}` (background `{resolved.background}`); rows with the Scorer are "
        f"ranked by {RANKING_LABELS[config.ranking]} (rows `[ranked by ...]` otherwise: the same "
        "model under another ranking). Values in %.\n",
    ]
    for base in config.base_models:
        rows = {
            _run_info(config, key)["label"]: m
            for key, m in runs.items()
            if key.split("/")[0] == base
        }
        sections.append(f"## {BASE_LABELS[base]}\n")
        sections.append(report.metrics_table(rows, columns=TABLE_COLUMNS))
    text = "\n".join(sections)
    with open(os.path.join(workdir, "results.md"), "w") as handle:
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
    print(f"results: {os.path.join(workdir, 'results.json')}")
    return document
