"""InputConvention: Scene-Graph-Benchmark's pixels and resize, the ImageNet default unchanged, the
convention recorded in the detector config and checked against a requested one."""

import dataclasses
import json
import types

import numpy as np
import pytest
from PIL import Image

from sgg_jax.data import pipeline
from sgg_jax.data.images import (
    ImageBatchTransform,
    InputConvention,
    check_convention,
    fit_image,
    normalise_pixels,
    sgb_resize_size,
)
from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraph

SGB_MEAN = np.array([102.9801, 115.9465, 122.7717], np.float32)


def _sgb_get_size(width, height, min_size=600, max_size=1000):
    """maskrcnn_benchmark/data/transforms/transforms.py ``Resize.get_size``, restated."""
    size = min_size
    short, long = float(min(width, height)), float(max(width, height))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _sgb_reference(image):
    """Resize (PIL bilinear, as ``F.resize``), ``ToTensor``, ``Normalize(to_bgr255=True)``."""
    height, width = image.shape[:2]
    new_h, new_w = _sgb_get_size(width, height)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    tensor = resized.astype(np.float32) / 255.0  # ToTensor
    bgr255 = tensor[..., [2, 1, 0]] * 255.0  # image[[2, 1, 0]] * 255
    return (bgr255 - SGB_MEAN) / np.float32(1.0), (new_h, new_w)


def _image(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _graph(path, height, width, boxes):
    n = len(boxes)
    return SceneGraph(
        image_id=str(path),
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32),
        labels=np.ones(n, np.int32),
        relations=np.zeros((0, 3), np.int32),
        image_path=str(path),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("convention")
    graphs, images = [], []
    for i, (width, height) in enumerate([(800, 533), (1200, 300), (97, 61)]):
        image = _image(height, width, i)
        path = out / f"{i}.png"
        Image.fromarray(image).save(path)
        boxes = [[1.0, 2.0, width / 2, height / 3], [width / 4, height / 4, width - 1, height - 1]]
        graphs.append(_graph(path, height, width, boxes))
        images.append(image)
    return graphs, images


def _batch(graphs):
    config = pipeline.PipelineConfig.evaluation(
        batch_size=len(graphs) + 1, max_objects=4, max_pairs=4
    )
    examples = [
        pipeline.prepare_example(g, image_index=i, epoch=0, config=config)
        for i, g in enumerate(graphs)
    ]
    return pipeline.collate(examples, len(graphs) + 1)


@pytest.mark.parametrize("width, height", [(800, 533), (1200, 300), (533, 800), (300, 1200)])
def test_sgb_resize_size_is_get_size(width, height):
    assert sgb_resize_size(height, width, 600, 1000) == _sgb_get_size(width, height)


def test_sgb_get_size_values():
    assert sgb_resize_size(533, 800, 600, 1000) == (600, 900)  # int(600 * 800 / 533)
    assert sgb_resize_size(300, 1200, 600, 1000) == (250, 1000)  # capped by the long side


def test_sgb_presets():
    sgb = InputConvention.sgb()
    assert (sgb.channel_order, sgb.scale, sgb.min_size, sgb.max_size) == ("bgr", 255.0, 600, 1000)
    assert sgb.mean == (102.9801, 115.9465, 122.7717) and sgb.std == (1.0, 1.0, 1.0)
    assert InputConvention.imagenet() == InputConvention() and InputConvention().max_size is None


def test_sgb_normalise_pixels_is_to_bgr255_minus_mean():
    image = _image(5, 7, 3)
    expected = (image.astype(np.float32) / 255.0)[..., [2, 1, 0]] * 255.0 - SGB_MEAN
    np.testing.assert_allclose(normalise_pixels(image, convention="sgb"), expected, atol=1e-3)


def test_sgb_transform_matches_restated_transforms(files):
    graphs, images = files
    transform = ImageBatchTransform(graphs[:2], 1000, convention="sgb")
    batch = _batch(graphs[:2])  # one padding image
    out, metrics = transform(None, 0, batch)
    assert metrics == {} and out.images.shape == (3, 1000, 1000, 3)
    for row, image in enumerate(images[:2]):
        expected, (new_h, new_w) = _sgb_reference(image)
        np.testing.assert_allclose(out.images[row, :new_h, :new_w], expected, atol=1e-3)
        assert np.all(out.images[row, new_h:] == 0) and np.all(out.images[row, :, new_w:] == 0)
        np.testing.assert_array_equal(out.image_size[row], [new_h, new_w])
        height, width = image.shape[:2]
        ratio = np.array([new_w / width, new_h / height] * 2, np.float32)  # BoxList.resize
        n = len(graphs[row].boxes)
        np.testing.assert_allclose(
            out.boxes[row, :n], np.asarray(batch.boxes)[row, :n] * ratio, rtol=1e-6
        )
    assert out.image_size[0].tolist() == [600, 900] and out.image_size[1].tolist() == [250, 1000]
    assert np.all(out.images[2] == 0)


def test_sgb_canvas_must_hold_max_size(files):
    with pytest.raises(ConfigError, match="max_size 1000"):
        ImageBatchTransform(files[0], 800, convention="sgb")


def _previous_transform(graphs, image_size, batch):
    """The ImageNet path as it was before conventions existed (fit_image, /255, mean, std)."""
    mean = np.asarray((0.485, 0.456, 0.406), np.float32)
    std = np.asarray((0.229, 0.224, 0.225), np.float32)
    from sgg_jax.data.image_io import load_image

    indices = np.asarray(batch.image_index)
    images = np.zeros((len(indices), image_size, image_size, 3), np.float32)
    scales = np.ones(len(indices), np.float32)
    for row, index in enumerate(indices):
        if index < 0:
            continue
        pixels, scales[row] = fit_image(load_image(graphs[index].image_path), image_size)
        values = pixels.astype(np.float32) / 255.0
        height = min(image_size, int(round(graphs[index].height * scales[row])))
        width = min(image_size, int(round(graphs[index].width * scales[row])))
        normalised = np.zeros_like(values)
        normalised[:height, :width] = (values[:height, :width] - mean) / std
        images[row] = normalised
    boxes = np.asarray(batch.boxes, np.float32) * scales[:, None, None]
    sizes = np.round(np.asarray(batch.image_size, np.float32) * scales[:, None])
    return images, boxes, sizes.astype(batch.image_size.dtype)


@pytest.mark.parametrize("convention", [None, "imagenet", InputConvention.imagenet()])
def test_imagenet_is_bitwise_the_previous_behaviour(files, convention):
    graphs, _ = files
    batch = _batch(graphs)
    kwargs = {} if convention is None else {"convention": convention}
    out, _ = ImageBatchTransform(graphs, 128, **kwargs)(None, 0, batch)
    for got, want in zip(
        (out.images, out.boxes, out.image_size),
        _previous_transform(graphs, 128, batch),
        strict=True,
    ):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    pixels = _image(4, 6, 9)
    previous = (pixels.astype(np.float32) / 255.0 - np.float32([0.485, 0.456, 0.406])) / (
        np.float32([0.229, 0.224, 0.225])
    )
    assert normalise_pixels(pixels, convention=convention).tobytes() == previous.tobytes()
    assert normalise_pixels(pixels).tobytes() == previous.tobytes()


def test_mismatch_is_one_config_error_naming_both():
    assert check_convention("sgb", None) == InputConvention.sgb()
    assert check_convention("sgb", InputConvention.sgb()) == InputConvention.sgb()
    with pytest.raises(ConfigError) as info:
        check_convention("sgb", "imagenet")
    message = str(info.value)
    assert "\n" not in message and "sgb" in message and "imagenet" in message


def test_convention_round_trips_through_detector_config():
    from sgg_jax.detection.detector import DetectorConfig

    assert DetectorConfig.tiny().input_convention == InputConvention.imagenet()
    custom = dataclasses.replace(InputConvention.sgb(), min_size=400, max_size=700)
    for convention in ("sgb", custom):
        config = DetectorConfig.tiny(input_convention=convention)
        text = json.dumps(dataclasses.asdict(config))
        assert DetectorConfig.from_dict(json.loads(text)) == config
    old = dataclasses.asdict(DetectorConfig.tiny())
    del old["input_convention"]  # a config written before the field existed
    assert DetectorConfig.from_dict(old).input_convention == InputConvention.imagenet()
    with pytest.raises(ConfigError, match="input_convention"):
        DetectorConfig.tiny(input_convention="caffe")


def test_converted_sgb_detector_records_sgb():
    from sgg_jax.detection import convert
    from sgg_jax.detection.detector import DetectorConfig

    config = DetectorConfig.tiny()
    shapes = convert.detector_torch_shapes(config)
    state = {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}
    inferred = convert.infer_detector_config(state, backbone=config.backbone)
    assert inferred.input_convention == InputConvention.sgb()


def test_relation_pixel_inputs_use_the_detector_convention(tmp_path, files):
    from sgg_jax.detection.detector import DetectorConfig
    from sgg_jax.experiment.relation import PixelInputs

    detector = DetectorConfig.tiny(input_convention="sgb")
    record = {"flags": {}, "detector": json.loads(json.dumps(dataclasses.asdict(detector)))}
    (tmp_path / "config.json").write_text(json.dumps(record))
    data = types.SimpleNamespace(
        detector_workdir=str(tmp_path),
        detector_checkpoint=None,
        detections_per_image=0,
        image_size=0,
        max_image_pixels=10**8,
    )
    pixels = PixelInputs(data)
    assert pixels.convention == InputConvention.sgb() and pixels.image_size == 1000
    transform = pixels.transform(files[0])
    assert transform.convention == InputConvention.sgb()
    assert pixels.transform_config()["input_convention"] == InputConvention.sgb().to_dict()
    with pytest.raises(ConfigError, match="requested imagenet.*sgb"):
        pixels.transform(files[0], "imagenet")
    with pytest.raises(ConfigError, match="requested imagenet.*sgb"):
        PixelInputs(data, convention="imagenet")


def test_relation_pixel_inputs_freeze_the_detector_of_a_wrapped_model(tmp_path):
    from sgg_jax.detection.detector import DetectorConfig
    from sgg_jax.experiment.relation import PixelInputs

    detector = DetectorConfig.tiny()
    record = {"flags": {"image_size": 64}, "detector": dataclasses.asdict(detector)}
    (tmp_path / "config.json").write_text(json.dumps(record))
    data = types.SimpleNamespace(
        detector_workdir=str(tmp_path),
        detector_checkpoint=None,
        detections_per_image=0,
        image_size=0,
        max_image_pixels=10**8,
        union_features=None,
        freeze_detector=True,
        max_pairs=32,
        max_fg=8,
    )
    pixels = PixelInputs(data)
    fields = pixels.model_fields()
    assert fields["detector"] == detector and fields["freeze_detector"] is True
    assert (fields["sgdet"].train_pairs, fields["sgdet"].train_fg) == (32, 8)
    base = {"features": {"detector": {"fc7": 1.0}, "union_mlp": 1.0}, "head": 1.0}
    params = {"base": base, "scorer": {"score": 1.0}}
    mask = pixels.trainable("base")(params)
    assert mask == {
        "base": {"features": {"detector": {"fc7": False}, "union_mlp": True}, "head": True},
        "scorer": {"score": True},
    }
    assert pixels.trainable()(base) == mask["base"]
