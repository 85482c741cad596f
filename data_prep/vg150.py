"""VG150 (Scene-Graph-Benchmark layout) -> TFDS array_record dataset ``vg150``, one graph per record.

VG150 is the 150-class / 50-predicate Visual Genome split of Xu et al., "Scene Graph Generation by
Iterative Message Passing" (CVPR 2017), in the files distributed by Scene-Graph-Benchmark.pytorch
(``VG-SGG-with-attri.h5``, ``VG-SGG-dicts-with-attri.json``, ``image_data.json``). The splits
``train``, ``val`` (the first ``--num_val`` train images, as SGB takes them; left out when 0) and
``test`` are read and validated by :func:`sgg_jax.data.vg150.read`. The vocabulary stored in the
metadata carries the counts of the written ``train`` split.

Usage::

  python -m data_prep.vg150 --h5 VG-SGG-with-attri.h5 --dicts VG-SGG-dicts-with-attri.json \\
      --image_data image_data.json --out ~/sgg_data [--num_val 5000] [--strict] [--image_dir DIR]

Images without relations are dropped in every split (SGB's ``filter_empty_rels``; pass
``--nofilter_empty_rels`` to keep them). Duplicate predicates on one pair are kept (multi-label
ground truth; the training pipeline can deduplicate). The written dataset is read with
``sgg_jax.data.tfds_source.open_source(out, "vg150", split)``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from data_prep.common import BuildResult, SceneGraphBuilder, define_common_flags, prepare, run_cli
from sgg_jax.data import vg150 as vg150_reader
from sgg_jax.data.validation import ReadReport
from sgg_jax.structures import SceneGraph, Vocab

DEFAULT_NUM_VAL = 5000  # Scene-Graph-Benchmark's validation split size


class Vg150(SceneGraphBuilder, skip_registration=True):
    """VG150 scene graphs: train / val / test as Scene-Graph-Benchmark splits them."""

    name = "vg150"
    DESCRIPTION = (
        "Visual Genome VG150 scene graphs (150 object classes, 50 predicates; Xu et al. split as "
        "distributed by Scene-Graph-Benchmark). One record per image: boxes xyxy pixels, 1-based "
        "labels, relations (subject, object, predicate). Vocabulary with train-split counts in the "
        "metadata under 'vocab'."
    )
    HOMEPAGE = "https://homes.cs.washington.edu/~ranjay/visualgenome/"
    CITATION = (
        "Krishna et al., Visual Genome, IJCV 2017; Xu et al., Scene Graph Generation by Iterative "
        "Message Passing, CVPR 2017; Tang et al., Unbiased Scene Graph Generation from Biased "
        "Training, CVPR 2020."
    )

    def __init__(
        self,
        *,
        h5_path: str | os.PathLike,
        dicts_path: str | os.PathLike,
        image_data_path: str | os.PathLike,
        num_val: int = DEFAULT_NUM_VAL,
        filter_empty_rels: bool = True,
        num_images: int = -1,
        strict: bool = False,
        drop_self_relations: bool = False,
        image_dir: str | None = None,
        **kwargs: Any,
    ):
        """Holds the raw paths and reader options.

        Args:
          h5_path: ``VG-SGG-with-attri.h5``.
          dicts_path: ``VG-SGG-dicts-with-attri.json`` (plain or ``.gz``).
          image_data_path: ``image_data.json`` (plain or ``.gz``).
          num_val: the first ``num_val`` train images form the ``val`` split (0: no val split).
          filter_empty_rels: drop images without relations (every split).
          num_images: keep the first images of each h5 split (-1: all), before ``num_val``.
          strict: raise on annotation quirks instead of repairing them.
          drop_self_relations: drop relations whose subject is its object.
          image_dir: folder of the VG images (sets each record's image_path).
          **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments, e.g. ``data_dir``.
        """
        self._paths = (os.fspath(h5_path), os.fspath(dicts_path), os.fspath(image_data_path))
        self._num_val = num_val
        self._options = {
            "num_val": num_val,
            "filter_empty_rels": filter_empty_rels,
            "num_images": num_images,
            "strict": strict,
            "drop_self_relations": drop_self_relations,
            "image_dir": image_dir,
        }
        super().__init__(**kwargs)

    def _read_splits(self) -> tuple[dict[str, tuple[list[SceneGraph], ReadReport]], Vocab]:
        names = ("train", "val", "test") if self._num_val else ("train", "test")
        splits, train_vocab = {}, None
        for name in names:
            report = ReadReport()
            graphs, vocab = vg150_reader.read(*self._paths, name, report=report, **self._options)
            splits[name] = (graphs, report)
            if name == "train":
                train_vocab = vocab  # counts recomputed from the written train split
        return splits, train_vocab


def build(
    h5_path: str | os.PathLike,
    dicts_path: str | os.PathLike,
    image_data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_val: int = DEFAULT_NUM_VAL,
    filter_empty_rels: bool = True,
    num_images: int = -1,
    strict: bool = False,
    drop_self_relations: bool = False,
    image_dir: str | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> BuildResult:
    """Builds ``<out_dir>/vg150/<version>`` from the Scene-Graph-Benchmark files.

    Args:
      h5_path, dicts_path, image_data_path: the three raw files.
      out_dir: TFDS data_dir to write into.
      num_val, filter_empty_rels, num_images, strict, drop_self_relations, image_dir: reader
        options (:func:`sgg_jax.data.vg150.read`); ``num_val=0`` writes no ``val`` split.
      overwrite: replace an existing dataset of this version.
      verify: read every record back and compare it with its source graph.

    Returns:
      What was written.
    """
    builder_kwargs = dict(
        h5_path=h5_path,
        dicts_path=dicts_path,
        image_data_path=image_data_path,
        num_val=num_val,
        filter_empty_rels=filter_empty_rels,
        num_images=num_images,
        strict=strict,
        drop_self_relations=drop_self_relations,
        image_dir=image_dir,
    )
    return prepare(Vg150, out_dir, builder_kwargs, overwrite=overwrite, verify=verify)


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("h5", None, "VG-SGG-with-attri.h5.", flag_values=flag_values)
    flags.DEFINE_string("dicts", None, "VG-SGG-dicts-with-attri.json.", flag_values=flag_values)
    flags.DEFINE_string("image_data", None, "image_data.json.", flag_values=flag_values)
    flags.DEFINE_integer(
        "num_val",
        DEFAULT_NUM_VAL,
        "The first NUM_VAL train images form the val split (0: no val split).",
        lower_bound=0,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_images",
        -1,
        "Keep the first NUM_IMAGES images of each h5 split (-1: all), for quick builds.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "filter_empty_rels",
        True,
        "Drop images without relations (Scene-Graph-Benchmark does, in every split).",
        flag_values=flag_values,
    )
    define_common_flags(flag_values)
    flags.mark_flags_as_required(["h5", "dicts", "image_data"], flag_values=flag_values)


def _build_from_flags(flag_values: flags.FlagValues) -> BuildResult:
    return build(
        flag_values.h5,
        flag_values.dicts,
        flag_values.image_data,
        flag_values.out,
        num_val=flag_values.num_val,
        filter_empty_rels=flag_values.filter_empty_rels,
        num_images=flag_values.num_images,
        strict=flag_values.strict,
        drop_self_relations=flag_values.drop_self_relations,
        image_dir=os.path.abspath(flag_values.image_dir) if flag_values.image_dir else None,
        overwrite=flag_values.overwrite,
        verify=flag_values.verify,
    )


def main(argv: Sequence[str]) -> int:
    """Runs the CLI on ``argv`` (program name first) and returns the exit status."""
    return run_cli(argv, doc=__doc__, define_flags=_define_flags, build=_build_from_flags)


if __name__ == "__main__":
    # Run the copy imported as data_prep.vg150, so the dataset info names that module.
    from data_prep import vg150 as _module

    sys.exit(_module.main(sys.argv))
