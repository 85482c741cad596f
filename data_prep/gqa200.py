"""GQA-200 (SHA-GCL layout) -> TFDS array_record dataset ``gqa200``, one scene graph per record.

GQA-200 is the 200-class / 100-predicate GQA split of Dong et al., "Stacked Hybrid-Attention and
Group Collaborative Learning for Unbiased Scene Graph Generation" (SHA-GCL, CVPR 2022). Each split
file (``GQA_200_Train.json``, ``GQA_200_Test.json``) becomes one TFDS split, read and validated by
:func:`sgg_jax.data.gqa200.read`; the vocabulary and train-split counts of ``GQA_200_ID_Info.json``
go into the dataset metadata.

Usage::

  python -m data_prep.gqa200 --split_json GQA_200_Train.json --split_json GQA_200_Test.json \\
      --id_info GQA_200_ID_Info.json --out ~/sgg_data [--strict] [--image_dir DIR]

The split name comes from the file name (``train`` / ``val`` / ``test`` when the name says so,
otherwise the file's stem) or is given as ``--split_json NAME=PATH``. The written dataset is read with
``sgg_jax.data.tfds_source.open_source(out, "gqa200", split)``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from data_prep.common import BuildResult, SceneGraphBuilder, define_common_flags, prepare, run_cli
from sgg_jax.data import gqa200 as gqa200_reader
from sgg_jax.data.validation import ReadReport
from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraph, Vocab

_NAMED_SPLIT = re.compile(r"^(\w+)=(.+)$")
_SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_name_from_path(path: str) -> str:
    """The split a GQA-200 file holds, from its name.

    Args:
      path: e.g. ``.../GQA_200_Train.json`` or ``GQA_200_Test.json.gz``.

    Returns:
      ``"train"``, ``"val"`` or ``"test"`` when a word of the file name says so, otherwise the
      file's stem in lower case with non-word characters replaced by ``_``.
    """
    stem = os.path.basename(path)
    for suffix in (".gz", ".json"):
        stem = stem.removesuffix(suffix)
    words = re.split(r"[^a-z0-9]+", stem.lower())
    for word in words:
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    name = re.sub(r"\W+", "_", stem.lower()).strip("_")
    if not name:
        raise ConfigError("split_json", f"cannot name a split after {path!r}; use NAME=PATH")
    return name


def parse_split_args(values: Sequence[str]) -> dict[str, str]:
    """``--split_json`` values (``PATH`` or ``NAME=PATH``) -> ``{split_name: path}`` in order.

    Args:
      values: the flag values.

    Returns:
      Split names mapped to files.

    Raises:
      ConfigError: no value, or two files for one split name.
    """
    if not values:
        raise ConfigError("split_json", "give at least one split file")
    splits: dict[str, str] = {}
    for value in values:
        match = _NAMED_SPLIT.match(value)
        name, path = (
            (match.group(1), match.group(2)) if match else (split_name_from_path(value), value)
        )
        if name in splits:
            raise ConfigError(
                "split_json", f"two files for split {name!r}: {splits[name]} and {path}"
            )
        splits[name] = path
    return splits


class Gqa200(SceneGraphBuilder, skip_registration=True):
    """GQA-200 scene graphs: one split per SHA-GCL split file."""

    name = "gqa200"
    DESCRIPTION = (
        "GQA-200 scene graphs (200 object classes, 100 predicates; SHA-GCL split of GQA). One "
        "record per image: boxes xyxy pixels, 1-based labels, relations (subject, object, "
        "predicate). Vocabulary and train-split counts in the metadata under 'vocab'."
    )
    HOMEPAGE = "https://cs.stanford.edu/people/dorarad/gqa/"
    CITATION = (
        "Hudson & Manning, GQA, CVPR 2019; Dong et al., Stacked Hybrid-Attention and Group "
        "Collaborative Learning for Unbiased Scene Graph Generation, CVPR 2022."
    )

    def __init__(
        self,
        *,
        split_files: Mapping[str, str | os.PathLike],
        id_info_path: str | os.PathLike,
        strict: bool = False,
        drop_self_relations: bool = False,
        filter_empty_rels: bool = False,
        image_dir: str | None = None,
        **kwargs: Any,
    ):
        """Holds the raw paths and reader options.

        Args:
          split_files: split name -> ``GQA_200_*.json`` (plain or ``.gz``).
          id_info_path: ``GQA_200_ID_Info.json``.
          strict: raise on annotation quirks instead of repairing them.
          drop_self_relations: drop relations whose subject is its object.
          filter_empty_rels: drop images without relations.
          image_dir: folder of the images (sets each record's image_path).
          **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments, e.g. ``data_dir``.
        """
        self._split_files = {name: os.fspath(path) for name, path in split_files.items()}
        self._id_info_path = os.fspath(id_info_path)
        self._options = {
            "strict": strict,
            "drop_self_relations": drop_self_relations,
            "filter_empty_rels": filter_empty_rels,
            "image_dir": image_dir,
        }
        super().__init__(**kwargs)

    def _read_splits(self) -> tuple[dict[str, tuple[list[SceneGraph], ReadReport]], Vocab]:
        splits = {}
        vocab = gqa200_reader.read_vocab(self._id_info_path)
        for name, path in self._split_files.items():
            report = ReadReport()
            graphs, _ = gqa200_reader.read(path, self._id_info_path, report=report, **self._options)
            splits[name] = (graphs, report)
        return splits, vocab


def build(
    split_files: Mapping[str, str | os.PathLike] | Sequence[str],
    id_info_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    strict: bool = False,
    drop_self_relations: bool = False,
    filter_empty_rels: bool = False,
    image_dir: str | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> BuildResult:
    """Builds ``<out_dir>/gqa200/<version>`` from SHA-GCL split files.

    Args:
      split_files: ``{split: path}``, or ``--split_json`` style values (``PATH`` / ``NAME=PATH``).
      id_info_path: ``GQA_200_ID_Info.json``.
      out_dir: TFDS data_dir to write into.
      strict, drop_self_relations, filter_empty_rels, image_dir: reader options
        (:func:`sgg_jax.data.gqa200.read`).
      overwrite: replace an existing dataset of this version.
      verify: read every record back and compare it with its source graph.

    Returns:
      What was written.
    """
    if not isinstance(split_files, Mapping):
        split_files = parse_split_args([os.fspath(p) for p in split_files])
    builder_kwargs = dict(
        split_files=split_files,
        id_info_path=id_info_path,
        strict=strict,
        drop_self_relations=drop_self_relations,
        filter_empty_rels=filter_empty_rels,
        image_dir=image_dir,
    )
    return prepare(Gqa200, out_dir, builder_kwargs, overwrite=overwrite, verify=verify)


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_multi_string(
        "split_json",
        None,
        "A GQA-200 split file (PATH or NAME=PATH); repeat for several splits.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("id_info", None, "GQA_200_ID_Info.json.", flag_values=flag_values)
    flags.DEFINE_bool(
        "filter_empty_rels", False, "Drop images without relations.", flag_values=flag_values
    )
    define_common_flags(flag_values)
    flags.mark_flags_as_required(["split_json", "id_info"], flag_values=flag_values)


def _build_from_flags(flag_values: flags.FlagValues) -> BuildResult:
    return build(
        parse_split_args(flag_values.split_json),
        flag_values.id_info,
        flag_values.out,
        strict=flag_values.strict,
        drop_self_relations=flag_values.drop_self_relations,
        filter_empty_rels=flag_values.filter_empty_rels,
        image_dir=os.path.abspath(flag_values.image_dir) if flag_values.image_dir else None,
        overwrite=flag_values.overwrite,
        verify=flag_values.verify,
    )


def main(argv: Sequence[str]) -> int:
    """Runs the CLI on ``argv`` (program name first) and returns the exit status."""
    return run_cli(argv, doc=__doc__, define_flags=_define_flags, build=_build_from_flags)


if __name__ == "__main__":
    # Run the copy imported as data_prep.gqa200, so the dataset info names that module.
    from data_prep import gqa200 as _module

    sys.exit(_module.main(sys.argv))
