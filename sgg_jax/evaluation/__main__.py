"""Evaluates saved predictions against ground truth from the command line.

    python -m sgg_jax.evaluation --groundtruth gqa200_mini:test --predictions preds.npz \\
        --mode predcls [--zeroshot_triplets triplets.json] [--out results/]

``--groundtruth`` is one of:

* ``<dataset>:<split>`` for a dataset the package can load by itself: ``gqa200_mini:test``,
  ``synthetic:test`` (``--synthetic_images`` / ``--seed`` as when the predictions were made);
* a GQA-200 split file ``GQA_200_Test.json`` (with ``--id_info``);
* a VG150 ``VG-SGG-with-attri.h5`` (with ``--dicts``, ``--image_data``, ``--split``);
* a ``data_prep`` output folder (with ``--tfds_name``, ``--split``).

``--predictions`` is an ``.npz`` in the layout of :mod:`sgg_jax.evaluation.predictions_io`; its
images are matched to the ground truth by image id and must be exactly the ground-truth images.
The metrics are printed as a table; with ``--out`` the folder receives ``results.json``,
``results.md``, ``per_predicate_recall.png`` (against ``--baseline`` when given) and
``predicate_confusion.png``. Bad input ends with one line on stderr and exit status 2; an
``--out`` that is a file or cannot be written and a missing or unusable ``--baseline`` are reported
before anything is evaluated or written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags

from sgg_jax.data.fileio import check_writable_dir, load_json
from sgg_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("groundtruth", None, "Ground truth: <dataset>:<split>, a file or a folder.")
    flags.DEFINE_string("predictions", None, "Predictions .npz (see predictions_io).")
    flags.DEFINE_enum("mode", "predcls", ["predcls", "sgcls", "sgdet"], "SGG task.")
    flags.DEFINE_list("ks", ["20", "50", "100"], "K of R@K.")
    flags.DEFINE_string("id_info", None, "GQA_200_ID_Info.json (GQA-200 ground truth).")
    flags.DEFINE_string("dicts", None, "VG-SGG-dicts-with-attri.json (VG150 ground truth).")
    flags.DEFINE_string("image_data", None, "image_data.json (VG150 ground truth).")
    flags.DEFINE_string("tfds_name", None, "Dataset name inside a data_prep folder.")
    flags.DEFINE_string("split", "test", "Split of a VG150 / data_prep ground truth.")
    flags.DEFINE_integer("num_val", 0, "VG150: images of train used as val.")
    flags.DEFINE_integer("synthetic_images", 2000, "synthetic:<split> ground truth: image count.")
    flags.DEFINE_integer("seed", 0, "synthetic:<split> ground truth: generator seed.")
    flags.DEFINE_string(
        "zeroshot_triplets", None, "JSON of [s, o, p] rows, or 'vg150' for the bundled list."
    )
    flags.DEFINE_float("iou_threshold", 0.5, "IoU threshold of a match.")
    flags.DEFINE_bool("phrdet", False, "Match union boxes (phrase detection).")
    flags.DEFINE_enum("empty_prediction", "skip", ["skip", "zero"], "Images without pairs.")
    flags.DEFINE_string("out", None, "Folder for results.json, results.md and plots.")
    flags.DEFINE_string("baseline", None, "results.json of a baseline for the recall-delta plot.")
    flags.DEFINE_string("name", "predictions", "Row name of these predictions in the results.")


def load_groundtruth(spec: str):
    """Ground-truth graphs and vocabulary named by ``--groundtruth`` (see the module docstring).

    Raises:
      DataError: two ground-truth images share an image id (naming ``spec`` and the id).
    """
    graphs, vocab = _load_groundtruth(spec)
    seen = set()
    for graph in graphs:
        if graph.image_id in seen:
            raise DataError(
                "image id appears twice in the ground truth", path=spec, record=graph.image_id
            )
        seen.add(graph.image_id)
    return graphs, vocab


def _load_groundtruth(spec: str):
    from sgg_jax.data import datasets, gqa200, tfds_source, vg150

    if os.path.isdir(spec):
        if not FLAGS.tfds_name:
            raise ConfigError("tfds_name", "is required when --groundtruth is a data_prep folder")
        source, vocab = tfds_source.open_source(spec, FLAGS.tfds_name, FLAGS.split)
        return [source[i] for i in range(len(source))], vocab
    if spec.endswith(".h5"):
        for option in ("dicts", "image_data"):
            if not getattr(FLAGS, option):
                raise ConfigError(option, "is required with a VG150 .h5 ground truth")
        return vg150.read(spec, FLAGS.dicts, FLAGS.image_data, FLAGS.split, num_val=FLAGS.num_val)
    if spec.endswith((".json", ".json.gz")):
        if not FLAGS.id_info:
            raise ConfigError("id_info", "is required with a GQA-200 split file")
        return gqa200.read(spec, FLAGS.id_info)
    name, _, split = spec.partition(":")
    if name in ("gqa200_mini", "synthetic") and split:
        graphs, vocab = datasets.load(
            name, split, seed=FLAGS.seed, synthetic_images=FLAGS.synthetic_images
        )
        return list(graphs), vocab
    raise ConfigError(
        "groundtruth",
        f"expected gqa200_mini:<split>, synthetic:<split>, a .json, a .h5 or a folder, got {spec!r}",
    )


def align(groundtruths, image_ids: Sequence[str], predictions, predictions_path: str):
    """Orders the predictions like the ground truth, by image id; both must hold the same images."""
    position = {}
    for index, image_id in enumerate(image_ids):
        if image_id in position:
            raise DataError(
                "image id appears twice in the predictions",
                path=predictions_path,
                record=image_id,
                field="image_ids",
            )
        position[image_id] = index
    if len(image_ids) != len(groundtruths):
        raise DataError(
            f"{len(image_ids)} predictions for {len(groundtruths)} ground-truth images",
            path=predictions_path,
            field="image_ids",
        )
    ordered = []
    for graph in groundtruths:
        if graph.image_id not in position:
            raise DataError(
                "ground-truth image has no prediction",
                path=predictions_path,
                record=graph.image_id,
                field="image_ids",
            )
        ordered.append(predictions[position[graph.image_id]])
    return ordered


def run() -> dict:
    """Evaluates and reports; returns the metrics."""
    from sgg_jax.data import zeroshot
    from sgg_jax.evaluation import predictions_io, report
    from sgg_jax.evaluation.sgg import evaluate

    if not FLAGS.groundtruth:
        raise ConfigError("groundtruth", "is required")
    if not FLAGS.predictions:
        raise ConfigError("predictions", "is required")
    if FLAGS.out:
        check_writable_dir(FLAGS.out, "out")  # before any work
    baseline_runs = None
    if FLAGS.out and FLAGS.baseline:  # read before anything is written
        baseline_runs = load_json(FLAGS.baseline)
        if not isinstance(baseline_runs, dict) or not isinstance(baseline_runs.get("runs"), dict):
            raise DataError("expected a results.json object", path=FLAGS.baseline, field="runs")
        baseline_runs = baseline_runs["runs"]
    groundtruths, vocab = load_groundtruth(FLAGS.groundtruth)
    image_ids, predictions = predictions_io.load_predictions(FLAGS.predictions)
    predictions = align(groundtruths, image_ids, predictions, FLAGS.predictions)
    triplets = None
    if FLAGS.zeroshot_triplets == "vg150":
        triplets = zeroshot.load_bundled_vg150()
    elif FLAGS.zeroshot_triplets:
        triplets = zeroshot.read(
            FLAGS.zeroshot_triplets,
            num_classes=vocab.num_classes,
            num_predicates=vocab.num_predicates,
        )
    try:
        ks = tuple(int(k) for k in FLAGS.ks)
    except ValueError:
        raise ConfigError("ks", f"expected integers, got {FLAGS.ks}") from None
    metrics = evaluate(
        groundtruths,
        predictions,
        mode=FLAGS.mode,
        num_predicates=vocab.num_predicates,
        ks=ks,
        zeroshot_triplets=triplets,
        iou_threshold=FLAGS.iou_threshold,
        predicate_names=vocab.predicate_names,
        phrdet=FLAGS.phrdet,
        empty_prediction=FLAGS.empty_prediction,
    )
    print(
        f"{len(groundtruths)} images, {metrics['num_images_evaluated']} evaluated "
        f"({metrics['num_images_skipped_no_gt']} without ground-truth relations, "
        f"{metrics['num_images_empty_prediction']} with an empty prediction); {FLAGS.mode}"
    )
    print(report.metrics_table({FLAGS.name: metrics}), end="")
    k = max(ks)
    baseline = None
    if baseline_runs is not None:
        key = f"per_predicate_R@{k}"
        baseline = next((run[key] for run in baseline_runs.values() if key in run), None)
        if baseline is None or len(baseline) != vocab.num_predicates:
            raise DataError(
                f"no run with {vocab.num_predicates} values", path=FLAGS.baseline, field=key
            )
    if FLAGS.out:
        dataset = FLAGS.groundtruth
        report.write_results(
            FLAGS.out,
            experiment="evaluation",
            dataset=dataset,
            task=FLAGS.mode,
            seed=FLAGS.seed,
            runs={FLAGS.name: metrics},
        )
        report.plot_per_predicate_recall(
            os.path.join(FLAGS.out, "per_predicate_recall.png"),
            metrics[f"per_predicate_R@{k}"],
            vocab.predicate_names,
            vocab.predicate_counts,
            baseline=baseline,
            k=k,
            label=FLAGS.name,
            num_images=metrics["per_predicate_num_images"],
        )
        if FLAGS.mode != "sgdet":
            report.plot_confusion(
                os.path.join(FLAGS.out, "predicate_confusion.png"),
                report.predicate_confusion(groundtruths, predictions, vocab.num_predicates),
                vocab.predicate_names,
                vocab.predicate_counts,
            )
        print(f"wrote {os.path.join(FLAGS.out, 'results.json')} and plots")
    return metrics


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        run()
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
