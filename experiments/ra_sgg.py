"""RA-SGG: retrieval-augmented scene graph generation via multi-prototype learning.

``python -m experiments.ra_sgg --flagfile=experiments/flags/penet_gqa200_mini.flags``

Methods (``--method``):

* ``penet`` — phase 1 of RA-SGG: the PE-Net base model (Zheng et al., CVPR 2023) trained on the
  device mesh with checkpoints (auto-resume from ``--workdir``), periodic evaluation on val, a final
  evaluation on test next to the frequency baseline (FREQ: the predicate distribution of the
  (subject class, object class) pair in the training split), ``results.json`` / ``results.md``, plots
  and an export of the predict function (``<workdir>/export``, loadable with
  ``sgg_jax.load_exported``).
* ``data`` — the data stage only: load the splits, run one pass of the input pipeline over each,
  print a summary and write ``data_summary.json``.

The retrieval-augmented phase 2 (memory bank, label-inconsistency selection, inverse-propensity
augmentation) builds on the phase-1 checkpoint and is not part of this version.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from experiments import common
from sgg_jax.data import pipeline
from sgg_jax.data.summary import (
    format_predicate_histogram,
    format_splits,
    summarize_split,
    text_table,
)
from sgg_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS
common.define_data_flags()
flags.DEFINE_enum("method", "penet", ["penet", "data"], "What to run.")
flags.DEFINE_enum("model_size", "small", ["small", "official"], "PE-Net sizes.")
flags.DEFINE_string("glove", None, "GloVe text file to initialise the word embeddings.")
flags.DEFINE_bool(
    "bundled_predicate_vectors",
    False,
    "Initialise predicate embeddings from the bundled 300-d GloVe vectors of the VG150 predicates "
    "(names not among them get seeded random vectors). Ignored when --glove is given.",
)
flags.DEFINE_bool(
    "frequency_bias",
    True,
    "Add the training split's log predicate frequencies of each (subject, object) class pair to the "
    "logits at inference (official PE-Net, PREDICT_USE_BIAS).",
)
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-3, "Base learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay.")
flags.DEFINE_integer("warmup_steps", 500, "Linear warmup updates.")
flags.DEFINE_float("warmup_factor", 0.1, "Learning-rate factor at step 0.")
flags.DEFINE_list("decay_steps", [], "Milestones where the learning rate is multiplied by 0.1.")
flags.DEFINE_float("clip_norm", 5.0, "Global-norm gradient clipping (0 = off).")
flags.DEFINE_integer("num_steps", 1000, "Training updates.")
flags.DEFINE_integer("eval_every", 0, "Evaluate on val every N updates (0 = only at the end).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every N updates (and at the end).")
flags.DEFINE_integer("keep_checkpoints", 2, "Newest checkpoints kept.")
flags.DEFINE_integer("log_every", 20, "Write training metrics every N updates.")
flags.DEFINE_bool("export", True, "Export the predict function at the end.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


# ----------------------------------------------------------------------------------------------
# Data stage
# ----------------------------------------------------------------------------------------------


def _one_pass(graphs, config: pipeline.PipelineConfig) -> dict:
    loader = pipeline.make_loader(graphs, config)
    start = time.perf_counter()
    totals = dict(batches=0, images=0, pairs=0, foreground_pairs=0)
    totals.update(truncated_objects=0, truncated_pairs=0)
    for batch in loader.iter_from(0):
        totals["batches"] += 1
        totals["images"] += int(batch.graph_mask.sum())
        totals["pairs"] += int(batch.pair_mask.sum())
        totals["foreground_pairs"] += int((batch.pair_labels > 0).sum())
        totals["truncated_objects"] += int(batch.num_truncated_objects.sum())
        totals["truncated_pairs"] += int(batch.num_truncated_pairs.sum())
        if totals["batches"] == loader.num_batches_per_epoch:
            break
    totals["images_per_second"] = totals["images"] / max(time.perf_counter() - start, 1e-9)
    return totals


def run_data_stage(splits, vocab) -> dict:
    """Summarises the splits and one pipeline pass each; writes ``data_summary.json``."""
    summary = {"dataset": FLAGS.dataset, "task": FLAGS.task, "seed": FLAGS.seed, "splits": {}}
    split_summaries = []
    for split, graphs in splits.items():
        split_summaries.append(summarize_split(split, graphs, vocab))
        if split == "train":
            config = common.train_pipeline_config(vocab, num_epochs=1)
        else:
            config = common.eval_pipeline_config(vocab)
        summary["splits"][split] = {
            **split_summaries[-1].to_json(),
            "pipeline": _one_pass(graphs, config),
        }
    print(f"{FLAGS.dataset} ({FLAGS.task})")
    print("\n".join(format_splits(split_summaries, with_report=False)))
    print()
    print("\n".join(format_predicate_histogram(split_summaries, vocab.predicate_names, top_k=5)))
    print()
    rows = [
        ["split", "batches", "images", "pairs", "fg_pairs", "trunc_obj", "trunc_pairs", "img/s"]
    ]
    for split, values in summary["splits"].items():
        run = values["pipeline"]
        rows.append(
            [split]
            + [str(run[k]) for k in ("batches", "images", "pairs", "foreground_pairs")]
            + [str(run["truncated_objects"]), str(run["truncated_pairs"])]
            + [f"{run['images_per_second']:.0f}"]
        )
    print("input pipeline, one pass per split:")
    print("\n".join(text_table(rows)))
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, "data_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"Data stage done; summary in {os.path.join(FLAGS.workdir, 'data_summary.json')}.")
    return summary


# ----------------------------------------------------------------------------------------------
# PE-Net (phase 1)
# ----------------------------------------------------------------------------------------------


def _optim_config():
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


def _model_config(vocab, frequency=None):
    from sgg_jax.models.penet import PENetConfig

    vectors = {}
    if frequency is not None:
        vectors["frequency_bias"] = frequency.log_bias
    if FLAGS.glove:
        from sgg_jax.data import word_vectors

        for field, names in (
            ("object_word_vectors", vocab.object_names),
            ("predicate_word_vectors", vocab.predicate_names),
        ):
            table, report = word_vectors.glove_name_vectors(FLAGS.glove, names, seed=FLAGS.seed)
            vectors[field] = table
            print(f"{field}: {report.num_missing} of {report.num_words} words not in {FLAGS.glove}")
    if not FLAGS.glove and FLAGS.bundled_predicate_vectors:
        from sgg_jax.data import word_vectors

        table = word_vectors.load_bundled_predicate_vectors(300)
        rng = np.random.default_rng(FLAGS.seed)
        known = np.stack(list(table.values()))
        rows, missing = [], []
        for name in vocab.predicate_names:
            if name in table:
                rows.append(table[name])
            else:
                missing.append(name)
                rows.append(rng.normal(0.0, known.std(), 300).astype(np.float32))
        vectors["predicate_word_vectors"] = np.stack(rows)
        print(
            f"predicate_word_vectors: {len(missing)} of {len(rows)} names not in the bundled table"
        )
    make = PENetConfig.small if FLAGS.model_size == "small" else PENetConfig.official
    return make(
        vocab.num_classes,
        vocab.num_predicates,
        task=FLAGS.task,
        feature_source=FLAGS.feature_source,
        **vectors,
    )


def run_penet(splits, vocab) -> dict:
    """Trains PE-Net, evaluates it and the FREQ baseline on test, writes results and the export."""
    from sgg_jax.evaluation import report
    from sgg_jax.losses import make_penet_loss
    from sgg_jax.models.frequency import FrequencyBaseline
    from sgg_jax.models.penet import PENet
    from sgg_jax.train import TrainConfig, make_mesh, shard_batch, train
    from sgg_jax.train.export import export

    optim_config = _optim_config()
    train_config = TrainConfig(
        num_steps=FLAGS.num_steps,
        seed=FLAGS.seed,
        checkpoint_every=FLAGS.checkpoint_every,
        max_to_keep=FLAGS.keep_checkpoints,
        eval_every=FLAGS.eval_every,
        log_every=FLAGS.log_every,
        progress=FLAGS.progress,
    )
    frequency = FrequencyBaseline.from_graphs(
        splits["train"], vocab.num_classes, vocab.num_predicates
    )
    model_config = _model_config(vocab, frequency if FLAGS.frequency_bias else None)
    model = PENet(model_config)
    loss_fn = make_penet_loss(model_config)
    mesh = make_mesh()
    features = common.object_features_for(splits)
    loader = pipeline.make_loader(
        splits["train"], common.train_pipeline_config(vocab), object_features=features["train"]
    )
    val_graphs, val_features = splits["val"], features["val"]
    if FLAGS.eval_images:
        val_graphs = val_graphs[: FLAGS.eval_images]
        val_features = None if val_features is None else val_features[: FLAGS.eval_images]
    state_holder = {}

    def eval_fn(state, step):
        state_holder["state"] = state
        scorer = common.model_scorer(
            model, lambda: state_holder["state"].variables, mesh, shard_batch
        )
        metrics = common.evaluate_scorer(
            scorer, val_graphs, vocab, mode=FLAGS.task, object_features=val_features
        )
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    run_config = {
        "experiment": "ra_sgg",
        "method": "penet",
        "dataset": FLAGS.dataset,
        "task": FLAGS.task,
        "model": {k: v for k, v in vars(model_config).items() if not isinstance(v, np.ndarray)},
    }
    state, last = train(
        model,
        loss_fn,
        loader,
        workdir=FLAGS.workdir,
        train_config=train_config,
        optim_config=optim_config,
        eval_fn=eval_fn,
        mesh=mesh,
        config=run_config,
    )
    zeroshot_triplets = common.zeroshot_for(splits)
    scorer = common.model_scorer(model, lambda: state.variables, mesh, shard_batch)
    penet_metrics = common.evaluate_scorer(
        scorer,
        splits["test"],
        vocab,
        mode=FLAGS.task,
        zeroshot_triplets=zeroshot_triplets,
        object_features=features["test"],
    )
    frequency_metrics = common.evaluate_scorer(
        lambda batch: (frequency.predict_batch(batch), None, None),
        splits["test"],
        vocab,
        mode="predcls",
        zeroshot_triplets=zeroshot_triplets,
    )
    runs = {"FREQ (predcls)": frequency_metrics, "PE-Net": penet_metrics}
    report.write_results(
        FLAGS.workdir,
        experiment="ra_sgg",
        dataset=FLAGS.dataset,
        task=FLAGS.task,
        seed=FLAGS.seed,
        runs=runs,
    )
    columns = [f"{m}@{k}" for m in ("R", "mR", "F") for k in (20, 50, 100)]
    columns += ["mR@all", "zR@100", "ngR@100", "ngmR@100"]
    columns = [c for c in columns if c in penet_metrics]
    print(f"\n{FLAGS.dataset} test, {FLAGS.task}, {len(splits['test'])} images (values in %):")
    print(report.metrics_table(runs, columns=columns), end="")
    plots = os.path.join(FLAGS.workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    report.plot_per_predicate_recall(
        os.path.join(plots, "per_predicate_recall.png"),
        penet_metrics["per_predicate_R@100"],
        vocab.predicate_names,
        vocab.predicate_counts,
        baseline=frequency_metrics["per_predicate_R@100"],
        label="PE-Net",
        baseline_label="FREQ",
        num_images=penet_metrics["per_predicate_num_images"],
    )
    if FLAGS.export:
        example_loader = pipeline.make_loader(
            splits["test"], common.eval_pipeline_config(vocab), object_features=features["test"]
        )
        example = next(iter(example_loader))

        def predict_fn(variables, batch):
            import jax

            outputs, _ = model.apply(variables, batch, train=False)
            return {
                "predicate_scores": jax.nn.softmax(outputs["relation_logits"], axis=-1),
                "object_labels": outputs["object_labels"],
                "object_scores": outputs["object_scores"],
            }

        path = export(
            state,
            predict_fn,
            example,
            config=run_config,
            out_dir=os.path.join(FLAGS.workdir, "export"),
        )
        print(f"exported the predict function to {path}")
    print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}")
    return {"runs": runs, "last_train_metrics": last}


def main(argv):
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the console
    if len(argv) > 1:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        common.check_data_flags()
        if FLAGS.method == "penet":
            _optim_config()  # validates the optimizer flags before any data or compile
            if FLAGS.num_steps <= 0:
                raise ConfigError("num_steps", f"must be positive, got {FLAGS.num_steps}")
        if FLAGS.distributed:
            from sgg_jax.train import initialize_distributed

            initialize_distributed(True)
        splits, vocab = common.load_splits()
        if FLAGS.method == "data":
            run_data_stage(splits, vocab)
        else:
            run_penet(splits, vocab)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
