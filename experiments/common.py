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
from sgg_jax.evaluation.collect import batch_predictions
from sgg_jax.structures import SceneGraph, SceneGraphBatch, Vocab

FLAGS = flags.FLAGS


def define_data_flags() -> None:
    """Dataset, task and budget flags (shared by every SGG experiment)."""
    flags.DEFINE_enum("dataset", "gqa200_mini", datasets.DATASETS, "Dataset to use.")
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
        "feature_source", "geometry", ["geometry", "precomputed"], "Object/union feature source."
    )
    flags.DEFINE_string(
        "object_features", None, "Precomputed object features .npz (feature_source=precomputed)."
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


def optim_config():
    """The :class:`sgg_jax.train.OptimConfig` of the flags of :func:`define_optim_flags`."""
    from sgg_jax.train import OptimConfig

    try:
        decay_steps = tuple(int(s) for s in FLAGS.decay_steps)
    except ValueError:
        raise ConfigError("decay_steps", f"expected integers, got {FLAGS.decay_steps}") from None
    return OptimConfig(
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay,
        warmup_steps=FLAGS.warmup_steps,
        warmup_factor=FLAGS.warmup_factor,
        decay_steps=decay_steps,
        clip_norm=FLAGS.clip_norm,
    )


def check_data_flags() -> None:
    """One-line ConfigErrors for bad values, before anything is loaded or compiled."""
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
    if FLAGS.task == "sgdet":
        raise ConfigError("task", "sgdet needs the detector and pixels; use predcls or sgcls")
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
) -> dict[str, Any]:
    """Runs ``scorer`` over every image of ``graphs`` and evaluates its predictions.

    Args:
      scorer: ``scorer(host_batch) -> (predicate_scores[B,P,C], object_labels[B,N] | None,
        object_scores[B,N] | None)`` as numpy arrays.
      graphs: the evaluated split.
      vocab: vocabulary (predicate names and train counts give the head/body/tail groups).
      mode: ``predcls`` or ``sgcls``.
      zeroshot_triplets: optional int[Z, 3] for zR@K.
      object_features: precomputed object features aligned with ``graphs``.

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
    )[""]


def evaluate_scorers(
    scorers: MultiScorer,
    graphs: Sequence[SceneGraph],
    vocab: Vocab,
    *,
    mode: str,
    zeroshot_triplets: np.ndarray | None = None,
    object_features: Sequence[np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_scorer` for several scorings of one pass (e.g. one model, several rankings).

    Args:
      scorers: ``scorers(host_batch) -> {name: (predicate_scores, object_labels, object_scores)}``
        with the same names for every batch.
      graphs, vocab, mode, zeroshot_triplets, object_features: as :func:`evaluate_scorer`.

    Returns:
      ``{name: metrics}``.
    """
    predictions: dict[str, dict[int, Any]] = {}
    loader = pipeline.make_loader(
        graphs, eval_pipeline_config(vocab), object_features=object_features
    )
    for batch in loader:
        for name, (scores, labels, object_scores) in scorers(batch).items():
            predictions.setdefault(name, {}).update(
                batch_predictions(graphs, batch, scores, labels, object_scores)
            )
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

    Args:
      model: the flax module (outputs follow the model contract).
      variables_fn: returns the current variables (e.g. of the train state).
      mesh: the device mesh.
      shard: ``shard(batch, mesh)`` placing a host batch on the mesh.
    """

    @jax.jit
    def predict(variables, batch):
        outputs, _ = model.apply(variables, batch, train=False)
        return (
            jax.nn.softmax(outputs["relation_logits"], axis=-1),
            outputs["object_labels"],
            outputs["object_scores"],
        )

    def scorer(batch: SceneGraphBatch):
        scores, labels, object_scores = predict(variables_fn(), shard(batch, mesh))
        return np.asarray(scores), np.asarray(labels), np.asarray(object_scores)

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
