"""Pixels for the roi feature source: resize / pad / normalise, boxes scaled, bad files."""

import jax
import numpy as np
import pytest

from sgg_jax.data import image_io, pipeline, synthetic, synthetic_pixels
from sgg_jax.data.images import ImageBatchTransform, fit_image
from sgg_jax.errors import DataError


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    dataset = synthetic.generate(synthetic.SyntheticConfig(num_images=3, seed=5))
    out = tmp_path_factory.mktemp("images")
    graphs = synthetic_pixels.render_dataset(dataset.graphs, out, size=(96, 128), seed=0)
    return list(graphs)


def _batch(graphs, batch_size):
    config = pipeline.PipelineConfig.evaluation(batch_size=batch_size, max_objects=20, max_pairs=64)
    examples = [
        pipeline.prepare_example(g, image_index=i, epoch=0, config=config)
        for i, g in enumerate(graphs)
    ]
    return pipeline.collate(examples, batch_size)


def test_fit_image_keeps_aspect_and_pads():
    image = np.full((30, 60, 3), 200, np.uint8)
    canvas, scale = fit_image(image, 40)
    assert canvas.shape == (40, 40, 3) and scale == pytest.approx(40 / 60)
    assert np.all(canvas[:20, :40] == 200) and np.all(canvas[20:] == 0)


def test_transform_adds_normalised_images_and_scales_boxes(rendered):
    batch = _batch(rendered[:2], batch_size=3)  # one padding image
    transform = ImageBatchTransform(rendered, 64)
    out, metrics = transform(None, 1, batch)
    assert metrics == {} and out.images.shape == (3, 64, 64, 3)
    scale = 64 / 128
    np.testing.assert_allclose(out.boxes, np.asarray(batch.boxes) * scale, rtol=1e-6)
    np.testing.assert_array_equal(out.image_size[:2], [[48, 64], [48, 64]])
    np.testing.assert_allclose(transform.scales(batch), [scale, scale, 1.0])
    pixels, _ = fit_image(image_io.load_image(rendered[0].image_path), 64)
    expected = (pixels[:48] / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    np.testing.assert_allclose(out.images[0, :48], expected, atol=1e-5)
    assert np.all(out.images[0, 48:] == 0) and np.all(out.images[2] == 0)


def test_roi_features_from_image_files(rendered):
    from sgg_jax.detection.detector import DetectorConfig
    from sgg_jax.relation.features import make_feature_source

    batch, _ = ImageBatchTransform(rendered, 64)(None, 1, _batch(rendered[:2], batch_size=2))
    source = make_feature_source("roi", union_dim=4, hidden_dim=4, detector=DetectorConfig.tiny())
    variables = jax.jit(lambda b: source.init(jax.random.key(0), b))(batch)
    objects, unions = jax.jit(source.apply)(variables, batch)
    assert np.all(np.isfinite(objects)) and np.all(np.isfinite(unions))
    assert np.abs(np.asarray(objects)[np.asarray(batch.object_mask)]).sum() > 0


def test_bad_image_files_name_the_file(rendered, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    graphs = [rendered[0].replace(image_path=str(broken))]
    with pytest.raises(DataError, match="broken.png"):
        ImageBatchTransform(graphs, 64)(None, 1, _batch(graphs, 1))
    resized = [rendered[0].replace(width=rendered[0].width + 10)]
    with pytest.raises(DataError, match="image_size.*annotation says"):
        ImageBatchTransform(resized, 64)(None, 1, _batch(resized, 1))
    missing = [rendered[0].replace(image_path=None)]
    with pytest.raises(DataError, match="image_path"):
        ImageBatchTransform(missing, 64)(None, 1, _batch(missing, 1))
