"""Scene graphs of your own images from an exported SGDet model: JSON plus drawings.

``python -m experiments.predict --export_dir=DIR --images=a.jpg,b.png --out=OUT [--top_k=10]
[--score_thresh=0.3] [--batch_size=B] [--max_image_pixels=50000000]``

``--images`` takes a comma-separated list, or space-separated paths after it
(``--images a.jpg b.jpg``: the extra words are positional arguments, read as more images).

This file holds the flags only: :func:`config_from_flags` turns them into a
:class:`sgg_jax.experiment.predict.PredictConfig` and :func:`sgg_jax.experiment.predict.run` does
the work (its module docstring describes the export contract, the pipeline and the outputs:
``scene_graphs.json``, ``<stem>_scene_graph.png`` and ``<stem>_graph.png`` per image in ``--out``).

Bad input: a missing, empty, unreadable (e.g. a text file named ``.jpg``), truncated or zero-size
image, an image of more than ``--max_image_pixels`` pixels (refused from its header, before
decoding), an ``--out`` that is a file or cannot be written, a bad flag, or an export folder that is missing, incomplete or not an SGDet export with
images ends the run with exit status 2 and one ``error: ...`` line on stderr naming the file, the
folder or the flag, before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from experiments import cli
from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.experiment import predict
from sgg_jax.experiment.predict import PredictConfig


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declares every flag of the command on ``flag_values``."""
    flags.DEFINE_string(
        "export_dir",
        None,
        "Export folder of an SGDet model (manifest.json, ...).",
        flag_values=flag_values,
    )
    flags.DEFINE_list("images", [], "Image files (comma-separated).", flag_values=flag_values)
    flags.DEFINE_string("out", None, "Output folder (created).", flag_values=flag_values)
    flags.DEFINE_integer(
        "top_k", 10, "Relations kept (and drawn) per image, best first.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "score_thresh",
        0.3,
        "Drop objects whose object score is below this.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "batch_size",
        None,
        "Images per call (default: the export's; must be an exported budget's B).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_image_pixels",
        DEFAULT_MAX_PIXELS,
        "Refuse images of more pixels (width x height) than this, from their header.",
        flag_values=flag_values,
    )


def config_from_flags(flag_values: flags.FlagValues, extra_images: Sequence[str] = ()):
    """The config of parsed flags (``extra_images``: positional arguments after ``--images``);
    raises ConfigError naming the first bad flag."""
    return PredictConfig(
        export_dir=flag_values.export_dir,
        images=(*flag_values.images, *extra_images),
        out=flag_values.out,
        top_k=flag_values.top_k,
        score_thresh=flag_values.score_thresh,
        batch_size=flag_values.batch_size,
        max_image_pixels=flag_values.max_image_pixels,
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    # ``--images a.jpg b.jpg``: the words after the flag's value arrive as positional arguments.
    return cli.run_command(
        argv,
        lambda: predict.run(config_from_flags(flag_values, argv[1:])),
        positional_ok=bool(flag_values.images),
    )


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(main)
