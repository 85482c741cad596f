"""Scene-graph embeddings with relative similarity supervision: the objectives x samplers grid.

``python -m experiments.sg_embed --flagfile=experiments/flags/sg_embed_synthetic.flags``

Reproduces the protocol of Maheshwari, Chaudhry and Vinay, "Scene Graph Embeddings Using Relative
Similarity Supervision" (AAAI 2021): a graph convolutional network
(:class:`sgg_jax.projects.sg_embed.sg_gcn.SceneGraphGCN`) embeds each image's scene graph; it is trained from
the caption similarity ``s_XY`` of the training images with every combination of

* objective (``--objectives``): Ranking (the paper's), Triplet, InfoNCE;
* triplet sampler (``--samplers``): Random, Extreme, Probability, Reject;

and evaluated on the test images (the paper's Tables 2 and 3):

* rank correlations (Kendall tau-b, Spearman rho, Pearson r) between the model similarities
  ``f_X . f_Y`` and ``s_XY``, row-wise (per image, averaged) and over all pairs, next to random
  normal embeddings and the untrained GCN;
* retrieval with incomplete queries: ``M = 1..20`` random relations removed from each test graph,
  isolated objects dropped; the query must retrieve its own image among all test images (MRR, R@1,
  R@5, R@10), searched through :mod:`sgg_jax.retrieval` (exact or ScaNN).

Data (``--dataset``):

* ``synthetic``: graphs of :mod:`sgg_jax.data.synthetic` with captions of
  :mod:`sgg_jax.projects.sg_embed.synthetic_captions` (a hidden scene type plus the graph's relations, with word
  noise): caption similarity is informative about the graphs but noisy.
* ``gqa200_captions``: the real GQA-200 scene graphs (bundled) of the images that also have COCO
  captions (bundled; 117 images before the filters). This is **tiny**: a smoke test on real data, not
  a benchmark.
* ``vg_json``: the raw Visual Genome ``relationships.json`` + COCO caption files joined through VG's
  ``image_data.json`` (:mod:`sgg_jax.data.vg_json`), for users who have them. ``--vg_vocab``: the
  bundled VG150 vocabulary, the 150 / 50 most frequent names, or (``min_count``, the paper's) every
  object / relation type seen at least ``--vg_vocab_min_count`` = 25 times.

Filters from the paper: 3 to 40 objects and at least one relation; then images without captions are
skipped (counted; an error when none is left). The kept images are split 70/20/10 (train/val/test)
in a seeded random order. Caption words get GloVe vectors (``--glove``) or, without GloVe, seeded
random word vectors (then ``s_XY`` compares captions by their shared words). Caption embeddings
are L2-normalised (``--normalise_captions``, the default): ``s_XY`` is a mean cosine in ``[-1, 1]``,
the range the Probability / Reject samplers are defined on; ``--nonormalise_captions`` (raw inner
products) is accepted only with the Random / Extreme samplers. ``--similarity_npy`` replaces the
caption similarity by a user matrix over the kept images (their order is written to
``<workdir>/images.txt`` by ``--method=data``), with values in ``[-1, 1]`` (a ``DataError`` naming
the file otherwise; ``--similarity_npy_unbounded`` accepts any values, Random / Extreme only).
Invalid flag combinations raise a ``ConfigError`` naming the flag before any data is read.

Outputs in ``--workdir``: ``results.json`` (config, data summary, baselines and every run: test
correlations, validation history, noise sweep, timings), ``results.md`` (the tables) and
``noise_sweep.png`` (MRR and R@5 against ``M`` for every run).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from sgg_jax.data import captions as captions_lib
from sgg_jax.data import gqa200, synthetic, vg150, vg_json, word_vectors
from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.evaluation import embedding as embedding_eval
from sgg_jax.projects.sg_embed import sg_gcn, synthetic_captions
from sgg_jax.projects.sg_embed import similarity as similarity_lib
from sgg_jax.projects.sg_embed import train as sg_embed
from sgg_jax.projects.sg_embed.sg_gcn import SGGCNConfig
from sgg_jax.projects.sg_embed.triplet_samplers import BOUNDED_SAMPLERS, SAMPLERS
from sgg_jax.structures import SceneGraph, Vocab

FLAGS = flags.FLAGS
_FLAGS_BEFORE = set(FLAGS)

flags.DEFINE_enum("method", "grid", ["grid", "data"], "grid: train and evaluate; data: data only.")
flags.DEFINE_enum(
    "dataset", "synthetic", ["synthetic", "gqa200_captions", "vg_json"], "Scene graphs + captions."
)
flags.DEFINE_string("workdir", "/tmp/sgg_jax/sg_embed", "Output directory.")
flags.DEFINE_integer("synthetic_images", 2000, "Images generated for dataset=synthetic.")
flags.DEFINE_integer("synthetic_seed", 0, "Seed of the synthetic graphs.")
flags.DEFINE_integer("synthetic_min_objects", 3, "Fewest objects per synthetic image.")
flags.DEFINE_integer("synthetic_max_objects", 12, "Most objects per synthetic image.")
flags.DEFINE_integer("synthetic_min_relations", 1, "Fewest relations per synthetic image.")
flags.DEFINE_integer("synthetic_max_relations", 8, "Most relations per synthetic image.")
flags.DEFINE_integer("scene_types", 8, "Hidden scene types of the synthetic captions.")
flags.DEFINE_float("caption_noise", 0.3, "Word-replacement probability of the synthetic captions.")
flags.DEFINE_integer("caption_scene_words", 2, "Scene-type words per synthetic caption.")
flags.DEFINE_string("captions", None, "Caption JSON (dataset=gqa200_captions; default: bundled).")
flags.DEFINE_string("vg_relationships", None, "VG relationships.json (dataset=vg_json).")
flags.DEFINE_list("coco_captions", [], "COCO captions_*.json files (dataset=vg_json).")
flags.DEFINE_string("vg_image_data", None, "VG image_data.json with coco_id (dataset=vg_json).")
flags.DEFINE_integer("vg_max_images", 0, "Keep only the first N VG images (0 = all).")
flags.DEFINE_enum(
    "vg_vocab",
    "vg150",
    ["vg150", "built", "min_count"],
    "dataset=vg_json: the VG150 vocabulary (bundled dicts), the 150 / 50 most frequent names "
    "(built), or every object / predicate name seen at least --vg_vocab_min_count times "
    "(min_count, the paper's).",
)
flags.DEFINE_integer(
    "vg_vocab_min_count",
    25,
    "With --vg_vocab=min_count: fewest objects / relations a name needs (>= 1; the paper's: 25).",
)
flags.DEFINE_string("glove", None, "GloVe .txt for caption words (and --init_word_vectors).")
flags.DEFINE_integer("word_vector_dim", 300, "Dimension of the seeded random word vectors.")
flags.DEFINE_integer("word_vector_seed", 0, "Seed of the random word vectors.")
flags.DEFINE_bool(
    "normalise_captions",
    True,
    "L2-normalise caption embeddings (s_XY = mean cosine, in [-1, 1], the paper's and what the "
    "Probability / Reject samplers need); --nonormalise_captions = raw inner products of the "
    "averaged word vectors (unbounded: only with the random / extreme samplers).",
)
flags.DEFINE_string(
    "similarity_npy", None, "User similarity .npy over the kept images (values in [-1, 1])."
)
flags.DEFINE_bool(
    "similarity_npy_unbounded",
    False,
    "Accept a --similarity_npy with values outside [-1, 1] (only with the random / extreme "
    "samplers, which read the order of the values).",
)
flags.DEFINE_bool(
    "init_word_vectors", False, "Initialise object / predicate embeddings from --glove (D = 300)."
)
flags.DEFINE_integer("min_objects", 3, "Keep graphs with at least this many objects.")
flags.DEFINE_integer("max_objects", 40, "Keep graphs with at most this many objects.")
flags.DEFINE_integer("min_relations", 1, "Keep graphs with at least this many relations.")
flags.DEFINE_list("split_fractions", ["0.7", "0.2", "0.1"], "train, val, test fractions.")
flags.DEFINE_integer("split_seed", 0, "Seed of the train/val/test split.")
flags.DEFINE_list("objectives", list(sg_embed.OBJECTIVES), "Objectives of the grid.")
flags.DEFINE_list("samplers", ["random", "extreme", "probability", "reject"], "Samplers.")
flags.DEFINE_list("seeds", ["0"], "Training seeds; the tables show the mean (and std).")
flags.DEFINE_enum("model_size", "small", ["small", "official"], "GCN sizes (see --embed_dim).")
flags.DEFINE_integer("embed_dim", 0, "D (0 = the model size's: small 64, official 300).")
flags.DEFINE_integer("hidden_dim", 0, "H (0 = the model size's: small 128, official 512).")
flags.DEFINE_integer("num_layers", 0, "Layers (0 = the model size's: small 3, official 5).")
flags.DEFINE_integer("epochs", 8, "Epochs (every training image is an anchor once per epoch).")
flags.DEFINE_integer("batch_size", 16, "Anchors per step (paper: 16).")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate (paper: 1e-4).")
flags.DEFINE_float("nu", 1.0, "Ranking loss temperature.")
flags.DEFINE_float("margin", 0.5, "Triplet loss margin.")
flags.DEFINE_float("temperature", 1.0, "InfoNCE temperature.")
flags.DEFINE_integer("eval_every", 2, "Epochs between validation rank correlations (0 = end).")
flags.DEFINE_list("noise_ms", [str(m) for m in range(1, 21)], "Relations removed from queries.")
flags.DEFINE_list("report_ms", ["1", "5", "10", "20"], "Values of M shown in the retrieval table.")
flags.DEFINE_enum("retrieval_backend", "exact", ["exact", "scann"], "Gallery search backend.")
flags.DEFINE_integer("baseline_repeats", 10, "Draws of the random-embedding baseline.")
flags.DEFINE_bool(
    "save_embedder",
    True,
    "Save the run with the best validation kendall_row to <workdir>/embedder "
    "(sgg_jax.projects.sg_embed.train.load_embedder / load_exported_embed_function).",
)
OWN_FLAGS = tuple(sorted(set(FLAGS) - _FLAGS_BEFORE))

SIZES = {"small": (64, 128, 3), "official": (300, 512, 5)}
CORRELATION_KEYS = tuple(
    f"{name}_{scope}" for scope in ("row", "all") for name in embedding_eval.CORRELATIONS
)


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


def _fractions() -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in FLAGS.split_fractions)
    except ValueError:
        raise ConfigError(
            "split_fractions", f"must be numbers, got {FLAGS.split_fractions}"
        ) from None
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values):
        raise ConfigError("split_fractions", f"must be three numbers >= 0, got {values}")
    if abs(sum(values) - 1.0) > 1e-6 or values[0] == 0 or values[2] == 0:
        raise ConfigError("split_fractions", f"must sum to 1 with train, test > 0, got {values}")
    return values


def _int_list(name: str, minimum: int) -> list[int]:
    values = []
    for text in getattr(FLAGS, name):
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(name, f"must be integers, got {text!r}") from None
        check_int(name, value, minimum=minimum)
        values.append(value)
    if not values:
        raise ConfigError(name, "must not be empty")
    return values


def _check_similarity_flags() -> None:
    """The similarity flags that cannot go together (s_XY must be in [-1, 1] for some samplers)."""
    if FLAGS.similarity_npy_unbounded and not FLAGS.similarity_npy:
        raise ConfigError("similarity_npy_unbounded", "only applies to --similarity_npy")
    if FLAGS.similarity_npy and not FLAGS.normalise_captions:
        raise ConfigError(
            "normalise_captions",
            "--nonormalise_captions has no effect with --similarity_npy (the matrix is used as "
            "given); drop one of them",
        )
    bounded = sorted({s for s in FLAGS.samplers if s in BOUNDED_SAMPLERS})
    if FLAGS.method != "grid" or not bounded:
        return
    if FLAGS.similarity_npy_unbounded:
        raise ConfigError(
            "similarity_npy_unbounded",
            f"the {' / '.join(bounded)} sampler(s) need similarities in [-1, 1]; rescale the "
            "matrix or use only --samplers=random,extreme",
        )
    if not FLAGS.similarity_npy and not FLAGS.normalise_captions:
        raise ConfigError(
            "normalise_captions",
            f"--nonormalise_captions gives raw inner products outside [-1, 1], which the "
            f"{' / '.join(bounded)} sampler(s) cannot read; keep --normalise_captions or use only "
            "--samplers=random,extreme",
        )


def check_flags() -> dict[str, Any]:
    """Validates the flags before any data is read; returns the parsed lists."""
    for objective in FLAGS.objectives:
        if objective not in sg_embed.OBJECTIVES:
            raise ConfigError("objectives", f"{objective!r} is not one of {sg_embed.OBJECTIVES}")
    for sampler in FLAGS.samplers:
        if sampler not in SAMPLERS:
            raise ConfigError("samplers", f"{sampler!r} is not one of {sorted(SAMPLERS)}")
    if FLAGS.method == "grid" and (not FLAGS.objectives or not FLAGS.samplers):
        raise ConfigError("objectives", "the grid needs at least one objective and one sampler")
    check_int("min_objects", FLAGS.min_objects, minimum=0)
    check_int("max_objects", FLAGS.max_objects, minimum=max(1, FLAGS.min_objects))
    check_int("min_relations", FLAGS.min_relations, minimum=0)
    check_int("synthetic_images", FLAGS.synthetic_images, minimum=3)
    check_int("word_vector_dim", FLAGS.word_vector_dim, minimum=1)
    check_int("vg_max_images", FLAGS.vg_max_images, minimum=0)
    check_int("vg_vocab_min_count", FLAGS.vg_vocab_min_count, minimum=1)
    check_int("baseline_repeats", FLAGS.baseline_repeats, minimum=1)
    check_int("eval_every", FLAGS.eval_every, minimum=0)
    for name in ("embed_dim", "hidden_dim", "num_layers"):
        check_int(name, getattr(FLAGS, name), minimum=0)
    if FLAGS.dataset == "vg_json":
        for name in ("vg_relationships", "vg_image_data"):
            if not getattr(FLAGS, name):
                raise ConfigError(name, "is required with --dataset=vg_json")
        if not FLAGS.coco_captions:
            raise ConfigError("coco_captions", "is required with --dataset=vg_json")
    if FLAGS.init_word_vectors and not FLAGS.glove:
        raise ConfigError("init_word_vectors", "needs --glove")
    _check_similarity_flags()
    parsed = {
        "fractions": _fractions(),
        "seeds": _int_list("seeds", 0),
        "noise_ms": _int_list("noise_ms", 0),
        "report_ms": _int_list("report_ms", 0),
    }
    # Training options are validated here too, so a bad value fails before any data is read.
    sg_embed.EmbedTrainConfig(
        objective=FLAGS.objectives[0] if FLAGS.objectives else "ranking",
        sampler=FLAGS.samplers[0] if FLAGS.samplers else "random",
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        nu=FLAGS.nu,
        margin=FLAGS.margin,
        temperature=FLAGS.temperature,
    )
    return parsed


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


def _source_graphs() -> tuple[list[SceneGraph], Vocab, dict[str, Any]]:
    """Graphs with captions attached (where known), their vocabulary and source notes."""
    notes: dict[str, Any] = {"dataset": FLAGS.dataset}
    if FLAGS.dataset == "synthetic":
        dataset = synthetic.generate(
            synthetic.SyntheticConfig(
                num_images=FLAGS.synthetic_images,
                min_objects=FLAGS.synthetic_min_objects,
                max_objects=FLAGS.synthetic_max_objects,
                min_relations=FLAGS.synthetic_min_relations,
                max_relations=FLAGS.synthetic_max_relations,
                seed=FLAGS.synthetic_seed,
                world_seed=FLAGS.synthetic_seed,
            )
        )
        caption_config = synthetic_captions.CaptionConfig(
            num_scene_types=FLAGS.scene_types,
            scene_words=FLAGS.caption_scene_words,
            noise=FLAGS.caption_noise,
            seed=FLAGS.synthetic_seed,
        )
        graphs, _ = synthetic_captions.synthesize(dataset.graphs, dataset.vocab, caption_config)
        notes["captions"] = "synthetic (sgg_jax.projects.sg_embed.synthetic_captions)"
        notes["caption_config"] = {
            "num_scene_types": caption_config.num_scene_types,
            "scene_words": caption_config.scene_words,
            "noise": caption_config.noise,
        }
        return graphs, dataset.vocab, notes
    if FLAGS.dataset == "gqa200_captions":
        graphs, vocab = gqa200.load_bundled("all")
        if FLAGS.captions:
            table = captions_lib.read(FLAGS.captions)
            notes["captions"] = FLAGS.captions
        else:
            table = captions_lib.load_bundled()
            notes["captions"] = "bundled COCO captions of 1,403 VG images"
        with_captions = captions_lib.attach(graphs, table)
        notes["graphs_with_captions"] = len(with_captions)
        if not with_captions:
            raise DataError(
                "no GQA-200 image has a caption", path=FLAGS.captions or "bundled captions"
            )
        return with_captions, vocab, notes
    sizes: dict[str, int | None] = {}
    if FLAGS.vg_vocab == "min_count":
        # The paper's vocabulary: every name seen at least vg_vocab_min_count times, no size limit.
        sizes = {"num_object_classes": None, "num_predicates": None}
        sizes["min_count"] = FLAGS.vg_vocab_min_count
    graphs, vocab, report = vg_json.read_relationships(
        FLAGS.vg_relationships,
        vocab=vg150.load_bundled_vocab() if FLAGS.vg_vocab == "vg150" else None,
        image_data_path=FLAGS.vg_image_data,
        **sizes,
    )
    notes["vocabulary"] = {
        "vg150": "VG150 (bundled)",
        "built": "150 / 50 most frequent names",
        "min_count": f"names seen >= {FLAGS.vg_vocab_min_count} times",
    }[FLAGS.vg_vocab]
    if FLAGS.vg_max_images:
        graphs = graphs[: FLAGS.vg_max_images]
    table = vg_json.read_coco_captions(FLAGS.coco_captions, FLAGS.vg_image_data)
    notes["captions"] = ", ".join(FLAGS.coco_captions)
    notes["vg_read_report"] = str(report)
    return captions_lib.attach(graphs, table, keep_missing=True), vocab, notes


def _caption_word_vectors(caption_table: dict[str, Sequence[str]]) -> tuple[dict, str]:
    words = similarity_lib.caption_vocabulary(caption_table.values())
    if FLAGS.glove:
        return word_vectors.read_glove(FLAGS.glove, words), f"GloVe {FLAGS.glove}"
    vectors = word_vectors.random_word_vectors(
        words, FLAGS.word_vector_dim, seed=FLAGS.word_vector_seed
    )
    return vectors, f"seeded random {FLAGS.word_vector_dim}-d word vectors (no GloVe)"


def load_data(fractions, split_seed: int) -> dict[str, Any]:
    """Graphs, vocabulary, similarity matrix of the kept images, split positions and a summary."""
    graphs, vocab, notes = _source_graphs()
    graphs, filter_counts = filter_graphs(
        graphs, FLAGS.min_objects, FLAGS.max_objects, FLAGS.min_relations
    )
    if not graphs:
        raise DataError(
            f"no graph passes the filters ({filter_counts})", path=FLAGS.dataset, field="graphs"
        )
    caption_table = {g.image_id: g.captions for g in graphs if g.captions}
    if FLAGS.similarity_npy:
        similarity = similarity_lib.load_similarity_matrix(
            FLAGS.similarity_npy, len(graphs), bounded=not FLAGS.similarity_npy_unbounded
        )
        notes["similarity"] = f"user matrix {FLAGS.similarity_npy}"
        skipped = 0
    else:
        if not caption_table:
            raise DataError(
                f"none of the {len(graphs)} images left after the filters has a caption",
                path=notes.get("captions", FLAGS.dataset),
                field="captions",
            )
        vectors, source = _caption_word_vectors(caption_table)
        similarity, report = similarity_lib.caption_similarity(
            [g.image_id for g in graphs],
            caption_table,
            vectors,
            normalise_captions=FLAGS.normalise_captions,
        )
        graphs = [graphs[i] for i in report.image_indices]
        skipped = report.num_skipped_images
        notes["similarity"] = f"caption similarity, {source}, " + (
            "mean cosine" if FLAGS.normalise_captions else "mean inner product"
        )
        notes["caption_tokens"] = report.num_tokens
        notes["caption_tokens_without_vector"] = report.num_missing_tokens
    splits = split_indices(len(graphs), fractions, split_seed)
    summary = {
        **notes,
        "filters": {
            "min_objects": FLAGS.min_objects,
            "max_objects": FLAGS.max_objects,
            "min_relations": FLAGS.min_relations,
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


# ---------------------------------------------------------------------------------------------
# Grid
# ---------------------------------------------------------------------------------------------


def model_config(vocab: Vocab) -> tuple[SGGCNConfig, dict[str, np.ndarray]]:
    """The GCN's config and the word vectors ``sg_gcn.with_tables`` puts into its variables."""
    embed_dim, hidden_dim, num_layers = SIZES[FLAGS.model_size]
    embed_dim = FLAGS.embed_dim or embed_dim
    object_vectors = predicate_vectors = None
    if FLAGS.init_word_vectors:
        object_vectors, _ = word_vectors.glove_name_vectors(FLAGS.glove, vocab.object_names)
        predicate_vectors, _ = word_vectors.glove_name_vectors(FLAGS.glove, vocab.predicate_names)
        if object_vectors.shape[1] != embed_dim:
            raise ConfigError(
                "embed_dim", f"is {embed_dim} but --glove has {object_vectors.shape[1]} dimensions"
            )
    config = SGGCNConfig(
        num_object_classes=len(vocab.object_names) - 1,
        num_predicates=len(vocab.predicate_names) - 1,
        embed_dim=embed_dim,
        hidden_dim=FLAGS.hidden_dim or hidden_dim,
        num_layers=FLAGS.num_layers or num_layers,
    )
    tables = {}
    if FLAGS.init_word_vectors:
        tables = {
            "object_word_vectors": object_vectors,
            "predicate_word_vectors": predicate_vectors,
        }
    return config, tables


def evaluate_embedder(
    embedder, graphs: list[SceneGraph], similarity: np.ndarray, noise_ms: Sequence[int], seed: int
) -> dict[str, Any]:
    """Test rank correlations and the incomplete-query retrieval sweep of one embedder."""
    correlations = embedding_eval.rank_correlations(embedder(graphs), similarity)
    sweep = embedding_eval.noise_sweep(
        embedder,
        graphs,
        noise_ms,
        seed=seed,
        ks=(1, 5, 10),
        backend=FLAGS.retrieval_backend,
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


def run_grid(data: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    vocab, noise_ms = data["vocab"], parsed["noise_ms"]
    train_graphs, train_similarity = _subset(data, "train")
    val_graphs, val_similarity = _subset(data, "val")
    test_graphs, test_similarity = _subset(data, "test")
    config, tables = model_config(vocab)
    init_variables = functools.partial(sg_gcn.with_tables, **tables) if tables else None
    max_nodes, max_edges = sg_embed.graph_budgets(data["graphs"])
    eval_seed = parsed["seeds"][0]

    results: dict[str, Any] = {
        "config": {
            "flags": {name: FLAGS[name].value for name in OWN_FLAGS},
            "seeds": parsed["seeds"],
            "noise_ms": noise_ms,
            "report_ms": parsed["report_ms"],
            "model": {
                "embed_dim": config.embed_dim,
                "hidden_dim": config.hidden_dim,
                "num_layers": config.num_layers,
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
        config.embed_dim,
        test_similarity,
        seed=eval_seed,
        repeats=FLAGS.baseline_repeats,
    )
    results["baselines"]["random N(0, I) embeddings"] = {
        k: random_baseline[k] for k in CORRELATION_KEYS
    }
    untrained = sg_embed.initial_embedder(
        config,
        max_nodes=max_nodes,
        max_edges=max_edges,
        seed=eval_seed,
        init_variables=init_variables,
    )
    untrained_eval = evaluate_embedder(untrained, test_graphs, test_similarity, noise_ms, eval_seed)
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
    for objective in FLAGS.objectives:
        for sampler in FLAGS.samplers:
            name = f"{objective}/{sampler}"
            runs = []
            for seed in parsed["seeds"]:
                train_config = sg_embed.EmbedTrainConfig(
                    objective=objective,
                    sampler=sampler,
                    epochs=FLAGS.epochs,
                    batch_size=FLAGS.batch_size,
                    learning_rate=FLAGS.learning_rate,
                    nu=FLAGS.nu,
                    margin=FLAGS.margin,
                    temperature=FLAGS.temperature,
                    max_nodes=max_nodes,
                    max_edges=max_edges,
                    seed=seed,
                )
                start = time.perf_counter()
                trained = sg_embed.train_embedding(
                    train_graphs,
                    train_similarity,
                    config,
                    train_config,
                    eval_fn=validation,
                    eval_every=FLAGS.eval_every,
                    init_variables=init_variables,
                )
                test = evaluate_embedder(
                    trained.embedder, test_graphs, test_similarity, noise_ms, eval_seed
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
    if FLAGS.save_embedder and "embedder" in best_val:
        path = os.path.join(FLAGS.workdir, "embedder")
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


def write_data_files(data: dict[str, Any]) -> None:
    os.makedirs(FLAGS.workdir, exist_ok=True)
    split_of = {}
    for name, part in data["splits"].items():
        split_of.update((int(position), name) for position in part)
    with open(os.path.join(FLAGS.workdir, "images.txt"), "w") as handle:
        for position, graph in enumerate(data["graphs"]):
            handle.write(f"{graph.image_id}\t{split_of[position]}\n")
    with open(os.path.join(FLAGS.workdir, "data_summary.json"), "w") as handle:
        json.dump(data["summary"], handle, indent=1)


def run(parsed: dict[str, Any]) -> dict[str, Any] | None:
    start = time.perf_counter()
    data = load_data(parsed["fractions"], FLAGS.split_seed)
    summary = data["summary"]
    print(
        f"{summary['dataset']}: {summary['num_images']} images after filters and captions "
        f"(train/val/test {summary['split_sizes']}); filters {summary['filters']}; "
        f"{summary['images_without_captions_skipped']} skipped without captions; "
        f"similarity: {summary['similarity']}",
        flush=True,
    )
    write_data_files(data)
    if FLAGS.method == "data":
        print(f"data summary and image order in {FLAGS.workdir}")
        return None
    results = run_grid(data, parsed)
    results["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(FLAGS.workdir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    table = markdown_tables(results)
    with open(os.path.join(FLAGS.workdir, "results.md"), "w") as handle:
        handle.write(table)
    plot_grid_sweep(results, os.path.join(FLAGS.workdir, "noise_sweep.png"))
    print()
    print(table)
    print(
        f"best by test kendall_row: {results['best_by_kendall_row']}; wall time "
        f"{results['wall_seconds']:.0f} s; results in {FLAGS.workdir}"
    )
    return results


def main(argv):
    del argv[0]
    if argv:
        print(f"error: unexpected arguments {argv}", file=sys.stderr)
        sys.exit(2)
    try:
        parsed = check_flags()
        run(parsed)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
