"""Image files: a small deterministic PNG encoder and a reader of any format Pillow decodes.

* :func:`encode_png` / :func:`write_png`: uint8[H, W, 3] RGB to PNG (zlib; byte-identical output for
  the same pixels on any machine; written atomically).
* :func:`load_image`: any format Pillow decodes (Pillow is a dependency of matplotlib), returned as
  RGB; unreadable, non-RGB-convertible or zero-size files raise a one-line
  :class:`~sgg_jax.errors.DataError` naming the file.

Pixel budget. A small file can hold a huge image (a 420 KB PNG of 12000 x 12000 pixels decodes to
432 MB, and everything drawn from it grows with it), so :func:`load_image` refuses an image of more
than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, 50 million: every camera photo
fits) from its header, *before* decoding: one DataError naming the file, its size and the limit
(the ``--max_image_pixels`` flag of the commands that read images). Pillow's own
decompression-bomb refusal (images over ~179 million pixels) becomes the same DataError.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib

import numpy as np

from sgg_jax.errors import DataError, check_positive_int

DEFAULT_MAX_PIXELS = 50_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow modes converted to RGB by load_image (8 bits per channel); anything else is refused.
_CONVERTIBLE_MODES = (
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
)


def encode_png(image: np.ndarray) -> bytes:
    """Encodes uint8[H, W, 3] RGB as PNG bytes (8-bit truecolour, no filtering, zlib level 6)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
    height, width = image.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes uint8[H, W, 3] RGB to ``path`` as PNG (atomically: temporary file, then rename)."""
    path = os.fspath(path)
    data = encode_png(image)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _unidentified_reason(path: str) -> str:
    """Why Pillow could not identify a file: a zero-size or broken PNG, or not an image at all."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if not head.startswith(_PNG_SIGNATURE):
        return "not an image file (format not recognised)"
    if len(head) == 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return f"zero-size image ({width}x{height})"
    return "cannot be decoded (truncated or corrupt PNG)"


def _too_many_pixels(path: str, pixels: int, max_pixels: int, size: str = "") -> DataError:
    return DataError(
        f"image of {size}{pixels} pixels exceeds the limit of {max_pixels} pixels "
        f"(option max_image_pixels)",
        path=path,
    )


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as RGB.

    Grayscale (``1``, ``L``), palette (``P``) and CMYK / YCbCr images are converted to RGB
    (grey replicated to the three channels); an alpha channel (``LA``, ``PA``, ``RGBA``) is dropped,
    keeping the stored colours. Images of other modes (16-bit or float grayscale, ...) are refused.

    Args:
      path: image file (any format Pillow decodes: PNG, JPEG, ...).
      max_pixels: refuse images of more than this many pixels (width x height), checked from
        the header before any pixel is decoded.

    Returns:
      uint8[H, W, 3], C-contiguous.

    Raises:
      DataError: naming the file, when it is missing, empty, truncated, not an image, of a mode
        that is not converted, has zero width or height, or more than ``max_pixels`` pixels.
      ConfigError: ``max_pixels`` is not a positive integer.
    """
    from PIL import Image, UnidentifiedImageError  # a dependency of matplotlib

    max_pixels = check_positive_int("max_image_pixels", max_pixels)
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise DataError("is a directory, not an image file", path=path)
        if os.path.getsize(path) == 0:
            raise DataError("empty file (0 bytes)", path=path)
        with warnings.catch_warnings():
            # Pillow warns from ~89 million pixels; the size is checked against max_pixels below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            if opened.width == 0 or opened.height == 0:
                raise DataError(f"zero-size image ({opened.width}x{opened.height})", path=path)
            if opened.width * opened.height > max_pixels:
                raise _too_many_pixels(
                    path,
                    opened.width * opened.height,
                    max_pixels,
                    f"{opened.width}x{opened.height} = ",
                )
            if opened.mode not in _CONVERTIBLE_MODES:
                raise DataError(
                    f"image mode {opened.mode!r} is not converted to RGB (expected 8-bit "
                    f"grayscale, palette, RGB or RGBA)",
                    path=path,
                )
            opened.load()
            image = np.asarray(opened if opened.mode == "RGB" else opened.convert("RGB"))
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except UnidentifiedImageError:
        raise DataError(_unidentified_reason(path), path=path) from None
    except DataError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked in Image.open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else 2 * int(Image.MAX_IMAGE_PIXELS or 0)
        limit = min(max_pixels, 2 * int(Image.MAX_IMAGE_PIXELS or max_pixels))
        raise _too_many_pixels(path, pixels, limit) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise DataError(
            f"cannot be decoded (truncated or corrupt): {type(exc).__name__}: {exc}", path=path
        ) from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise DataError(
            f"decoded to {image.dtype}{list(image.shape)}, not uint8[H, W, 3]", path=path
        )
    return np.ascontiguousarray(image)
