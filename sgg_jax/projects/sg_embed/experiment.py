"""Scene-graph embeddings with relative similarity supervision: the objectives x samplers grid.

The library behind ``python -m experiments.sg_embed``: :class:`SGEmbedExperimentConfig` (checked
when built: one-line :class:`~sgg_jax.errors.ConfigError` naming the flag, before any data is read)
and :func:`run`.

Reproduces the protocol of Maheshwari, Chaudhry and Vinay, "Scene Graph Embeddings Using Relative
Similarity Supervision" (AAAI 2021): a graph convolutional network
(:class:`sgg_jax.projects.sg_embed.sg_gcn.SceneGraphGCN`) embeds each image's scene graph; it is
trained from the caption similarity ``s_XY`` of the training images with every combination of

* objective (``grid.objectives``): Ranking (the paper's), Triplet, InfoNCE;
* triplet sampler (``grid.samplers``): Random, Extreme, Probability, Reject;

and evaluated on the test images (the paper's Tables 2 and 3):

* rank correlations (Kendall tau-b, Spearman rho, Pearson r) between the model similarities
  ``f_X . f_Y`` and ``s_XY``, row-wise (per image, averaged) and over all pairs, next to random
  normal embeddings and the untrained GCN;
* retrieval with incomplete queries: ``M = 1..20`` random relations removed from each test graph,
  isolated objects dropped; the query must retrieve its own image among all test images (MRR, R@1,
  R@5, R@10), searched through :mod:`sgg_jax.retrieval` (exact or ScaNN).

Data (``source.dataset``):

* ``synthetic``: graphs of :mod:`sgg_jax.data.synthetic` with captions of
  :mod:`sgg_jax.projects.sg_embed.synthetic_captions` (a hidden scene type plus the graph's
  relations, with word noise): caption similarity is informative about the graphs but noisy.
* ``gqa200_captions``: the real GQA-200 scene graphs (bundled) of the images that also have COCO
  captions (bundled; 117 images before the filters). This is **tiny**: a smoke test on real data,
  not a benchmark.
* ``vg_json``: the raw Visual Genome ``relationships.json`` + COCO caption files joined through VG's
  ``image_data.json`` (:mod:`sgg_jax.data.vg_json`). ``vg_vocab``: the bundled VG150 vocabulary,
  the 150 / 50 most frequent names, or (``min_count``, the paper's) every object / relation type
  seen at least ``vg_vocab_min_count`` = 25 times.

Filters from the paper: 3 to 40 objects and at least one relation; then images without captions
are skipped (counted; an error when none is left). The kept images are split 70/20/10
(train/val/test) in a seeded random order. Caption words get GloVe vectors (``similarity.glove``)
or seeded random word vectors. Caption embeddings are L2-normalised (``normalise_captions``):
``s_XY`` is a mean cosine in ``[-1, 1]``, the range the Probability / Reject samplers are defined
on; raw inner products are accepted only with the Random / Extreme samplers. ``similarity_npy``
replaces the caption similarity by a user matrix over the kept images (their order is written to
``<workdir>/images.txt``), with values in ``[-1, 1]`` (a ``DataError`` naming the file otherwise;
``similarity_npy_unbounded`` accepts any values, Random / Extreme only).

Outputs in the workdir: ``images.txt`` and ``data_summary.json`` (every method); with
``method="grid"`` also ``results.json`` (config, data summary, baselines and every run: test
correlations, validation history, noise sweep, timings), ``results.md`` (the tables),
``noise_sweep.png`` (MRR and R@5 against ``M`` for every run) and ``embedder/`` (the run with the
best validation ``kendall_row``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgg_jax.data import captions as captions_lib
from sgg_jax.data import gqa200, synthetic, vg150, vg_json, word_vectors
from sgg_jax.data.fileio import check_writable_dir
from sgg_jax.errors import ConfigError, DataError, check_choice, check_int
from sgg_jax.evaluation import embedding as embedding_eval
from sgg_jax.projects.sg_embed import sg_gcn, synthetic_captions
from sgg_jax.projects.sg_embed import similarity as similarity_lib
from sgg_jax.projects.sg_embed import train as sg_embed
from sgg_jax.projects.sg_embed.sg_gcn import SGGCNConfig
from sgg_jax.projects.sg_embed.triplet_samplers import BOUNDED_SAMPLERS, SAMPLERS
from sgg_jax.structures import SceneGraph, Vocab

METHODS = ("grid", "data")
DATASETS = ("synthetic", "gqa200_captions", "vg_json")
VG_VOCABS = ("vg150", "built", "min_count")
MODEL_SIZES = ("small", "official")
RETRIEVAL_BACKENDS = ("exact", "scann")
# model_size -> (embed_dim, hidden_dim, num_layers)
SIZES = {"small": (64, 128, 3), "official": (300, 512, 5)}
CORRELATION_KEYS = tuple(
    f"{name}_{scope}" for scope in ("row", "all") for name in embedding_eval.CORRELATIONS
)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where the scene graphs and their captions come from; every field is the flag of that name.

    Attributes:
      dataset: ``synthetic``, ``gqa200_captions`` or ``vg_json`` (module docstring).
      synthetic_images, synthetic_seed, synthetic_min_objects, synthetic_max_objects,
        synthetic_min_relations, synthetic_max_relations: the graphs of ``dataset="synthetic"``.
      scene_types, caption_noise, caption_scene_words: its synthetic captions (hidden scene types,
        word-replacement probability, scene-type words per caption).
      captions: caption JSON of ``dataset="gqa200_captions"`` (None: the bundled one).
      vg_relationships, coco_captions, vg_image_data: the files of ``dataset="vg_json"``.
      vg_max_images: keep only the first N VG images (0 = all).
      vg_vocab, vg_vocab_min_count: the VG vocabulary (``vg150``, ``built`` or ``min_count``) and
        the fewest objects / relations a name needs with ``min_count``.
    """

    dataset: str = "synthetic"
    synthetic_images: int = 2000
    synthetic_seed: int = 0
    synthetic_min_objects: int = 3
    synthetic_max_objects: int = 12
    synthetic_min_relations: int = 1
    synthetic_max_relations: int = 8
    scene_types: int = 8
    caption_noise: float = 0.3
    caption_scene_words: int = 2
    captions: str | None = None
    vg_relationships: str | None = None
    coco_captions: tuple[str, ...] = ()
    vg_image_data: str | None = None
    vg_max_images: int = 0
    vg_vocab: str = "vg150"
    vg_vocab_min_count: int = 25


@dataclasses.dataclass(frozen=True)
class SimilarityConfig:
    """The supervision ``s_XY``: caption similarity or a user matrix (fields = flags).

    Attributes:
      glove: GloVe text file for the caption words (and ``model.init_word_vectors``).
      word_vector_dim, word_vector_seed: the seeded random word vectors used without ``glove``.
      normalise_captions: L2-normalise the caption embeddings (``s_XY`` = mean cosine in
        ``[-1, 1]``); False = raw inner products (Random / Extreme samplers only).
      similarity_npy: a user similarity ``.npy`` over the kept images, replacing the captions.
      similarity_npy_unbounded: accept values outside ``[-1, 1]`` (Random / Extreme only).
    """

    glove: str | None = None
    word_vector_dim: int = 300
    word_vector_seed: int = 0
    normalise_captions: bool = True
    similarity_npy: str | None = None
    similarity_npy_unbounded: bool = False


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The paper's filters and the seeded train / val / test split (fields = flags).

    Attributes:
      min_objects, max_objects, min_relations: keep graphs with ``min_objects <= objects <=
        max_objects`` and at least ``min_relations`` relations.
      split_fractions: train, val, test fractions (sum 1, train and test > 0).
      split_seed: seed of the split.
    """

    min_objects: int = 3
    max_objects: int = 40
    min_relations: int = 1
    split_fractions: tuple[float, ...] = (0.7, 0.2, 0.1)
    split_seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The GCN's sizes (fields = flags).

    Attributes:
      model_size: ``small`` (D 64, H 128, 3 layers) or ``official`` (D 300, H 512, 5 layers).
      embed_dim, hidden_dim, num_layers: overrides of the size's values (0 = the size's).
      init_word_vectors: initialise object / predicate embeddings from ``similarity.glove``.
    """

    model_size: str = "small"
    embed_dim: int = 0
    hidden_dim: int = 0
    num_layers: int = 0
    init_word_vectors: bool = False

    def sizes(self) -> tuple[int, int, int]:
        """``(embed_dim, hidden_dim, num_layers)``: the overrides, else the model size's."""
        embed_dim, hidden_dim, num_layers = SIZES[self.model_size]
        return (
            self.embed_dim or embed_dim,
            self.hidden_dim or hidden_dim,
            self.num_layers or num_layers,
        )


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The objectives x samplers grid and its training options (fields = flags).

    Attributes:
      objectives: objectives of the grid (of ``train.OBJECTIVES``).
      samplers: triplet samplers of the grid (of ``triplet_samplers.SAMPLERS``).
      seeds: training seeds of every cell; the tables show the mean (and std).
      epochs, batch_size, learning_rate, nu, margin, temperature: as in
        :class:`~sgg_jax.projects.sg_embed.train.EmbedTrainConfig`.
      eval_every: epochs between validation rank correlations (0 = at the end).
    """

    objectives: tuple[str, ...] = sg_embed.OBJECTIVES
    samplers: tuple[str, ...] = ("random", "extreme", "probability", "reject")
    seeds: tuple[int, ...] = (0,)
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-4
    nu: float = 1.0
    margin: float = 0.5
    temperature: float = 1.0
    eval_every: int = 2

    def train_config(self, objective: str, sampler: str, **options) -> sg_embed.EmbedTrainConfig:
        """The trainer's config of one cell (``options``: budgets and seed)."""
        return sg_embed.EmbedTrainConfig(
            objective=objective,
            sampler=sampler,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            nu=self.nu,
            margin=self.margin,
            temperature=self.temperature,
            **options,
        )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The test evaluation (fields = flags).

    Attributes:
      noise_ms: relations removed from the retrieval queries (the sweep's ``M``).
      report_ms: values of ``M`` shown in the retrieval table.
      retrieval_backend: ``exact`` or ``scann`` gallery search.
      baseline_repeats: draws of the random-embedding baseline.
    """

    noise_ms: tuple[int, ...] = tuple(range(1, 21))
    report_ms: tuple[int, ...] = (1, 5, 10, 20)
    retrieval_backend: str = "exact"
    baseline_repeats: int = 10


@dataclasses.dataclass(frozen=True)
class SGEmbedExperimentConfig:
    """Everything ``python -m experiments.sg_embed`` runs; checked when built (:meth:`validate`).

    Every leaf field is the command-line flag of the same name (:meth:`flag_values`).

    Attributes:
      method: ``grid`` (train and evaluate) or ``data`` (data only).
      source: graphs and captions.
      similarity: the supervision ``s_XY``.
      split: filters and split.
      model: GCN sizes.
      grid: objectives, samplers, seeds and training options.
      evaluation: the test evaluation.
      save_embedder: save the run with the best validation ``kendall_row`` to
        ``<workdir>/embedder``.
    """

    method: str = "grid"
    source: SourceConfig = SourceConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    grid: GridConfig = GridConfig()
    evaluation: EvalConfig = EvalConfig()
    save_embedder: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line ConfigErrors naming the flag; nothing is read."""
        source, similarity, split = self.source, self.similarity, self.split
        model, grid, evaluation = self.model, self.grid, self.evaluation
        check_choice("method", self.method, tuple(METHODS))
        check_choice("dataset", source.dataset, tuple(DATASETS))
        check_choice("vg_vocab", source.vg_vocab, tuple(VG_VOCABS))
        check_choice("model_size", model.model_size, tuple(MODEL_SIZES))
        check_choice("retrieval_backend", evaluation.retrieval_backend, tuple(RETRIEVAL_BACKENDS))
        for objective in grid.objectives:
            if objective not in sg_embed.OBJECTIVES:
                raise ConfigError(
                    "objectives", f"{objective!r} is not one of {sg_embed.OBJECTIVES}"
                )
        for sampler in grid.samplers:
            if sampler not in SAMPLERS:
                raise ConfigError("samplers", f"{sampler!r} is not one of {sorted(SAMPLERS)}")
        if self.method == "grid" and (not grid.objectives or not grid.samplers):
            raise ConfigError("objectives", "the grid needs at least one objective and one sampler")
        check_int("min_objects", split.min_objects, minimum=0)
        check_int("max_objects", split.max_objects, minimum=max(1, split.min_objects))
        check_int("min_relations", split.min_relations, minimum=0)
        check_int("synthetic_images", source.synthetic_images, minimum=3)
        check_int("word_vector_dim", similarity.word_vector_dim, minimum=1)
        check_int("vg_max_images", source.vg_max_images, minimum=0)
        check_int("vg_vocab_min_count", source.vg_vocab_min_count, minimum=1)
        check_int("baseline_repeats", evaluation.baseline_repeats, minimum=1)
        check_int("eval_every", grid.eval_every, minimum=0)
        for name in ("embed_dim", "hidden_dim", "num_layers"):
            check_int(name, getattr(model, name), minimum=0)
        if source.dataset == "vg_json":
            for name in ("vg_relationships", "vg_image_data"):
                if not getattr(source, name):
                    raise ConfigError(name, "is required with --dataset=vg_json")
            if not source.coco_captions:
                raise ConfigError("coco_captions", "is required with --dataset=vg_json")
        if model.init_word_vectors and not similarity.glove:
            raise ConfigError("init_word_vectors", "needs --glove")
        self._validate_similarity()
        _check_fractions(split.split_fractions)
        _check_int_list("seeds", grid.seeds, minimum=0)
        _check_int_list("noise_ms", evaluation.noise_ms, minimum=0)
        _check_int_list("report_ms", evaluation.report_ms, minimum=0)
        # The training options are checked here too, so a bad value fails before any data is read.
        grid.train_config(
            grid.objectives[0] if grid.objectives else "ranking",
            grid.samplers[0] if grid.samplers else "random",
        )

    def _validate_similarity(self) -> None:
        """The similarity options that cannot go together (some samplers need s_XY in [-1, 1])."""
        similarity = self.similarity
        if similarity.similarity_npy_unbounded and not similarity.similarity_npy:
            raise ConfigError("similarity_npy_unbounded", "only applies to --similarity_npy")
        if similarity.similarity_npy and not similarity.normalise_captions:
            raise ConfigError(
                "normalise_captions",
                "--nonormalise_captions has no effect with --similarity_npy (the matrix is used "
                "as given); drop one of them",
            )
        bounded = sorted({s for s in self.grid.samplers if s in BOUNDED_SAMPLERS})
        if self.method != "grid" or not bounded:
            return
        if similarity.similarity_npy_unbounded:
            raise ConfigError(
                "similarity_npy_unbounded",
                f"the {' / '.join(bounded)} sampler(s) need similarities in [-1, 1]; rescale the "
                "matrix or use only --samplers=random,extreme",
            )
        if not similarity.similarity_npy and not similarity.normalise_captions:
            raise ConfigError(
                "normalise_captions",
                f"--nonormalise_captions gives raw inner products outside [-1, 1], which the "
                f"{' / '.join(bounded)} sampler(s) cannot read; keep --normalise_captions or use "
                "only --samplers=random,extreme",
            )

    def flag_values(self, workdir: str) -> dict[str, Any]:
        """The config as command-line flag values, by flag name (``results.json``'s
        ``config.flags``): list flags as lists of strings, ``workdir`` included."""
        values: dict[str, Any] = {"method": self.method, "save_embedder": self.save_embedder}
        values["workdir"] = workdir
        for group in (
            self.source,
            self.similarity,
            self.split,
            self.model,
            self.grid,
            self.evaluation,
        ):
            for field in dataclasses.fields(group):
                value = getattr(group, field.name)
                if isinstance(value, tuple):
                    value = [_flag_text(v) for v in value]
                values[field.name] = value
        return dict(sorted(values.items()))


def _check_fractions(fractions: Sequence[Any]) -> tuple[float, float, float]:
    if not all(_is_number(v) for v in fractions):
        raise ConfigError("split_fractions", f"must be numbers, got {list(fractions)}")
    values = tuple(float(v) for v in fractions)
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values):
        raise ConfigError("split_fractions", f"must be three numbers >= 0, got {values}")
    if abs(sum(values) - 1.0) > 1e-6 or values[0] == 0 or values[2] == 0:
        raise ConfigError("split_fractions", f"must sum to 1 with train, test > 0, got {values}")
    return values


def _is_number(value: object) -> bool:
    """A real number, NaN and infinities included (not a bool, not a string)."""
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def _check_int_list(option: str, values: Sequence[Any], minimum: int) -> None:
    for value in values:
        if isinstance(value, str):
            raise ConfigError(option, f"must be integers, got {value!r}")
        check_int(option, value, minimum=minimum)
    if not values:
        raise ConfigError(option, "must not be empty")


def _flag_text(value: object) -> str:
    """A list flag's element as the command line spells it (``0.7``, ``1``, ``ranking``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def filter_graphs(
    graphs: Sequence[SceneGraph], min_objects: int, max_objects: int, min_relations: int
) -> tuple[list[SceneGraph], dict[str, int]]:
    """The paper's filters: ``min_objects <= objects <= max_objects`` and ``>= min_relations``.

    Returns:
      ``(kept graphs in input order, counts)`` with counts ``input``, ``too_few_objects``,
      ``too_many_objects``, ``too_few_relations`` (each graph counted under its first failing rule)
      and ``kept``.
    """
    kept = []
    counts = {"input": 0, "too_few_objects": 0, "too_many_objects": 0, "too_few_relations": 0}
    for graph in graphs:
        counts["input"] += 1
        if graph.num_objects < min_objects:
            counts["too_few_objects"] += 1
        elif graph.num_objects > max_objects:
            counts["too_many_objects"] += 1
        elif graph.num_relations < min_relations:
            counts["too_few_relations"] += 1
        else:
            kept.append(graph)
    counts["kept"] = len(kept)
    return kept, counts


def split_indices(
    num: int, fractions: tuple[float, float, float], seed: int
) -> dict[str, np.ndarray]:
    """Seeded random train / val / test positions (sorted within each split); test gets the rest."""
    order = np.random.default_rng([seed, 0x5E1]).permutation(num)
    num_train = int(round(fractions[0] * num))
    num_val = int(round(fractions[1] * num))
    parts = {
        "train": order[:num_train],
        "val": order[num_train : num_train + num_val],
        "test": order[num_train + num_val :],
    }
    for name, part in parts.items():
        if part.size < 3 and (name != "val" or fractions[1] > 0):
            raise ConfigError(
                "split_fractions",
                f"the {name} split has {part.size} images (need >= 3) out of {num} kept images",
            )
    return {name: np.sort(part) for name, part in parts.items()}


def source_graphs(source: SourceConfig) -> tuple[list[SceneGraph], Vocab, dict[str, Any]]:
    """Graphs with captions attached (where known), their vocabulary and source notes."""
    notes: dict[str, Any] = {"dataset": source.dataset}
    if source.dataset == "synthetic":
        dataset = synthetic.generate(
            synthetic.SyntheticConfig(
                num_images=source.synthetic_images,
                min_objects=source.synthetic_min_objects,
                max_objects=source.synthetic_max_objects,
                min_relations=source.synthetic_min_relations,
                max_relations=source.synthetic_max_relations,
                seed=source.synthetic_seed,
                world_seed=source.synthetic_seed,
            )
        )
        caption_config = synthetic_captions.CaptionConfig(
            num_scene_types=source.scene_types,
            scene_words=source.caption_scene_words,
            noise=source.caption_noise,
            seed=source.synthetic_seed,
        )
        graphs, _ = synthetic_captions.synthesize(dataset.graphs, dataset.vocab, caption_config)
        notes["captions"] = "synthetic (sgg_jax.projects.sg_embed.synthetic_captions)"
        notes["caption_config"] = {
            "num_scene_types": caption_config.num_scene_types,
            "scene_words": caption_config.scene_words,
            "noise": caption_config.noise,
        }
        return graphs, dataset.vocab, notes
    if source.dataset == "gqa200_captions":
        graphs, vocab = gqa200.load_bundled("all")
        if source.captions:
            table = captions_lib.read(source.captions)
            notes["captions"] = source.captions
        else:
            table = captions_lib.load_bundled()
            notes["captions"] = "bundled COCO captions of 1,403 VG images"
        with_captions = captions_lib.attach(graphs, table)
        notes["graphs_with_captions"] = len(with_captions)
        if not with_captions:
            raise DataError(
                "no GQA-200 image has a caption", path=source.captions or "bundled captions"
            )
        return with_captions, vocab, notes
    sizes: dict[str, int | None] = {}
    if source.vg_vocab == "min_count":
        # The paper's vocabulary: every name seen at least vg_vocab_min_count times, no size limit.
        sizes = {"num_object_classes": None, "num_predicates": None}
        sizes["min_count"] = source.vg_vocab_min_count
    graphs, vocab, report = vg_json.read_relationships(
        source.vg_relationships,
        vocab=vg150.load_bundled_vocab() if source.vg_vocab == "vg150" else None,
        image_data_path=source.vg_image_data,
        **sizes,
    )
    notes["vocabulary"] = {
        "vg150": "VG150 (bundled)",
        "built": "150 / 50 most frequent names",
        "min_count": f"names seen >= {source.vg_vocab_min_count} times",
    }[source.vg_vocab]
    if source.vg_max_images:
        graphs = graphs[: source.vg_max_images]
    table = vg_json.read_coco_captions(list(source.coco_captions), source.vg_image_data)
    notes["captions"] = ", ".join(source.coco_captions)
    notes["vg_read_report"] = str(report)
    return captions_lib.attach(graphs, table, keep_missing=True), vocab, notes


def caption_word_vectors(
    similarity: SimilarityConfig, caption_table: dict[str, Sequence[str]]
) -> tuple[dict, str]:
    """Vectors of the caption words (GloVe, else seeded random ones) and a note naming them."""
    words = similarity_lib.caption_vocabulary(caption_table.values())
    if similarity.glove:
        return word_vectors.read_glove(similarity.glove, words), f"GloVe {similarity.glove}"
    vectors = word_vectors.random_word_vectors(
        words, similarity.word_vector_dim, seed=similarity.word_vector_seed
    )
    return vectors, f"seeded random {similarity.word_vector_dim}-d word vectors (no GloVe)"


def load_data(config: SGEmbedExperimentConfig) -> dict[str, Any]:
    """Graphs, vocabulary, similarity matrix of the kept images, split positions and a summary.

    Raises:
      DataError: naming the file of a missing / malformed input, or when no image is left.
      ConfigError: a split of fewer than 3 images (``split_fractions``).
    """
    split, options = config.split, config.similarity
    graphs, vocab, notes = source_graphs(config.source)
    graphs, filter_counts = filter_graphs(
        graphs, split.min_objects, split.max_objects, split.min_relations
    )
    if not graphs:
        raise DataError(
            f"no graph passes the filters ({filter_counts})",
            path=config.source.dataset,
            field="graphs",
        )
    caption_table = {g.image_id: g.captions for g in graphs if g.captions}
    if options.similarity_npy:
        similarity = similarity_lib.load_similarity_matrix(
            options.similarity_npy, len(graphs), bounded=not options.similarity_npy_unbounded
        )
        notes["similarity"] = f"user matrix {options.similarity_npy}"
        skipped = 0
    else:
        if not caption_table:
            raise DataError(
                f"none of the {len(graphs)} images left after the filters has a caption",
                path=notes.get("captions", config.source.dataset),
                field="captions",
            )
        vectors, source = caption_word_vectors(options, caption_table)
        similarity, report = similarity_lib.caption_similarity(
            [g.image_id for g in graphs],
            caption_table,
            vectors,
            normalise_captions=options.normalise_captions,
        )
        graphs = [graphs[i] for i in report.image_indices]
        skipped = report.num_skipped_images
        notes["similarity"] = f"caption similarity, {source}, " + (
            "mean cosine" if options.normalise_captions else "mean inner product"
        )
        notes["caption_tokens"] = report.num_tokens
        notes["caption_tokens_without_vector"] = report.num_missing_tokens
    fractions = tuple(float(v) for v in split.split_fractions)
    splits = split_indices(len(graphs), fractions, split.split_seed)
    summary = {
        **notes,
        "filters": {
            "min_objects": split.min_objects,
            "max_objects": split.max_objects,
            "min_relations": split.min_relations,
            **filter_counts,
        },
        "images_without_captions_skipped": skipped,
        "num_images": len(graphs),
        "split_sizes": {name: int(part.size) for name, part in splits.items()},
        "num_object_classes": len(vocab.object_names) - 1,
        "num_predicates": len(vocab.predicate_names) - 1,
        "mean_objects": float(np.mean([g.num_objects for g in graphs])),
        "mean_relations": float(np.mean([g.num_relations for g in graphs])),
    }
    return {
        "graphs": graphs,
        "vocab": vocab,
        "similarity": similarity,
        "splits": splits,
        "summary": summary,
    }


def _subset(data: dict[str, Any], split: str) -> tuple[list[SceneGraph], np.ndarray]:
    positions = data["splits"][split]
    graphs = [data["graphs"][i] for i in positions]
    return graphs, data["similarity"][np.ix_(positions, positions)]


def write_data_files(data: dict[str, Any], workdir: str) -> None:
    """``images.txt`` (image id and split of every kept image, in order) and ``data_summary.json``."""
    os.makedirs(workdir, exist_ok=True)
    split_of = {}
    for name, part in data["splits"].items():
        split_of.update((int(position), name) for position in part)
    with open(os.path.join(workdir, "images.txt"), "w") as handle:
        for position, graph in enumerate(data["graphs"]):
            handle.write(f"{graph.image_id}\t{split_of[position]}\n")
    with open(os.path.join(workdir, "data_summary.json"), "w") as handle:
        json.dump(data["summary"], handle, indent=1)


# ---------------------------------------------------------------------------------------------
# Grid
# ---------------------------------------------------------------------------------------------


def model_config(
    config: SGEmbedExperimentConfig, vocab: Vocab
) -> tuple[SGGCNConfig, dict[str, np.ndarray]]:
    """The GCN's config and the word vectors ``sg_gcn.with_tables`` puts into its variables."""
    embed_dim, hidden_dim, num_layers = config.model.sizes()
    glove = config.similarity.glove
    object_vectors = predicate_vectors = None
    if config.model.init_word_vectors:
        object_vectors, _ = word_vectors.glove_name_vectors(glove, vocab.object_names)
        predicate_vectors, _ = word_vectors.glove_name_vectors(glove, vocab.predicate_names)
        if object_vectors.shape[1] != embed_dim:
            raise ConfigError(
                "embed_dim", f"is {embed_dim} but --glove has {object_vectors.shape[1]} dimensions"
            )
    gcn_config = SGGCNConfig(
        num_object_classes=len(vocab.object_names) - 1,
        num_predicates=len(vocab.predicate_names) - 1,
        embed_dim=embed_dim,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
    )
    tables = {}
    if config.model.init_word_vectors:
        tables = {
            "object_word_vectors": object_vectors,
            "predicate_word_vectors": predicate_vectors,
        }
    return gcn_config, tables


def evaluate_embedder(
    embedder,
    graphs: list[SceneGraph],
    similarity: np.ndarray,
    noise_ms: Sequence[int],
    seed: int,
    backend: str = "exact",
) -> dict[str, Any]:
    """Test rank correlations and the incomplete-query retrieval sweep of one embedder."""
    correlations = embedding_eval.rank_correlations(embedder(graphs), similarity)
    sweep = embedding_eval.noise_sweep(
        embedder,
        graphs,
        noise_ms,
        seed=seed,
        ks=(1, 5, 10),
        backend=backend,
    )
    return {
        "correlations": correlations,
        "noise_sweep": {
            str(m): {k: v for k, v in metrics.items() if k != "recall_curve"}
            for m, metrics in sweep.items()
        },
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, np.float64)
    return float(np.mean(array)), float(np.std(array))


def aggregate(runs: list[dict[str, Any]], noise_ms: Sequence[int]) -> dict[str, Any]:
    """Mean and std over seeds of the test metrics of one grid cell."""
    out: dict[str, Any] = {}
    for key in CORRELATION_KEYS:
        out[key] = _mean_std([run["test"]["correlations"][key] for run in runs])
    for m in noise_ms:
        for metric in ("MRR", "R@1", "R@5", "R@10"):
            out[f"{metric}@M={m}"] = _mean_std(
                [run["test"]["noise_sweep"][str(m)][metric] for run in runs]
            )
    out["MRR_mean_over_M"] = _mean_std(
        [np.mean([run["test"]["noise_sweep"][str(m)]["MRR"] for m in noise_ms]) for run in runs]
    )
    return out


def _cell(mean_std: tuple[float, float], seeds: int, bold: bool = False) -> str:
    mean, std = mean_std
    text = f"{mean:.3f}" if seeds == 1 else f"{mean:.3f} ± {std:.3f}"
    return f"**{text}**" if bold else text


def _table(
    cells: dict[str, Any], columns: Sequence[str], baselines: dict[str, Any], seeds: int
) -> list[str]:
    """Markdown rows: header, baselines (plain values), grid cells (best per column in bold)."""
    best = {c: max(cell["aggregate"][c][0] for cell in cells.values()) for c in columns}
    lines = [
        "| objective | sampler | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for baseline, values in baselines.items():
        lines.append(
            f"| {baseline} | — | " + " | ".join(f"{values[c]:.3f}" for c in columns) + " |"
        )
    for cell in cells.values():
        agg = cell["aggregate"]
        lines.append(
            f"| {cell['objective']} | {cell['sampler']} | "
            + " | ".join(_cell(agg[c], seeds, agg[c][0] == best[c]) for c in columns)
            + " |"
        )
    return lines


def markdown_tables(results: dict[str, Any]) -> str:
    """The correlation table and the retrieval table of the grid, best value per column in bold."""
    cells = results["grid"]
    seeds = len(results["config"]["seeds"])
    noise_ms = results["config"]["noise_ms"]
    lines = [
        f"Test split: {results['data']['split_sizes']['test']} images "
        f"({results['data']['dataset']}); mean over {seeds} seed(s)"
        + ("" if seeds == 1 else " ± std")
        + ".",
        "",
        "Rank correlation between f_X·f_Y and s_XY (row-wise mean | all pairs):",
        "",
        *_table(cells, CORRELATION_KEYS, results["baselines"], seeds),
    ]
    reported = [m for m in results["config"]["report_ms"] if m in noise_ms] or list(noise_ms[:4])
    columns = [f"MRR@M={m}" for m in reported] + [f"R@1@M={m}" for m in reported]
    columns += [f"R@5@M={m}" for m in reported] + ["MRR_mean_over_M"]
    lines += [
        "",
        "Retrieval with incomplete queries (M relations removed; the query must find its own image "
        "among all test images):",
        "",
        *_table(cells, columns, results.get("baseline_retrieval", {}), seeds),
    ]
    first_run = next(iter(cells.values()))["runs"][0]["test"]["noise_sweep"]
    empty = ", ".join(
        f"M={m}: {first_run[str(m)]['num_empty_queries'] / first_run[str(m)]['num_queries']:.0%}"
        for m in reported
    )
    lines += [
        "",
        f"Queries left with no relation (the image node alone; they cannot find their image): {empty}.",
    ]
    return "\n".join(lines) + "\n"


def plot_grid_sweep(results: dict[str, Any], path: str) -> str:
    """MRR and R@5 against M for every grid cell (colour: objective, line style: sampler)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    noise_ms = results["config"]["noise_ms"]
    colours = {"ranking": "tab:red", "triplet": "tab:blue", "infonce": "tab:green"}
    styles = {"random": ":", "extreme": "-.", "probability": "-", "reject": "--"}
    figure = Figure(figsize=(11.0, 4.0), dpi=110)
    FigureCanvasAgg(figure)
    for column, metric in enumerate(("MRR", "R@5")):
        axes = figure.add_subplot(1, 2, column + 1)
        for name, cell in results["grid"].items():
            values = [cell["aggregate"][f"{metric}@M={m}"][0] for m in noise_ms]
            axes.plot(
                noise_ms,
                values,
                color=colours.get(cell["objective"], "black"),
                linestyle=styles.get(cell["sampler"], "-"),
                label=name,
            )
        for baseline, values in results.get("baseline_retrieval", {}).items():
            if all(f"{metric}@M={m}" in values for m in noise_ms):
                axes.plot(
                    noise_ms,
                    [values[f"{metric}@M={m}"] for m in noise_ms],
                    color="grey",
                    linewidth=0.8,
                    label=baseline,
                )
        axes.set_xlabel("M (relations removed from the query)")
        axes.set_ylabel(metric)
        axes.set_ylim(0.0, 1.02)
        axes.grid(alpha=0.3)
        if column == 1:
            axes.legend(fontsize=6, ncol=2)
    figure.suptitle(f"Incomplete-query retrieval ({results['data']['dataset']} test)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    return path


def run_grid(config: SGEmbedExperimentConfig, workdir: str, data: dict[str, Any]) -> dict[str, Any]:
    """Baselines and every (objective, sampler, seed) run on the loaded ``data``; the results dict
    (the embedder with the best validation ``kendall_row`` saved to ``<workdir>/embedder``)."""
    grid, evaluation = config.grid, config.evaluation
    vocab, noise_ms = data["vocab"], list(evaluation.noise_ms)
    backend = evaluation.retrieval_backend
    train_graphs, train_similarity = _subset(data, "train")
    val_graphs, val_similarity = _subset(data, "val")
    test_graphs, test_similarity = _subset(data, "test")
    gcn_config, tables = model_config(config, vocab)
    init_variables = functools.partial(sg_gcn.with_tables, **tables) if tables else None
    max_nodes, max_edges = sg_embed.graph_budgets(data["graphs"])
    eval_seed = grid.seeds[0]

    results: dict[str, Any] = {
        "config": {
            "flags": config.flag_values(workdir),
            "seeds": list(grid.seeds),
            "noise_ms": noise_ms,
            "report_ms": list(evaluation.report_ms),
            "model": {
                "embed_dim": gcn_config.embed_dim,
                "hidden_dim": gcn_config.hidden_dim,
                "num_layers": gcn_config.num_layers,
                "max_nodes": max_nodes,
                "max_edges": max_edges,
            },
        },
        "data": data["summary"],
        "baselines": {},
        "baseline_retrieval": {},
        "grid": {},
    }
    random_baseline = embedding_eval.random_embedding_baseline(
        len(test_graphs),
        gcn_config.embed_dim,
        test_similarity,
        seed=eval_seed,
        repeats=evaluation.baseline_repeats,
    )
    results["baselines"]["random N(0, I) embeddings"] = {
        k: random_baseline[k] for k in CORRELATION_KEYS
    }
    untrained = sg_embed.initial_embedder(
        gcn_config,
        max_nodes=max_nodes,
        max_edges=max_edges,
        seed=eval_seed,
        init_variables=init_variables,
    )
    untrained_eval = evaluate_embedder(
        untrained, test_graphs, test_similarity, noise_ms, eval_seed, backend
    )
    results["baselines"]["untrained GCN"] = {
        k: untrained_eval["correlations"][k] for k in CORRELATION_KEYS
    }
    results["baseline_retrieval"]["untrained GCN"] = {
        f"{metric}@M={m}": untrained_eval["noise_sweep"][str(m)][metric]
        for m in noise_ms
        for metric in ("MRR", "R@1", "R@5", "R@10")
    }
    results["baseline_retrieval"]["untrained GCN"]["MRR_mean_over_M"] = float(
        np.mean([untrained_eval["noise_sweep"][str(m)]["MRR"] for m in noise_ms])
    )
    print(
        "baselines (test kendall_row / spearman_all): random "
        f"{random_baseline['kendall_row']:.4f} / {random_baseline['spearman_all']:.4f}, untrained "
        f"GCN {untrained_eval['correlations']['kendall_row']:.4f} / "
        f"{untrained_eval['correlations']['spearman_all']:.4f}",
        flush=True,
    )

    def validation(embedder) -> dict[str, Any]:
        if len(val_graphs) < 3:
            return {}
        metrics = embedding_eval.rank_correlations(embedder(val_graphs), val_similarity)
        return {f"val_{k}": metrics[k] for k in ("kendall_row", "spearman_all")}

    grid_start = time.perf_counter()
    best_val: dict[str, Any] = {"score": -np.inf}
    for objective in grid.objectives:
        for sampler in grid.samplers:
            name = f"{objective}/{sampler}"
            runs = []
            for seed in grid.seeds:
                train_config = grid.train_config(
                    objective, sampler, max_nodes=max_nodes, max_edges=max_edges, seed=seed
                )
                start = time.perf_counter()
                trained = sg_embed.train_embedding(
                    train_graphs,
                    train_similarity,
                    gcn_config,
                    train_config,
                    eval_fn=validation,
                    eval_every=grid.eval_every,
                    init_variables=init_variables,
                )
                test = evaluate_embedder(
                    trained.embedder, test_graphs, test_similarity, noise_ms, eval_seed, backend
                )
                runs.append(
                    {
                        "seed": seed,
                        "steps": trained.steps,
                        "train_seconds": trained.train_seconds,
                        "total_seconds": time.perf_counter() - start,
                        "epoch_losses": trained.losses,
                        "val_history": trained.history,
                        "test": test,
                    }
                )
                val_score = (trained.history[-1] if trained.history else {}).get(
                    "val_kendall_row", -np.inf
                )
                if np.isfinite(val_score) and val_score > best_val["score"]:
                    best_val = {
                        "score": float(val_score),
                        "name": name,
                        "seed": seed,
                        "embedder": trained.embedder,
                    }
                corr = test["correlations"]
                print(
                    f"{name} seed {seed}: kendall_row {corr['kendall_row']:.4f} spearman_all "
                    f"{corr['spearman_all']:.4f} MRR@M=1 {test['noise_sweep'][str(noise_ms[0])]['MRR']:.3f} "
                    f"({trained.steps} steps, {time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
            results["grid"][name] = {
                "objective": objective,
                "sampler": sampler,
                "runs": runs,
                "aggregate": aggregate(runs, noise_ms),
            }
    results["grid_seconds"] = time.perf_counter() - grid_start
    best = max(results["grid"], key=lambda n: results["grid"][n]["aggregate"]["kendall_row"][0])
    results["best_by_kendall_row"] = best
    if config.save_embedder and "embedder" in best_val:
        path = os.path.join(workdir, "embedder")
        if os.path.exists(path):
            shutil.rmtree(path)
        sg_embed.save_embedder(
            best_val["embedder"],
            path,
            object_names=vocab.object_names,
            predicate_names=vocab.predicate_names,
            extra={
                "run": best_val["name"],
                "seed": best_val["seed"],
                "val_kendall_row": best_val["score"],
            },
        )
        results["saved_embedder"] = {
            "path": path,
            "run": best_val["name"],
            "seed": best_val["seed"],
            "val_kendall_row": best_val["score"],
        }
    return results


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def run(config: SGEmbedExperimentConfig, workdir: str) -> dict[str, Any]:
    """Loads the data of ``config`` and runs its method; outputs go to ``workdir``.

    Returns:
      ``data``: the data summary; ``grid``: the results (as written to ``results.json``).

    Raises:
      DataError, ConfigError: one line naming the file or the flag (a ``workdir`` that is a file
        or cannot be written: before anything is loaded).
    """
    check_writable_dir(workdir, "workdir")
    start = time.perf_counter()
    data = load_data(config)
    summary = data["summary"]
    print(
        f"{summary['dataset']}: {summary['num_images']} images after filters and captions "
        f"(train/val/test {summary['split_sizes']}); filters {summary['filters']}; "
        f"{summary['images_without_captions_skipped']} skipped without captions; "
        f"similarity: {summary['similarity']}",
        flush=True,
    )
    write_data_files(data, workdir)
    if config.method == "data":
        print(f"data summary and image order in {workdir}")
        return summary
    results = run_grid(config, workdir, data)
    results["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(workdir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    table = markdown_tables(results)
    with open(os.path.join(workdir, "results.md"), "w") as handle:
        handle.write(table)
    plot_grid_sweep(results, os.path.join(workdir, "noise_sweep.png"))
    print()
    print(table)
    print(
        f"best by test kendall_row: {results['best_by_kendall_row']}; wall time "
        f"{results['wall_seconds']:.0f} s; results in {workdir}"
    )
    return results
