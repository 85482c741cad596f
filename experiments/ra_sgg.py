"""RA-SGG: retrieval-augmented scene graph generation via multi-prototype learning.

``python -m experiments.ra_sgg --flagfile=experiments/flags/ra_sgg_gqa200_mini.flags``

This version runs the data stage of the experiment: it loads the named dataset (train / val / test),
runs one pass of the static-shape input pipeline over each split with the configured budgets, prints
a summary (images, relations, the predicate long tail, batches, truncations) and writes
``<workdir>/data_summary.json``. Training of the PE-Net base model (phase 1) and of RA-SGG (phase 2)
is not part of this version; the command says so and exits cleanly after the data stage.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

from sgg_jax.data import datasets, pipeline
from sgg_jax.data.summary import (
    format_predicate_histogram,
    format_splits,
    summarize_split,
    text_table,
)
from sgg_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS
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
flags.DEFINE_enum("task", "predcls", ["predcls", "sgcls", "sgdet"], "SGG task.")
flags.DEFINE_string("workdir", "/tmp/sgg_jax/ra_sgg", "Output directory.")
flags.DEFINE_integer("seed", 0, "Seed of shuffling, pair sampling and initialisation.")
flags.DEFINE_integer("batch_size", 8, "Images per batch per process.")
flags.DEFINE_integer("max_objects", 40, "Object budget per image.")
flags.DEFINE_integer("max_pairs", 256, "Pair budget per training image.")
flags.DEFINE_integer("max_fg", 64, "Foreground pairs sampled per training image.")
flags.DEFINE_integer(
    "eval_max_pairs", 1560, "Pair budget per evaluation image (all ordered pairs)."
)


def _paths() -> dict[str, str]:
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


def _one_pass(graphs, config: pipeline.PipelineConfig) -> dict:
    loader = pipeline.make_loader(graphs, config)
    start = time.perf_counter()
    batches = images = truncated_objects = truncated_pairs = pairs = foreground = 0
    for batch in loader.iter_from(0):
        batches += 1
        images += int(batch.graph_mask.sum())
        truncated_objects += int(batch.num_truncated_objects.sum())
        truncated_pairs += int(batch.num_truncated_pairs.sum())
        pairs += int(batch.pair_mask.sum())
        foreground += int((batch.pair_labels > 0).sum())
        if batches == loader.num_batches_per_epoch:
            break
    seconds = time.perf_counter() - start
    return {
        "batches": batches,
        "images": images,
        "pairs": pairs,
        "foreground_pairs": foreground,
        "truncated_objects": truncated_objects,
        "truncated_pairs": truncated_pairs,
        "images_per_second": images / max(seconds, 1e-9),
    }


def run() -> dict:
    """Runs the data stage and returns the summary written to ``data_summary.json``."""
    summary = {"dataset": FLAGS.dataset, "task": FLAGS.task, "seed": FLAGS.seed, "splits": {}}
    split_summaries = []
    for split in datasets.SPLITS:
        graphs, vocab = datasets.load(
            FLAGS.dataset, split, paths=_paths(), num_val=FLAGS.num_val, seed=FLAGS.seed
        )
        split_summaries.append(summarize_split(split, graphs, vocab))
        if split == "train":
            config = pipeline.PipelineConfig(
                batch_size=FLAGS.batch_size,
                max_objects=FLAGS.max_objects,
                max_pairs=FLAGS.max_pairs,
                max_fg=FLAGS.max_fg,
                seed=FLAGS.seed,
                num_epochs=1,
                num_predicates=vocab.num_predicates,
            )
        else:
            config = pipeline.PipelineConfig.evaluation(
                FLAGS.batch_size,
                FLAGS.max_objects,
                FLAGS.eval_max_pairs,
                num_predicates=vocab.num_predicates,
            )
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
    return summary


def main(argv):
    del argv
    try:
        run()
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"Data stage done; summary in {os.path.join(FLAGS.workdir, 'data_summary.json')}.\n"
        "RA-SGG training (PE-Net phase 1, retrieval-augmented phase 2) is not part of this "
        "version of sgg_jax; nothing was trained."
    )
    return 0


if __name__ == "__main__":
    app.run(main)
