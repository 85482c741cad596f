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

This file holds the flags only: :func:`config_from_flags` turns them into a
:class:`sgg_jax.projects.sg_embed.experiment.SGEmbedExperimentConfig` (a bad value is one line on
stderr naming the flag, exit status 2, before any data is read) and
:func:`sgg_jax.projects.sg_embed.experiment.run` does the work.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import cli
from sgg_jax.projects.sg_embed import experiment as sg_embed
from sgg_jax.projects.sg_embed.experiment import (
    EvalConfig,
    GridConfig,
    ModelConfig,
    SGEmbedExperimentConfig,
    SimilarityConfig,
    SourceConfig,
    SplitConfig,
)
from sgg_jax.projects.sg_embed.train import OBJECTIVES

# The config's groups: every field is the flag of the same name.
_GROUPS = {
    "source": SourceConfig,
    "similarity": SimilarityConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "grid": GridConfig,
    "evaluation": EvalConfig,
}
_INTEGER_LISTS = ("seeds", "noise_ms", "report_ms")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares every flag of the experiment on ``flag_values``."""
    flags.DEFINE_enum(
        "method",
        "grid",
        ["grid", "data"],
        "grid: train and evaluate; data: data only.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "dataset",
        "synthetic",
        ["synthetic", "gqa200_captions", "vg_json"],
        "Scene graphs + captions.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "workdir", "/tmp/sgg_jax/sg_embed", "Output directory.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "synthetic_images", 2000, "Images generated for dataset=synthetic.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "synthetic_seed", 0, "Seed of the synthetic graphs.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "synthetic_min_objects", 3, "Fewest objects per synthetic image.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "synthetic_max_objects", 12, "Most objects per synthetic image.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "synthetic_min_relations",
        1,
        "Fewest relations per synthetic image.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "synthetic_max_relations", 8, "Most relations per synthetic image.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "scene_types", 8, "Hidden scene types of the synthetic captions.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "caption_noise",
        0.3,
        "Word-replacement probability of the synthetic captions.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "caption_scene_words", 2, "Scene-type words per synthetic caption.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "captions",
        None,
        "Caption JSON (dataset=gqa200_captions; default: bundled).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "vg_relationships",
        None,
        "VG relationships.json (dataset=vg_json).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "coco_captions",
        [],
        "COCO captions_*.json files (dataset=vg_json).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "vg_image_data",
        None,
        "VG image_data.json with coco_id (dataset=vg_json).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "vg_max_images", 0, "Keep only the first N VG images (0 = all).", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "vg_vocab",
        "vg150",
        ["vg150", "built", "min_count"],
        "dataset=vg_json: the VG150 vocabulary (bundled dicts), the 150 / 50 most frequent names "
        "(built), or every object / predicate name seen at least --vg_vocab_min_count times "
        "(min_count, the paper's).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "vg_vocab_min_count",
        25,
        "With --vg_vocab=min_count: fewest objects / relations a name needs (>= 1; the paper's: 25).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "glove",
        None,
        "GloVe .txt for caption words (and --init_word_vectors).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "word_vector_dim",
        300,
        "Dimension of the seeded random word vectors.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "word_vector_seed", 0, "Seed of the random word vectors.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "normalise_captions",
        True,
        "L2-normalise caption embeddings (s_XY = mean cosine, in [-1, 1], the paper's and what the "
        "Probability / Reject samplers need); --nonormalise_captions = raw inner products of the "
        "averaged word vectors (unbounded: only with the random / extreme samplers).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "similarity_npy",
        None,
        "User similarity .npy over the kept images (values in [-1, 1]).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "similarity_npy_unbounded",
        False,
        "Accept a --similarity_npy with values outside [-1, 1] (only with the random / extreme "
        "samplers, which read the order of the values).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "init_word_vectors",
        False,
        "Initialise object / predicate embeddings from --glove (D = 300).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "min_objects", 3, "Keep graphs with at least this many objects.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "max_objects", 40, "Keep graphs with at most this many objects.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "min_relations",
        1,
        "Keep graphs with at least this many relations.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "split_fractions",
        ["0.7", "0.2", "0.1"],
        "train, val, test fractions.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "split_seed", 0, "Seed of the train/val/test split.", flag_values=flag_values
    )
    flags.DEFINE_list(
        "objectives", list(OBJECTIVES), "Objectives of the grid.", flag_values=flag_values
    )
    flags.DEFINE_list(
        "samplers",
        ["random", "extreme", "probability", "reject"],
        "Samplers.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "seeds",
        ["0"],
        "Training seeds; the tables show the mean (and std).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "model_size",
        "small",
        ["small", "official"],
        "GCN sizes (see --embed_dim).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "embed_dim", 0, "D (0 = the model size's: small 64, official 300).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "hidden_dim",
        0,
        "H (0 = the model size's: small 128, official 512).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_layers",
        0,
        "Layers (0 = the model size's: small 3, official 5).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epochs",
        8,
        "Epochs (every training image is an anchor once per epoch).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("batch_size", 16, "Anchors per step (paper: 16).", flag_values=flag_values)
    flags.DEFINE_float(
        "learning_rate", 1e-4, "Adam learning rate (paper: 1e-4).", flag_values=flag_values
    )
    flags.DEFINE_float("nu", 1.0, "Ranking loss temperature.", flag_values=flag_values)
    flags.DEFINE_float("margin", 0.5, "Triplet loss margin.", flag_values=flag_values)
    flags.DEFINE_float("temperature", 1.0, "InfoNCE temperature.", flag_values=flag_values)
    flags.DEFINE_integer(
        "eval_every",
        2,
        "Epochs between validation rank correlations (0 = end).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "noise_ms",
        [str(m) for m in range(1, 21)],
        "Relations removed from queries.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "report_ms",
        ["1", "5", "10", "20"],
        "Values of M shown in the retrieval table.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "retrieval_backend",
        "exact",
        ["exact", "scann"],
        "Gallery search backend.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "baseline_repeats", 10, "Draws of the random-embedding baseline.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "save_embedder",
        True,
        "Save the run with the best validation kendall_row to <workdir>/embedder "
        "(sgg_jax.projects.sg_embed.train.load_embedder / load_exported_embed_function).",
        flag_values=flag_values,
    )


def _integer(text: str) -> int | str:
    """``text`` as an int, or the text itself (the config names the flag of a non-integer)."""
    try:
        return int(text)
    except ValueError:
        return text


def _flag_value(flag_values: flags.FlagValues, name: str):
    value = flag_values[name].value
    if name in _INTEGER_LISTS:
        return tuple(_integer(text) for text in value)
    if name == "split_fractions":
        try:
            return tuple(float(text) for text in value)
        except ValueError:
            return tuple(value)  # the config names the flag and its text
    if isinstance(value, list):
        return tuple(value)
    return value


def config_from_flags(flag_values: flags.FlagValues) -> SGEmbedExperimentConfig:
    """The experiment config of parsed flags; raises ConfigError naming the first bad flag."""
    groups = {
        group: cls(
            **{
                field.name: _flag_value(flag_values, field.name)
                for field in dataclasses.fields(cls)
            }
        )
        for group, cls in _GROUPS.items()
    }
    return SGEmbedExperimentConfig(
        method=flag_values.method, save_embedder=flag_values.save_embedder, **groups
    )


def main(argv):
    return cli.run_command(
        argv,
        lambda: sg_embed.run(config_from_flags(flags.FLAGS), flags.FLAGS.workdir),
        quiet_logs=False,
    )


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(main)
