import os

import numpy as np
import pytest
from PIL import Image

from sgg_jax.data import image_io
from sgg_jax.errors import DataError


def test_encode_png_is_read_back_by_pillow_unchanged(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    image_io.write_png(path, image)
    with Image.open(path) as opened:
        assert opened.mode == "RGB" and opened.size == (11, 7)
        np.testing.assert_array_equal(np.asarray(opened), image)
    assert sorted(os.listdir(tmp_path)) == ["noise.png"]  # no temporary file left


def test_load_image_converts_grayscale_rgba_and_palette(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(
        image_io.load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=-1)
    )
    rgba = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(image_io.load_image(tmp_path / "rgba.png"), rgba[..., :3])
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "palette.png")
    assert image_io.load_image(tmp_path / "palette.png").shape == (3, 4, 3)


def test_load_image_errors_name_the_file(tmp_path):
    good = tmp_path / "good.png"
    image_io.write_png(good, np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    data = good.read_bytes()
    cases = {
        "truncated.png": (data[: len(data) // 2], "truncated or corrupt"),
        "notes.txt": (b"this is not an image\n", "not an image file"),
        "empty.png": (b"", "empty file"),
        "header.png": (data[:20], "truncated or corrupt"),
        "zero.png": (
            image_io.encode_png(np.zeros((0, 5, 3), np.uint8)),
            r"zero-size image \(5x0\)",
        ),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=reason) as error:
            image_io.load_image(path)
        assert str(path) in str(error.value)
    with pytest.raises(DataError, match="file not found"):
        image_io.load_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((2, 2), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match="mode 'I;16'"):
        image_io.load_image(tmp_path / "deep.png")
