"""Image files checked against the annotations from their headers only, before training.

:func:`check_image_sizes` opens every graph's ``image_path`` with Pillow without decoding pixels
(``Image.open`` parses the header: a JPEG's markers up to its frame header, a PNG's ``IHDR``), in a
few threads, so 100k images take seconds (``benchmarks/bench_extract_features.py`` prints the time
per 1,000 images). Outcomes:

* size equal to the annotation's ``width`` x ``height``: kept;
* **VG150, the same picture at another resolution** (the real size is the annotated size times one
  factor ``s = max(real) / max(annotated)``, within one pixel of rounding per side): the
  ``image_data.json`` size is wrong. Scene-Graph-Benchmark fixes such entries with
  ``correct_img_info`` (KaihuaTang/Scene-Graph-Benchmark.pytorch
  maskrcnn_benchmark/data/datasets/visual_genome.py:255-271: the image's real size replaces
  ``width`` / ``height``) and derives the boxes from that size as ``boxes_1024 / 1024 *
  max(w, h)`` (same file:141-143; commit 6f75881). Its repository holds no list of those images
  (the comment at :132-136 says "several pictures with false image size" and asks to run
  ``correct_img_info`` once; ``__getitem__`` only prints an ``ERROR`` line for a mismatch,
  :82-83), so the list is what this check finds. Here the
  graph gets the real size and its boxes are multiplied by ``s``, which is SGB's rescale of the
  ``BOX_SCALE`` boxes with the corrected size; one warning line gives their count. (SGB's
  function would take any real size; a picture of another aspect ratio is refused here, since
  boxes drawn on the annotated picture cannot match it under one scale);
* any other size (another aspect ratio, any GQA mismatch), a missing file, a graph without
  ``image_path``, an unreadable header or more than ``max_pixels`` pixels: one
  :class:`~sgg_jax.errors.DataError` naming the image file and the field (``width`` / ``height``
  / ``image_path``), raised before any training step.
"""

from __future__ import annotations

import concurrent.futures
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS
from sgg_jax.errors import DataError, check_positive_int
from sgg_jax.structures import SceneGraph

logger = logging.getLogger(__name__)


def header_size(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (no pixel is decoded).

    Raises:
      DataError: naming the file: missing, not an image, zero size or more than ``max_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
    except FileNotFoundError:
        raise DataError("file not found", path=path, field="image_path") from None
    except IsADirectoryError:
        raise DataError(
            "is a directory, not an image file", path=path, field="image_path"
        ) from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise DataError(
            f"the image header cannot be read: {type(exc).__name__}: {exc}",
            path=path,
            field="image_path",
        ) from None
    if width <= 0 or height <= 0:
        raise DataError(f"zero-size image ({width}x{height})", path=path, field="image_path")
    if width * height > max_pixels:
        raise DataError(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels (option max_image_pixels)",
            path=path,
        )
    return int(width), int(height)


def _uniform_scale(real: tuple[int, int], annotated: tuple[int, int]) -> float | None:
    """``s`` with ``real ≈ s * annotated`` per side within rounding, or None (another aspect)."""
    scale = max(real) / max(annotated)
    if all(abs(r - a * scale) <= 1.0 for r, a in zip(real, annotated, strict=True)):
        return scale
    return None


class CorrectedGraphs(Sequence):
    """``graphs`` with some images' sizes corrected and boxes rescaled, read lazily (a TFDS
    source stays a random-access source)."""

    def __init__(self, graphs: Sequence[SceneGraph], corrections: Mapping[int, tuple[int, int]]):
        self.graphs = graphs
        self.corrections = dict(corrections)
        self.path = getattr(graphs, "path", None)  # a TFDS source's folder (its metadata)

    def __len__(self) -> int:
        return len(self.graphs)

    def _fix(self, index: int, graph: SceneGraph) -> SceneGraph:
        size = self.corrections.get(index)
        if size is None:
            return graph
        scale = max(size) / max(graph.width, graph.height)
        boxes = (np.asarray(graph.boxes, np.float32) * np.float32(scale)).astype(np.float32)
        return graph.replace(width=size[0], height=size[1], boxes=boxes)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        index = int(key)
        if index < 0:
            index += len(self)
        return self._fix(index, self.graphs[index])

    def __iter__(self) -> Iterator[SceneGraph]:
        for index, graph in enumerate(self.graphs):
            yield self._fix(index, graph)


def check_image_sizes(
    graphs: Sequence[SceneGraph],
    *,
    dataset: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 8,
    warn: bool = True,
    errors: list[tuple[int, DataError]] | None = None,
) -> Sequence[SceneGraph]:
    """Checks every image's header size against its graph (module docstring).

    Args:
      graphs: scene graphs with ``image_path``.
      dataset: ``"vg150"`` enables Scene-Graph-Benchmark's correction of wrong ``image_data.json``
        sizes; any other name makes every mismatch an error.
      max_pixels: images of more pixels are refused.
      threads: header reads in flight.
      warn: log the one line counting the corrected images.
      errors: when given, a bad image is appended as ``(index, DataError)`` and kept (its graph
        unchanged) instead of raised.

    Returns:
      ``graphs`` itself when nothing was corrected, else a :class:`CorrectedGraphs` view.

    Raises:
      DataError: the first bad image (file and field), before anything is trained.
    """
    max_pixels = check_positive_int("max_image_pixels", max_pixels)
    paths = []
    annotated = []
    for graph in graphs:
        if not graph.image_path:
            raise DataError(
                "no image file (give the dataset's image folder flag, e.g. --vg150_image_dir)",
                record=graph.image_id,
                field="image_path",
            )
        paths.append(graph.image_path)
        annotated.append((graph.width, graph.height))

    def size(path):
        try:
            return header_size(path, max_pixels=max_pixels)
        except DataError as error:
            if errors is None:
                raise
            return error

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        sizes = list(pool.map(size, paths))
    corrections = {}
    for index, (path, real, expected) in enumerate(zip(paths, sizes, annotated, strict=True)):
        if isinstance(real, DataError):
            errors.append((index, real))
            continue
        if real == expected:
            continue
        if dataset == "vg150" and _uniform_scale(real, expected) is not None:
            corrections[index] = real
            continue
        field = "width" if real[0] != expected[0] else "height"
        error = DataError(
            f"the image is {real[0]}x{real[1]} but its annotation says {expected[0]}x{expected[1]}"
            f" (boxes would not match the pixels)",
            path=path,
            field=field,
        )
        if errors is None:
            raise error
        errors.append((index, error))
    if not corrections:
        return graphs
    if warn:
        _warn(len(corrections), len(paths))
    return CorrectedGraphs(graphs, corrections)


def _warn(corrected: int, total: int) -> None:
    logger.warning(
        "%d of %d images have another size than image_data.json records (the same picture at "
        "another resolution): sizes corrected and boxes rescaled as Scene-Graph-Benchmark's "
        "correct_img_info",
        corrected,
        total,
    )


def check_splits(
    splits: Mapping[str, Sequence[SceneGraph]],
    *,
    dataset: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Sequence[SceneGraph]]:
    """:func:`check_image_sizes` of every split; one warning line counts the corrected images of
    all splits."""
    checked = {
        name: check_image_sizes(graphs, dataset=dataset, max_pixels=max_pixels, warn=False)
        for name, graphs in splits.items()
    }
    corrected = sum(len(g.corrections) for g in checked.values() if isinstance(g, CorrectedGraphs))
    if corrected:
        _warn(corrected, sum(len(g) for g in checked.values()))
    return checked
