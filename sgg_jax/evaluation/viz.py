"""Scene graphs drawn for people: boxes and relation arrows on the image, and a node-link graph.

* :func:`top_triplets` — a prediction's best relations, ranked as the evaluator ranks them
  (:mod:`sgg_jax.evaluation.sgg`, Scene-Graph-Benchmark's ``RelationPostProcessor``): each pair gets
  its best foreground predicate, scored ``max(scores[1:]) * object_score[s] * object_score[o]``,
  pairs sorted by that score, descending, ties in pair order.
* :func:`draw_scene_graph` — the image with a box per object (a distinct colour each, ``index:name``
  and the score above the box), the top-K relations as arrows from the subject's box centre to the
  object's with the predicate on the arrow, and a legend panel listing the triplets
  (``1. man riding horse 0.83``).
* :func:`draw_prediction` / :func:`draw_groundtruth` — the same for a
  :class:`~sgg_jax.structures.Prediction` or a :class:`~sgg_jax.structures.SceneGraph`.
* :func:`draw_graph` — objects as nodes, relations as labelled directed edges; a circular layout
  (deterministic, no dependency) or networkx's spring layout where networkx is installed.

Every drawing is a matplotlib ``Figure`` on its own Agg canvas (no pyplot, no backend switch, no
rcParams change: nothing global), rendered to RGB and written with
:func:`sgg_jax.data.image_io.write_png`. The functions return the written RGB array.

Output size. :func:`draw_scene_graph` shows the image enlarged ``scale`` times (nearest neighbour;
by default the smallest integer making its longer side at least 512 pixels) with the legend panel
of ``legend_width`` pixels to its right: the PNG is ``(scale * H, scale * W + legend_width)``, and
image pixel ``(r, c)`` covers output rows ``[scale * r, scale * (r + 1))`` and columns
``[scale * c, scale * (c + 1))``. Boxes are drawn in the image's pixel coordinates (xyxy, a pixel
``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``). An image whose longer side exceeds ``max_side``
(default :data:`MAX_DRAWING_SIDE`, 2048 pixels) is drawn on a downscaled copy of that longer side
(Pillow, box filter; boxes still given in the original pixels), so the drawing of a 50-megapixel
photo stays a few megapixels: the PNG is then ``(round(f * H), round(f * W) + legend_width)`` with
``f = max_side / max(H, W)``. :func:`draw_graph` writes ``size`` pixels.

Names. ``names`` is a :class:`~sgg_jax.structures.Vocab`, a pair ``(object_names,
predicate_names)``, or object names alone. Name lists starting with ``__background__`` are indexed
by the 1-based label; other lists hold the foreground names (label ``c`` -> ``names[c - 1]``). A
triplet's predicate is an int (looked up in the predicate names) or a string (shown as given).
"""

from __future__ import annotations

import colorsys
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, Rectangle

from sgg_jax.data.image_io import load_image, write_png
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import BACKGROUND, Prediction, SceneGraph, Vocab

_DPI = 100
MAX_DRAWING_SIDE = 2048
_MIN_LONG_SIDE = 512
_LINE_PIXELS = 17
_FONT_POINTS = 9
_GOLDEN = 0.618033988749895
LAYOUTS = ("circular", "spring")

__all__ = [
    "LAYOUTS",
    "MAX_DRAWING_SIDE",
    "draw_graph",
    "draw_groundtruth",
    "draw_prediction",
    "draw_scene_graph",
    "object_colours",
    "top_triplets",
]


# ---------------------------------------------------------------------------------------------------
# Names, colours, triplets.
# ---------------------------------------------------------------------------------------------------


def _name_lists(names) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """(object names, predicate names), each indexed by the 1-based id (index 0 = background)."""

    def indexed(values):
        if values is None:
            return None
        values = tuple(str(v) for v in values)
        return values if values and values[0] == BACKGROUND else (BACKGROUND, *values)

    if names is None:
        return None, None
    if isinstance(names, Vocab):
        return names.object_names, names.predicate_names
    if (
        isinstance(names, tuple | list)
        and len(names) == 2
        and all(isinstance(part, Sequence) and not isinstance(part, str) for part in names)
    ):
        return indexed(names[0]), indexed(names[1])
    return indexed(names), None


def _lookup(table: tuple[str, ...] | None, index: int, kind: str) -> str:
    if table is not None and 0 < index < len(table):
        return table[index]
    return f"{kind}{index}"


def _predicate_text(predicate, predicate_names) -> str:
    if isinstance(predicate, str):
        return predicate
    return _lookup(predicate_names, int(predicate), "predicate")


def object_colours(count: int) -> np.ndarray:
    """``count`` distinct, saturated RGB colours in [0, 1] (golden-ratio hue steps): float[count, 3]."""
    return np.array(
        [colorsys.hsv_to_rgb((index * _GOLDEN) % 1.0, 0.85, 0.95) for index in range(count)]
    ).reshape(count, 3)


def top_triplets(
    prediction: Prediction, vocab, k: int | None = 10
) -> list[tuple[int, int, int, float, str]]:
    """The ``k`` best relations of a prediction, ranked as by the evaluator (graph constraint).

    Args:
      prediction: boxes / labels / object scores [M], pairs [Q, 2], predicate scores [Q, P+1].
      vocab: names (see the module docstring) for the text.
      k: how many to return (None: all pairs).

    Returns:
      ``[(subject_index, object_index, predicate, score, "subject predicate object")]`` sorted by
      ``score = max(predicate_scores[q, 1:]) * object_scores[s] * object_scores[o]`` descending
      (float64, ties in pair order); ``predicate`` is ``1 + argmax(predicate_scores[q, 1:])``.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0):
        raise ConfigError("k", f"expected an int >= 0 or None, got {k!r}")
    if prediction.num_pairs == 0:
        return []
    scores = prediction.predicate_scores
    if scores.ndim != 2 or scores.shape[0] != prediction.num_pairs or scores.shape[1] < 2:
        raise DataError(
            f"expected shape ({prediction.num_pairs}, P + 1) with P >= 1, got {scores.shape}",
            field="predicate_scores",
        )
    pairs = prediction.pairs.astype(np.int64)
    if pairs.min() < 0 or pairs.max() >= prediction.num_objects:
        raise DataError(f"pair indices must lie in 0..{prediction.num_objects - 1}", field="pairs")
    if prediction.object_scores.shape[0] != prediction.num_objects:
        raise DataError(
            f"{prediction.object_scores.shape[0]} scores for {prediction.num_objects} boxes",
            field="object_scores",
        )
    predicate = 1 + np.argmax(scores[:, 1:], axis=1)
    best = scores[np.arange(scores.shape[0]), predicate].astype(np.float64)
    object_scores = prediction.object_scores.astype(np.float64)
    triplet_score = best * object_scores[pairs[:, 0]] * object_scores[pairs[:, 1]]
    order = np.argsort(-triplet_score, kind="stable")
    if k is not None:
        order = order[:k]
    object_names, predicate_names = _name_lists(vocab)
    result = []
    for row in order.tolist():
        subject, obj = int(pairs[row, 0]), int(pairs[row, 1])
        text = " ".join(
            (
                _lookup(object_names, int(prediction.labels[subject]), "class"),
                _lookup(predicate_names, int(predicate[row]), "predicate"),
                _lookup(object_names, int(prediction.labels[obj]), "class"),
            )
        )
        result.append((subject, obj, int(predicate[row]), float(triplet_score[row]), text))
    return result


def _check_triplets(triplets, num_objects: int) -> list[tuple[int, int, object, float | None]]:
    checked = []
    for row, triplet in enumerate(triplets or ()):
        if not isinstance(triplet, Sequence) or len(triplet) not in (3, 4, 5):
            raise DataError(
                f"triplet {row}: expected (subject, object, predicate, score), got {triplet!r}",
                field="triplets",
            )
        subject, obj, predicate = int(triplet[0]), int(triplet[1]), triplet[2]
        score = triplet[3] if len(triplet) > 3 else None
        if not (0 <= subject < num_objects and 0 <= obj < num_objects):
            raise DataError(
                f"triplet {row}: object indices ({subject}, {obj}) outside 0..{num_objects - 1}",
                field="triplets",
            )
        if score is not None:
            score = float(score)
            if not math.isfinite(score):
                raise DataError(f"triplet {row}: non-finite score {score}", field="triplets")
        checked.append((subject, obj, predicate, score))
    if all(t[3] is not None for t in checked):
        checked.sort(key=lambda t: -t[3])  # stable: ties keep the given order
    return checked


# ---------------------------------------------------------------------------------------------------
# Canvas helpers.
# ---------------------------------------------------------------------------------------------------


def _figure(width: int, height: int) -> tuple[Figure, FigureCanvasAgg]:
    # Agg sizes its buffer with int(inches * dpi): +0.5 px keeps float error from losing a pixel.
    # The figure is then 0.5 px taller / wider than the buffer; _rect places axes in exact pixels.
    figure = Figure(figsize=((width + 0.5) / _DPI, (height + 0.5) / _DPI), dpi=_DPI)
    return figure, FigureCanvasAgg(figure)


def _rect(figure_size: tuple[int, int], left: int, top: int, width: int, height: int):
    """Axes rectangle (figure fractions) covering output pixels [top, top+height) x [left, ...)."""
    figure_height, figure_width = figure_size
    return (
        left / (figure_width + 0.5),
        (figure_height - top - height) / (figure_height + 0.5),
        width / (figure_width + 0.5),
        height / (figure_height + 0.5),
    )


def _finish(figure: Figure, canvas: FigureCanvasAgg, out_path, width: int, height: int):
    canvas.draw()
    rgb = np.array(canvas.buffer_rgba())[..., :3]
    if rgb.shape[:2] != (height, width):  # pragma: no cover - guards the +0.5 px above
        raise RuntimeError(f"rendered {rgb.shape[:2]}, expected {(height, width)}")
    if out_path is not None:
        directory = os.path.dirname(os.fspath(out_path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        write_png(out_path, np.ascontiguousarray(rgb))
    return np.ascontiguousarray(rgb)


def _as_image(image) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape:
        raise DataError(f"expected uint8[H, W, 3], got shape {list(array.shape)}", field="image")
    if array.dtype != np.uint8:
        raise DataError(f"expected uint8[H, W, 3], got dtype {array.dtype}", field="image")
    return array[..., :3]


def _checked_boxes(boxes, labels, scores):
    boxes = np.asarray(boxes, np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"expected shape [N, 4], got {list(boxes.shape)}", field="boxes")
    if not np.isfinite(boxes).all():
        raise DataError("non-finite box coordinates", field="boxes")
    labels = np.asarray(labels, np.int64).reshape(-1)
    if labels.shape[0] != boxes.shape[0]:
        raise DataError(f"{labels.shape[0]} labels for {boxes.shape[0]} boxes", field="labels")
    if scores is not None:
        scores = np.asarray(scores, np.float64).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise DataError(f"{scores.shape[0]} scores for {boxes.shape[0]} boxes", field="scores")
    return boxes, labels, scores


def _free_label_position(start, end, placed, scale) -> np.ndarray:
    """A point on the segment start -> end (middle first) away from the labels placed so far."""
    for fraction in (0.5, 0.35, 0.65, 0.25, 0.75, 0.15, 0.85):
        point = start + fraction * (end - start)
        if all(
            abs(point[1] - other[1]) * scale >= _LINE_PIXELS
            or abs(point[0] - other[0]) * scale >= 70
            for other in placed
        ):
            return point
    return start + 0.5 * (end - start)


def _default_scale(height: int, width: int) -> int:
    return max(1, math.ceil(_MIN_LONG_SIDE / max(height, width)))


def _text_colour(rgb) -> str:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if luminance > 0.6 else "white"


# ---------------------------------------------------------------------------------------------------
# Scene graph on the image.
# ---------------------------------------------------------------------------------------------------


def draw_scene_graph(
    image,
    boxes,
    labels,
    names=None,
    *,
    scores=None,
    triplets=(),
    top_k: int = 10,
    out_path: str | os.PathLike | None = None,
    scale: int | None = None,
    legend_width: int = 300,
    title: str | None = None,
    max_side: int = MAX_DRAWING_SIDE,
) -> np.ndarray:
    """Draws boxes and the top-K relations on an image and writes a PNG.

    Args:
      image: uint8[H, W, 3] RGB (or [H, W] grey, or a path read with ``load_image``).
      boxes: float[N, 4] xyxy in the image's pixels.
      labels: int[N] 1-based classes.
      names: a Vocab, ``(object_names, predicate_names)`` or object names (module docstring).
      scores: optional float[N] object scores, shown after the names.
      triplets: ``(subject_index, object_index, predicate, score)`` rows (a 5th element, e.g. the
        text of :func:`top_triplets`, is ignored); ``predicate`` an int id or a name; ``score`` may
        be None (ground truth: no score shown, given order kept). Sorted by score, descending.
      top_k: draw and list at most this many triplets.
      out_path: PNG to write (parent folders are created); None to only return the pixels.
      scale: integer enlargement of the image (default: long side >= 512 pixels).
      legend_width: width in pixels of the triplet list to the right of the image.
      title: optional first line of the legend panel.
      max_side: longer side, in output pixels, of the image part; a larger image is drawn on a
        downscaled copy (module docstring).

    Returns:
      The drawing, uint8[scale * H, scale * W + legend_width, 3] (or the downscaled size).
    """
    image = _as_image(image)
    boxes, labels, scores = _checked_boxes(boxes, labels, scores)
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
        raise ConfigError("top_k", f"expected an int >= 0, got {top_k!r}")
    if isinstance(legend_width, bool) or not isinstance(legend_width, int | np.integer):
        raise ConfigError("legend_width", f"expected an int >= 0, got {legend_width!r}")
    if legend_width < 0:
        raise ConfigError("legend_width", f"expected an int >= 0, got {legend_width!r}")
    height, width = image.shape[:2]
    scale = _default_scale(height, width) if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ConfigError("scale", f"expected an int >= 1, got {scale!r}")
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise ConfigError("max_side", f"expected an int >= 1, got {max_side!r}")
    shown = _check_triplets(triplets, boxes.shape[0])[:top_k]
    object_names, predicate_names = _name_lists(names)
    colours = object_colours(boxes.shape[0])

    if scale * max(height, width) > max_side:
        # Output pixels per image pixel < 1: draw on a downscaled copy (bounded memory).
        from PIL import Image

        factor = max_side / max(height, width)
        image_px_w = min(max_side, max(1, round(width * factor)))
        image_px_h = min(max_side, max(1, round(height * factor)))
        shown_pixels = np.asarray(
            Image.fromarray(np.ascontiguousarray(image)).resize(
                (image_px_w, image_px_h), Image.Resampling.BOX, reducing_gap=2.0
            )
        )
        scale = factor
    else:
        # The image's pixels are copied as they are (no resampling).
        image_px_w, image_px_h = scale * width, scale * height
        shown_pixels = np.repeat(np.repeat(image, scale, 0), scale, 1)
    total_w = image_px_w + legend_width
    figure, canvas = _figure(total_w, image_px_h)
    # The axes on top of the image use the original image's pixel coordinates.
    figure.figimage(shown_pixels, xo=0, yo=0, origin="upper", zorder=-1)
    axes = figure.add_axes(_rect((image_px_h, total_w), 0, 0, image_px_w, image_px_h))
    axes.patch.set_visible(False)
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.set_axis_off()
    line_width = max(1.5, 0.8 * scale) * 72.0 / _DPI  # points

    def object_text(index: int) -> str:
        text = f"{index}:{_lookup(object_names, int(labels[index]), 'class')}"
        return text if scores is None else f"{text} {scores[index]:.2f}"

    for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        colour = colours[index]
        axes.add_patch(
            Rectangle(
                (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=line_width
            )
        )
        axes.text(
            x1,
            y1,
            object_text(index),
            fontsize=_FONT_POINTS - 1,
            color=_text_colour(colour),
            va="bottom" if y1 > 0.06 * height else "top",
            ha="left",
            bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0, "alpha": 0.85},
            clip_on=True,
        )
    centres = np.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1
    ).reshape(-1, 2)
    placed: list[np.ndarray] = []
    for rank, (subject, obj, predicate, _) in enumerate(shown, start=1):
        start, end = centres[subject], centres[obj]
        colour = colours[subject]
        if subject != obj and not np.allclose(start, end):
            axes.add_patch(
                FancyArrowPatch(
                    tuple(start),
                    tuple(end),
                    arrowstyle="-|>",
                    mutation_scale=12,
                    linewidth=line_width,
                    color=colour,
                    connectionstyle="arc3,rad=0.08",
                    shrinkA=0,
                    shrinkB=2,
                )
            )
        middle = _free_label_position(start, end, placed, scale)
        placed.append(middle)
        axes.text(
            middle[0],
            middle[1],
            f"{rank}. {_predicate_text(predicate, predicate_names)}",
            fontsize=_FONT_POINTS - 1,
            ha="center",
            va="center",
            color="black",
            bbox={"facecolor": "white", "edgecolor": colour, "pad": 1.0, "alpha": 0.8},
            clip_on=True,
        )

    if legend_width > 0:
        legend = figure.add_axes(
            _rect((image_px_h, total_w), image_px_w, 0, legend_width, image_px_h)
        )
        legend.set_axis_off()
        legend.set_xlim(0, legend_width)
        legend.set_ylim(image_px_h, 0)  # pixel coordinates, y down
        lines = [] if title is None else [(title, "black")]
        if not shown:
            lines.append(("no relations", "#777777"))
        for rank, (subject, obj, predicate, score) in enumerate(shown, start=1):
            text = " ".join(
                (
                    _lookup(object_names, int(labels[subject]), "class"),
                    _predicate_text(predicate, predicate_names),
                    _lookup(object_names, int(labels[obj]), "class"),
                )
            )
            text = f"{rank}. {text}" + ("" if score is None else f" {score:.2f}")
            lines.append((text, colours[subject]))
        for row, (text, colour) in enumerate(lines):
            legend.text(
                6,
                6 + row * _LINE_PIXELS,
                text,
                fontsize=_FONT_POINTS,
                color=colour,
                va="top",
                ha="left",
                clip_on=True,
            )
    return _finish(figure, canvas, out_path, total_w, image_px_h)


def draw_prediction(
    image,
    prediction: Prediction,
    vocab,
    *,
    top_k: int = 10,
    out_path: str | os.PathLike | None = None,
    **kwargs,
) -> np.ndarray:
    """:func:`draw_scene_graph` of a prediction's boxes and its :func:`top_triplets`."""
    triplets = top_triplets(prediction, vocab, top_k)
    return draw_scene_graph(
        image,
        prediction.boxes,
        prediction.labels,
        vocab,
        scores=prediction.object_scores,
        triplets=triplets,
        top_k=top_k,
        out_path=out_path,
        **kwargs,
    )


def draw_groundtruth(
    image,
    graph: SceneGraph,
    vocab,
    *,
    top_k: int = 50,
    out_path: str | os.PathLike | None = None,
    **kwargs,
) -> np.ndarray:
    """:func:`draw_scene_graph` of a ground-truth graph: every relation, no scores."""
    triplets = [(s, o, p, None) for s, o, p in graph.relations.tolist()]
    return draw_scene_graph(
        image,
        graph.boxes,
        graph.labels,
        vocab,
        triplets=triplets,
        top_k=top_k,
        out_path=out_path,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------
# Node-link graph.
# ---------------------------------------------------------------------------------------------------


def _circular_layout(count: int) -> np.ndarray:
    if count == 1:
        return np.zeros((1, 2))
    angles = np.pi / 2 - 2 * np.pi * np.arange(count) / count  # first node on top, clockwise
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _spring_layout(count: int, edges: list[tuple[int, int]]) -> np.ndarray:
    try:
        import networkx
    except ImportError:
        warnings.warn("networkx is not installed: circular layout instead", stacklevel=3)
        return _circular_layout(count)
    graph = networkx.DiGraph()
    graph.add_nodes_from(range(count))
    graph.add_edges_from(edges)
    positions = networkx.spring_layout(graph, seed=0)
    layout = np.array([positions[node] for node in range(count)], np.float64)
    span = np.abs(layout).max()
    return layout / span if span > 0 else layout


def draw_graph(
    labels,
    names,
    triplets,
    out_path: str | os.PathLike | None = None,
    *,
    size: int | tuple[int, int] = 640,
    layout: str = "circular",
    top_k: int | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Draws objects as nodes and relations as labelled directed edges and writes a PNG.

    Args:
      labels: int[N] 1-based object classes (node ``i`` is object ``i``).
      names: a Vocab, ``(object_names, predicate_names)`` or object names (module docstring).
      triplets: ``(subject_index, object_index, predicate[, score])`` rows; edges are labelled with
        the predicate (and the score when given). Several edges between the same two nodes are
        bent apart; a relation of an object with itself is drawn as a loop label.
      out_path: PNG to write; None to only return the pixels.
      size: output ``(height, width)`` in pixels, or an int for a square.
      layout: ``"circular"`` (nodes evenly on a circle, node 0 on top, clockwise) or
        ``"spring"`` (networkx ``spring_layout(seed=0)``; circular with a warning without networkx).
      top_k: draw only the best ``top_k`` triplets (by score when every triplet has one).
      title: optional title.

    Returns:
      The drawing, uint8[height, width, 3].
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"expected one of {LAYOUTS}, got {layout!r}")
    height, width = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if min(height, width) < 16:
        raise ConfigError("size", f"expected at least 16 pixels a side, got {size!r}")
    if top_k is not None and (isinstance(top_k, bool) or top_k < 0):
        raise ConfigError("top_k", f"expected an int >= 0 or None, got {top_k!r}")
    shown = _check_triplets(triplets, labels.shape[0])
    if top_k is not None:
        shown = shown[:top_k]
    object_names, predicate_names = _name_lists(names)
    count = labels.shape[0]
    colours = object_colours(count)
    edges = [(s, o) for s, o, _, _ in shown if s != o]
    positions = (
        _spring_layout(count, edges) if layout == "spring" else _circular_layout(count)
    ).reshape(count, 2)

    figure, canvas = _figure(width, height)
    axes = figure.add_axes(_rect((height, width), 0, 0, width, height))
    axes.set_axis_off()
    aspect = width / height
    axes.set_xlim(-1.35 * max(aspect, 1.0), 1.35 * max(aspect, 1.0))
    axes.set_ylim(-1.35 * max(1 / aspect, 1.0), 1.35 * max(1 / aspect, 1.0))
    axes.set_aspect("equal")
    if title is not None:
        axes.text(0.5, 0.99, title, transform=axes.transAxes, ha="center", va="top", fontsize=10)
    if count == 0:
        axes.text(0.5, 0.5, "empty graph", transform=axes.transAxes, ha="center", va="center")
        return _finish(figure, canvas, out_path, width, height)

    node_radius = min(0.16, 1.2 / max(count, 1) + 0.05)
    nodes = [
        axes.add_patch(
            Circle(
                tuple(positions[index]),
                node_radius,
                facecolor=colours[index],
                edgecolor="black",
                linewidth=0.8,
                zorder=2,
            )
        )
        for index in range(count)
    ]
    seen: dict[tuple[int, int], int] = {}
    loops: dict[int, list[str]] = {}
    for subject, obj, predicate, score in shown:
        text = _predicate_text(predicate, predicate_names)
        if score is not None:
            text = f"{text} {score:.2f}"
        if subject == obj:
            loops.setdefault(subject, []).append(text)
            continue
        repeat = seen.get((subject, obj), 0)
        seen[(subject, obj)] = repeat + 1
        bend = 0.12 + 0.18 * repeat  # arc3: positive bends left of the direction of travel
        start, end = positions[subject], positions[obj]
        axes.add_patch(
            FancyArrowPatch(
                tuple(start),
                tuple(end),
                arrowstyle="-|>",
                mutation_scale=14,
                linewidth=1.2,
                color=colours[subject],
                connectionstyle=f"arc3,rad={bend}",
                shrinkA=0,
                shrinkB=0,
                patchA=nodes[subject],
                patchB=nodes[obj],
                zorder=1,
            )
        )
        # Label at the arc's midpoint: the chord's midpoint moved along the left normal.
        chord = end - start
        normal = np.array([-chord[1], chord[0]])
        middle = (start + end) / 2 - bend * 0.5 * normal
        axes.text(
            middle[0],
            middle[1],
            text,
            fontsize=_FONT_POINTS - 1,
            ha="center",
            va="center",
            bbox={"facecolor": "white", "edgecolor": colours[subject], "pad": 1.0, "alpha": 0.9},
            zorder=3,
        )
    for index in range(count):
        x, y = positions[index]
        axes.text(
            x,
            y,
            f"{index}:{_lookup(object_names, int(labels[index]), 'class')}",
            fontsize=_FONT_POINTS,
            ha="center",
            va="center",
            color=_text_colour(colours[index]),
            zorder=3,
        )
        if index in loops:
            axes.text(
                x,
                y - node_radius * 1.15,
                "↻ " + ", ".join(loops[index]),
                fontsize=_FONT_POINTS - 1,
                ha="center",
                va="top",
            )
    return _finish(figure, canvas, out_path, width, height)
