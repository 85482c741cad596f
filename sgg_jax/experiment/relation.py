"""What every relation experiment shares: the data config, loading, pipelines and evaluation.

* :class:`DataConfig` — dataset, task, budgets and feature source of a run (the data flags of
  ``experiments/common.py``, one field per flag); it checks itself when built, so a bad value is a
  one-line :class:`~sgg_jax.errors.ConfigError` naming the flag before anything is loaded.
* :func:`load_splits`, :func:`object_features_for`, :func:`train_pipeline_config`,
  :func:`eval_pipeline_config` — the data of a config.
* :func:`evaluate_scorers` — THE evaluation loop: one pass over a split, any number of scorings of
  that pass (e.g. one model under several rankings), images optionally batched by object-count
  bucket, predictions evaluated with the head / body / tail groups of the training counts.
* :func:`predict_outputs` — the predict function of a relation model (the contract of
  ``sgg_jax.load_exported``), :func:`model_scorer` runs it on a mesh.
* :class:`PixelInputs` — what ``feature_source="roi"`` adds: a pretrained detector, from a run of
  ``experiments.detector`` (``detector_workdir``) or a Scene-Graph-Benchmark / maskrcnn_benchmark
  checkpoint (``detector_checkpoint``); :func:`check_detector_classes` checks its classes against
  the vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from sgg_jax import distributed
from sgg_jax.data import datasets, pipeline
from sgg_jax.data.feature_store import take
from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.errors import ConfigError, DataError, check_bool, check_choice, check_positive_int
from sgg_jax.evaluation import evaluate, frequency_groups
from sgg_jax.evaluation.collect import batch_predictions, detection_predictions
from sgg_jax.structures import SceneGraph, SceneGraphBatch, Vocab
from sgg_jax.train import mesh as mesh_lib

DATASETS = (*datasets.DATASETS, "synthetic_pixels")
TASKS = ("predcls", "sgcls", "sgdet")
FEATURE_SOURCES = ("geometry", "precomputed", "roi")
# The raw-file fields each dataset needs, as the ``paths`` keys of sgg_jax.data.datasets.load.
_REQUIRED_PATHS = {
    "gqa200": ("gqa200_train", "gqa200_test", "gqa200_id_info"),
    "vg150": ("vg150_h5", "vg150_dicts", "vg150_image_data"),
    "tfds": ("tfds_data_dir", "tfds_name"),
}
_PATH_KEYS = {
    "gqa200_train": "train",
    "gqa200_test": "test",
    "gqa200_id_info": "id_info",
    "vg150_h5": "h5",
    "vg150_dicts": "dicts",
    "vg150_image_data": "image_data",
    "tfds_data_dir": "data_dir",
    "tfds_name": "name",
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset, task and budgets of a relation experiment; checked when built.

    Every field is the flag of the same name (``experiments/common.py`` documents them); errors
    name that flag.

    Attributes:
      dataset: a :data:`sgg_jax.data.datasets.DATASETS` name or ``"synthetic_pixels"`` (the
        rendered images of ``detector_workdir``).
      gqa200_train, gqa200_test, gqa200_id_info, vg150_h5, vg150_dicts, vg150_image_data,
        tfds_data_dir, tfds_name: raw files of the dataset (None where unused).
      num_val: validation images taken from train (gqa200, vg150).
      synthetic_images, synthetic_context_bias, synthetic_annotator_bias: ``dataset="synthetic"``
        options (:class:`sgg_jax.data.synthetic.SyntheticConfig`); ``synthetic_context_bias`` is
        ``(lo, hi)`` or None.
      task: ``predcls``, ``sgcls`` or ``sgdet``.
      seed: seed of shuffling, pair sampling and initialisation.
      batch_size, max_objects, max_pairs, max_fg: training batch (images per update over all
        processes) and budgets per image.
      eval_max_pairs, eval_batch_size: evaluation budgets.
      eval_images: periodic evaluation on the first N val images (0 = all).
      feature_source: ``geometry``, ``precomputed`` (``object_features``) or ``roi``
        (``detector_workdir`` or ``detector_checkpoint``, exactly one).
      detector_checkpoint: ``roi``: a Scene-Graph-Benchmark / maskrcnn_benchmark Faster R-CNN
        checkpoint (``.pth``, or its ``.npz`` from
        :func:`sgg_jax.detection.convert.save_npz`); its config is inferred from the weights.
      image_size, freeze_detector, detections_per_image: ``roi`` options (0 = the detector's).
      union_features: ``roi``: ``sgb`` or ``shared_head``
        (:data:`sgg_jax.relation.features.UNION_FEATURES`); None = the model's default (``sgb``).
      max_image_pixels: ``roi``: image files of more pixels are refused (a DataError naming the
        file, from its header, before decoding).
      vg150_image_dir, gqa200_image_dir: image folders; ``SceneGraph.image_path`` is
        ``<dir>/<image_id>.jpg`` (:func:`sgg_jax.data.datasets.load`).
      allow_config_change: resume a workdir trained with other settings, recording the old ones
        in ``config_history.jsonl`` (:class:`sgg_jax.train.loop.TrainConfig`); False = a one-line
        ConfigError naming the differing keys.
    """

    dataset: str = "gqa200_mini"
    gqa200_train: str | None = None
    gqa200_test: str | None = None
    gqa200_id_info: str | None = None
    vg150_h5: str | None = None
    vg150_dicts: str | None = None
    vg150_image_data: str | None = None
    tfds_data_dir: str | None = None
    tfds_name: str | None = None
    num_val: int = 5000
    synthetic_images: int = 2000
    synthetic_context_bias: tuple[float, float] | None = None
    synthetic_annotator_bias: float = 0.7
    task: str = "predcls"
    seed: int = 0
    batch_size: int = 8
    max_objects: int = 40
    max_pairs: int = 256
    max_fg: int = 64
    eval_max_pairs: int = 1560
    eval_batch_size: int = 8
    eval_images: int = 0
    feature_source: str = "geometry"
    object_features: str | None = None
    detector_workdir: str | None = None
    detector_checkpoint: str | None = None
    image_size: int = 0
    freeze_detector: bool = True
    detections_per_image: int = 0
    union_features: str | None = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    allow_config_change: bool = False
    # Image folders (read by feature_source="roi" and data_prep.extract_features).
    vg150_image_dir: str | None = None
    gqa200_image_dir: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line ConfigErrors for bad values, before anything is loaded or compiled."""
        if self.dataset not in DATASETS:
            raise ConfigError("dataset", f"must be one of {DATASETS}, got {self.dataset!r}")
        check_bool("allow_config_change", self.allow_config_change)
        if self.task not in TASKS:
            raise ConfigError("task", f"must be one of {TASKS}, got {self.task!r}")
        if self.feature_source not in FEATURE_SOURCES:
            raise ConfigError(
                "feature_source",
                f"must be one of {FEATURE_SOURCES}, got {self.feature_source!r}",
            )
        synthetic_options(self)
        for name in ("batch_size", "max_objects", "max_pairs", "max_fg", "eval_max_pairs"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if self.max_fg > self.max_pairs:
            raise ConfigError("max_fg", f"{self.max_fg} exceeds max_pairs={self.max_pairs}")
        if self.eval_batch_size <= 0:
            raise ConfigError("eval_batch_size", f"must be positive, got {self.eval_batch_size}")
        if self.eval_images < 0:
            raise ConfigError("eval_images", f"must be >= 0, got {self.eval_images}")
        if self.feature_source == "precomputed":
            if not self.object_features:
                raise ConfigError(
                    "object_features", "is required with --feature_source=precomputed"
                )
            if not os.path.exists(self.object_features):
                raise ConfigError("object_features", f"{self.object_features} does not exist")
        if self.task == "sgdet" and self.feature_source != "roi":
            raise ConfigError(
                "task", "sgdet detects objects from pixels: it needs --feature_source=roi"
            )
        if self.dataset == "synthetic_pixels" and self.feature_source == "geometry":
            raise ConfigError(
                "dataset",
                "synthetic_pixels is the pixel dataset of --feature_source=roi (or precomputed "
                "features of its images)",
            )
        for name in _REQUIRED_PATHS.get(self.dataset, ()):
            if not getattr(self, name):
                raise ConfigError(name, f"is required with --dataset={self.dataset}")
            if name != "tfds_name" and not os.path.exists(getattr(self, name)):
                raise ConfigError(name, f"{getattr(self, name)} does not exist")
        if self.detector_checkpoint and self.feature_source != "roi":
            raise ConfigError("detector_checkpoint", "is read with --feature_source=roi only")
        if self.feature_source == "roi" and self.detector_checkpoint:
            if self.detector_workdir:
                raise ConfigError(
                    "detector_checkpoint",
                    "give one detector: --detector_workdir or --detector_checkpoint, not both",
                )
            if self.dataset == "synthetic_pixels":
                raise ConfigError(
                    "dataset", "synthetic_pixels reads the images of a --detector_workdir"
                )
            suffix = os.path.splitext(self.detector_checkpoint)[1].lower()
            if suffix not in (".pth", ".pt", ".npz"):
                raise ConfigError(
                    "detector_checkpoint",
                    f"must end in .pth, .pt or .npz, got {self.detector_checkpoint!r}",
                )
            if not os.path.isfile(self.detector_checkpoint):
                raise ConfigError(
                    "detector_checkpoint", f"{self.detector_checkpoint} does not exist"
                )
        if self.dataset == "synthetic_pixels" and not self.detector_workdir:
            raise ConfigError("detector_workdir", "is required with --dataset=synthetic_pixels")
        if self.feature_source == "roi" and not self.detector_checkpoint:
            if not self.detector_workdir:
                raise ConfigError(
                    "detector_workdir",
                    "or --detector_checkpoint is required with --feature_source=roi",
                )
            path = os.path.join(self.detector_workdir, "config.json")
            if not os.path.exists(path):
                raise ConfigError(
                    "detector_workdir",
                    f"{self.detector_workdir} has no config.json (not an experiments.detector run)",
                )
        if self.union_features is not None:
            from sgg_jax.relation.features import UNION_FEATURES

            check_choice("union_features", self.union_features, UNION_FEATURES)
        for name in ("image_size", "detections_per_image"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        check_positive_int("max_image_pixels", self.max_image_pixels)
        if self.detections_per_image == 1:
            raise ConfigError("detections_per_image", "must be 0 (the detector's) or >= 2")
        for name in ("vg150_image_dir", "gqa200_image_dir"):
            value = getattr(self, name)
            if value and not os.path.isdir(value):
                raise ConfigError(name, f"{value} is not a directory")

    def paths(self) -> dict[str, str]:
        """The raw files as the ``paths`` of :func:`sgg_jax.data.datasets.load`."""
        values = {key: getattr(self, name) for name, key in _PATH_KEYS.items()}
        values["image_dir"] = getattr(self, f"{self.dataset}_image_dir", None)
        return {k: v for k, v in values.items() if v}


def synthetic_options(data: DataConfig) -> dict[str, Any]:
    """The :class:`~sgg_jax.data.synthetic.SyntheticConfig` fields of ``data`` (validated)."""
    from sgg_jax.data.synthetic import SyntheticConfig

    options: dict[str, Any] = {"annotator_bias": data.synthetic_annotator_bias}
    if data.synthetic_context_bias is not None:
        values = tuple(data.synthetic_context_bias)
        if len(values) != 2:
            raise ConfigError(
                "synthetic_context_bias",
                f"expected two numbers 'lo,hi', got {list(data.synthetic_context_bias)}",
            )
        options["context_bias_range"] = values
    try:
        SyntheticConfig(**options)
    except ConfigError as error:
        name = {"context_bias_range": "synthetic_context_bias"}.get(
            error.option, f"synthetic_{error.option}"
        )
        raise ConfigError(name, str(error).split(": ", 1)[1]) from None
    return options


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_splits(
    data: DataConfig, *, check_images: bool = True
) -> tuple[dict[str, Sequence[SceneGraph]], Vocab]:
    """Train / val / test graphs of ``data.dataset`` and the vocabulary (train counts).

    With ``feature_source="roi"`` (and ``check_images``) the detector's classes are checked
    against the vocabulary (:func:`check_detector_classes`), then every image's header size
    against its annotation (:func:`sgg_jax.data.image_check.check_splits`: VG150's known wrong
    ``image_data.json`` sizes corrected with one warning line, anything else one DataError; the
    rendered ``synthetic_pixels`` images are the detector run's own).
    """
    if data.task == "sgcls" and data.feature_source == "geometry":
        print(
            "warning: --task=sgcls with --feature_source=geometry classifies objects from box "
            "geometry alone (no pixels); the papers use --feature_source=roi (or precomputed)"
        )
    if data.dataset == "synthetic_pixels":
        from sgg_jax.data.pixel_dataset import PixelDatasetConfig, pixel_splits

        detector_flags = detector_run_config(data.detector_workdir)["flags"]
        recipe = PixelDatasetConfig.from_manifest(detector_flags)
        image_dir = os.path.join(data.detector_workdir, "images")
        splits, vocab, _ = pixel_splits(recipe, image_dir)
        if check_images:
            check_detector_classes(data, vocab)
        return splits, vocab
    splits = {}
    vocab = None
    for split in datasets.SPLITS:
        graphs, split_vocab = datasets.load(
            data.dataset,
            split,
            paths=data.paths(),
            num_val=data.num_val,
            seed=data.seed,
            synthetic_images=data.synthetic_images,
            synthetic_options=synthetic_options(data),
        )
        splits[split] = graphs
        if split == "train":
            vocab = split_vocab
    if data.feature_source == "roi" and check_images:  # header sizes checked before training
        from sgg_jax.data import image_check

        check_detector_classes(data, vocab)  # the cheaper check first
        kind = "vg150" if is_vg150(data.dataset, vocab) else data.dataset
        splits = image_check.check_splits(splits, dataset=kind, max_pixels=data.max_image_pixels)
    return splits, vocab


def is_vg150(dataset: str, vocab: Vocab | None) -> bool:
    """Whether a dataset is VG150: ``dataset="vg150"``, or any route (``tfds`` records written by
    ``data_prep.vg150``) whose vocabulary has the bundled VG150 object and predicate names in
    order (the names ``data_prep`` records in the dataset metadata)."""
    if dataset == "vg150":
        return True
    if vocab is None or len(vocab.object_names) != 151 or len(vocab.predicate_names) != 51:
        return False
    from sgg_jax.data import vg150

    bundled = vg150.load_bundled_vocab()
    return tuple(vocab.object_names) == tuple(bundled.object_names) and tuple(
        vocab.predicate_names
    ) == tuple(bundled.predicate_names)


def object_features_for(
    data: DataConfig, splits: Mapping[str, Sequence[SceneGraph]]
) -> dict[str, Sequence[np.ndarray] | None]:
    """Per split, the precomputed object features aligned with its graphs (None without them).

    ``object_features`` is an ``.npz`` or a store directory (read lazily: memory-mapped shards).
    When the run also names a detector (``detector_workdir``), a store must come from it (the
    digest in its manifest) and the features must have its ``representation_size``; a one-line
    DataError naming the file and the field otherwise.
    """
    if data.feature_source != "precomputed":
        return {split: None for split in splits}
    from sgg_jax.data import feature_store

    table = feature_store.load_object_features(data.object_features)
    expected_dim = None
    if data.detector_workdir or getattr(data, "detector_checkpoint", None):
        if isinstance(table, feature_store.FeatureStore):
            identity = detector_identity(data)
            table.check_detector(
                identity["digest"], identity.get("checkpoint") or identity.get("workdir")
            )
        if data.detector_workdir:
            from sgg_jax.detection.detector import DetectorConfig

            detector = detector_run_config(data.detector_workdir)["detector"]
            expected_dim = DetectorConfig.from_dict(detector).representation_size
    return {
        split: feature_store.features_for(
            graphs, table, path=data.object_features, expected_dim=expected_dim
        )
        for split, graphs in splits.items()
    }


def detector_identity(data: DataConfig) -> dict[str, Any]:
    """Which detector ``data`` names, for a feature store's manifest: ``workdir`` (absolute),
    ``checkpoint`` (a ``detector_checkpoint`` file, where the config has one), the checkpoint
    ``step`` and ``digest``, the sha256 of the run's ``config.json`` and the files of its newest
    checkpoint (or of the checkpoint file)."""
    from sgg_jax.data.feature_store import file_digest

    checkpoint = getattr(data, "detector_checkpoint", None)
    identity: dict[str, Any] = {"workdir": None, "checkpoint": None, "step": None}
    files: list[str] = []
    root = None
    if data.detector_workdir:
        root = os.path.abspath(data.detector_workdir)
        identity["workdir"] = root
        files.append(os.path.join(root, "config.json"))
        folder = os.path.join(root, "checkpoints")
        steps = (
            sorted(int(n) for n in os.listdir(folder) if n.isdigit())
            if os.path.isdir(folder)
            else []
        )
        if steps and not checkpoint:
            identity["step"] = steps[-1]
            for directory, _, names in os.walk(os.path.join(folder, str(steps[-1]))):
                files.extend(os.path.join(directory, n) for n in names)
    if checkpoint:
        identity["checkpoint"] = os.path.abspath(checkpoint)
        files.append(identity["checkpoint"])
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ConfigError("detector_workdir", f"{missing[0]} does not exist")
    identity["digest"] = file_digest(files, root)
    return identity


def per_process(batch_size: int, flag: str = "batch_size") -> int:
    """This process's share of a global batch of ``batch_size`` images.

    ``--batch_size`` and ``--eval_batch_size`` count the images of one update (one evaluation
    batch) over the whole job, as SGB's ``IMS_PER_BATCH``: a flagfile trains the same way on one
    process or on several, each process reading ``batch_size / process_count`` images.

    Raises:
      ConfigError: ``flag`` when the batch does not split evenly over the processes.
    """
    count = distributed.process_count()
    if batch_size % count:
        raise ConfigError(
            flag, f"{batch_size} images per batch do not split evenly over {count} processes"
        )
    return batch_size // count


def train_pipeline_config(
    data: DataConfig, vocab: Vocab, **options: Any
) -> pipeline.PipelineConfig:
    """The training pipeline of ``data`` (SGB pair sampling, reshuffled every epoch); this
    process's share of the global batch (:func:`per_process`)."""
    options.setdefault("batch_size", per_process(data.batch_size))
    return pipeline.PipelineConfig(
        max_objects=data.max_objects,
        max_pairs=data.max_pairs,
        max_fg=data.max_fg,
        seed=data.seed,
        num_predicates=vocab.num_predicates,
        **options,
    )


def eval_pipeline_config(
    data: DataConfig, vocab: Vocab, max_objects: int | None = None
) -> pipeline.PipelineConfig:
    """All ordered pairs, every image once, in order.

    ``max_objects`` below ``data.max_objects`` is an object-count bucket: its images get
    ``min(b·(b−1), eval_max_pairs)`` pairs, the same ordered pairs with less padding.
    """
    max_pairs = data.eval_max_pairs
    if max_objects is None:
        max_objects = data.max_objects
    if max_objects < data.max_objects:
        max_pairs = min(max_objects * (max_objects - 1), data.eval_max_pairs)
    return pipeline.PipelineConfig.evaluation(
        per_process(data.eval_batch_size, "eval_batch_size"),
        max_objects,
        max_pairs,
        num_predicates=vocab.num_predicates,
        read_threads=0,
    )


def zeroshot_for(
    dataset: str, splits: Mapping[str, Sequence[SceneGraph]], vocab: Vocab | None = None
) -> np.ndarray | None:
    """Zero-shot triplets of the test split: (s-class, o-class, predicate) never seen in train.

    The VG150 benchmark has a published list (bundled), used for VG150 whatever the loading route
    (:func:`is_vg150`: ``dataset="vg150"``, or the VG150 vocabulary, which for ``tfds`` is read
    from the records' ``metadata.json`` when ``vocab`` is not given); for other datasets the list
    is derived from the splits, which is the same definition.
    """
    if vocab is None and dataset == "tfds":
        folder = getattr(splits.get("test"), "path", None)
        if folder:
            from sgg_jax.data import tfds_source

            vocab = tfds_source.read_vocab_of_folder(folder)
    if is_vg150(dataset, vocab):
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


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

Scores = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
Scorer = Callable[[SceneGraphBatch], Scores]
MultiScorer = Callable[[SceneGraphBatch], Mapping[str, Scores]]


def predicate_groups_of(vocab: Vocab) -> dict[str, Any] | None:
    """Head / body / tail predicates by training-frequency thirds (None with fewer than 3)."""
    counts = vocab.predicate_counts
    positive = np.sort(counts[1:][counts[1:] > 0])
    if positive.size < 3:
        return None
    head_above = int(positive[(2 * positive.size) // 3])
    tail_below = int(positive[positive.size // 3])
    return frequency_groups(counts, thresholds=(max(head_above - 1, tail_below), tail_below))


def collect_predictions(
    scorers: MultiScorer,
    graphs: Sequence[SceneGraph],
    vocab: Vocab,
    data: DataConfig,
    *,
    object_features: Sequence[np.ndarray] | None = None,
    image_transform: Callable[[Sequence[SceneGraph]], Any] | None = None,
    object_buckets: Sequence[int] = (),
) -> dict[str, list[Any]]:
    """Per scoring name, one prediction per graph of one pass of the evaluation pipeline.

    Args:
      scorers: ``scorers(host_batch) -> {name: result}`` with the same names for every batch;
        a result is ``(predicate_scores[B,P,C], object_labels[B,N] | None, object_scores[B,N] |
        None)`` as numpy arrays, or (SGDet) the dict of :func:`predict_outputs` whose ``boxes`` /
        ``pairs`` are the model's own.
      graphs: the evaluated split.
      vocab: vocabulary (number of predicates).
      data: the budgets (``max_objects``, ``eval_max_pairs``, ``eval_batch_size``).
      object_features: precomputed object features aligned with ``graphs``.
      image_transform: ``image_transform(graphs) -> ImageBatchTransform`` adding the pixels of
        every batch (``"roi"`` feature source); SGDet boxes are mapped back with its scales.
      object_buckets: ascending object counts below ``data.max_objects``: an image whose (kept)
        objects fit a bucket is batched with that bucket's budgets (:func:`eval_pipeline_config`);
        empty = every image with the full budgets.

    Returns:
      ``{name: [prediction of graphs[0], ...]}``. With several processes the evaluation pipeline
      gives each process its shard of every bucket's images, so an entry is None where another
      process holds the prediction.
    """
    buckets = [*object_buckets, data.max_objects]
    kept = np.minimum([g.num_objects for g in graphs], data.max_objects)
    bucket_of = np.searchsorted(buckets, kept)
    predictions: dict[str, list[Any]] = {}
    for bucket_index, max_objects in enumerate(buckets):
        members = np.flatnonzero(bucket_of == bucket_index)
        if members.size == 0:
            continue
        subset = [graphs[i] for i in members]
        subset_features = None if object_features is None else take(object_features, members)
        loader = pipeline.make_loader(
            subset,
            eval_pipeline_config(data, vocab, max_objects),
            object_features=subset_features,
        )
        transform = image_transform(subset) if image_transform is not None else None
        for batch in loader:
            scales = None
            if transform is not None:
                scales = transform.scales(batch)
                batch, _ = transform(None, 0, batch)
            for name, result in scorers(batch).items():
                if isinstance(result, Mapping):  # SGDet: the model's own boxes and pairs
                    found = detection_predictions(batch, result, scales)
                else:
                    found = batch_predictions(subset, batch, *result)
                slots = predictions.setdefault(name, [None] * len(graphs))
                for local, prediction in found.items():
                    slots[int(members[local])] = prediction
    return predictions


def evaluate_scorers(
    scorers: MultiScorer,
    graphs: Sequence[SceneGraph],
    vocab: Vocab,
    data: DataConfig,
    *,
    mode: str,
    zeroshot_triplets: np.ndarray | None = None,
    object_features: Sequence[np.ndarray] | None = None,
    image_transform: Callable[[Sequence[SceneGraph]], Any] | None = None,
    object_buckets: Sequence[int] = (),
) -> dict[str, dict[str, Any]]:
    """Evaluates every scoring of one pass over ``graphs`` (e.g. one model, several rankings).

    Args:
      scorers, graphs, vocab, data, object_features, image_transform, object_buckets: as
        :func:`collect_predictions`.
      mode: ``predcls``, ``sgcls`` or ``sgdet``.
      zeroshot_triplets: optional int[Z, 3] for zR@K.

    Returns:
      ``{name: the evaluator's metrics}``.
    """
    found = collect_predictions(
        scorers,
        graphs,
        vocab,
        data,
        object_features=object_features,
        image_transform=image_transform,
        object_buckets=object_buckets,
    )
    return {
        name: evaluate_predictions(
            graphs, predictions, vocab, mode=mode, zeroshot_triplets=zeroshot_triplets
        )
        for name, predictions in found.items()
    }


def evaluate_scorer(scorer: Scorer, graphs: Sequence[SceneGraph], vocab: Vocab, data, **options):
    """:func:`evaluate_scorers` of a single scoring: ``scorer(host_batch) -> result``."""
    return evaluate_scorers(lambda batch: {"": scorer(batch)}, graphs, vocab, data, **options)[""]


def evaluate_predictions(
    graphs: Sequence[SceneGraph],
    predictions: Sequence[Any],
    vocab: Vocab,
    *,
    mode: str,
    zeroshot_triplets: np.ndarray | None = None,
) -> dict[str, Any]:
    """The evaluator's metrics of ``predictions`` (one per graph), with the head/body/tail groups.

    With several processes each holds the predictions of its shard of the images (the others are
    None, :func:`collect_predictions`) and the per-image terms are gathered (``evaluate``'s
    ``images``): every process returns the metrics of the whole split.
    """
    images = None
    if distributed.process_count() > 1:
        images = [i for i, prediction in enumerate(predictions) if prediction is not None]
    return evaluate(
        graphs,
        predictions,
        mode=mode,
        num_predicates=vocab.num_predicates,
        zeroshot_triplets=zeroshot_triplets,
        predicate_names=vocab.predicate_names,
        predicate_groups=predicate_groups_of(vocab),
        images=images,
    )


def predict_outputs(model) -> Callable[[Mapping[str, Any], SceneGraphBatch], dict[str, Any]]:
    """``predict_fn(variables, batch) -> outputs`` of a relation model for export and evaluation.

    Outputs: ``predicate_scores`` f32[B, P, C] (softmax of the relation logits), ``object_labels``
    and ``object_scores`` [B, N]; in SGDet also the batch over the detections: ``boxes`` [B, D, 4]
    (pixels of the image the detector saw), ``object_mask`` [B, D], ``pairs`` [B, P, 2],
    ``pair_mask`` [B, P], and the detector's ``detection_labels`` / ``detection_scores`` [B, D].
    """
    sgdet_keys = ("boxes", "object_mask", "pairs", "pair_mask")
    sgdet_keys += ("detection_labels", "detection_scores")

    def predict_fn(variables, batch):
        outputs, _ = model.apply(variables, batch, train=False)
        result = {
            "predicate_scores": jax.nn.softmax(outputs["relation_logits"], axis=-1),
            "object_labels": outputs["object_labels"],
            "object_scores": outputs["object_scores"],
        }
        result.update({key: outputs[key] for key in sgdet_keys if key in outputs})
        return result

    return predict_fn


def model_scorer(model, variables_fn: Callable[[], Mapping[str, Any]], mesh, shard) -> Scorer:
    """A scorer running ``model`` (eval mode) on the mesh; softmax over the relation logits.

    Returns the ``(scores, labels, object_scores)`` of :func:`collect_predictions`, or in SGDet the
    host dict of :func:`predict_outputs`.

    Args:
      model: the flax module (outputs follow the model contract).
      variables_fn: returns the current variables (e.g. of the train state).
      mesh: the device mesh.
      shard: ``shard(batch, mesh)`` placing a host batch on the mesh.
    """

    predict = jax.jit(predict_outputs(model))

    def scorer(batch: SceneGraphBatch):
        outputs = mesh_lib.process_local(predict(variables_fn(), shard(batch, mesh)))
        if "boxes" in outputs:  # SGDet: objects and pairs are the model's (detection_predictions)
            return {k: np.asarray(v) for k, v in outputs.items()}
        return (
            np.asarray(outputs["predicate_scores"]),
            np.asarray(outputs["object_labels"]),
            np.asarray(outputs["object_scores"]),
        )

    return scorer


def bundled_predicate_vectors(predicate_names: Sequence[str], seed: int) -> tuple[np.ndarray, int]:
    """The bundled 300-d GloVe vectors of ``predicate_names``; names not among them get random
    vectors (seeded, the table's spread). Returns (f32[C, 300], number of names not found)."""
    from sgg_jax.data import word_vectors

    table = word_vectors.load_bundled_predicate_vectors(300)
    rng = np.random.default_rng(seed)
    known = np.stack(list(table.values()))
    rows, missing = [], 0
    for name in predicate_names:
        if name in table:
            rows.append(table[name])
        else:
            missing += 1
            rows.append(rng.normal(0.0, known.std(), 300).astype(np.float32))
    return np.stack(rows), missing


# ----------------------------------------------------------------------------------------------
# Pixels: feature_source="roi" (SGCls / SGDet from images)
# ----------------------------------------------------------------------------------------------


def detector_run_config(detector_workdir: str) -> dict[str, Any]:
    """``config.json`` of a detector run (the detector experiment's flags and config)."""
    path = os.path.join(detector_workdir, "config.json")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("detector_workdir", f"cannot read {path}: {error}") from None
    if not isinstance(config, dict) or "detector" not in config or "flags" not in config:
        raise ConfigError("detector_workdir", f"{path} is not an experiments.detector config")
    return config


def sgdet_config(data: DataConfig):
    """The :class:`~sgg_jax.relation.sgdet.SGDetConfig` of ``data``: ``max_pairs`` candidates per
    training image with at most ``max_fg`` foreground (SGB: 256 and 64)."""
    from sgg_jax.relation.sgdet import SGDetConfig

    return SGDetConfig(train_pairs=data.max_pairs, train_fg=data.max_fg)


DETECTOR_SUBTREE = ("features", "detector")  # where relation models hold the detector


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _converted_checkpoint(path: str, stamp: tuple[int, int]) -> tuple[Any, dict[str, Any], str]:
    """``(DetectorConfig, variables, sha256)`` of a maskrcnn_benchmark checkpoint (cached per
    file version: the class check and the experiment read it once)."""
    del stamp  # part of the cache key only
    from sgg_jax.detection import convert

    state_dict = convert.load_state_dict(path)
    if not state_dict:
        raise DataError("holds no tensors (not a detector checkpoint)", path=path)
    detector = convert.infer_detector_config(state_dict, path=path)
    variables = convert.convert_maskrcnn_benchmark_detector(state_dict, detector, path=path)
    return detector, variables, file_sha256(path)


def detector_checkpoint(path: str) -> tuple[Any, dict[str, Any], str]:
    """The detector of a Scene-Graph-Benchmark / maskrcnn_benchmark checkpoint (``.pth`` or the
    ``.npz`` of :func:`sgg_jax.detection.convert.save_npz`): ``(config, variables, sha256)``.

    The config is :func:`~sgg_jax.detection.convert.infer_detector_config`'s (input convention
    ``sgb``); the variables are :class:`~sgg_jax.detection.detector.FasterRCNN`'s (host numpy).

    Raises:
      DataError: one line naming the file (and the missing or misshapen key): not a detector
        checkpoint (e.g. a classifier's state dict, a torch file of a list, a zip that is no torch
        file), or missing.
    """
    path = os.path.abspath(path)
    try:
        info = os.stat(path)
    except OSError:
        raise DataError("file not found", path=path) from None
    return _converted_checkpoint(path, (info.st_mtime_ns, info.st_size))


def detector_num_classes(data: DataConfig) -> int:
    """Classes + background of the detector of ``data`` (``feature_source="roi"``)."""
    if data.detector_checkpoint:
        return detector_checkpoint(data.detector_checkpoint)[0].num_classes
    return int(detector_run_config(data.detector_workdir)["detector"]["num_classes"])


def check_detector_classes(data: DataConfig, vocab: Vocab) -> None:
    """With ``feature_source="roi"``: the detector's box predictor must classify the vocabulary's
    objects (``num_classes == vocab.num_classes + 1``, background included). :func:`load_splits`
    calls it, so a relation experiment fails here before anything is built.

    Raises:
      ConfigError: one line naming the flag, the file and both counts.
      DataError: the checkpoint is not a detector (see :func:`detector_checkpoint`).
    """
    if data.feature_source != "roi":
        return
    found = detector_num_classes(data)
    if found != vocab.num_classes + 1:
        if data.detector_checkpoint:
            option, source = "detector_checkpoint", data.detector_checkpoint
            field = "roi_heads.box.predictor.cls_score.weight"
        else:
            option = "detector_workdir"
            source = os.path.join(data.detector_workdir, "config.json")
            field = "detector.num_classes"
        raise ConfigError(
            option,
            f"{source}: {field} has {found} classes (background included) but the "
            f"{data.dataset} vocabulary has {vocab.num_classes} object classes + background = "
            f"{vocab.num_classes + 1}",
        )


class PixelInputs:
    """What ``feature_source="roi"`` adds to a relation experiment.

    * ``detector``: the :class:`~sgg_jax.detection.detector.DetectorConfig` of ``detector_workdir``
      (recorded by the detector run, its convention included) or of ``detector_checkpoint``
      (inferred from the weights, convention ``sgb``); ``detections_per_image`` overrides its
      detections per image;
    * ``image_size``: the longer side images are resized to: ``image_size``, else the detector
      run's, else the convention's ``max_size`` (``sgb``: shorter side 600, longer at most 1000);
    * ``convention``: the detector's :class:`~sgg_jax.data.images.InputConvention`
      (``convention`` given and different: one ConfigError naming both);
    * :meth:`transform`: the :class:`~sgg_jax.data.images.ImageBatchTransform` of a split, in the
      detector's convention;
    * :meth:`merge_detector`: fresh relation-model variables with the pretrained detector under
      ``[scope/]features/detector`` (every collection: params, frozen BN constants): the detector
      run's newest checkpoint, or the converted checkpoint; and the ``"sgb"`` union extractor's
      fc6 / fc7 copied from its box head (as SGB);
    * :meth:`model_fields`: the relation-model config fields of the run (detector, freezing,
      union features, SGDet candidates); :meth:`train_options`: the pixel arguments of
      :func:`sgg_jax.train.train` (image transform, example batch, trainable mask, the frozen
      detector as external variables);
    * :meth:`source_config`: the run-config record of the detector (path; sha256 of a checkpoint
      file); :meth:`external_variables`: the frozen detector as the trainer's
      :class:`~sgg_jax.train.checkpoint.ExternalVariables` (left out of periodic checkpoints).

    ``scope`` (:meth:`merge_detector`, :meth:`train_options`, :meth:`trainable`,
    :meth:`external_variables`): the name of the relation model's subtree when it is wrapped by
    another module (e.g. ``"base"``), None at the top.
    """

    def __init__(self, data: DataConfig, convention: Any = None):
        from sgg_jax.data.images import check_convention
        from sgg_jax.detection.detector import DetectorConfig

        self.workdir = data.detector_workdir
        self.checkpoint = None
        self.checkpoint_sha256 = None
        if data.detector_checkpoint:
            self.checkpoint = os.path.abspath(data.detector_checkpoint)
            detector, _, self.checkpoint_sha256 = detector_checkpoint(self.checkpoint)
            recorded = 0
        else:
            config = detector_run_config(data.detector_workdir)
            detector = DetectorConfig.from_dict(config["detector"])
            recorded = int(config["flags"].get("image_size", 0))
        if data.detections_per_image:
            detector = detector.replace(detections_per_image=data.detections_per_image)
        self.detector = detector
        self.convention = check_convention(detector.input_convention, convention)
        recorded = recorded or (self.convention.max_size or 0)
        self.image_size = int(data.image_size or recorded)
        if self.image_size <= 0:
            raise ConfigError("image_size", "is required: the detector run records none")
        self.max_image_pixels = data.max_image_pixels
        self.data = data

    def model_fields(self) -> dict[str, Any]:
        """``detector``, ``freeze_detector``, ``union_features`` and ``sgdet`` of a PE-Net /
        MotifNet config."""
        return {
            "detector": self.detector,
            "freeze_detector": self.data.freeze_detector,
            "union_features": self.data.union_features,
            "sgdet": sgdet_config(self.data),
        }

    def train_options(
        self, graphs: Sequence[SceneGraph], loader, scope: str | None = None
    ) -> dict[str, Any]:
        """``batch_transform``, ``example_batch``, ``trainable`` (:meth:`trainable`) and
        ``external_variables`` (:meth:`external_variables`) of :func:`sgg_jax.train.train` on
        ``loader`` (over ``graphs``)."""
        return {
            "batch_transform": self.transform(graphs),
            "example_batch": self.example_batch(graphs, loader),
            "trainable": self.trainable(scope),
            "external_variables": self.external_variables(self.data.freeze_detector, scope),
        }

    def trainable(self, scope: str | None = None) -> Callable[[Mapping[str, Any]], Any]:
        """``mask_fn(params)``: everything trains but the detector under
        ``[scope/]features/detector`` (all of it with ``freeze_detector``, else its frozen
        backbone stages: :func:`sgg_jax.relation.features.relation_trainable_mask`)."""
        from sgg_jax.relation.features import relation_trainable_mask

        mask_fn = relation_trainable_mask(self.detector, self.data.freeze_detector)
        if scope is None:
            return mask_fn

        def scoped(params):
            mask = jax.tree.map(lambda _: True, params)
            return {**mask, scope: mask_fn(params[scope])}

        return scoped

    @property
    def option(self) -> str:
        """The flag naming the detector: ``detector_checkpoint`` or ``detector_workdir``."""
        return "detector_checkpoint" if self.checkpoint else "detector_workdir"

    def source_config(self) -> dict[str, Any]:
        """What the run config records of the detector: the absolute path of the workdir, or of
        the checkpoint and its sha256."""
        if self.checkpoint:
            return {
                "detector_checkpoint": self.checkpoint,
                "detector_checkpoint_sha256": self.checkpoint_sha256,
            }
        return {"detector_workdir": os.path.abspath(self.workdir)}

    def external_variables(self, frozen: bool, scope: str | None = None):
        """The detector subtree (under ``scope``) as
        :class:`~sgg_jax.train.checkpoint.ExternalVariables` of the trainer when ``frozen``
        (periodic checkpoints leave it out and re-merge it from this source on resume, checking
        its digest); None when it trains."""
        from sgg_jax.train.checkpoint import ExternalVariables

        if not frozen:
            return None
        return ExternalVariables(
            path=DETECTOR_SUBTREE if scope is None else (scope, *DETECTOR_SUBTREE),
            source=self.source_config(),
            name=self.checkpoint or os.path.abspath(self.workdir),
        )

    def transform(self, graphs: Sequence[SceneGraph], convention: Any = None):
        """The image transform of ``graphs`` in the detector's convention (``convention``, when
        given, must be the same: one ConfigError naming both otherwise)."""
        from sgg_jax.data.images import ImageBatchTransform, check_convention

        return ImageBatchTransform(
            graphs,
            self.image_size,
            convention=check_convention(self.convention, convention),
            max_pixels=self.max_image_pixels,
        )

    def example_batch(self, graphs: Sequence[SceneGraph], loader) -> SceneGraphBatch:
        """The first batch of ``loader`` (over ``graphs``) with its pixels (model init)."""
        return self.transform(graphs)(None, 0, loader.dataset[0])[0]

    def transform_config(self) -> dict[str, Any]:
        """How the export's images must be prepared (``experiments.predict`` reads it)."""
        convention = self.convention
        return {
            "image_size": self.image_size,
            "mean": list(convention.mean),
            "std": list(convention.std),
            "scale_255": convention.scale == 1.0,
            "bgr": convention.channel_order == "bgr",
            "input_convention": convention.to_dict(),
        }

    def pretrained_variables(self) -> dict[str, Any]:
        """The detector's variables (host numpy): the converted checkpoint, or the newest
        checkpoint of the detector run."""
        if self.checkpoint:
            return detector_checkpoint(self.checkpoint)[1]
        from sgg_jax.train.checkpoint import Checkpointer

        with Checkpointer(self.workdir, read_only=True) as checkpointer:
            if checkpointer.latest_step() is None:
                raise ConfigError("detector_workdir", f"{self.workdir} holds no checkpoint")
            return jax.device_get(checkpointer.restore_variables())

    def merge_detector(self, fresh: Mapping[str, Any], scope: str | None = None) -> dict[str, Any]:
        """``fresh`` with the pretrained detector's variables under ``[scope/]features/detector``."""
        from flax import traverse_util

        pretrained = self.pretrained_variables()
        where = self.checkpoint or self.workdir
        merged = {name: dict(collection) for name, collection in fresh.items()}
        for name, collection in merged.items():
            model = dict(collection.get(scope, {})) if scope is not None else collection
            target = model.get("features", {}).get("detector")
            if target is None:
                continue
            # SGCls pools features only: the model holds a subset (no RPN, no predictor) of the
            # detector's variables; every one it holds must come from the checkpoint.
            source = traverse_util.flatten_dict(dict(pretrained.get(name, {})))
            wanted = traverse_util.flatten_dict(dict(target))
            missing = [p for p in wanted if p not in source]
            wrong = [
                p for p in wanted if p in source and np.shape(source[p]) != np.shape(wanted[p])
            ]
            if missing or wrong:
                first = "/".join((missing or wrong)[0])
                raise ConfigError(
                    self.option,
                    f"the detector checkpoint of {where} does not fit the detector config: "
                    f"{len(missing)} '{name}' variables missing, {len(wrong)} of another shape "
                    f"(first: {first})",
                )
            features = dict(model["features"])
            features["detector"] = traverse_util.unflatten_dict({p: source[p] for p in wanted})
            model["features"] = features
            if scope is not None:
                collection[scope] = model
        from sgg_jax.relation.features import union_head_from_detector

        return union_head_from_detector(merged)
