"""Shared pieces of the scene-graph TFDS builders: features, encoding, building, summary, CLI.

Every dataset :mod:`data_prep` writes has one scene graph per record with the features of
:func:`features` (the format is defined on the read side, :mod:`sgg_jax.data.tfds_source`):
``image_id`` (text), ``width`` / ``height`` (int32), ``boxes`` float32[N, 4] xyxy pixels, ``labels``
int32[N], ``relations`` int32[R, 3] and ``image_path`` (text, ``""`` when none). Records are written
as ``array_record`` files (random access, no TensorFlow needed) in the order of the raw file; the
vocabulary goes into the dataset metadata (``metadata.json``).

A builder reads its raw files through the :mod:`sgg_jax.data` readers, which validate every record
(:func:`sgg_jax.data.validation.build_graph`) before anything is written. :func:`prepare` then
writes the dataset into a staging folder, reads every record back and compares it with its source
graph, moves the dataset into place, and returns a :class:`BuildResult` whose
:func:`format_summary` the CLIs print. A CLI reports bad input as one line on stderr (the
:class:`~sgg_jax.errors.DataError` naming file, image and field) and exits with status 2.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from sgg_jax.data import tfds_source
from sgg_jax.data.fileio import check_writable_dir
from sgg_jax.data.summary import (
    SplitSummary,
    format_predicate_histogram,
    format_splits,
    summarize_split,
)
from sgg_jax.data.tfds_source import decode_example, vocab_to_metadata
from sgg_jax.data.validation import ReadReport
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph, Vocab

__all__ = [
    "FILE_FORMAT",
    "BuildResult",
    "SceneGraphBuilder",
    "SplitSummary",
    "decode_example",
    "define_common_flags",
    "encode_example",
    "features",
    "format_summary",
    "prepare",
    "run_cli",
    "summarize_split",
]

FILE_FORMAT = tfds.core.FileFormat.ARRAY_RECORD
HELP_ARGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def features() -> tfds.features.FeaturesDict:
    """The TFDS features of one scene graph record (defined once, on the read side).

    Returns:
      :func:`sgg_jax.data.tfds_source.features`: a FeaturesDict with the keys of
      :data:`sgg_jax.data.tfds_source.FEATURE_KEYS`.
    """
    return tfds_source.features()


def encode_example(graph: SceneGraph) -> dict[str, Any]:
    """A :class:`SceneGraph` as the feature dictionary TFDS encodes (inverse of ``decode_example``).

    Args:
      graph: a validated scene graph.

    Returns:
      Dict of numpy values; ``image_path`` is ``""`` when the graph has none. Captions are not
      stored.
    """
    return {
        "image_id": graph.image_id,
        "width": np.int32(graph.width),
        "height": np.int32(graph.height),
        "boxes": graph.boxes.astype(np.float32, copy=False),
        "labels": graph.labels.astype(np.int32, copy=False),
        "relations": graph.relations.astype(np.int32, copy=False),
        "image_path": graph.image_path or "",
    }


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """A dataset written by :func:`prepare`.

    Attributes:
      name: dataset name (``"gqa200"``, ``"vg150"``).
      version: dataset version.
      data_dir: the ``--out`` folder; ``tfds_source.open_source(data_dir, name, split)`` reads it.
      dataset_dir: ``<data_dir>/<name>/<version>``.
      files: the array_record files written, sorted.
      vocab: the vocabulary stored in the metadata.
      splits: one summary per split, in build order.
      verified: whether every record was read back and compared with its source graph.
    """

    name: str
    version: str
    data_dir: str
    dataset_dir: str
    files: tuple[str, ...]
    vocab: Vocab
    splits: tuple[SplitSummary, ...]
    verified: bool


class SceneGraphBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the scene-graph builders: one record per scene graph, array_record files.

    Subclasses set ``name``, ``DESCRIPTION``, ``HOMEPAGE``, ``CITATION``, store their raw file paths
    in ``__init__`` before calling ``super().__init__(data_dir=...)``, and implement
    :meth:`_read_splits`. Builders are not registered by name (their raw paths are constructor
    arguments); the read side opens the written folder directly.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One scene graph per record; vocabulary in the metadata."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def __init__(self, **kwargs: Any):
        self._read_result: tuple[dict[str, tuple[list[SceneGraph], ReadReport]], Vocab] | None
        self._read_result = None
        super().__init__(file_format=FILE_FORMAT, **kwargs)

    @abc.abstractmethod
    def _read_splits(self) -> tuple[dict[str, tuple[list[SceneGraph], ReadReport]], Vocab]:
        """Reads (and validates) the raw files.

        Returns:
          ``({split: (graphs, report)}, vocab)`` with the splits in build order.
        """

    def read_splits(self) -> tuple[dict[str, tuple[list[SceneGraph], ReadReport]], Vocab]:
        """The validated scene graphs of every split and the vocabulary (read once, then cached).

        Returns:
          ``({split: (graphs, report)}, vocab)``.

        Raises:
          DataError: a raw file or record is malformed.
        """
        if self._read_result is None:
            self._read_result = self._read_splits()
        return self._read_result

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=features(),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # records stay in raw-file order
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # the raw files are local paths given to the constructor
        splits, vocab = self.read_splits()
        self.info.metadata.update(vocab_to_metadata(vocab))
        return {name: self._generate_examples(graphs) for name, (graphs, _) in splits.items()}

    def _generate_examples(self, graphs: Sequence[SceneGraph]):
        for index, graph in enumerate(graphs):
            yield index, encode_example(graph)

    # TFDS prints these two lines to stdout; the CLIs keep stdout for their summary.
    def _log_download_bytes(self) -> None:
        logging.info("Preparing %s in %s", self.info.full_name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Prepared %s in %s", self.info.full_name, self.data_dir)


def _verify(
    data_dir: str,
    name: str,
    splits: Mapping[str, tuple[list[SceneGraph], ReadReport]],
    vocab: Vocab,
) -> None:
    """Reads every record back through the read side and compares it with its source graph."""
    for split, (graphs, _) in splits.items():
        source, stored_vocab = tfds_source.open_source(data_dir, name, split)
        if len(source) != len(graphs):
            raise DataError(
                f"split {split!r} holds {len(source)} records, expected {len(graphs)}",
                path=source.path,
            )
        for index, written in enumerate(source):
            expected = graphs[index].replace(captions=())
            if written != expected:
                raise DataError(
                    f"record #{index} of split {split!r} differs from the source graph",
                    path=source.path,
                    record=expected.image_id,
                )
        if stored_vocab != vocab:
            raise DataError("the stored vocabulary differs from the source", path=source.path)


def prepare(
    builder_cls: type[SceneGraphBuilder],
    out_dir: str | os.PathLike,
    builder_kwargs: Mapping[str, Any],
    *,
    overwrite: bool = False,
    verify: bool = True,
) -> BuildResult:
    """Reads and validates the raw files, writes the array_record dataset, and checks it.

    The dataset is written into a staging folder inside ``out_dir``, verified there, and only then
    moved to ``<out_dir>/<name>/<version>``: invalid input leaves ``out_dir`` as it was (an existing
    dataset included).

    Args:
      builder_cls: :class:`SceneGraphBuilder` subclass.
      out_dir: the TFDS data_dir to write into.
      builder_kwargs: the builder's raw paths and reader options.
      overwrite: replace a dataset of the same name and version already in ``out_dir``.
      verify: read every written record back and compare it with its source graph.

    Returns:
      What was written (:class:`BuildResult`).

    Raises:
      DataError: a raw file or record is malformed, or a record does not read back equal to its
        source (nothing is written then).
      ConfigError: the dataset exists and ``overwrite`` is False; ``out_dir`` is a file or
        cannot be written.
    """
    check_writable_dir(out_dir, "out")  # before the raw files are read
    data_dir = os.path.abspath(os.fspath(out_dir))
    version = str(builder_cls.VERSION)
    dataset_dir = os.path.join(data_dir, builder_cls.name, version)
    if os.path.exists(dataset_dir) and not overwrite:
        raise ConfigError(
            "overwrite", f"{dataset_dir} already holds a prepared dataset; pass --overwrite"
        )
    os.makedirs(data_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=data_dir)
    try:
        builder = builder_cls(data_dir=staging, **builder_kwargs)
        splits, vocab = builder.read_splits()  # validation errors surface before any writing
        builder.download_and_prepare(
            download_dir=os.path.join(staging, "downloads"), file_format=FILE_FORMAT
        )
        staged_dir = os.fspath(builder.data_dir)
        summaries = tuple(
            summarize_split(name, graphs, vocab, report)
            for name, (graphs, report) in splits.items()
        )
        if verify:
            _verify(staging, f"{builder_cls.name}:{version}", splits, vocab)
        files = sorted(f for f in os.listdir(staged_dir) if ".array_record-" in f)
        os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
        if os.path.exists(dataset_dir):
            os.rename(dataset_dir, os.path.join(staging, "replaced"))
        os.rename(staged_dir, dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(
        name=builder_cls.name,
        version=version,
        data_dir=data_dir,
        dataset_dir=dataset_dir,
        files=tuple(os.path.join(dataset_dir, f) for f in files),
        vocab=vocab,
        splits=summaries,
        verified=verify,
    )


# ----------------------------------------------------------------------------------------------
# Summary.
# ----------------------------------------------------------------------------------------------


def format_summary(result: BuildResult, *, top_k: int = 10) -> str:
    """A compact text summary: counts per split and the predicate histogram.

    The split table has one row per split (images, boxes, relations, boxes the reader repaired,
    self-relations, images dropped for holding no box or no relation) and a total row. The
    predicate table ranks predicates by their total count over all splits and shows the ``top_k`` most and least frequent (all of them when there are at most
    ``2 * top_k``), with their count in every split and their share of all relations.

    Args:
      result: what :func:`prepare` returned.
      top_k: predicates shown at each end of the histogram.

    Returns:
      Multi-line text (no trailing newline).
    """
    splits = result.splits
    lines = [
        f"{result.name} {result.version}: {len(result.files)} array_record files in "
        f"{result.dataset_dir}"
        + (" (every record read back and verified)" if result.verified else "")
    ]
    lines += format_splits(splits)
    lines.append("")
    lines += format_predicate_histogram(splits, result.vocab.predicate_names, top_k=top_k)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------


def define_common_flags(flag_values: flags.FlagValues) -> None:
    """Flags every data_prep CLI has: ``--out``, ``--strict``, ``--overwrite``, ``--verify``, ..."""
    flags.DEFINE_string(
        "out",
        None,
        "Output data_dir; the dataset goes to <out>/<name>/<version>.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "strict",
        False,
        "Raise on annotation quirks (inverted or out-of-image boxes, self-relations) instead of "
        "repairing them.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "drop_self_relations",
        False,
        "Drop relations whose subject is its object.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "image_dir",
        None,
        "Folder of the images; each record stores <absolute dir>/<image_id>.jpg as image_path.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace a dataset of the same version already in --out.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "verify",
        True,
        "Read every record back after writing and compare it with its source.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "top_k", 10, "Predicates shown at each end of the histogram.", flag_values=flag_values
    )
    flags.mark_flag_as_required("out", flag_values=flag_values)


def run_cli(
    argv: Sequence[str],
    *,
    doc: str,
    define_flags: Callable[[flags.FlagValues], None],
    build: Callable[[flags.FlagValues], BuildResult],
) -> int:
    """Parses flags, builds, prints the summary; bad input -> one line on stderr and status 2.

    Args:
      argv: the command line, program name first.
      doc: printed with the flag help for ``--help``.
      define_flags: defines the CLI's flags on a fresh ``FlagValues``.
      build: builds the dataset from the parsed flags.

    Returns:
      The exit status: 0, or 2 for invalid flags or input data.
    """
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print(doc.strip() + "\n\nflags:\n" + flag_values.get_help(include_special_flags=False))
        return 0
    try:
        rest = flag_values(list(argv))
    except flags.Error as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"unexpected arguments: {' '.join(rest[1:])}", file=sys.stderr)
        return 2
    tfds.disable_progress_bar()
    try:
        result = build(flag_values)
    except (DataError, ConfigError) as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(format_summary(result, top_k=flag_values.top_k))
    return 0
