"""--detector_checkpoint: a Scene-Graph-Benchmark checkpoint as the detector of feature_source=roi."""

import hashlib
import json
import zipfile

import jax
import numpy as np
import pytest
from flax import traverse_util

from sgg_jax.data.images import InputConvention
from sgg_jax.data.torch_zip import write_torch_zip
from sgg_jax.detection import convert
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.experiment import relation
from tests.detection import random_detector_variables, write_sgb_checkpoint

SYNTHETIC_CLASSES = 150  # dataset=synthetic: the VG150 vocabulary


def _data(path, **options):
    fields = dict(dataset="synthetic", synthetic_images=20, task="sgcls", feature_source="roi")
    return relation.DataConfig(**{**fields, "detector_checkpoint": str(path), **options})


@pytest.fixture(scope="module")
def sgb_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("sgb") / "model_final.pth"
    variables = write_sgb_checkpoint(path, SYNTHETIC_CLASSES + 1)
    return path, variables


def _fresh_penet_variables(pixels):
    """Zero variables of a PE-Net SGCls of ``pixels``' detector (shapes only: nothing runs)."""
    from sgg_jax.data import pipeline
    from sgg_jax.relation.penet import PENet, PENetConfig

    config = PENetConfig.small(
        SYNTHETIC_CLASSES,
        50,
        task="sgcls",
        feature_source="roi",
        detector=pixels.detector,
        freeze_detector=True,
    )
    splits, vocab = relation.load_splits(_data(pixels.checkpoint), check_images=False)
    loader = pipeline.make_loader(
        splits["train"], relation.train_pipeline_config(_data(pixels.checkpoint), vocab)
    )
    batch = loader.dataset[0]
    side = pixels.image_size
    batch = batch.replace(images=np.zeros((batch.boxes.shape[0], side, side, 3), np.float32))
    shapes = jax.eval_shape(
        lambda: PENet(config).init(
            {"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch, train=False
        )
    )
    return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)


def test_pixel_inputs_of_an_sgb_checkpoint(sgb_pth):
    path, variables = sgb_pth
    data = _data(path)
    vocab = relation.load_splits(data, check_images=False)[1]  # synthetic: no image files
    relation.check_detector_classes(data, vocab)  # 151 = 150 + 1
    pixels = relation.PixelInputs(data)
    assert pixels.detector.num_classes == SYNTHETIC_CLASSES + 1
    assert pixels.detector.input_convention == InputConvention.sgb()
    assert pixels.convention == InputConvention.sgb()
    assert pixels.image_size == 1000  # SGB: shorter side 600, longer at most 1000
    assert pixels.transform_config()["bgr"] is True
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert pixels.source_config() == {
        "detector_checkpoint": str(path),
        "detector_checkpoint_sha256": sha256,
    }
    external = pixels.external_variables(True)
    assert external.path == ("features", "detector") and external.name == str(path)
    assert pixels.external_variables(False) is None

    merged = pixels.merge_detector(_fresh_penet_variables(pixels))
    detector = traverse_util.flatten_dict(merged["params"]["features"]["detector"])
    expected = traverse_util.flatten_dict(variables["params"])
    assert len(detector) > 10 and set(detector) <= set(expected)
    for key, value in detector.items():
        np.testing.assert_array_equal(value, expected[key], err_msg="/".join(key))
    constants = traverse_util.flatten_dict(merged["constants"]["features"]["detector"])
    expected = traverse_util.flatten_dict(variables["constants"])
    assert constants and set(constants) <= set(expected)  # frozen BN of the backbone
    for key, value in constants.items():
        np.testing.assert_array_equal(value, expected[key], err_msg="/".join(key))


def test_the_npz_of_a_checkpoint_gives_the_same_detector(tmp_path, sgb_pth):
    path = tmp_path / "model_final.npz"
    write_sgb_checkpoint(path, SYNTHETIC_CLASSES + 1)
    from_npz = relation.PixelInputs(_data(path))
    from_pth = relation.PixelInputs(_data(sgb_pth[0]))
    assert from_npz.detector == from_pth.detector
    a = traverse_util.flatten_dict(from_npz.pretrained_variables())
    b = traverse_util.flatten_dict(from_pth.pretrained_variables())
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_checkpoint_of_other_classes_is_refused_naming_file_and_field(tmp_path):
    path = tmp_path / "vg_detector.pth"
    write_sgb_checkpoint(path, 5)
    data = _data(path)
    with pytest.raises(ConfigError) as caught:
        relation.check_detector_classes(data, relation.load_splits(data)[1])
    assert str(caught.value) == (
        f"option 'detector_checkpoint': {path}: roi_heads.box.predictor.cls_score.weight has 5 "
        "classes (background included) but the synthetic vocabulary has 150 object classes + "
        "background = 151"
    )


def test_a_detector_workdir_of_other_classes_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"detector": {"num_classes": 7}, "flags": {}}))
    data = relation.DataConfig(
        dataset="synthetic", synthetic_images=20, feature_source="roi", detector_workdir=tmp_path
    )
    with pytest.raises(ConfigError, match=r"option 'detector_workdir': .*config.json: detector"):
        relation.check_detector_classes(data, relation.load_splits(data)[1])


def _not_a_detector(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "classifier":  # a torchvision-style ResNet state dict
        state = {"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}
        state["fc.weight"] = np.zeros((10, 8), np.float32)
        write_torch_zip(state, path)
    elif kind == "list":
        write_torch_zip([np.zeros(3, np.float32), 1], path)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "text":
        path.write_text("not a checkpoint")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("classifier", "field 'backbone.body.stem.conv1.weight': missing"),
        ("list", "holds a list, not a state dict"),
        ("zip", "not a PyTorch zip file: no <name>/data.pkl among its entries"),
        ("text", "not a PyTorch zip file"),
    ],
)
def test_a_file_that_is_not_a_detector_is_one_data_error(tmp_path, kind, message):
    path = _not_a_detector(tmp_path, kind)
    data = _data(path)
    with pytest.raises(DataError) as caught:
        relation.PixelInputs(data)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "options, option, message",
    [
        ({"detector_checkpoint": "/absent/model.pth"}, "detector_checkpoint", "does not exist"),
        ({"detector_checkpoint": "/absent/model.pkl"}, "detector_checkpoint", "must end in"),
        ({"detector_workdir": "/w"}, "detector_checkpoint", "not both"),
        ({"feature_source": "geometry"}, "detector_checkpoint", "feature_source=roi only"),
        ({"detector_checkpoint": None}, "detector_workdir", "or --detector_checkpoint is required"),
        ({"dataset": "synthetic_pixels"}, "dataset", "reads the images of a --detector_workdir"),
    ],
)
def test_detector_flags_are_checked_when_the_config_is_built(
    tmp_path, sgb_pth, options, option, message
):
    with pytest.raises(ConfigError) as caught:
        _data(sgb_pth[0], **options)
    assert str(caught.value).startswith(f"option '{option}': ")
    assert message in str(caught.value)


def test_the_experiment_checks_the_classes_before_building_anything(tmp_path):
    from experiments import ra_sgg as main
    from sgg_jax.projects.ra_sgg import experiment
    from tests.experiments import config_of

    path = tmp_path / "five.pth"
    write_sgb_checkpoint(path, 5)
    config = config_of(
        main,
        "--flagfile=experiments/flags/ra_sgg_smoke.flags",
        "--method=penet",
        "--dataset=synthetic",
        "--synthetic_images=20",
        "--task=sgcls",
        "--feature_source=roi",
        f"--detector_checkpoint={path}",
    )
    with pytest.raises(ConfigError, match="option 'detector_checkpoint': .*has 5 classes"):
        experiment.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_random_variables_round_trip_through_the_pth_writer(tmp_path):
    from sgg_jax.detection.detector import DetectorConfig

    config = DetectorConfig.tiny()
    variables = random_detector_variables(config, seed=4)
    path = tmp_path / "x.pth"
    write_torch_zip({"model": convert.to_maskrcnn_benchmark_detector(variables, config)}, path)
    converted = convert.convert_maskrcnn_benchmark_detector(convert.load_state_dict(path), config)
    for key, value in traverse_util.flatten_dict(variables).items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(converted)[key], value)
