"""Tests of the rendered synthetic scenes (sgg_jax/data/synthetic_pixels.py)."""

import os

import numpy as np
import pytest

from sgg_jax.data import image_io, synthetic
from sgg_jax.data import synthetic_pixels as pixels
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import SceneGraph


def _graph(boxes, labels, width=64, height=64, image_id="scene") -> SceneGraph:
    return SceneGraph(
        image_id=image_id,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32),
        labels=np.asarray(labels, np.int32),
        relations=np.zeros((0, 3), np.int32),
    )


@pytest.fixture(scope="module")
def scenes() -> tuple[SceneGraph, ...]:
    return synthetic.generate(synthetic.SyntheticConfig(num_images=3, seed=0)).graphs


def test_render_returns_uint8_image_and_stretched_graph(scenes):
    graph = scenes[0]
    image, scaled = pixels.render(graph, size=(96, 160), seed=0)
    assert image.dtype == np.uint8 and image.shape == (96, 160, 3)
    assert (scaled.height, scaled.width) == (96, 160)
    scale = np.array([160 / graph.width, 96 / graph.height] * 2)
    np.testing.assert_allclose(scaled.boxes, graph.boxes * scale, rtol=1e-6, atol=1e-4)
    assert scaled.boxes.dtype == np.float32
    np.testing.assert_array_equal(scaled.labels, graph.labels)
    np.testing.assert_array_equal(scaled.relations, graph.relations)
    assert scaled.image_id == graph.image_id and scaled.image_path is None
    assert image.std() > 10.0  # not a blank canvas
    square, _ = pixels.render(graph, size=128, seed=0)
    assert square.shape == (128, 128, 3)


def test_letterbox_keeps_aspect_and_centres_the_scene():
    graph = _graph([[0, 0, 400, 200], [100, 50, 200, 150]], [1, 9], width=400, height=200)
    config = pixels.RenderConfig(fit="letterbox")
    rendering = pixels.render_scene(graph, size=128, config=config, seed=0)
    # One scale 0.32 for both axes; the 128 x 64 scene sits 32 rows down.
    np.testing.assert_allclose(rendering.graph.boxes, [[0, 32, 128, 96], [32, 48, 64, 80]])
    rows = np.nonzero((rendering.object_map >= 0).any(axis=1))[0]
    assert (rows.min(), rows.max()) == (32, 95)


def test_same_graph_and_seed_give_identical_pixels(scenes):
    first, _ = pixels.render(scenes[1], seed=3)
    second, _ = pixels.render(scenes[1], seed=3)
    other_seed, _ = pixels.render(scenes[1], seed=4)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other_seed)
    # The noise also depends on the image id, so two images never share their noise.
    renamed, _ = pixels.render(scenes[1].replace(image_id="other"), seed=3)
    assert not np.array_equal(first, renamed)


@pytest.mark.parametrize("label", range(1, 9))  # labels 1..8 cover the 8 shapes
def test_each_shape_fills_its_box_to_the_edges(label):
    box = [10.3, 20.7, 50.2, 45.6]
    config = pixels.RenderConfig(pixel_noise=0.0)
    rendering = pixels.render_scene(_graph([box], [label]), size=64, config=config, seed=0)
    rows, cols = np.nonzero(rendering.object_map == 0)
    # Pixels overlapping the box: columns 10..50, rows 20..45; the shape touches all four sides.
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (10, 50, 20, 45)
    filled = rows.size / (41 * 26)
    assert pixels.appearance(label).shape == pixels.SHAPES[label - 1]
    assert (filled == 1.0) == (pixels.SHAPES[label - 1] == "rectangle")
    assert filled > 0.3


def test_small_objects_are_drawn_over_large_ones_whatever_the_graph_order():
    graph = _graph([[20, 20, 30, 30], [0, 0, 64, 64]], [1, 9])  # two rectangles
    rendering = pixels.render_scene(graph, size=64, seed=0)
    assert (rendering.object_map[20:30, 20:30] == 0).all()
    assert (rendering.object_map[:10] == 1).all()


def test_appearances_are_unique_for_vg150_and_gqa200():
    for num_classes in (150, 200):
        codes = {pixels.appearance_code(c) for c in range(1, num_classes + 1)}
        colours = {pixels.appearance(c).colour for c in range(1, num_classes + 1)}
        assert len(codes) == len(colours) == num_classes
    assert pixels.NUM_APPEARANCES == 8 * 8 * 210
    assert pixels.NUM_UNIQUE_CLASSES == 6720
    codes = [pixels.appearance_code(c) for c in range(1, pixels.NUM_UNIQUE_CLASSES + 2)]
    assert len(set(codes[:-1])) == pixels.NUM_UNIQUE_CLASSES and codes[-1] == codes[0]
    # Base colours are lattice points >= 35 apart in some channel; no class is grey.
    palette = np.array([pixels.appearance(c).colour for c in range(1, 211)])
    gaps = np.abs(palette[:, None] - palette[None]).max(axis=-1)
    assert gaps[~np.eye(210, dtype=bool)].min() == pytest.approx(35.0)
    assert (palette.max(axis=1) > palette.min(axis=1)).all()
    assert pixels.appearance(7, appearance_seed=1).colour != pixels.appearance(7).colour


def test_class_mean_colours_are_far_apart_for_random_class_pairs():
    rng = np.random.default_rng(0)
    pairs = np.array([rng.choice(np.arange(1, 201), 2, replace=False) for _ in range(50)])
    quadrants = [[2, 2, 30, 30], [34, 2, 62, 30], [2, 34, 30, 62], [34, 34, 62, 62]]
    means = {}
    for label in np.unique(pairs):
        graph = _graph(quadrants, [label] * 4, image_id=f"class-{label}")
        rendering = pixels.render_scene(graph, size=64, seed=0)
        means[label] = rendering.image[rendering.object_map >= 0].astype(np.float64).mean(axis=0)
    distances = [np.linalg.norm(means[a] - means[b]) for a, b in pairs]
    assert min(distances) > 20.0, sorted(distances)[:5]


def _roi_features(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Mean and std colour and mean absolute luminance gradients in 4 directions of a box."""
    x1, y1, x2, y2 = np.rint(box).astype(int)
    crop = image[y1:y2, x1:x2].astype(np.float64)
    grey = crop.mean(axis=-1)
    gradients = [
        np.abs(np.diff(grey, axis=1)).mean(),
        np.abs(np.diff(grey, axis=0)).mean(),
        np.abs(grey[1:, 1:] - grey[:-1, :-1]).mean(),
        np.abs(grey[1:, :-1] - grey[:-1, 1:]).mean(),
    ]
    return np.concatenate([crop.mean(axis=(0, 1)), crop.std(axis=(0, 1)), gradients])


def test_nearest_centroid_on_roi_colour_and_texture_learns_20_classes():
    rng = np.random.default_rng(1)
    classes = rng.choice(np.arange(1, 151), 20, replace=False)
    features, targets, is_train = [], [], []
    for index in range(60):
        sides = rng.uniform(14, 40, size=(4, 2))
        starts = rng.uniform(0, 1, size=(4, 2)) * (128 - sides)
        boxes = np.concatenate([starts, starts + sides], axis=1)
        labels = rng.choice(classes, 4)
        graph = _graph(boxes, labels, width=128, height=128, image_id=f"roi-{index}")
        image, scaled = pixels.render(graph, size=128, seed=0)
        for box, label in zip(scaled.boxes, labels, strict=True):
            features.append(_roi_features(image, box))
            targets.append(int(np.nonzero(classes == label)[0][0]))
            is_train.append(index < 40)
    features, targets, is_train = np.array(features), np.array(targets), np.array(is_train)
    mean, std = features[is_train].mean(axis=0), features[is_train].std(axis=0) + 1e-6
    features = (features - mean) / std
    centroids = np.stack([features[is_train & (targets == k)].mean(axis=0) for k in range(20)])
    test = ~is_train
    distances = np.linalg.norm(features[test, None] - centroids[None], axis=-1)
    accuracy = (distances.argmin(axis=1) == targets[test]).mean()
    assert accuracy > 0.6, accuracy  # chance: 0.05


def test_render_dataset_round_trips_through_png(scenes, tmp_path, monkeypatch):
    out_dir = tmp_path / "images"
    rendered = pixels.render_dataset(scenes, out_dir, size=(80, 96), seed=2)
    assert len(rendered) == len(scenes)
    for graph, original in zip(rendered, scenes, strict=True):
        assert graph.image_path == os.path.join(str(out_dir), f"{original.image_id}.png")
        image, scaled = pixels.render(original, size=(80, 96), seed=2)
        loaded = image_io.load_image(graph.image_path)
        assert loaded.dtype == np.uint8 and loaded.flags.c_contiguous
        np.testing.assert_array_equal(loaded, image)
        np.testing.assert_array_equal(graph.boxes, scaled.boxes)
        assert (graph.width, graph.height) == (96, 80)
    # A relative folder gives relative paths; odd characters in ids are replaced.
    monkeypatch.chdir(tmp_path)
    odd = scenes[0].replace(image_id="a/b c")
    (relative,) = pixels.render_dataset([odd], "rel", size=32, seed=0)
    assert relative.image_path == os.path.join("rel", "a_b_c.png")
    assert image_io.load_image(relative.image_path).shape == (32, 32, 3)


def test_invalid_options_raise_config_or_data_errors(scenes, tmp_path):
    with pytest.raises(ConfigError, match="fit"):
        pixels.RenderConfig(fit="crop")
    with pytest.raises(ConfigError, match="pixel_noise"):
        pixels.RenderConfig(pixel_noise=-1.0)
    with pytest.raises(ConfigError, match="size"):
        pixels.render(scenes[0], size=(0, 10), seed=0)
    with pytest.raises(ConfigError, match="seed"):
        pixels.render(scenes[0], seed=-1)
    with pytest.raises(ConfigError, match="image_format"):
        pixels.render_dataset(scenes, tmp_path, seed=0, image_format="jpeg")
    with pytest.raises(DataError, match="distinct"):
        pixels.render_dataset([scenes[0], scenes[0]], tmp_path, seed=0)
    with pytest.raises(DataError, match="labels"):
        pixels.render(_graph([[1, 1, 5, 5]], [0]), seed=0)
