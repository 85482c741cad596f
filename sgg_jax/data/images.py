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
* :class:`InputConvention` bundles channel order, pixel scale, mean / std and the resize rule;
  ``InputConvention.imagenet()`` is the behaviour above (the default everywhere) and
  ``InputConvention.sgb()`` is Scene-Graph-Benchmark's (BGR 0..255 minus its pixel mean, short
  side resized to 600 capped at 1000 on the long side, then padded into the square canvas).
* Padding images of a partial batch (``image_index`` -1) get an all-zero image.
* An image file whose size differs from the graph's ``width`` x ``height`` is an error (its boxes
  would not match the pixels).

Unreadable, non-RGB-convertible or zero-size image files raise the one-line
:class:`~sgg_jax.errors.DataError` of :func:`sgg_jax.data.image_io.load_image`, naming the
file (an image of more than ``max_pixels`` pixels included, refused from its header before
decoding); a graph without ``image_path`` raises one naming the image id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS, load_image
from sgg_jax.errors import ConfigError, DataError, check_int, check_positive_int
from sgg_jax.structures import SceneGraph, SceneGraphBatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Scene-Graph-Benchmark (maskrcnn_benchmark/config/defaults.py): INPUT.PIXEL_MEAN / PIXEL_STD.
SGB_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)
SGB_PIXEL_STD = (1.0, 1.0, 1.0)
INPUT_CONVENTIONS = ("imagenet", "sgb")


@dataclasses.dataclass(frozen=True)
class InputConvention:
    """How a detector's weights expect their pixels; invalid values raise :class:`ConfigError`.

    Attributes:
      channel_order: ``"rgb"`` or ``"bgr"`` (the channels of ``mean`` / ``std`` are in this order).
      scale: the pixel range ``mean`` / ``std`` are in: ``1.0`` (pixels / 255) or ``255.0``
        (raw 0..255 values).
      mean, std: per-channel normalisation ``(pixel - mean) / std``.
      min_size, max_size: Scene-Graph-Benchmark's resize rule (:func:`sgb_resize_size`): the shorter
        side becomes ``min_size`` unless the longer one would exceed ``max_size``. Both None: the
        longer side becomes the canvas side (the fixed square canvas of :func:`fit_image`).
    """

    channel_order: str = "rgb"
    scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    min_size: int | None = None
    max_size: int | None = None

    def __post_init__(self):
        if self.channel_order not in ("rgb", "bgr"):
            raise ConfigError(
                "channel_order", f"must be 'rgb' or 'bgr', got {self.channel_order!r}"
            )
        if isinstance(self.scale, bool) or self.scale not in (1.0, 255.0):
            raise ConfigError("scale", f"must be 1.0 or 255.0, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        for field in ("mean", "std"):
            values = getattr(self, field)
            try:
                array = np.asarray(values, np.float64).reshape(3)
            except (TypeError, ValueError):
                array = None
            if (
                array is None
                or not np.isfinite(array).all()
                or (field == "std" and (array <= 0).any())
            ):
                raise ConfigError(field, f"must be three finite numbers (std > 0), got {values!r}")
            object.__setattr__(self, field, tuple(float(v) for v in values))
        if (self.min_size is None) != (self.max_size is None):
            raise ConfigError(
                "min_size",
                f"min_size and max_size go together, got {self.min_size!r} and {self.max_size!r}",
            )
        if self.min_size is not None:
            check_int("min_size", self.min_size, minimum=1)
            check_int("max_size", self.max_size, minimum=1)
            if self.max_size < self.min_size:
                raise ConfigError(
                    "max_size", f"must be >= min_size ({self.min_size}), got {self.max_size}"
                )
            object.__setattr__(self, "min_size", int(self.min_size))
            object.__setattr__(self, "max_size", int(self.max_size))

    @classmethod
    def imagenet(cls) -> InputConvention:
        """RGB, ``(pixel / 255 - ImageNet mean) / ImageNet std``, longer side to the canvas side
        (torchvision weights; the behaviour of every image transform without a convention)."""
        return cls()

    @classmethod
    def sgb(cls) -> InputConvention:
        """Scene-Graph-Benchmark's (maskrcnn_benchmark/config/defaults.py ``INPUT.PIXEL_MEAN``,
        ``PIXEL_STD``, ``TO_BGR255``; configs/e2e_relation_*.yaml ``MIN_SIZE_TRAIN (600,)``,
        ``MAX_SIZE_TRAIN 1000``, ``MIN_SIZE_TEST 600``, ``MAX_SIZE_TEST 1000``): BGR 0..255 minus
        the pixel mean, std 1, shorter side 600 capped at 1000 on the longer side."""
        return cls("bgr", 255.0, SGB_PIXEL_MEAN, SGB_PIXEL_STD, 600, 1000)

    @classmethod
    def preset(cls, name: str) -> InputConvention:
        """``"imagenet"`` or ``"sgb"``."""
        if name not in INPUT_CONVENTIONS:
            raise ConfigError(
                "input_convention", f"must be one of {INPUT_CONVENTIONS}, got {name!r}"
            )
        return getattr(cls, name)()

    @classmethod
    def coerce(cls, value: Any) -> InputConvention:
        """An :class:`InputConvention` from itself, a preset name or its :meth:`to_dict`."""
        if isinstance(value, InputConvention):
            return value
        if isinstance(value, str):
            return cls.preset(value)
        if isinstance(value, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - fields)
            if unknown:
                raise ConfigError("input_convention", f"unknown fields {unknown}")
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        raise ConfigError(
            "input_convention",
            f"must be an InputConvention, a preset name or a mapping, got {value!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (:meth:`coerce` reads them back)."""
        values = dataclasses.asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @property
    def name(self) -> str:
        """The preset this equals (``"imagenet"`` / ``"sgb"``), else ``"custom"``."""
        for name in INPUT_CONVENTIONS:
            if self == InputConvention.preset(name):
                return name
        return "custom"

    def describe(self) -> str:
        if self.name != "custom":
            return self.name
        return (
            f"custom({self.channel_order}, scale {self.scale:g}, mean {list(self.mean)}, "
            f"std {list(self.std)}, min_size {self.min_size}, max_size {self.max_size})"
        )


def check_convention(recorded: Any, requested: Any = None) -> InputConvention:
    """The convention to use with a detector that recorded ``recorded``: ``requested`` when it is
    None or the same, else one :class:`ConfigError` naming both (a detector fed pixels of another
    convention computes wrong features without any error)."""
    recorded = InputConvention.coerce(recorded)
    if requested is None:
        return recorded
    requested = InputConvention.coerce(requested)
    if requested != recorded:
        raise ConfigError(
            "input_convention",
            f"requested {requested.describe()} but the detector was trained / converted for "
            f"{recorded.describe()}",
        )
    return recorded


def _apply_convention(values: np.ndarray, convention: InputConvention) -> np.ndarray:
    """float32 RGB 0..255 ``values`` -> normalised float32 in ``convention``'s channel order."""
    if convention.channel_order == "bgr":
        values = values[..., ::-1]
    if convention.scale == 1.0:
        values = values / 255.0
    mean = np.asarray(convention.mean, np.float32)
    std = np.asarray(convention.std, np.float32)
    return (values - mean) / std


def normalise_pixels(
    pixels: np.ndarray,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    convention: InputConvention | str | None = None,
) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` -> float32 normalised pixels (no resize).

    With the default (ImageNet) convention ``(pixels / 255 - mean) / std``; ``mean`` / ``std``
    override the convention's. Scene-Graph-Benchmark's (``convention="sgb"``) is its
    ``Normalize(to_bgr255=True)`` (maskrcnn_benchmark/data/transforms/transforms.py): the channels
    reversed to BGR, 0..255, minus ``INPUT.PIXEL_MEAN``.
    """
    convention = InputConvention.coerce(convention or "imagenet")
    if mean is not None:
        convention = dataclasses.replace(convention, mean=tuple(np.reshape(mean, 3).tolist()))
    if std is not None:
        convention = dataclasses.replace(convention, std=tuple(np.reshape(std, 3).tolist()))
    return _apply_convention(pixels.astype(np.float32), convention)


def sgb_resize_size(
    height: int, width: int, min_size: int, max_size: int | None
) -> tuple[int, int]:
    """``(new height, new width)`` as Scene-Graph-Benchmark's ``Resize.get_size``
    (maskrcnn_benchmark/data/transforms/transforms.py, one ``min_size``): the shorter side becomes
    ``min_size``, or ``round(max_size * short / long)`` when the longer one would exceed
    ``max_size``; the longer side is ``int(size * long / short)`` (truncated, as there)."""
    size = min_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


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


def fit_image_sgb(
    image: np.ndarray, image_size: int, convention: InputConvention
) -> tuple[np.ndarray, tuple[int, int]]:
    """Resizes an RGB image by Scene-Graph-Benchmark's rule (:func:`sgb_resize_size`, bilinear
    as its ``F.resize`` of a PIL image) and pads it into an ``image_size`` square.

    Returns:
      ``(uint8[image_size, image_size, 3], (new height, new width))``.
    """
    from PIL import Image

    height, width = image.shape[:2]
    new_height, new_width = sgb_resize_size(height, width, convention.min_size, convention.max_size)
    if max(new_height, new_width) > image_size:
        raise ConfigError(
            "image_size",
            f"a {width}x{height} image resizes to {new_width}x{new_height}, larger than the "
            f"{image_size} canvas (use image_size >= max_size {convention.max_size})",
        )
    if (new_height, new_width) == (height, width):
        resized = image
    else:
        resized = np.asarray(
            Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR)
        )
    canvas = np.zeros((image_size, image_size, 3), np.uint8)
    canvas[:new_height, :new_width] = resized
    return canvas, (new_height, new_width)


class ImageBatchTransform:
    """``transform(variables, step, batch) -> (batch with images, {})`` (module docstring).

    Args:
      graphs: the data source's graphs; ``batch.image_index`` indexes them.
      image_size: side of the square image canvas (with a resizing convention, at least its
        ``max_size``).
      convention: an :class:`InputConvention` or a preset name (default ``"imagenet"``); with
        ``min_size`` / ``max_size`` images are resized by Scene-Graph-Benchmark's rule and boxes
        scaled per axis by ``new / old`` width and height (its ``BoxList.resize``).
      mean, std, scale_255, bgr: the ImageNet convention with these changes (not together with
        ``convention``): per-channel normalisation, divide pixels by 255 before normalising,
        reverse the channels.
      max_pixels: image files of more pixels than this are refused (a DataError naming the file).
    """

    def __init__(
        self,
        graphs: Sequence[SceneGraph],
        image_size: int,
        *,
        convention: InputConvention | str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        scale_255: bool | None = None,
        bgr: bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        check_int("image_size", image_size, minimum=1)
        self.max_pixels = check_positive_int("max_image_pixels", max_pixels)
        self.graphs = list(graphs)
        self.image_size = int(image_size)
        legacy = {"mean": mean, "std": std, "scale_255": scale_255, "bgr": bgr}
        given = sorted(k for k, v in legacy.items() if v is not None)
        if convention is not None and given:
            raise ConfigError("convention", f"is given, so {given} must not be")
        if convention is None:
            base = InputConvention.imagenet()
            convention = dataclasses.replace(
                base,
                channel_order="bgr" if bgr else "rgb",
                scale=1.0 if scale_255 is None or scale_255 else 255.0,
                mean=base.mean if mean is None else tuple(np.reshape(mean, -1).tolist()),
                std=base.std if std is None else tuple(np.reshape(std, -1).tolist()),
            )
        self.convention = InputConvention.coerce(convention)
        if self.convention.max_size is not None and self.convention.max_size > self.image_size:
            raise ConfigError(
                "image_size",
                f"must be >= the input convention's max_size {self.convention.max_size}, "
                f"got {self.image_size}",
            )
        self.mean = np.asarray(self.convention.mean, np.float32)
        self.std = np.asarray(self.convention.std, np.float32)
        self.scale_255 = self.convention.scale == 1.0
        self.bgr = self.convention.channel_order == "bgr"

    @property
    def resizes_short_side(self) -> bool:
        """Whether images are resized by Scene-Graph-Benchmark's rule (not longer side)."""
        return self.convention.min_size is not None

    def _load(self, index: int) -> np.ndarray:
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
        return pixels

    def _pixels(self, index: int) -> tuple[np.ndarray, float]:
        """The fixed-canvas image of ``graphs[index]`` and its scale (:func:`fit_image`)."""
        return fit_image(self._load(index), self.image_size)

    def _resized_size(self, index: int) -> tuple[int, int]:
        graph = self.graphs[index]
        return sgb_resize_size(
            graph.height, graph.width, self.convention.min_size, self.convention.max_size
        )

    def scales(self, batch: SceneGraphBatch) -> np.ndarray:
        """float32[B]: resized / original size of each image of ``batch`` (1 for padding)."""
        out = np.ones(len(batch.image_index), np.float32)
        for row, index in enumerate(np.asarray(batch.image_index)):
            if index < 0:
                continue
            graph = self.graphs[int(index)]
            if self.resizes_short_side:
                # Per-axis ratios differ by the int() truncation of the longer side (< 1 px).
                out[row] = self._resized_size(int(index))[1] / graph.width
            else:
                out[row] = self.image_size / max(graph.height, graph.width)
        return out

    def __call__(self, variables, step: int, batch: SceneGraphBatch):
        del variables, step
        if self.resizes_short_side:
            return self._call_resized(batch), {}
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

    def _call_resized(self, batch: SceneGraphBatch) -> SceneGraphBatch:
        """Scene-Graph-Benchmark's resize: ``Resize`` then ``ToTensor`` and ``Normalize``
        (maskrcnn_benchmark/data/transforms/transforms.py), padded with zeros into the canvas."""
        indices = np.asarray(batch.image_index)
        images = np.zeros((len(indices), self.image_size, self.image_size, 3), np.float32)
        ratios = np.ones((len(indices), 2), np.float32)  # (y, x)
        sizes = np.asarray(batch.image_size).copy()
        for row, index in enumerate(indices):
            if index < 0:
                continue
            graph = self.graphs[int(index)]
            canvas, (height, width) = fit_image_sgb(
                self._load(int(index)), self.image_size, self.convention
            )
            images[row, :height, :width] = _apply_convention(
                canvas[:height, :width].astype(np.float32), self.convention
            )
            ratios[row] = (height / graph.height, width / graph.width)
            sizes[row] = (height, width)
        scale_xyxy = np.stack([ratios[:, 1], ratios[:, 0], ratios[:, 1], ratios[:, 0]], axis=-1)
        boxes = np.asarray(batch.boxes, np.float32) * scale_xyxy[:, None, :]
        return batch.replace(images=images, boxes=boxes, image_size=sizes)
