"""Tests of sgg_jax.evaluation.viz: triplet ranking, PNG drawings on images and node-link graphs."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest

from sgg_jax.data import image_io, synthetic, synthetic_pixels
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.evaluation import viz
from sgg_jax.structures import Prediction, Vocab

EXAMPLES = "/tmp/viz_examples"
VOCAB = Vocab(
    object_names=("__background__", "man", "horse", "hat"),
    predicate_names=("__background__", "on", "riding", "wearing"),
)


def _prediction() -> Prediction:
    # Scores are exact binary fractions so that the ties below are exact.
    return Prediction(
        boxes=[[2, 2, 20, 30], [10, 15, 50, 38], [4, 0, 12, 6]],
        labels=[1, 2, 3],
        object_scores=[1.0, 0.5, 0.75],
        pairs=[[0, 1], [1, 2], [2, 0], [1, 0]],
        predicate_scores=[
            [0.9, 0.125, 0.5, 0.25],  # background ignored: riding 0.5 * 1 * 0.5 = 0.25
            [0.0, 0.5, 0.25, 0.25],  # on 0.5 * 0.5 * 0.75 = 0.1875
            [0.0, 0.125, 0.125, 0.75],  # wearing 0.75 * 0.75 * 1 = 0.5625
            [0.0, 0.0, 0.5, 0.0],  # riding 0.5 * 0.5 * 1 = 0.25 (ties with pair 0: after it)
        ],
    )


def _image(height=40, width=60) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 3 % 200 + 30, cols * 2 % 200 + 30, np.full_like(rows, 120)], -1).astype(
        np.uint8
    )


def _upscaled(image, scale):
    return np.repeat(np.repeat(image, scale, 0), scale, 1)


# ---------------------------------------------------------------------------------------------------
# top_triplets.
# ---------------------------------------------------------------------------------------------------


def test_top_triplets_ranks_like_the_evaluator():
    triplets = viz.top_triplets(_prediction(), VOCAB, k=10)
    assert triplets == [
        (2, 0, 3, 0.5625, "hat wearing man"),
        (0, 1, 2, 0.25, "man riding horse"),
        (1, 0, 2, 0.25, "horse riding man"),
        (1, 2, 1, 0.1875, "horse on hat"),
    ]
    assert viz.top_triplets(_prediction(), VOCAB, k=2) == triplets[:2]
    assert viz.top_triplets(_prediction(), VOCAB, k=None) == triplets
    # Other name forms give the same text.
    pair_of_lists = (["man", "horse", "hat"], ["on", "riding", "wearing"])
    assert viz.top_triplets(_prediction(), pair_of_lists, k=1) == triplets[:1]
    assert viz.top_triplets(_prediction(), None, k=1)[0][4] == "class3 predicate3 class1"


def test_top_triplets_empty_and_bad():
    empty = Prediction(
        boxes=np.zeros((0, 4)),
        labels=[],
        object_scores=[],
        pairs=np.zeros((0, 2)),
        predicate_scores=np.zeros((0, 4)),
    )
    assert viz.top_triplets(empty, VOCAB, 5) == []
    with pytest.raises(ConfigError, match="'k'"):
        viz.top_triplets(_prediction(), VOCAB, k=-1)
    bad = Prediction(
        boxes=np.zeros((2, 4)),
        labels=[1, 1],
        object_scores=[1, 1],
        pairs=[[0, 2]],
        predicate_scores=[[0.0, 1.0]],
    )
    with pytest.raises(DataError, match="field 'pairs'"):
        viz.top_triplets(bad, VOCAB)


# ---------------------------------------------------------------------------------------------------
# draw_scene_graph.
# ---------------------------------------------------------------------------------------------------


def test_draw_scene_graph_writes_png_with_boxes_and_arrows(tmp_path):
    image = _image()
    prediction = _prediction()
    rc_before = dict(matplotlib.rcParams)
    path = tmp_path / "sub" / "scene.png"
    drawn = viz.draw_prediction(image, prediction, VOCAB, out_path=path, top_k=3)
    assert dict(matplotlib.rcParams) == rc_before  # nothing global changed
    scale = 9  # ceil(512 / 60)
    assert drawn.shape == (40 * scale, 60 * scale + 300, 3) and drawn.dtype == np.uint8
    np.testing.assert_array_equal(image_io.load_image(path), drawn)
    reference = _upscaled(image, scale)
    region = drawn[:, : 60 * scale]
    # The left edge of box 1 (x = 10, rows 15..38) is drawn in object 1's colour.
    column = region[20 * scale : 35 * scale, 10 * scale]
    colour = np.round(viz.object_colours(3)[1] * 255)
    assert np.abs(column.astype(int) - colour).max(axis=1).min() < 30
    assert np.abs(column.astype(int) - reference[20 * scale : 35 * scale, 10 * scale]).max() > 50
    # Between the centres of the top triplet (hat -> man) the arrow / predicate label is drawn.
    hat, man = np.array([8.0, 3.0]), np.array([11.0, 16.0])
    x, y = ((hat + man) / 2 * scale).astype(int)
    assert (
        np.abs(
            region[y - 3 : y + 4, x - 3 : x + 4].astype(int)
            - reference[y - 3 : y + 4, x - 3 : x + 4]
        ).max()
        > 50
    )
    # Far from every box the image is shown unchanged (nearest neighbour, exact pixels).
    np.testing.assert_array_equal(region[-40:-5, 55 * scale :], reference[-40:-5, 55 * scale :])
    # The legend lists three triplets: text pixels in its top lines, white below them.
    legend = drawn[:, 60 * scale :]
    assert (legend[: 3 * 17 + 6].min(axis=2) < 200).any()
    assert (legend[5 * 17 + 10 :] == 255).all()


def test_draw_scene_graph_empty_and_options(tmp_path):
    image = _image(30, 20)
    path = tmp_path / "empty.png"
    drawn = viz.draw_scene_graph(image, np.zeros((0, 4)), [], VOCAB, out_path=path, scale=3)
    assert drawn.shape == (90, 60 + 300, 3)
    np.testing.assert_array_equal(drawn[:, :60], _upscaled(image, 3))  # nothing drawn on it
    assert (drawn[:, 60:].min(axis=2) < 200).any()  # "no relations"
    np.testing.assert_array_equal(image_io.load_image(path), drawn)
    # Boxes without triplets, no legend, ground-truth triplets without scores, a self-relation.
    boxes = [[1, 1, 10, 10], [5, 5, 18, 28]]
    drawn = viz.draw_scene_graph(image, boxes, [1, 2], VOCAB, scale=2, legend_width=0)
    assert drawn.shape == (60, 40, 3)
    drawn = viz.draw_scene_graph(
        image, boxes, [1, 2], VOCAB, triplets=[(0, 1, 2, None), (1, 1, "on", None)], scale=2
    )
    assert drawn.shape == (60, 340, 3)


def test_draw_scene_graph_bad_inputs():
    image = _image()
    with pytest.raises(DataError, match="field 'triplets'"):
        viz.draw_scene_graph(image, [[0, 0, 5, 5]], [1], VOCAB, triplets=[(0, 1, 1, 0.5)])
    with pytest.raises(DataError, match="field 'boxes'"):
        viz.draw_scene_graph(image, [[0, 0, 5]], [1], VOCAB)
    with pytest.raises(DataError, match="field 'boxes'"):
        viz.draw_scene_graph(image, [[0, 0, np.nan, 5]], [1], VOCAB)
    with pytest.raises(DataError, match="field 'labels'"):
        viz.draw_scene_graph(image, [[0, 0, 5, 5]], [1, 2], VOCAB)
    with pytest.raises(DataError, match="field 'image'"):
        viz.draw_scene_graph(image.astype(np.float32), [], [], VOCAB)
    with pytest.raises(ConfigError, match="'top_k'"):
        viz.draw_scene_graph(image, [], [], VOCAB, top_k=-1)
    with pytest.raises(ConfigError, match="'scale'"):
        viz.draw_scene_graph(image, [], [], VOCAB, scale=0)


# ---------------------------------------------------------------------------------------------------
# draw_graph.
# ---------------------------------------------------------------------------------------------------


def test_draw_graph_nodes_edges_and_determinism(tmp_path):
    labels = [1, 2, 3, 1]
    triplets = [(0, 1, 2, 0.9), (1, 0, 1, 0.8), (0, 1, 1, 0.7), (2, 2, "on", 0.5), (3, 2, 3, 0.4)]
    path = tmp_path / "graph.png"
    drawn = viz.draw_graph(labels, VOCAB, triplets, path, size=(400, 500))
    assert drawn.shape == (400, 500, 3)
    np.testing.assert_array_equal(image_io.load_image(path), drawn)
    # Circular layout: node 0 on top at the centre column, drawn in object 0's colour.
    y0 = int(400 * (1.35 * 1 - 1) / (2 * 1.35))  # y limits +-1.35, node at y = 1
    colour = np.round(viz.object_colours(4)[0] * 255)
    patch = drawn[y0 + 11 : y0 + 16, 248:252].astype(int)  # inside the node, below its text
    assert np.abs(patch - colour).max() < 3
    assert (drawn.min(axis=2) < 128).mean() > 0.005  # nodes, text and edges were drawn
    again = viz.draw_graph(labels, VOCAB, triplets, None, size=(400, 500))
    np.testing.assert_array_equal(again, drawn)
    fewer = viz.draw_graph(labels, VOCAB, triplets, None, size=(400, 500), top_k=1)
    assert not np.array_equal(fewer, drawn)


def test_draw_graph_empty_and_layouts(tmp_path):
    path = tmp_path / "empty_graph.png"
    drawn = viz.draw_graph([], VOCAB, [], path, size=64)
    assert drawn.shape == (64, 64, 3) and os.path.getsize(path) > 0
    alone = viz.draw_graph([2], VOCAB, [], None, size=100)
    assert alone.shape == (100, 100, 3) and (alone.min(axis=2) < 200).any()
    spring = viz.draw_graph([1, 2, 3], VOCAB, [(0, 1, 1, 0.5)], None, size=120, layout="spring")
    assert spring.shape == (120, 120, 3)
    with pytest.raises(ConfigError, match="'layout'"):
        viz.draw_graph([1], VOCAB, [], None, layout="random")
    with pytest.raises(DataError, match="field 'triplets'"):
        viz.draw_graph([1], VOCAB, [(0, 3, 1)], None)


# ---------------------------------------------------------------------------------------------------
# Synthetic scenes, written for people to look at.
# ---------------------------------------------------------------------------------------------------


def test_synthetic_examples_written():
    dataset = synthetic.generate(
        synthetic.SyntheticConfig(num_images=2, min_image_size=128, max_image_size=160, seed=3)
    )
    rng = np.random.default_rng(0)
    os.makedirs(EXAMPLES, exist_ok=True)
    for graph in dataset.graphs:
        image, scaled = synthetic_pixels.render(graph, size=128, seed=0)
        stem = os.path.join(EXAMPLES, graph.image_id)
        drawn = viz.draw_groundtruth(
            image, scaled, dataset.vocab, out_path=f"{stem}_gt.png", title="ground truth"
        )
        assert drawn.shape == (512, 512 + 300, 3)
        relations = [tuple(r) for r in scaled.relations.tolist()]
        graph_image = viz.draw_graph(
            scaled.labels, dataset.vocab, relations, f"{stem}_graph.png", title=graph.image_id
        )
        assert graph_image.shape == (640, 640, 3)
        # A fake prediction on the ground-truth boxes: every ordered pair, random scores.
        n = scaled.num_objects
        pairs = np.array([(s, o) for s in range(n) for o in range(n) if s != o])
        prediction = Prediction(
            boxes=scaled.boxes,
            labels=scaled.labels,
            object_scores=rng.uniform(0.5, 1.0, n),
            pairs=pairs,
            predicate_scores=rng.dirichlet(np.ones(dataset.vocab.num_predicates + 1), len(pairs)),
        )
        viz.draw_prediction(image, prediction, dataset.vocab, out_path=f"{stem}_pred.png", top_k=5)
        for suffix in ("gt", "graph", "pred"):
            assert image_io.load_image(f"{stem}_{suffix}.png").shape[2] == 3
