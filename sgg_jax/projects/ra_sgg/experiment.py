"""RA-SGG: retrieval-augmented scene graph generation via multi-prototype learning (the experiment).

The library behind ``python -m experiments.ra_sgg``: :class:`RASGGExperimentConfig` (checked when
built: one-line :class:`~sgg_jax.errors.ConfigError` naming the flag, before any data is read) and
:func:`run`. Methods (``method``):

* ``ra_sgg`` — the full method (Yoon et al., "RA-SGG", AAAI 2025): phase 1 trains PE-Net as below;
  phase 2 continues from it with a memory bank of every annotated training relation (searched with
  ScaNN or exactly, refreshed every ``bank_refresh_steps``), label-inconsistency selection,
  inverse-propensity augmentation of tail predicates and the multi-prototype loss
  (``sgg_jax.projects.ra_sgg.ra_sgg``). ``ablations`` trains the variants without selection, without
  inverse-propensity weighting and a same-length PE-Net continuation (the control), and every
  variant is evaluated on test next to PE-Net and FREQ. With ``feature_source="roi"`` (PredCls,
  SGCls, SGDet from pixels) the bank embeds the training images' RoI features and phase 2 applies
  the image transform, then the augmenter; in SGDet the bank holds the ground-truth-matched
  detection pairs and the queries are the update's sampled detection pairs
  (:class:`~sgg_jax.projects.ra_sgg.memory_bank.DetectionMemoryBank`).
* ``penet`` — phase 1 of RA-SGG alone: the PE-Net base model (Zheng et al., CVPR 2023) trained on the
  device mesh with checkpoints (auto-resume from the workdir), periodic evaluation on val, a final
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
import time
from typing import Any

import numpy as np

from sgg_jax import distributed
from sgg_jax.data import pipeline
from sgg_jax.data.fileio import check_writable_dir
from sgg_jax.data.summary import (
    format_predicate_histogram,
    format_splits,
    summarize_split,
    text_table,
)
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.experiment import relation
from sgg_jax.experiment.relation import DataConfig
from sgg_jax.train.optim import OptimConfig

METHODS = ("ra_sgg", "penet", "data")
MODEL_SIZES = ("small", "official")
_VARIANTS = {
    # name -> (label in the results, RASGGConfig overrides, retrieval on)
    "ra_sgg": ("RA-SGG", {}, True),
    "paper": ("RA-SGG (paper)", {"variant": "paper"}, True),
    "official": ("RA-SGG (official)", {"variant": "official"}, True),
    "no_selection": ("RA-SGG w/o selection", {"select": False}, True),
    "no_ipss": ("RA-SGG w/o IPSS", {"weighting": "uniform"}, True),
    "continue_penet": ("PE-Net continued", {}, False),
}
ABLATIONS = tuple(name for name in _VARIANTS if name != "ra_sgg")
# Banks of the variants: the paper's is the full refreshed bank, the official code's the capped one
# (bank sets the bank of the main run and its ablations).
_VARIANT_BANKS = {"paper": "full", "official": "official"}
# Datasets whose number of predicates is known before loading (for tail_ids checks).
_KNOWN_PREDICATES = {"vg150": 50, "gqa200": 100, "gqa200_mini": 100}


@dataclasses.dataclass(frozen=True)
class Phase2Config:
    """RA-SGG phase 2 (``method="ra_sgg"``); every field is the flag of the same name.

    Attributes:
      phase2_steps: updates, starting from the phase-1 model.
      phase2_learning_rate: base rate (None = phase 1's).
      phase2_warmup_steps: linear warmup updates.
      phase2_batch_size: images per batch (None = phase 1's).
      phase2_decay_steps: milestones (rate x 0.1).
      variant: ``paper`` (the paper's equations) or ``official`` (the official code's rule).
      threshold, tail_ids, tail_fraction: the official rule (empty ``tail_ids`` = the dataset's
        official list, else the rarest ``tail_fraction``).
      bank, memory_size: ``full`` (every training relation, refreshed) or ``official`` (built once
        from phase 1, ``memory_size`` per triplet).
      scann_brute_force_threshold: banks smaller than this are searched by brute force in ScaNN.
      num_neighbours, tau: K retrieved and the label-inconsistency threshold.
      no_selection, no_ipss: ablations (augment every relation; uniform sampling).
      weighting: sampling weights (None = the variant's).
      tail_only, relabel_background: official-code options.
      lambda_mode, lambda_value: λ ~ Beta(20, 5) or fixed.
      bank_refresh_steps: rebuild the bank every N updates (0: never).
      retrieval_backend: ``scann`` or ``exact`` (the host search).
      retrieval: ``host`` (a second forward, the search and the soft targets on the host) or
        ``in_step`` (exact search, selection and soft targets inside the jitted step on a bank held
        on the devices; :mod:`sgg_jax.projects.ra_sgg.in_step`; PredCls / SGCls).
      ablations: extra phase-2 runs, some of :data:`ABLATIONS`.
    """

    phase2_steps: int = 2000
    phase2_learning_rate: float | None = None
    phase2_warmup_steps: int = 0
    phase2_batch_size: int | None = None
    phase2_decay_steps: tuple[int, ...] = ()
    variant: str = "paper"
    threshold: float = 0.3
    tail_ids: tuple[int, ...] = ()
    tail_fraction: float = 1 / 3
    bank: str = "full"
    memory_size: int = 8
    scann_brute_force_threshold: int = 2000
    num_neighbours: int = 20
    tau: float = 0.5
    no_selection: bool = False
    no_ipss: bool = False
    weighting: str | None = None
    tail_only: bool = False
    relabel_background: bool = False
    lambda_mode: str = "beta"
    lambda_value: float = 0.8
    bank_refresh_steps: int = 0
    retrieval_backend: str = "scann"
    retrieval: str = "host"
    ablations: tuple[str, ...] = ()

    def ra_config(self, dataset: str, seed: int, **overrides):
        """The :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig` of a run (``overrides``: a variant's)."""
        from sgg_jax.projects.ra_sgg.ra_sgg import RASGGConfig
        from sgg_jax.projects.ra_sgg.tail_sets import official_tail_ids

        variant = overrides.pop("variant", self.variant)
        if variant not in _VARIANT_BANKS:
            raise ConfigError("variant", f"must be one of {tuple(_VARIANT_BANKS)}, got {variant!r}")
        weighting = self.weighting or (
            "class_balanced" if variant == "official" else "inverse_propensity"
        )
        if self.no_ipss:
            weighting = "uniform"
        tail_ids = tuple(self.tail_ids) or official_tail_ids(dataset)
        options = dict(
            num_neighbours=self.num_neighbours,
            tau=self.tau,
            select=not self.no_selection,
            weighting=weighting,
            tail_only=self.tail_only,
            relabel_background=self.relabel_background,
            lambda_mode=self.lambda_mode,
            lambda_value=self.lambda_value,
            bank_refresh_steps=self.bank_refresh_steps,
            seed=seed,
            variant=variant,
            threshold=self.threshold,
            tail_ids=tail_ids,
            tail_fraction=self.tail_fraction,
            bank=self.bank if variant == self.variant else _VARIANT_BANKS[variant],
            memory_size=self.memory_size,
            retrieval=self.retrieval,
        )
        options.update(overrides)
        return RASGGConfig(**options)

    def optim_config(self, phase1: OptimConfig) -> OptimConfig:
        """Phase 2's optimizer: phase 1's with the phase-2 rate, warmup, milestones and batch."""
        return dataclasses.replace(
            phase1,
            learning_rate=self.phase2_learning_rate or phase1.learning_rate,
            warmup_steps=self.phase2_warmup_steps,
            decay_steps=tuple(self.phase2_decay_steps),
            images_per_batch=self.phase2_batch_size or phase1.images_per_batch,
        )


@dataclasses.dataclass(frozen=True)
class RASGGExperimentConfig:
    """Everything ``python -m experiments.ra_sgg`` runs; checked when built (:meth:`validate`).

    Attributes:
      data: dataset, task and budgets.
      optim: phase 1's optimizer (``images_per_batch`` = ``data.batch_size``).
      method: ``ra_sgg``, ``penet`` or ``data`` (module docstring).
      model_size: PE-Net sizes, ``small`` or ``official``.
      glove: GloVe text file initialising the word embeddings (None: none).
      bundled_predicate_vectors: initialise the predicate embeddings from the bundled 300-d GloVe
        vectors (ignored with ``glove``).
      frequency_bias: add the training split's log frequencies at inference.
      num_steps, eval_every, checkpoint_every, keep_checkpoints, log_every, progress: phase 1's
        (and phase 2's) training loop.
      export: export the predict function at the end.
      phase2: RA-SGG phase 2 (checked with ``method="ra_sgg"`` only).
    """

    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=500, images_per_batch=8)
    method: str = "penet"
    model_size: str = "small"
    glove: str | None = None
    bundled_predicate_vectors: bool = False
    frequency_bias: bool = False
    num_steps: int = 1000
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 20
    export: bool = True
    progress: bool = True
    phase2: Phase2Config = Phase2Config()

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line ConfigErrors naming the flag (``data`` and ``optim`` check themselves)."""
        if self.method not in METHODS:
            raise ConfigError("method", f"must be one of {METHODS}, got {self.method!r}")
        if self.model_size not in MODEL_SIZES:
            raise ConfigError(
                "model_size", f"must be one of {MODEL_SIZES}, got {self.model_size!r}"
            )
        if self.method in ("penet", "ra_sgg") and self.num_steps <= 0:
            raise ConfigError("num_steps", f"must be positive, got {self.num_steps}")
        if self.method == "ra_sgg":
            self._validate_phase2()

    def _validate_phase2(self) -> None:
        phase2 = self.phase2
        unknown = sorted(set(phase2.ablations) - set(ABLATIONS))
        if unknown:
            raise ConfigError(
                "ablations", f"unknown {unknown}; expected some of {sorted(ABLATIONS)}"
            )
        # The options of every run that will train (the main one last): a flag that only another
        # variant refuses (e.g. --weighting=inverse_propensity with --variant=paper) is fine.
        for name in [*phase2.ablations, "ra_sgg"]:
            ra_config = self.ra_config(**_VARIANTS[name][1])
            if ra_config.retrieval == "in_step" and _VARIANTS[name][2]:
                from sgg_jax.projects.ra_sgg.in_step import check_supported

                check_supported(ra_config, detection=self.data.task == "sgdet")
        if ra_config.tail_ids is not None and self.data.dataset in _KNOWN_PREDICATES:
            from sgg_jax.projects.ra_sgg.augment import check_tail_ids

            check_tail_ids(ra_config.tail_ids, _KNOWN_PREDICATES[self.data.dataset])
        if phase2.phase2_batch_size is not None and phase2.phase2_batch_size < 1:
            raise ConfigError(
                "phase2_batch_size", f"must be an integer >= 1, got {phase2.phase2_batch_size}"
            )
        if phase2.scann_brute_force_threshold < 0:
            raise ConfigError(
                "scann_brute_force_threshold",
                f"must be >= 0, got {phase2.scann_brute_force_threshold}",
            )
        self.phase2_optim_config()
        if phase2.phase2_steps <= 0:
            raise ConfigError("phase2_steps", f"must be positive, got {phase2.phase2_steps}")

    def ra_config(self, **overrides):
        """The :class:`~sgg_jax.projects.ra_sgg.ra_sgg.RASGGConfig` of the main run or a variant."""
        return self.phase2.ra_config(self.data.dataset, self.data.seed, **overrides)

    def phase2_optim_config(self) -> OptimConfig:
        return self.phase2.optim_config(self.optim)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def run(config: RASGGExperimentConfig, workdir: str) -> dict[str, Any]:
    """Loads the data of ``config`` and runs its method; outputs go to ``workdir``.

    Returns:
      ``data``: the data summary; ``penet`` / ``ra_sgg``: ``{"runs": {row: metrics}, ...}``.

    Raises:
      ConfigError: ``workdir`` is a file or cannot be written (checked before anything is loaded).
    """
    check_writable_dir(workdir, "workdir")
    splits, vocab = relation.load_splits(config.data)
    if config.method == "data":
        return run_data_stage(config, workdir, splits, vocab)
    if config.method == "ra_sgg":
        return run_ra_sgg(config, workdir, splits, vocab)
    return run_penet(config, workdir, splits, vocab)


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


def run_data_stage(config: RASGGExperimentConfig, workdir: str, splits, vocab) -> dict:
    """Summarises the splits and one pipeline pass each; writes ``data_summary.json``."""
    data = config.data
    summary = {"dataset": data.dataset, "task": data.task, "seed": data.seed, "splits": {}}
    split_summaries = []
    for split, graphs in splits.items():
        split_summaries.append(summarize_split(split, graphs, vocab))
        if split == "train":
            pipeline_config = relation.train_pipeline_config(data, vocab, num_epochs=1)
        else:
            pipeline_config = relation.eval_pipeline_config(data, vocab)
        summary["splits"][split] = {
            **split_summaries[-1].to_json(),
            "pipeline": _one_pass(graphs, pipeline_config),
        }
    print(f"{data.dataset} ({data.task})")
    print("\n".join(format_splits(split_summaries, with_report=False)))
    print()
    print("\n".join(format_predicate_histogram(split_summaries, vocab.predicate_names, top_k=5)))
    print()
    rows = [
        ["split", "batches", "images", "pairs", "fg_pairs", "trunc_obj", "trunc_pairs", "img/s"]
    ]
    for split, values in summary["splits"].items():
        one = values["pipeline"]
        rows.append(
            [split]
            + [str(one[k]) for k in ("batches", "images", "pairs", "foreground_pairs")]
            + [str(one["truncated_objects"]), str(one["truncated_pairs"])]
            + [f"{one['images_per_second']:.0f}"]
        )
    print("input pipeline, one pass per split:")
    print("\n".join(text_table(rows)))
    os.makedirs(workdir, exist_ok=True)
    if not distributed.is_chief():
        return summary
    with open(os.path.join(workdir, "data_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"Data stage done; summary in {os.path.join(workdir, 'data_summary.json')}.")
    return summary


# ----------------------------------------------------------------------------------------------
# PE-Net (phase 1)
# ----------------------------------------------------------------------------------------------


def _model_config(config: RASGGExperimentConfig, vocab, frequency=None, pixels=None):
    """The PE-Net config and the tables ``penet.with_tables`` puts into its fresh variables."""
    from sgg_jax.relation.penet import PENetConfig

    vectors = {}
    if frequency is not None:
        vectors["frequency_bias"] = frequency.log_bias
    if config.glove:
        from sgg_jax.data import word_vectors

        for field, names in (
            ("object_word_vectors", vocab.object_names),
            ("predicate_word_vectors", vocab.predicate_names),
        ):
            table, report = word_vectors.glove_name_vectors(
                config.glove, names, seed=config.data.seed
            )
            vectors[field] = table
            print(
                f"{field}: {report.num_missing} of {report.num_words} words not in {config.glove}"
            )
    if not config.glove and config.bundled_predicate_vectors:
        table, missing = relation.bundled_predicate_vectors(vocab.predicate_names, config.data.seed)
        vectors["predicate_word_vectors"] = table
        print(f"predicate_word_vectors: {missing} of {len(table)} names not in the bundled table")
    if pixels is not None:
        vectors.update(pixels.model_fields())
    names = ("object_word_vectors", "predicate_word_vectors", "frequency_bias")
    tables = {name: vectors.pop(name) for name in names if name in vectors}
    for table in (tables.get("object_word_vectors"), tables.get("predicate_word_vectors")):
        if table is not None:
            vectors["embed_dim"] = int(np.shape(table)[-1])
    make = PENetConfig.small if config.model_size == "small" else PENetConfig.official
    model_config = make(
        vocab.num_classes,
        vocab.num_predicates,
        task=config.data.task,
        feature_source=config.data.feature_source,
        frequency_bias="frequency_bias" in tables,
        **vectors,
    )
    return model_config, tables


class _Experiment:
    """What every phase of a run shares: data, model, loaders, mesh, evaluation."""

    def __init__(self, config: RASGGExperimentConfig, workdir: str, splits, vocab):
        from sgg_jax.relation.frequency import FrequencyBaseline
        from sgg_jax.relation.penet import PENet
        from sgg_jax.train import make_mesh

        data = config.data
        self.config, self.data, self.workdir = config, data, workdir
        self.splits, self.vocab = splits, vocab
        self.frequency = FrequencyBaseline.from_graphs(
            splits["train"], vocab.num_classes, vocab.num_predicates
        )
        self.pixels = relation.PixelInputs(data) if data.feature_source == "roi" else None
        self.model_config, self.tables = _model_config(
            config, vocab, self.frequency if config.frequency_bias else None, self.pixels
        )
        self.model = PENet(self.model_config)
        self.mesh = make_mesh()
        self.features = relation.object_features_for(data, splits)
        self.loader = pipeline.make_loader(
            splits["train"],
            relation.train_pipeline_config(data, vocab),
            object_features=self.features["train"],
        )
        self.image_transform = self.pixels.transform if self.pixels is not None else None
        self.val_graphs, self.val_features = splits["val"], self.features["val"]
        if data.eval_images:
            self.val_graphs = self.val_graphs[: data.eval_images]
            if self.val_features is not None:
                self.val_features = self.val_features[: data.eval_images]
        self.zeroshot_triplets = relation.zeroshot_for(data.dataset, splits)
        self.true_test, self.planted_tail = None, None
        if data.dataset == "synthetic":
            self.true_test, self.planted_tail = _synthetic_truth(data, splits["test"])
        self.run_config = {
            "experiment": "ra_sgg",
            "method": config.method,
            "dataset": data.dataset,
            "task": data.task,
            "model": {
                k: v for k, v in vars(self.model_config).items() if not isinstance(v, np.ndarray)
            },
        }
        if self.pixels is not None:
            self.run_config.update(self.pixels.source_config())

    def fresh_variables(self, variables):
        """Fresh variables with the pretrained detector (feature_source=roi) and the tables."""
        from sgg_jax.relation.penet import with_tables

        if self.pixels is not None:
            variables = self.pixels.merge_detector(variables)
        return with_tables(variables, **self.tables)

    def scorer(self, variables_fn):
        from sgg_jax.train import shard_batch

        return relation.model_scorer(self.model, variables_fn, self.mesh, shard_batch)

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

        config = self.config
        train_config = TrainConfig(
            num_steps=num_steps,
            seed=self.data.seed,
            checkpoint_every=config.checkpoint_every,
            max_to_keep=config.keep_checkpoints,
            eval_every=config.eval_every,
            log_every=config.log_every,
            progress=config.progress,
            allow_config_change=self.data.allow_config_change,
        )
        holder = {}

        def eval_fn(state, step):
            holder["state"] = state
            metrics = relation.evaluate_scorer(
                self.scorer(lambda: holder["state"].variables),
                self.val_graphs,
                self.vocab,
                self.data,
                mode=self.data.task,
                object_features=self.val_features,
                image_transform=self.image_transform,
            )
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

        pixel_options = {}
        if self.pixels is not None:
            from sgg_jax.train import ComposedTransform

            pixel_options = self.pixels.train_options(self.splits["train"], self.loader)
            # The pixels first: a later transform (RA-SGG's retrieval) runs the model on them.
            batch_transform = ComposedTransform(
                pixel_options.pop("batch_transform"), batch_transform
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
        mode = mode or self.data.task
        metrics = relation.evaluate_scorer(
            scorer,
            self.splits["test"],
            self.vocab,
            self.data,
            mode=mode,
            zeroshot_triplets=self.zeroshot_triplets,
            object_features=self.features["test"],
            image_transform=self.image_transform if mode == self.data.task else None,
        )
        if self.true_test is not None:
            truth = relation.evaluate_scorer(
                scorer, self.true_test, self.vocab, self.data, mode=mode, object_features=None
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
            relation.eval_pipeline_config(self.data, self.vocab),
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
            relation.predict_outputs(self.model),
            example,
            config=config,
            out_dir=os.path.join(self.workdir, "export"),
        )
        if distributed.is_chief():
            print(f"exported the predict function to {path}")


_COLUMNS = [f"{m}@{k}" for m in ("R", "mR", "F") for k in (20, 50, 100)]
_COLUMNS += ["mR@all", "zR@100", "ngR@100", "ngmR@100"]
_COLUMNS += ["true_R@100", "true_mR@100", "planted_tail_R@100"]


def _synthetic_truth(data: DataConfig, test_graphs):
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
                num_images=data.synthetic_images,
                seed=data.seed,
                **relation.synthetic_options(data),
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

    data, workdir = experiment.data, experiment.workdir
    if not distributed.is_chief():  # process 0 writes results and plots
        return report.results_document(
            experiment="ra_sgg", dataset=data.dataset, task=data.task, seed=data.seed, runs=runs
        ) | dict(extra or {})
    document = report.write_results(
        workdir,
        experiment="ra_sgg",
        dataset=data.dataset,
        task=data.task,
        seed=data.seed,
        runs=runs,
    )
    if extra:
        document.update(extra)
        with open(os.path.join(workdir, "results.json"), "w") as handle:
            json.dump(document, handle, indent=2)
    model_metrics = runs[model_name]
    columns = [c for c in _COLUMNS if c in model_metrics]
    num_images = len(experiment.splits["test"])
    print(f"\n{data.dataset} test, {data.task}, {num_images} images (values in %):")
    print(report.metrics_table(runs, columns=columns), end="")
    plots = os.path.join(workdir, "plots")
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
    print(f"results: {os.path.join(workdir, 'results.json')}")
    return document


def run_penet(config: RASGGExperimentConfig, workdir: str, splits, vocab) -> dict:
    """Trains PE-Net, evaluates it and the FREQ baseline on test, writes results and the export."""
    from sgg_jax.relation.losses import make_penet_loss

    experiment = _Experiment(config, workdir, splits, vocab)
    state, last = experiment.train_phase(
        workdir,
        num_steps=config.num_steps,
        optim_config=config.optim,
        loss_fn=make_penet_loss(experiment.model_config),
    )
    runs = {"FREQ (predcls)": experiment.frequency_metrics()}
    runs["PE-Net"] = experiment.test_metrics(state.variables)
    _report(experiment, runs, model_name="PE-Net", baseline_name="FREQ (predcls)")
    if config.export:
        experiment.export(state)
    return {"runs": runs, "last_train_metrics": last}


# ----------------------------------------------------------------------------------------------
# RA-SGG (phase 1 = PE-Net, phase 2 = retrieval-augmented multi-prototype learning)
# ----------------------------------------------------------------------------------------------


def _bank_input_batches(experiment) -> list:
    """SGDet bank: one pass of the evaluation pipeline over the training split (every annotated
    relation of each image as a foreground pair, no pixels yet)."""
    loader = pipeline.make_loader(
        experiment.splits["train"], relation.eval_pipeline_config(experiment.data, experiment.vocab)
    )
    batches = []
    for batch in loader.iter_from(0):
        batches.append(batch)
        if len(batches) == loader.num_batches_per_epoch:
            break
    return batches


def run_ra_sgg(config: RASGGExperimentConfig, workdir: str, splits, vocab) -> dict:
    """Phase 1 (PE-Net), phase 2 (RA-SGG) and the requested ablations, all evaluated on test."""
    from sgg_jax.projects.ra_sgg import in_step
    from sgg_jax.projects.ra_sgg.memory_bank import DetectionMemoryBank, MemoryBank
    from sgg_jax.projects.ra_sgg.ra_sgg import (
        RetrievalAugmenter,
        make_detection_bank_fn,
        make_embed_fn,
        make_train_embed_fn,
    )
    from sgg_jax.relation.losses import make_penet_loss
    from sgg_jax.train import shard_batch

    data, phase2 = config.data, config.phase2
    experiment = _Experiment(config, workdir, splits, vocab)
    phase1_state, _ = experiment.train_phase(
        os.path.join(workdir, "phase1"),
        num_steps=config.num_steps,
        optim_config=config.optim,
        loss_fn=make_penet_loss(experiment.model_config),
    )
    phase1_variables = phase1_state.variables
    runs = {"FREQ (predcls)": experiment.frequency_metrics()}
    runs["PE-Net"] = experiment.test_metrics(phase1_variables)
    detection = data.task == "sgdet"
    mesh = experiment.mesh
    if detection:  # the bank's keys: matched detection pairs, eval mode (DetectionMemoryBank)
        embed = make_detection_bank_fn(experiment.model, mesh, shard_batch, budget=data.max_pairs)
    else:
        embed = make_embed_fn(experiment.model, mesh, shard_batch)
    train_embed = make_train_embed_fn(experiment.model, mesh, shard_batch, with_targets=detection)
    # feature_source=roi: the bank's batches get their pixels (image_index indexes the training
    # split, as the training loader's does).
    bank_transform = experiment.pixels.transform(splits["train"]) if experiment.pixels else None
    banks = {}

    def bank_of(kind):
        if kind not in banks:
            options = {}
            if phase2.retrieval_backend == "scann":
                options["brute_force_threshold"] = phase2.scann_brute_force_threshold
            cap = phase2.memory_size if kind == "official" else None
            if detection:
                bank = DetectionMemoryBank(
                    _bank_input_batches(experiment),
                    num_detections=experiment.model_config.detector.detections_per_image,
                    num_predicates=vocab.num_predicates,
                    backend=phase2.retrieval_backend,
                    index_options=options,
                    batch_transform=bank_transform,
                    max_per_triplet=cap,
                    cap_seed=data.seed,
                )
            else:
                bank = MemoryBank(
                    splits["train"],
                    max_objects=data.max_objects,
                    num_predicates=vocab.num_predicates,
                    backend=phase2.retrieval_backend,
                    index_options=options,
                    batch_size=data.eval_batch_size,
                    object_features=experiment.features["train"],
                    max_per_triplet=cap,
                    cap_seed=data.seed,
                    batch_transform=bank_transform,
                )
            if kind == "official":  # built once from the phase-1 model in eval mode
                bank.refresh(lambda b: embed(phase1_variables, b))
                print(
                    f"official memory bank: {bank.size} of {bank.num_relations} training "
                    f"relations (at most {phase2.memory_size} per triplet), never refreshed"
                )
            elif detection:
                print("memory bank: matched detection pairs of the training split (built at start)")
            else:
                print(f"memory bank: {bank.size} training relations")
            banks[kind] = bank
        return banks[kind]

    loader = experiment.loader
    if phase2.phase2_batch_size and phase2.phase2_batch_size != data.batch_size:
        loader = pipeline.make_loader(
            splits["train"],
            relation.train_pipeline_config(
                data,
                vocab,
                batch_size=relation.per_process(phase2.phase2_batch_size, "phase2_batch_size"),
            ),
            object_features=experiment.features["train"],
        )
    summaries = {}
    final_state = None
    for variant in ["ra_sgg", *phase2.ablations]:
        label, overrides, retrieval = _VARIANTS[variant]
        ra_config = config.ra_config(**overrides)
        augmenter = None
        loss_fn = make_penet_loss(experiment.model_config, multi_prototype=retrieval)
        if retrieval and ra_config.retrieval == "in_step":
            augmenter = in_step.InStepRetrieval(
                bank_of(ra_config.bank), embed, ra_config, mesh, detection=detection
            )
            tail = in_step.tail_of(ra_config, vocab.predicate_counts, vocab.num_predicates)
            loss_fn = in_step.make_in_step_loss(
                loss_fn,
                ra_config,
                vocab.predicate_counts,
                tail,
                mesh,
                foreground_slots=data.max_fg,
            )
        elif retrieval:
            augmenter = RetrievalAugmenter(
                bank_of(ra_config.bank),
                embed,
                vocab.predicate_counts,
                ra_config,
                foreground_slots=None if detection else data.max_fg,
                train_embed=train_embed,
                detection=detection,
            )
        print(f"phase 2: {label} ({phase2.phase2_steps} updates from the phase-1 model)")
        state, last = experiment.train_phase(
            os.path.join(workdir, "phase2" if variant == "ra_sgg" else f"phase2_{variant}"),
            num_steps=phase2.phase2_steps,
            optim_config=config.phase2_optim_config(),
            loss_fn=loss_fn,
            batch_transform=augmenter,
            init_variables=phase1_variables,
            extra_config={"phase": 2, "variant": variant, "ra_sgg": vars(ra_config)},
            loader=loader,
        )
        runs[label] = experiment.test_metrics(state.variables)
        if isinstance(augmenter, in_step.InStepRetrieval):  # the step's metrics of the last update
            summaries[label] = {
                k.removeprefix("loss/"): v for k, v in last.items() if k.startswith("loss/ra/")
            }
        elif augmenter is not None:
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
                "variant": phase2.variant,
                "bank": phase2.bank,
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
    if config.export:
        experiment.export(final_state)
    return {"runs": runs, "augmentation": summaries}
