"""Pixels for the ``roi`` feature source: load, resize, pad and normalise the images of a batch.

The input pipeline carries boxes only; :class:`ImageBatchTransform` adds ``batch.images`` on the
host (``train(batch_transform=...)`` or before an evaluation call), so image decoding stays out of
the grain pipeline and batches of boxes keep their layout.

Conventions (one static shape for every batch, so one compilation):

* Every image is resized so that its **longer side** equals ``image_size`` (aspect ratio kept,
  bilinear; images smaller than that are enlarged, larger ones shrunk), placed in the top-left
  corner of an ``image_size x image_size`` canvas and the rest filled with zeros (after
  normalisation), as detectron pads to a common size.
* Boxes and ``image_size`` of the batch are multiplied by the same scale, so they are in the pixels
  of the resized image, which is what the detector sees. :meth:`ImageBatchTransform.scales` gives
  the factor to map predictions back to the original image (divide by it).
* Normalisation: ``(pixel / 255 - mean) / std`` per channel (ImageNet statistics by default, as
  torchvision weights expect; maskrcnn_benchmark's Caffe2 weights use BGR 0..255 minus the pixel
  mean instead — pass ``mean=(102.98, 115.95, 122.77)``, ``std=(1, 1, 1)``, ``scale_255=False``,
  ``bgr=True``).
* Padding images of a partial batch (``image_index`` -1) get an all-zero image.
* An image file whose size differs from the graph's ``width`` x ``height`` is an error (its boxes
  would not match the pixels).

Unreadable, non-RGB-convertible or zero-size image files raise the one-line
:class:`~sgg_jax.errors.DataError` of :func:`sgg_jax.data.image_io.load_image`, naming the
file (an image of more than ``max_pixels`` pixels included, refused from its header before
decoding); a graph without ``image_path`` raises one naming the image id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS, load_image
from sgg_jax.errors import ConfigError, DataError, check_int, check_positive_int
from sgg_jax.structures import SceneGraph, SceneGraphBatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_pixels(
    pixels: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` -> float32 ``(pixels / 255 - mean) / std`` (ImageNet by default)."""
    mean = np.asarray(mean, np.float32).reshape(3)
    std = np.asarray(std, np.float32).reshape(3)
    return (pixels.astype(np.float32) / 255.0 - mean) / std


def fit_image(image: np.ndarray, image_size: int) -> tuple[np.ndarray, float]:
    """Resizes an RGB image so that its longer side is ``image_size`` and pads it to a square.

    Args:
      image: uint8[H, W, 3].
      image_size: side of the output canvas.

    Returns:
      ``(uint8[image_size, image_size, 3], scale)`` with the resized image in the top-left corner
      and ``scale = new size / old size`` (the same on both axes, up to rounding of the sides).
    """
    from PIL import Image

    height, width = image.shape[:2]
    scale = image_size / max(height, width)
    new_height = min(image_size, max(1, int(round(height * scale))))
    new_width = min(image_size, max(1, int(round(width * scale))))
    resized = np.asarray(
        Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR)
    )
    canvas = np.zeros((image_size, image_size, 3), np.uint8)
    canvas[:new_height, :new_width] = resized
    return canvas, scale


class ImageBatchTransform:
    """``transform(variables, step, batch) -> (batch with images, {})`` (module docstring).

    Args:
      graphs: the data source's graphs; ``batch.image_index`` indexes them.
      image_size: side of the square image canvas.
      mean, std: per-channel normalisation.
      scale_255: divide pixels by 255 before normalising.
      bgr: reverse the channels (Caffe2-style weights).
      max_pixels: image files of more pixels than this are refused (a DataError naming the file).
    """

    def __init__(
        self,
        graphs: Sequence[SceneGraph],
        image_size: int,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scale_255: bool = True,
        bgr: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        check_int("image_size", image_size, minimum=1)
        self.max_pixels = check_positive_int("max_image_pixels", max_pixels)
        self.graphs = list(graphs)
        self.image_size = int(image_size)
        self.mean = np.asarray(mean, np.float32).reshape(3)
        self.std = np.asarray(std, np.float32).reshape(3)
        if not np.all(np.isfinite(self.std)) or np.any(self.std <= 0):
            raise ConfigError("std", f"must be three numbers > 0, got {list(std)}")
        self.scale_255 = bool(scale_255)
        self.bgr = bool(bgr)

    def _pixels(self, index: int) -> tuple[np.ndarray, float]:
        graph = self.graphs[index]
        if not graph.image_path:
            raise DataError(
                "the 'roi' feature source needs the image file",
                record=graph.image_id,
                field="image_path",
            )
        pixels = load_image(graph.image_path, max_pixels=self.max_pixels)
        if pixels.shape[:2] != (graph.height, graph.width):
            raise DataError(
                f"the image is {pixels.shape[1]}x{pixels.shape[0]} but its annotation says "
                f"{graph.width}x{graph.height} (boxes would not match the pixels)",
                path=graph.image_path,
                record=graph.image_id,
                field="image_size",
            )
        return fit_image(pixels, self.image_size)

    def scales(self, batch: SceneGraphBatch) -> np.ndarray:
        """float32[B]: resized / original size of each image of ``batch`` (1 for padding)."""
        out = np.ones(len(batch.image_index), np.float32)
        for row, index in enumerate(np.asarray(batch.image_index)):
            if index >= 0:
                graph = self.graphs[int(index)]
                out[row] = self.image_size / max(graph.height, graph.width)
        return out

    def __call__(self, variables, step: int, batch: SceneGraphBatch):
        del variables, step
        indices = np.asarray(batch.image_index)
        images = np.zeros((len(indices), self.image_size, self.image_size, 3), np.float32)
        scales = np.ones(len(indices), np.float32)
        for row, index in enumerate(indices):
            if index < 0:
                continue
            pixels, scales[row] = self._pixels(int(index))
            values = pixels.astype(np.float32)
            if self.bgr:
                values = values[..., ::-1]
            if self.scale_255:
                values = values / 255.0
            height = min(self.image_size, int(round(self.graphs[int(index)].height * scales[row])))
            width = min(self.image_size, int(round(self.graphs[int(index)].width * scales[row])))
            normalised = np.zeros_like(values)
            normalised[:height, :width] = (values[:height, :width] - self.mean) / self.std
            images[row] = normalised
        boxes = np.asarray(batch.boxes, np.float32) * scales[:, None, None]
        image_size = np.round(np.asarray(batch.image_size, np.float32) * scales[:, None])
        return batch.replace(
            images=images, boxes=boxes, image_size=image_size.astype(batch.image_size.dtype)
        ), {}
