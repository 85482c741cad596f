"""Small seeded images of synthetic scene graphs, so the pixel pipeline runs on a CPU.

:mod:`sgg_jax.data.synthetic` places boxes so that their geometry realises each predicate; this
module paints those boxes. Every object class has a fixed *appearance* — a shape, a base colour and a
texture — so that a detector can learn the class from pixels, and the relation geometry is whatever
the boxes say. Detector pretraining, then SGCls / SGDet relation training, can thus run end to end on
images of 128-256 pixels in tests and demos. Pure numpy: each object is drawn vectorised over its box.

Appearance of class ``c`` (1-based; ``k = c - 1``)
------------------------------------------------
* **Shape** ``SHAPES[k % 8]``: rectangle, ellipse, triangle (apex up), diamond, cross, ring, frame
  (hollow rectangle), hexagon. Every shape touches all four sides of its box, so the box is the
  tight bounding box of the painted pixels (up to one pixel).
* **Texture** ``TEXTURES[(k // 8) % 8]``: plain, horizontal stripes, vertical stripes, two diagonal
  stripes, checker, dots, grid, with their own period (4-8 pixels at 128 px, scaled with the output
  size) and anchored at the box's corner. The texture swings the colour by
  ``+- texture_amplitude`` around the base colour and is mean-free over the object, so the object's
  mean colour stays its base colour (outline aside).
* **Colour** ``palette[k % 210]``: the 210 non-grey points of the RGB lattice
  ``{40, 75, 110, 145, 180, 215}^3`` (greys are left to the background) in an order fixed by
  ``RenderConfig.appearance_seed``. Two classes' base colours differ by at least 35 in some channel.

There are ``8 * 8 * 210 = 13,440`` (shape, texture, colour) combinations (:data:`NUM_APPEARANCES`).
For ``C <= 210`` (VG150: 150, GQA-200: 200) every class has its own colour, so the appearances are
unique per class and their base colours are at least 35 apart (rendered mean colours also
move with the per-object jitter and the outline); the triples stay unique up to
``lcm(64, 210) = 6,720`` classes (:data:`NUM_UNIQUE_CLASSES`), beyond which they repeat.

Image
-----
A smooth background (a grey with a faint tint, a linear gradient in a random direction and
low-frequency noise), then the objects from the largest box area to the smallest (ties: graph order)
so small objects stay visible, each with a one-pixel outline in its darkened colour (boxes of at
least 6 pixels a side). Each object's colour gets a seeded per-channel jitter (``colour_jitter``) and
the whole image seeded Gaussian pixel noise (``pixel_noise``), so classes are learnable but not
trivially separable. The randomness of an image comes from ``Generator([stream, seed,
crc32(image_id)])``: the same graph and seed give identical pixels wherever it is rendered (alone
or in a dataset, in any order, in any process).

Coordinates
-----------
``size`` is the output ``(height, width)`` (an int means a square). ``fit="stretch"`` (the default)
scales x and y independently to fill the output: every placement of the generator is defined per
axis in units of the reference box's sides, so per-axis scaling keeps every relation's geometry
exactly and no pixel is wasted on padding. ``fit="letterbox"`` scales both axes by the same factor and
centres the scene; the margins are background. Either way the returned graph has ``width`` /
``height`` of the rendered image and its boxes in its pixel coordinates (float, unrounded); a pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` and is painted when it overlaps the shape.

Files
-----
:func:`render_dataset` writes ``<out_dir>/<image_id>.png`` (characters outside ``[A-Za-z0-9._-]``
replaced by ``_``) with the small built-in PNG encoder of :mod:`sgg_jax.data.image_io` (zlib;
byte-identical output for the same pixels on any machine) and sets ``image_path =
os.path.join(out_dir, file name)`` — relative when ``out_dir`` is relative, absolute when it is
absolute, as the VG150 / GQA-200 readers do with their ``image_dir``.
:func:`sgg_jax.data.image_io.load_image` reads any format Pillow decodes (Pillow is a dependency of
matplotlib) and returns RGB.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import zlib
from collections.abc import Iterable

import numpy as np

from sgg_jax.data.image_io import write_png
from sgg_jax.errors import ConfigError, DataError, check_int, is_finite_number
from sgg_jax.structures import SceneGraph

SHAPES: tuple[str, ...] = (
    "rectangle",
    "ellipse",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "frame",
    "hexagon",
)
# (name, kind, period in pixels at a 128-pixel output)
_TEXTURE_SPECS: tuple[tuple[str, str, float], ...] = (
    ("plain", "plain", 0.0),
    ("horizontal stripes", "horizontal", 4.0),
    ("vertical stripes", "vertical", 4.0),
    ("diagonal stripes", "diagonal", 6.0),
    ("anti-diagonal stripes", "antidiagonal", 6.0),
    ("checker", "checker", 8.0),
    ("dots", "dots", 6.0),
    ("grid", "grid", 6.0),
)
TEXTURES: tuple[str, ...] = tuple(name for name, _, _ in _TEXTURE_SPECS)
_PALETTE_LEVELS = np.linspace(40.0, 215.0, 6)  # spacing 35
NUM_COLOURS = 6**3 - 6  # the lattice without its greys
NUM_APPEARANCES = len(SHAPES) * len(TEXTURES) * NUM_COLOURS
NUM_UNIQUE_CLASSES = math.lcm(len(SHAPES) * len(TEXTURES), NUM_COLOURS)
_REFERENCE_SIZE = 128.0
_MIN_OUTLINE_SIDE = 6
_OUTLINE_DARKEN = 0.45
_BACKGROUND_GRID = 5

_APPEARANCE_STREAM = 0x5EED_0101
_RENDER_STREAM = 0x5EED_0102
_FITS = ("stretch", "letterbox")
_FORMATS = ("png",)


# ----------------------------------------------------------------------------------------------
# Config and appearance table
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Options of :func:`render`; invalid values raise :class:`~sgg_jax.errors.ConfigError`.

    Attributes:
      fit: ``"stretch"`` (scale x and y independently to fill the output) or ``"letterbox"``
        (one scale, scene centred, background margins).
      colour_jitter: std of the per-object, per-channel colour offset (0-255 scale).
      pixel_noise: std of the per-pixel Gaussian noise added to the whole image.
      texture_amplitude: peak-to-peak colour swing of the textures.
      background_gradient: largest brightness change across the background's linear gradient.
      background_noise: std of the background's low-frequency noise.
      outline: draw a one-pixel darkened outline around objects of at least 6 pixels a side.
      appearance_seed: seed of the class -> colour assignment (keep it fixed for one world).
    """

    fit: str = "stretch"
    colour_jitter: float = 8.0
    pixel_noise: float = 4.0
    texture_amplitude: float = 48.0
    background_gradient: float = 24.0
    background_noise: float = 8.0
    outline: bool = True
    appearance_seed: int = 0

    def __post_init__(self):
        if self.fit not in _FITS:
            raise ConfigError("fit", f"must be one of {_FITS}, got {self.fit!r}")
        for option in (
            "colour_jitter",
            "pixel_noise",
            "texture_amplitude",
            "background_gradient",
            "background_noise",
        ):
            value = getattr(self, option)
            if not is_finite_number(value) or value < 0:
                raise ConfigError(option, f"must be a finite number >= 0, got {value!r}")
        if not isinstance(self.outline, bool | np.bool_):
            raise ConfigError("outline", f"must be a bool, got {self.outline!r}")
        check_int("appearance_seed", self.appearance_seed, minimum=0)


@dataclasses.dataclass(frozen=True)
class Appearance:
    """The appearance of one object class.

    Attributes:
      shape: one of :data:`SHAPES`.
      texture: one of :data:`TEXTURES`.
      colour: the base colour, uint8-valued RGB floats.
      code: ``(shape index, texture index, colour index)``.
    """

    shape: str
    texture: str
    colour: tuple[float, float, float]
    code: tuple[int, int, int]


@functools.lru_cache(maxsize=8)
def _palette(appearance_seed: int) -> np.ndarray:
    """float64[210, 3]: the non-grey lattice colours in the order of ``appearance_seed``."""
    lattice = np.stack(np.meshgrid(*(_PALETTE_LEVELS,) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    colours = lattice[~((lattice[:, 0] == lattice[:, 1]) & (lattice[:, 1] == lattice[:, 2]))]
    rng = np.random.default_rng([_APPEARANCE_STREAM, appearance_seed])
    colours = colours[rng.permutation(colours.shape[0])]
    colours.setflags(write=False)
    return colours


def appearance_code(label: int) -> tuple[int, int, int]:
    """``(shape index, texture index, colour index)`` of a 1-based class label."""
    check_int("label", label, minimum=1)
    k = int(label) - 1
    return k % len(SHAPES), (k // len(SHAPES)) % len(TEXTURES), k % NUM_COLOURS


def appearance(label: int, appearance_seed: int = 0) -> Appearance:
    """The appearance of a 1-based class label (see the module docstring).

    Args:
      label: object class, >= 1.
      appearance_seed: seed of the colour assignment (:attr:`RenderConfig.appearance_seed`).

    Returns:
      The class's :class:`Appearance`.
    """
    shape, texture, colour = appearance_code(label)
    return Appearance(
        shape=SHAPES[shape],
        texture=TEXTURES[texture],
        colour=tuple(float(v) for v in _palette(appearance_seed)[colour]),
        code=(shape, texture, colour),
    )


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def _output_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1 for s in size)
    ):
        raise ConfigError("size", f"must be an int >= 1 or (height, width) ints >= 1, got {size!r}")
    return int(size[0]), int(size[1])


def scale_graph(graph: SceneGraph, size: int | tuple[int, int], fit: str = "stretch") -> SceneGraph:
    """The graph with its boxes in the pixel coordinates of a ``size`` rendering.

    Args:
      graph: scene graph with a positive ``width`` / ``height``.
      size: output ``(height, width)``, or an int for a square.
      fit: ``"stretch"`` or ``"letterbox"`` (see the module docstring).

    Returns:
      The graph with ``width``, ``height`` = the output size and float32[N, 4] scaled boxes.
    """
    out_height, out_width = _output_size(size)
    if fit not in _FITS:
        raise ConfigError("fit", f"must be one of {_FITS}, got {fit!r}")
    if graph.width <= 0 or graph.height <= 0:
        raise DataError(
            f"image size must be positive, got {graph.width}x{graph.height}",
            record=graph.image_id,
            field="width/height",
        )
    scale_x, scale_y = out_width / graph.width, out_height / graph.height
    offset_x = offset_y = 0.0
    if fit == "letterbox":
        scale_x = scale_y = min(scale_x, scale_y)
        offset_x = (out_width - graph.width * scale_x) / 2.0
        offset_y = (out_height - graph.height * scale_y) / 2.0
    boxes = graph.boxes.astype(np.float64) * [scale_x, scale_y, scale_x, scale_y]
    boxes += [offset_x, offset_y, offset_x, offset_y]
    return graph.replace(width=out_width, height=out_height, boxes=boxes.astype(np.float32))


def _interpolation_matrix(steps: int, grid: int) -> np.ndarray:
    """float64[steps, grid]: linear interpolation from ``grid`` knots to ``steps`` samples."""
    position = np.linspace(0.0, grid - 1.0, steps)
    low = np.minimum(np.floor(position).astype(np.int64), grid - 2)
    weight = position - low
    matrix = np.zeros((steps, grid))
    matrix[np.arange(steps), low] = 1.0 - weight
    matrix[np.arange(steps), low + 1] = weight
    return matrix


def _background(
    height: int, width: int, config: RenderConfig, rng: np.random.Generator
) -> np.ndarray:
    """float64[H, W, 3]: grey with a tint, a linear gradient and low-frequency noise."""
    base = rng.uniform(90.0, 170.0) + rng.normal(0.0, 6.0, size=3)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    strength = rng.uniform(-1.0, 1.0) * config.background_gradient
    rows = (np.arange(height) + 0.5) / height - 0.5
    cols = (np.arange(width) + 0.5) / width - 0.5
    ramp = math.sin(angle) * rows[:, None] + math.cos(angle) * cols[None, :]  # in [-0.71, 0.71]
    knots = rng.normal(0.0, config.background_noise, size=(_BACKGROUND_GRID, _BACKGROUND_GRID, 3))
    noise = np.einsum(
        "hi,ijc,wj->hwc",
        _interpolation_matrix(height, _BACKGROUND_GRID),
        knots,
        _interpolation_matrix(width, _BACKGROUND_GRID),
    )
    return base + strength * ramp[..., None] + noise


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, du: float, dv: float) -> np.ndarray:
    """bool[h, w]: pixels overlapping ``shape`` drawn in a box.

    Args:
      shape: one of :data:`SHAPES`.
      u: float[1, w] pixel-centre x in box units, -1 (left edge) .. 1 (right edge), clipped.
      v: float[h, 1] pixel-centre y, -1 (top) .. 1 (bottom), clipped.
      du, dv: half a pixel in these units (the tolerance that lets edge pixels count).
    """
    # The pixel's point nearest to the box centre (inside tests) and farthest (hole tests).
    near_u, near_v = np.maximum(np.abs(u) - du, 0.0), np.maximum(np.abs(v) - dv, 0.0)
    far_u, far_v = np.abs(u) + du, np.abs(v) + dv
    if shape == "rectangle":
        return np.ones(np.broadcast_shapes(u.shape, v.shape), bool)
    if shape == "ellipse":
        return near_u**2 + near_v**2 <= 1.0
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return np.abs(u) - du <= (v + dv + 1.0) / 2.0
    if shape == "diamond":
        return near_u + near_v <= 1.0
    if shape == "cross":  # arms a third of the box wide
        return (near_u <= 1.0 / 3.0) | (near_v <= 1.0 / 3.0)
    if shape == "ring":  # outer ellipse minus an inner one of 0.55 the radius
        return (near_u**2 + near_v**2 <= 1.0) & (far_u**2 + far_v**2 >= 0.55**2)
    if shape == "frame":  # border a quarter of the side
        return (far_u >= 0.5) | (far_v >= 0.5)
    if shape == "hexagon":  # pointed left and right, flat top and bottom half the width
        return near_u + 0.5 * near_v <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _texture(kind: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """float64[h, w] in {0, 1}: the pattern at box-local pixel centres ``x`` [1, w], ``y`` [h, 1]."""
    half = period / 2.0
    if kind == "plain":
        return np.zeros(np.broadcast_shapes(x.shape, y.shape))
    if kind == "horizontal":
        pattern = np.floor(y / half) % 2 + 0 * x
    elif kind == "vertical":
        pattern = np.floor(x / half) % 2 + 0 * y
    elif kind == "diagonal":
        pattern = np.floor((x + y) / half) % 2
    elif kind == "antidiagonal":
        pattern = np.floor((x - y) / half) % 2
    elif kind == "checker":
        pattern = (np.floor(x / half) + np.floor(y / half)) % 2
    elif kind == "dots":
        dx, dy = x % period - half, y % period - half
        pattern = (dx**2 + dy**2 <= (0.3 * period) ** 2).astype(np.float64)
    elif kind == "grid":
        line = max(1.0, period / 3.0)
        pattern = ((x % period < line) | (y % period < line)).astype(np.float64)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return pattern


def _outline(mask: np.ndarray) -> np.ndarray:
    """bool[h, w]: mask pixels with a 4-neighbour outside the mask (or outside the window)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


@dataclasses.dataclass(frozen=True, eq=False)
class Rendering:
    """One rendered scene.

    Attributes:
      image: uint8[H, W, 3] RGB.
      graph: the scene graph with ``width`` = W, ``height`` = H and boxes in image pixels.
      object_map: int32[H, W] index (into ``graph.boxes``) of the object visible at each pixel,
        -1 for background.
    """

    image: np.ndarray
    graph: SceneGraph
    object_map: np.ndarray


def _image_rng(graph: SceneGraph, seed: int) -> np.random.Generator:
    return np.random.default_rng([_RENDER_STREAM, seed, zlib.crc32(graph.image_id.encode("utf-8"))])


def render_scene(
    graph: SceneGraph,
    *,
    size: int | tuple[int, int] = 128,
    config: RenderConfig | None = None,
    seed: int,
) -> Rendering:
    """Renders a scene graph and reports which object is visible where.

    Args:
      graph: scene graph; ``labels`` (>= 1) select the appearances, ``boxes`` the placement.
      size: output ``(height, width)``, or an int for a square.
      config: rendering options (default :class:`RenderConfig`).
      seed: render seed (>= 0); the image also depends on ``graph.image_id``.

    Returns:
      A :class:`Rendering` (image uint8[H, W, 3], scaled graph, object map int32[H, W]).
    """
    config = RenderConfig() if config is None else config
    check_int("seed", seed, minimum=0)
    scaled = scale_graph(graph, size, config.fit)
    height, width = scaled.height, scaled.width
    if scaled.num_objects and int(scaled.labels.min()) < 1:
        raise DataError(
            f"labels must be >= 1 (0 is background), got {int(scaled.labels.min())}",
            record=graph.image_id,
            field="labels",
        )
    rng = _image_rng(graph, seed)
    canvas = _background(height, width, config, rng)
    jitter = rng.normal(0.0, config.colour_jitter, size=(scaled.num_objects, 3))
    object_map = np.full((height, width), -1, np.int32)
    palette = _palette(config.appearance_seed)
    period_scale = min(height, width) / _REFERENCE_SIZE
    boxes = scaled.boxes.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index in np.argsort(-areas, kind="stable"):
        x1, y1, x2, y2 = boxes[index]
        col0 = min(max(math.floor(x1), 0), width - 1)
        row0 = min(max(math.floor(y1), 0), height - 1)
        col1 = max(min(math.ceil(x2), width), col0 + 1)
        row1 = max(min(math.ceil(y2), height), row0 + 1)
        box_width, box_height = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        x_local = np.arange(col0, col1)[None, :] + 0.5 - x1
        y_local = np.arange(row0, row1)[:, None] + 0.5 - y1
        u = np.clip(2.0 * x_local / box_width - 1.0, -1.0, 1.0)
        v = np.clip(2.0 * y_local / box_height - 1.0, -1.0, 1.0)
        shape, texture, colour = appearance_code(int(scaled.labels[index]))
        mask = _shape_mask(SHAPES[shape], u, v, 1.0 / box_width, 1.0 / box_height)
        if not mask.any():
            mask = np.ones_like(mask)
        _, kind, period = _TEXTURE_SPECS[texture]
        pattern = _texture(kind, x_local, y_local, max(2.0, period * period_scale))
        pattern = pattern - pattern[mask].mean()
        base = palette[colour] + jitter[index]
        pixels = base + config.texture_amplitude * pattern[..., None]
        if config.outline and min(row1 - row0, col1 - col0) >= _MIN_OUTLINE_SIDE:
            pixels[_outline(mask)] = base * _OUTLINE_DARKEN
        window = canvas[row0:row1, col0:col1]
        window[mask] = pixels[mask]
        object_map[row0:row1, col0:col1][mask] = index
    canvas += rng.normal(0.0, config.pixel_noise, size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Rendering(image=image, graph=scaled, object_map=object_map)


def render(
    graph: SceneGraph,
    *,
    size: int | tuple[int, int] = 128,
    config: RenderConfig | None = None,
    seed: int,
) -> tuple[np.ndarray, SceneGraph]:
    """Renders a scene graph as a small RGB image (see the module docstring).

    Args:
      graph: scene graph; ``labels`` (>= 1) select the appearances, ``boxes`` the placement.
      size: output ``(height, width)``, or an int for a square.
      config: rendering options (default :class:`RenderConfig`).
      seed: render seed (>= 0); the image also depends on ``graph.image_id``.

    Returns:
      ``(image uint8[H, W, 3], graph)`` with the graph's ``width`` / ``height`` set to W / H and
      its float32[N, 4] boxes in the image's pixel coordinates; labels, relations, ``image_id``
      and ``image_path`` unchanged.
    """
    rendering = render_scene(graph, size=size, config=config, seed=seed)
    return rendering.image, rendering.graph


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _file_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id) + ".png"


def render_dataset(
    graphs: Iterable[SceneGraph],
    out_dir: str | os.PathLike,
    *,
    size: int | tuple[int, int] = 128,
    config: RenderConfig | None = None,
    seed: int,
    image_format: str = "png",
) -> tuple[SceneGraph, ...]:
    """Renders every graph to ``<out_dir>/<image_id>.png`` (the folder is created).

    Args:
      graphs: scene graphs with distinct ``image_id``s (e.g. ``SyntheticDataset.graphs``).
      out_dir: output folder.
      size: output ``(height, width)``, or an int for a square.
      config: rendering options (default :class:`RenderConfig`).
      seed: render seed (>= 0); image ``g`` gets the pixels of ``render(g, seed=seed)``.
      image_format: ``"png"`` (the only format; lossless, so loaded pixels equal rendered ones).

    Returns:
      The graphs, in order, with boxes / ``width`` / ``height`` in rendered pixels and
      ``image_path = os.path.join(out_dir, file name)`` (relative iff ``out_dir`` is).
    """
    if image_format not in _FORMATS:
        raise ConfigError("image_format", f"must be one of {_FORMATS}, got {image_format!r}")
    graphs = tuple(graphs)
    config = RenderConfig() if config is None else config
    _output_size(size)
    check_int("seed", seed, minimum=0)
    names: dict[str, str] = {}
    for graph in graphs:
        name = _file_name(graph.image_id)
        if name in names:
            raise DataError(
                f"two graphs would write the same file {name!r} (image ids {names[name]!r} and "
                f"{graph.image_id!r}); image ids must be distinct",
                path=os.fspath(out_dir),
                record=graph.image_id,
                field="image_id",
            )
        names[name] = graph.image_id
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rendered = []
    for graph in graphs:
        image, scaled = render(graph, size=size, config=config, seed=seed)
        path = os.path.join(out_dir, _file_name(graph.image_id))
        write_png(path, image)
        rendered.append(scaled.replace(image_path=path))
    return tuple(rendered)
