"""RA-SGG: retrieval-augmented scene graph generation via multi-prototype learning.

``python -m experiments.ra_sgg --flagfile=experiments/flags/ra_sgg_gqa200_mini.flags``

Methods (``--method``):

* ``ra_sgg`` — the full method (Yoon et al., "RA-SGG", AAAI 2025): phase 1 trains PE-Net as below;
  phase 2 continues from it with a memory bank of every annotated training relation (searched with
  ScaNN or exactly, refreshed every ``--bank_refresh_steps``), label-inconsistency selection,
  inverse-propensity augmentation of tail predicates and the multi-prototype loss
  (``sgg_jax.retrieval.ra_sgg``). ``--ablations`` trains the variants without selection, without
  inverse-propensity weighting and a same-length PE-Net continuation (the control), and every
  variant is evaluated on test next to PE-Net and FREQ.
* ``penet`` — phase 1 of RA-SGG alone: the PE-Net base model (Zheng et al., CVPR 2023) trained on the
  device mesh with checkpoints (auto-resume from ``--workdir``), periodic evaluation on val, a final
  evaluation on test next to the frequency baseline (FREQ: the predicate distribution of the
  (subject class, object class) pair in the training split), ``results.json`` / ``results.md``, plots
  and an export of the predict function (``<workdir>/export``, loadable with
  ``sgg_jax.load_exported``).
* ``data`` — the data stage only: load the splits, run one pass of the input pipeline over each,
  print a summary and write ``data_summary.json``.
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
from sgg_jax.data.summary import (
    format_predicate_histogram,
    format_splits,
    summarize_split,
    text_table,
)
from sgg_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS
common.define_data_flags()
flags.DEFINE_enum("method", "penet", ["ra_sgg", "penet", "data"], "What to run.")
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
    False,
    "Add the training split's log predicate frequencies of each (subject, object) class pair to the "
    "logits at inference (PREDICT_USE_BIAS; off in the official PE-Net and RA-SGG code).",
)
common.define_optim_flags(learning_rate=1e-3)
flags.DEFINE_integer("num_steps", 1000, "Training updates.")
flags.DEFINE_integer("eval_every", 0, "Evaluate on val every N updates (0 = only at the end).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every N updates (and at the end).")
flags.DEFINE_integer("keep_checkpoints", 2, "Newest checkpoints kept.")
flags.DEFINE_integer("log_every", 20, "Write training metrics every N updates.")
flags.DEFINE_bool("export", True, "Export the predict function at the end.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
# RA-SGG phase 2 (--method=ra_sgg)
flags.DEFINE_integer("phase2_steps", 2000, "Phase-2 updates, starting from the phase-1 model.")
flags.DEFINE_float("phase2_learning_rate", None, "Phase-2 learning rate (default --learning_rate).")
flags.DEFINE_integer("phase2_warmup_steps", 0, "Phase-2 linear warmup updates.")
flags.DEFINE_integer(
    "phase2_batch_size", None, "Phase-2 images per batch (default --batch_size; official: 6)."
)
flags.DEFINE_string(
    "variant",
    "paper",
    "RA-SGG rule: the paper's equations (label inconsistency, inverse propensity) or the official "
    "code's (confidence threshold, tail set, class-balanced sampling, background relabelling).",
)
flags.DEFINE_float("threshold", 0.3, "Official variant: confidence < threshold may change a label.")
flags.DEFINE_list(
    "tail_ids",
    [],
    "Official variant: tail predicate ids (default: the official list of VG150 / GQA-200, else the "
    "rarest --tail_fraction of predicates).",
)
flags.DEFINE_float("tail_fraction", 1 / 3, "Tail = the rarest fraction of predicates (no list).")
flags.DEFINE_string(
    "bank",
    "full",
    "Memory bank: every training relation, refreshed every --bank_refresh_steps ('full'), or the "
    "official one: built once from the phase-1 model, --memory_size entries per triplet.",
)
flags.DEFINE_integer("memory_size", 8, "Official bank: entries kept per triplet (MEMORY_SIZE).")
flags.DEFINE_integer(
    "scann_brute_force_threshold",
    2000,
    "Banks smaller than this are searched by brute force inside ScaNN; larger ones train a tree.",
)
flags.DEFINE_list("phase2_decay_steps", [], "Phase-2 milestones (learning rate x 0.1).")
flags.DEFINE_integer("num_neighbours", 20, "K relations retrieved (paper: 20 PredCls, 10 SGCls).")
flags.DEFINE_float("tau", 0.5, "Label-inconsistency threshold: d >= tau selects a candidate.")
flags.DEFINE_bool("no_selection", False, "Ablation: augment every foreground relation.")
flags.DEFINE_bool("no_ipss", False, "Ablation: sample from the raw retrieved histogram.")
flags.DEFINE_enum(
    "weighting",
    None,
    ["inverse_propensity", "class_balanced", "uniform"],
    "Sampling weights of the augmented predicate (default: inverse_propensity with "
    "--variant=paper, class_balanced with --variant=official).",
)
flags.DEFINE_bool("tail_only", False, "Only relabel toward rarer predicates (official code).")
flags.DEFINE_bool(
    "relabel_background", False, "Relabel one background pair per image (official code)."
)
flags.DEFINE_enum("lambda_mode", "beta", ["beta", "fixed"], "lambda ~ Beta(20, 5) or fixed.")
flags.DEFINE_float("lambda_value", 0.8, "lambda with --lambda_mode=fixed.")
flags.DEFINE_integer("bank_refresh_steps", 0, "Rebuild the memory bank every N updates (0: never).")
flags.DEFINE_enum("retrieval_backend", "scann", ["scann", "exact"], "Memory-bank search backend.")
flags.DEFINE_list(
    "ablations",
    [],
    "Extra phase-2 runs: paper / official (the other RA-SGG variant), no_selection, no_ipss, "
    "continue_penet (plain PE-Net).",
)


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


def _model_config(vocab, frequency=None, pixels=None):
    """The PE-Net config and the tables ``penet.with_tables`` puts into its fresh variables."""
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
    if pixels is not None:
        vectors.update(
            detector=pixels.detector,
            freeze_detector=FLAGS.freeze_detector,
            sgdet=common.sgdet_config(),
        )
    names = ("object_word_vectors", "predicate_word_vectors", "frequency_bias")
    tables = {name: vectors.pop(name) for name in names if name in vectors}
    for table in (tables.get("object_word_vectors"), tables.get("predicate_word_vectors")):
        if table is not None:
            vectors["embed_dim"] = int(np.shape(table)[-1])
    make = PENetConfig.small if FLAGS.model_size == "small" else PENetConfig.official
    config = make(
        vocab.num_classes,
        vocab.num_predicates,
        task=FLAGS.task,
        feature_source=FLAGS.feature_source,
        frequency_bias="frequency_bias" in tables,
        **vectors,
    )
    return config, tables


class _Experiment:
    """What every phase of a run shares: data, model, loaders, mesh, evaluation."""

    def __init__(self, splits, vocab):
        from sgg_jax.models.frequency import FrequencyBaseline
        from sgg_jax.models.penet import PENet
        from sgg_jax.train import make_mesh

        self.splits, self.vocab = splits, vocab
        self.frequency = FrequencyBaseline.from_graphs(
            splits["train"], vocab.num_classes, vocab.num_predicates
        )
        self.pixels = common.PixelInputs() if FLAGS.feature_source == "roi" else None
        self.model_config, self.tables = _model_config(
            vocab, self.frequency if FLAGS.frequency_bias else None, self.pixels
        )
        self.model = PENet(self.model_config)
        self.mesh = make_mesh()
        self.features = common.object_features_for(splits)
        self.loader = pipeline.make_loader(
            splits["train"],
            common.train_pipeline_config(vocab),
            object_features=self.features["train"],
        )
        self.image_transform = self.pixels.transform if self.pixels is not None else None
        self.val_graphs, self.val_features = splits["val"], self.features["val"]
        if FLAGS.eval_images:
            self.val_graphs = self.val_graphs[: FLAGS.eval_images]
            if self.val_features is not None:
                self.val_features = self.val_features[: FLAGS.eval_images]
        self.zeroshot_triplets = common.zeroshot_for(splits)
        self.true_test, self.planted_tail = None, None
        if FLAGS.dataset == "synthetic":
            self.true_test, self.planted_tail = _synthetic_truth(splits["test"])
        self.run_config = {
            "experiment": "ra_sgg",
            "method": FLAGS.method,
            "dataset": FLAGS.dataset,
            "task": FLAGS.task,
            "model": {
                k: v for k, v in vars(self.model_config).items() if not isinstance(v, np.ndarray)
            },
        }
        if self.pixels is not None:
            self.run_config["detector_workdir"] = os.path.abspath(FLAGS.detector_workdir)

    def fresh_variables(self, variables):
        """Fresh variables with the pretrained detector (feature_source=roi) and the tables."""
        from sgg_jax.models.penet import with_tables

        if self.pixels is not None:
            variables = self.pixels.merge_detector(variables)
        return with_tables(variables, **self.tables)

    def scorer(self, variables_fn):
        from sgg_jax.train import shard_batch

        return common.model_scorer(self.model, variables_fn, self.mesh, shard_batch)

    def train_phase(
        self,
        workdir,
        *,
        num_steps,
        optim_config,
        loss_fn,
        batch_transform=None,
        init_variables=None,
        extra_config=None,
        loader=None,
    ):
        """Trains (or resumes) one phase in ``workdir``; periodic evaluation on val."""
        from sgg_jax.train import TrainConfig, train

        train_config = TrainConfig(
            num_steps=num_steps,
            seed=FLAGS.seed,
            checkpoint_every=FLAGS.checkpoint_every,
            max_to_keep=FLAGS.keep_checkpoints,
            eval_every=FLAGS.eval_every,
            log_every=FLAGS.log_every,
            progress=FLAGS.progress,
        )
        holder = {}

        def eval_fn(state, step):
            holder["state"] = state
            metrics = common.evaluate_scorer(
                self.scorer(lambda: holder["state"].variables),
                self.val_graphs,
                self.vocab,
                mode=FLAGS.task,
                object_features=self.val_features,
                image_transform=self.image_transform,
            )
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

        pixel_options = {}
        if self.pixels is not None:
            from sgg_jax.models.features import relation_trainable_mask

            if batch_transform is not None:
                raise ConfigError("feature_source", "'roi' takes no other batch transform")
            batch_transform = self.pixels.transform(self.splits["train"])
            pixel_options = dict(
                example_batch=self.pixels.example_batch(self.splits["train"], self.loader),
                trainable=relation_trainable_mask(
                    self.model_config.detector, self.model_config.freeze_detector
                ),
            )
        if init_variables is None and (self.tables or self.pixels is not None):
            init_variables = self.fresh_variables
        state, last = train(
            self.model,
            loss_fn,
            loader or self.loader,
            workdir=workdir,
            train_config=train_config,
            optim_config=optim_config,
            eval_fn=eval_fn,
            mesh=self.mesh,
            config={**self.run_config, **(extra_config or {})},
            batch_transform=batch_transform,
            init_variables=init_variables,
            **pixel_options,
        )
        return state, last

    def test_metrics(self, variables):
        return self._with_truth(self.scorer(lambda: variables))

    def _with_truth(self, scorer, mode=None):
        """Test metrics; on synthetic data also against the TRUE predicates (see below)."""
        mode = mode or FLAGS.task
        metrics = common.evaluate_scorer(
            scorer,
            self.splits["test"],
            self.vocab,
            mode=mode,
            zeroshot_triplets=self.zeroshot_triplets,
            object_features=self.features["test"],
            image_transform=self.image_transform if mode == FLAGS.task else None,
        )
        if self.true_test is not None:
            truth = common.evaluate_scorer(
                scorer, self.true_test, self.vocab, mode=mode, object_features=None
            )
            recalls = np.asarray(truth["per_predicate_R@100"], np.float64)
            present = np.asarray(truth["per_predicate_num_images"]) > 0
            tail = np.zeros_like(present)
            tail[np.asarray(self.planted_tail) - 1] = True
            metrics["true_R@100"] = truth["R@100"]
            metrics["true_mR@100"] = truth["mR@100"]
            metrics["planted_tail_R@100"] = float(recalls[tail & present].mean())
        return metrics

    def frequency_metrics(self):
        return self._with_truth(
            lambda batch: (self.frequency.predict_batch(batch), None, None), mode="predcls"
        )

    def export(self, state):
        from sgg_jax.train.export import export

        example_loader = pipeline.make_loader(
            self.splits["test"],
            common.eval_pipeline_config(self.vocab),
            object_features=self.features["test"],
        )
        example = next(iter(example_loader))
        config = {
            **self.run_config,
            "vocab": {
                "object_names": list(self.vocab.object_names),
                "predicate_names": list(self.vocab.predicate_names),
            },
        }
        if self.pixels is not None:
            example, _ = self.pixels.transform(self.splits["test"])(None, 0, example)
            config["image_transform"] = self.pixels.transform_config()
        path = export(
            state,
            common.predict_outputs(self.model),
            example,
            config=config,
            out_dir=os.path.join(FLAGS.workdir, "export"),
        )
        print(f"exported the predict function to {path}")


_COLUMNS = [f"{m}@{k}" for m in ("R", "mR", "F") for k in (20, 50, 100)]
_COLUMNS += ["mR@all", "zR@100", "ngR@100", "ngmR@100"]
_COLUMNS += ["true_R@100", "true_mR@100", "planted_tail_R@100"]


def _synthetic_truth(test_graphs):
    """Synthetic test graphs relabelled with their TRUE predicates, and the planted tail predicates.

    The synthetic annotator records a group's head predicate ("on") for many relations whose true
    predicate is a tail member of the group ("parked on"); the truth is known. ``true_*`` metrics
    evaluate the same predictions against the true predicates, and ``planted_tail_R@100`` is the
    mean per-predicate R@100 (against the truth) over the non-head members of the ambiguity groups
    present in the test split: the recall RA-SGG's augmentation is meant to raise.
    """
    from sgg_jax.data import synthetic

    parts = synthetic.train_val_test(
        synthetic.generate(
            synthetic.SyntheticConfig(
                num_images=FLAGS.synthetic_images, seed=FLAGS.seed, **common.synthetic_options()
            )
        )
    )
    test = parts[2]
    if [g.image_id for g in test.graphs] != [g.image_id for g in test_graphs]:
        raise DataError("synthetic test split differs from the loaded one", field="image_id")
    true_graphs = []
    for graph, true in zip(test.graphs, test.true_predicates, strict=True):
        relations = graph.relations.copy()
        relations[:, 2] = true
        true_graphs.append(graph.replace(relations=relations))
    planted = sorted(p for group in test.groups if len(group) > 1 for p in group[1:])
    return true_graphs, planted


def _report(experiment, runs, *, model_name, baseline_name, extra=None):
    """results.json / results.md, the printed table and the per-predicate recall plot."""
    from sgg_jax.evaluation import report

    document = report.write_results(
        FLAGS.workdir,
        experiment="ra_sgg",
        dataset=FLAGS.dataset,
        task=FLAGS.task,
        seed=FLAGS.seed,
        runs=runs,
    )
    if extra:
        document.update(extra)
        with open(os.path.join(FLAGS.workdir, "results.json"), "w") as handle:
            json.dump(document, handle, indent=2)
    model_metrics = runs[model_name]
    columns = [c for c in _COLUMNS if c in model_metrics]
    num_images = len(experiment.splits["test"])
    print(f"\n{FLAGS.dataset} test, {FLAGS.task}, {num_images} images (values in %):")
    print(report.metrics_table(runs, columns=columns), end="")
    plots = os.path.join(FLAGS.workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    report.plot_per_predicate_recall(
        os.path.join(plots, "per_predicate_recall.png"),
        model_metrics["per_predicate_R@100"],
        experiment.vocab.predicate_names,
        experiment.vocab.predicate_counts,
        baseline=runs[baseline_name]["per_predicate_R@100"],
        label=model_name,
        baseline_label=baseline_name,
        num_images=model_metrics["per_predicate_num_images"],
    )
    print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}")
    return document


def run_penet(splits, vocab) -> dict:
    """Trains PE-Net, evaluates it and the FREQ baseline on test, writes results and the export."""
    from sgg_jax.losses import make_penet_loss

    experiment = _Experiment(splits, vocab)
    state, last = experiment.train_phase(
        FLAGS.workdir,
        num_steps=FLAGS.num_steps,
        optim_config=common.optim_config(),
        loss_fn=make_penet_loss(experiment.model_config),
    )
    runs = {"FREQ (predcls)": experiment.frequency_metrics()}
    runs["PE-Net"] = experiment.test_metrics(state.variables)
    _report(experiment, runs, model_name="PE-Net", baseline_name="FREQ (predcls)")
    if FLAGS.export:
        experiment.export(state)
    return {"runs": runs, "last_train_metrics": last}


# ----------------------------------------------------------------------------------------------
# RA-SGG (phase 1 = PE-Net, phase 2 = retrieval-augmented multi-prototype learning)
# ----------------------------------------------------------------------------------------------

_VARIANTS = {
    # name -> (label in the results, RASGGConfig overrides, retrieval on)
    "ra_sgg": ("RA-SGG", {}, True),
    "paper": ("RA-SGG (paper)", {"variant": "paper"}, True),
    "official": ("RA-SGG (official)", {"variant": "official"}, True),
    "no_selection": ("RA-SGG w/o selection", {"select": False}, True),
    "no_ipss": ("RA-SGG w/o IPSS", {"weighting": "uniform"}, True),
    "continue_penet": ("PE-Net continued", {}, False),
}
# Banks of the variants: the paper's is the full refreshed bank, the official code's the capped one
# (--bank sets the bank of the main run and its ablations).
_VARIANT_BANKS = {"paper": "full", "official": "official"}
# Datasets whose number of predicates is known before loading (for --tail_ids checks).
_KNOWN_PREDICATES = {"vg150": 50, "gqa200": 100, "gqa200_mini": 100}


def _ra_config(**overrides):
    from sgg_jax.retrieval.ra_sgg import RASGGConfig
    from sgg_jax.retrieval.tail_sets import official_tail_ids

    variant = overrides.pop("variant", FLAGS.variant)
    if variant not in _VARIANT_BANKS:
        raise ConfigError("variant", f"must be one of {tuple(_VARIANT_BANKS)}, got {variant!r}")
    weighting = FLAGS.weighting or (
        "class_balanced" if variant == "official" else "inverse_propensity"
    )
    if FLAGS.no_ipss:
        weighting = "uniform"
    try:
        tail_ids = tuple(int(i) for i in FLAGS.tail_ids) or official_tail_ids(FLAGS.dataset)
    except ValueError:
        raise ConfigError("tail_ids", f"expected integers, got {FLAGS.tail_ids}") from None
    if FLAGS.tail_ids and not tail_ids:
        raise ConfigError("tail_ids", "the tail set is empty")
    options = dict(
        num_neighbours=FLAGS.num_neighbours,
        tau=FLAGS.tau,
        select=not FLAGS.no_selection,
        weighting=weighting,
        tail_only=FLAGS.tail_only,
        relabel_background=FLAGS.relabel_background,
        lambda_mode=FLAGS.lambda_mode,
        lambda_value=FLAGS.lambda_value,
        bank_refresh_steps=FLAGS.bank_refresh_steps,
        seed=FLAGS.seed,
        variant=variant,
        threshold=FLAGS.threshold,
        tail_ids=tail_ids,
        tail_fraction=FLAGS.tail_fraction,
        bank=FLAGS.bank if variant == FLAGS.variant else _VARIANT_BANKS[variant],
        memory_size=FLAGS.memory_size,
    )
    options.update(overrides)
    return RASGGConfig(**options)


def _phase2_optim_config():
    config = common.optim_config()
    rate = FLAGS.phase2_learning_rate or config.learning_rate
    try:
        decay_steps = tuple(int(s) for s in FLAGS.phase2_decay_steps)
    except ValueError:
        raise ConfigError(
            "phase2_decay_steps", f"expected integers, got {FLAGS.phase2_decay_steps}"
        ) from None
    return dataclasses.replace(
        config,
        learning_rate=rate,
        warmup_steps=FLAGS.phase2_warmup_steps,
        decay_steps=decay_steps,
        images_per_batch=FLAGS.phase2_batch_size or config.images_per_batch,
    )


def _check_ra_flags():
    if FLAGS.feature_source == "roi":
        raise ConfigError(
            "method",
            "ra_sgg's memory bank embeds ground-truth relations without pixels: use "
            "--method=penet with --feature_source=roi",
        )
    for name in ("", "paper", "official"):
        config = _ra_config(**({"variant": name} if name else {}))  # validates the options
    if config.tail_ids is not None and FLAGS.dataset in _KNOWN_PREDICATES:
        from sgg_jax.retrieval.augment import check_tail_ids

        check_tail_ids(config.tail_ids, _KNOWN_PREDICATES[FLAGS.dataset])
    if FLAGS.phase2_batch_size is not None and FLAGS.phase2_batch_size < 1:
        raise ConfigError(
            "phase2_batch_size", f"must be an integer >= 1, got {FLAGS.phase2_batch_size}"
        )
    if FLAGS.scann_brute_force_threshold < 0:
        raise ConfigError(
            "scann_brute_force_threshold", f"must be >= 0, got {FLAGS.scann_brute_force_threshold}"
        )
    _phase2_optim_config()
    if FLAGS.phase2_steps <= 0:
        raise ConfigError("phase2_steps", f"must be positive, got {FLAGS.phase2_steps}")
    unknown = sorted(set(FLAGS.ablations) - (set(_VARIANTS) - {"ra_sgg"}))
    if unknown:
        raise ConfigError(
            "ablations",
            f"unknown {unknown}; expected some of {sorted(set(_VARIANTS) - {'ra_sgg'})}",
        )


def run_ra_sgg(splits, vocab) -> dict:
    """Phase 1 (PE-Net), phase 2 (RA-SGG) and the requested ablations, all evaluated on test."""
    from sgg_jax.losses import make_penet_loss
    from sgg_jax.retrieval.memory_bank import MemoryBank
    from sgg_jax.retrieval.ra_sgg import RetrievalAugmenter, make_embed_fn, make_train_embed_fn
    from sgg_jax.train import shard_batch

    experiment = _Experiment(splits, vocab)
    phase1_state, _ = experiment.train_phase(
        os.path.join(FLAGS.workdir, "phase1"),
        num_steps=FLAGS.num_steps,
        optim_config=common.optim_config(),
        loss_fn=make_penet_loss(experiment.model_config),
    )
    phase1_variables = phase1_state.variables
    runs = {"FREQ (predcls)": experiment.frequency_metrics()}
    runs["PE-Net"] = experiment.test_metrics(phase1_variables)
    embed = make_embed_fn(experiment.model, experiment.mesh, shard_batch)
    train_embed = make_train_embed_fn(experiment.model, experiment.mesh, shard_batch)
    banks = {}

    def bank_of(kind):
        if kind not in banks:
            options = {}
            if FLAGS.retrieval_backend == "scann":
                options["brute_force_threshold"] = FLAGS.scann_brute_force_threshold
            bank = MemoryBank(
                splits["train"],
                max_objects=FLAGS.max_objects,
                num_predicates=vocab.num_predicates,
                backend=FLAGS.retrieval_backend,
                index_options=options,
                batch_size=FLAGS.eval_batch_size,
                object_features=experiment.features["train"],
                max_per_triplet=FLAGS.memory_size if kind == "official" else None,
                cap_seed=FLAGS.seed,
            )
            if kind == "official":  # built once from the phase-1 model in eval mode
                bank.refresh(lambda b: embed(phase1_variables, b))
                print(
                    f"official memory bank: {bank.size} of {bank.num_relations} training "
                    f"relations (at most {FLAGS.memory_size} per triplet), never refreshed"
                )
            else:
                print(f"memory bank: {bank.size} training relations")
            banks[kind] = bank
        return banks[kind]

    loader = experiment.loader
    if FLAGS.phase2_batch_size and FLAGS.phase2_batch_size != FLAGS.batch_size:
        loader = pipeline.make_loader(
            splits["train"],
            dataclasses.replace(
                common.train_pipeline_config(vocab), batch_size=FLAGS.phase2_batch_size
            ),
            object_features=experiment.features["train"],
        )
    summaries = {}
    final_state = None
    for variant in ["ra_sgg", *FLAGS.ablations]:
        label, overrides, retrieval = _VARIANTS[variant]
        ra_config = _ra_config(**overrides)
        augmenter = None
        if retrieval:
            augmenter = RetrievalAugmenter(
                bank_of(ra_config.bank),
                embed,
                vocab.predicate_counts,
                ra_config,
                foreground_slots=FLAGS.max_fg,
                train_embed=train_embed,
            )
        print(f"phase 2: {label} ({FLAGS.phase2_steps} updates from the phase-1 model)")
        state, last = experiment.train_phase(
            os.path.join(FLAGS.workdir, "phase2" if variant == "ra_sgg" else f"phase2_{variant}"),
            num_steps=FLAGS.phase2_steps,
            optim_config=_phase2_optim_config(),
            loss_fn=make_penet_loss(experiment.model_config, multi_prototype=retrieval),
            batch_transform=augmenter,
            init_variables=phase1_variables,
            extra_config={"phase": 2, "variant": variant, "ra_sgg": vars(ra_config)},
            loader=loader,
        )
        runs[label] = experiment.test_metrics(state.variables)
        if augmenter is not None:
            summary = augmenter.summary()
            if summary["foreground_relations"] == 0:  # a finished run resumed: from its metrics
                summary = {k: v for k, v in last.items() if k.startswith("ra/")}
            summaries[label] = summary
        if variant == "ra_sgg":
            final_state = state
    penet, ra = runs["PE-Net"], runs["RA-SGG"]
    deltas = {
        column: ra[column] - penet[column]
        for column in _COLUMNS
        if isinstance(ra.get(column), float) and isinstance(penet.get(column), float)
    }
    _report(
        experiment,
        runs,
        model_name="RA-SGG",
        baseline_name="PE-Net",
        extra={
            "ra_sgg": {
                "variant": FLAGS.variant,
                "bank": FLAGS.bank,
                "bank_sizes": {kind: bank.size for kind, bank in banks.items()},
                "augmentation": summaries,
                "delta_vs_penet": deltas,
            }
        },
    )
    print(
        "RA-SGG - PE-Net (points): "
        + ", ".join(
            f"{c} {100 * deltas[c]:+.2f}" for c in ("R@100", "mR@100", "F@100") if c in deltas
        )
    )
    for label, summary in summaries.items():
        described = ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
        print(f"{label}: {described}")
    if FLAGS.export:
        experiment.export(final_state)
    return {"runs": runs, "augmentation": summaries}


def main(argv):
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the console
    if len(argv) > 1:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        common.check_data_flags()
        if FLAGS.method in ("penet", "ra_sgg"):
            common.optim_config()  # validates the optimizer flags before any data or compile
            if FLAGS.num_steps <= 0:
                raise ConfigError("num_steps", f"must be positive, got {FLAGS.num_steps}")
        if FLAGS.method == "ra_sgg":
            _check_ra_flags()
        if FLAGS.distributed:
            from sgg_jax.train import initialize_distributed

            initialize_distributed(True)
        splits, vocab = common.load_splits()
        if FLAGS.method == "data":
            run_data_stage(splits, vocab)
        elif FLAGS.method == "ra_sgg":
            run_ra_sgg(splits, vocab)
        else:
            run_penet(splits, vocab)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
