"""The detector experiment runs end to end (smoke flags) and rejects bad flags in one line; the
relation experiment then runs SGDet from pixels on top of the smoke detector, and its export draws
scene graphs of images with experiments.predict (SGCls from pixels differs by the task flag only: its
pieces are covered by the model tests and experiments/flags/penet_synthetic_sgcls.flags). A pixel
run killed after a checkpoint resumes with the frozen detector re-merged from its source, and
SGCls runs with a Scene-Graph-Benchmark ``.pth`` as its detector (``--detector_checkpoint``); RA-SGG
and the CCE + Scorer experiment run from pixels on the same smoke detector."""

import json
import math
import subprocess
import sys

import pytest

from experiments import detector
from sgg_jax.projects.detector.experiment import DetectorExperimentConfig
from tests.experiments import ROOT, config_error, config_of, error_line, parse_flags


def _run(*flags, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "experiments.detector", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def detector_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("detector_smoke")
    result = _run("--flagfile=experiments/flags/detector_smoke.flags", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


@pytest.mark.e2e
def test_smoke_run_writes_results(detector_workdir):
    tmp_path = detector_workdir
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["experiment"] == "detector"
    assert results["dataset"] == "synthetic"
    runs = results["runs"]
    assert set(runs) == {
        "Faster R-CNN (tiny)",
        "chance: random boxes",
        "chance: GT boxes, random labels",
    }
    for row in runs.values():
        assert math.isfinite(row["mAP@0.5"]) and 0.0 <= row["mAP@0.5"] <= 1.0
    assert len(results["data"]["classes"]) == 5
    assert results["timing"]["steps"] == 6
    losses = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["kind"]) for m in losses] == [(3, "train"), (6, "train")]
    assert all(math.isfinite(m["loss"]) for m in losses)
    # The total is the sum of the four loss terms; results.json repeats the last step's values.
    terms = ("box_classifier", "box_regression", "rpn_box", "rpn_objectness")
    for m in losses:
        assert m["loss"] == pytest.approx(sum(m[f"loss/{t}"] for t in terms), rel=1e-5)
    last = results["last_train_metrics"]
    assert last["total"] == losses[-1]["loss"] and last["grad_norm"] == losses[-1]["grad_norm"]
    # Cosine schedule: warm-up from 0.1 x 1e-3 over 2 updates, then cosine to 1e-5 at update 6;
    # update 3 (t = 2) is the peak, update 6 (t = 5) is 1e-5 + (1e-3 - 1e-5) * (1 + cos(3 pi / 4)) / 2.
    assert losses[0]["learning_rate"] == pytest.approx(1e-3, rel=1e-6)
    expected = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(3 * math.pi / 4)) / 2
    assert losses[1]["learning_rate"] == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "results.md").read_text().count("| chance") == 2
    assert (tmp_path / "plots" / "detections_0.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
    assert len(list((tmp_path / "images").glob("*.png"))) == sum(results["data"]["images"].values())


@pytest.mark.e2e
def test_run_killed_after_a_checkpoint_resumes_to_the_same_parameters(detector_workdir, tmp_path):
    import shutil

    import numpy as np

    from sgg_jax.train.checkpoint import Checkpointer

    # The smoke run as if it had died after checkpoint 3: checkpoint 6 and the results are gone
    # (metrics.jsonl still has the record of step 6, which the resumed run must replace).
    resumed = tmp_path / "resumed"
    shutil.copytree(detector_workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    for name in ("results.json", "results.md"):
        (resumed / name).unlink()
    result = _run("--flagfile=experiments/flags/detector_smoke.flags", f"--workdir={resumed}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from checkpoint 3" in result.stdout
    results = json.loads((resumed / "results.json").read_text())
    reference = json.loads((detector_workdir / "results.json").read_text())
    assert results["timing"]["steps"] == 3
    assert results["runs"] == reference["runs"]
    assert results["last_train_metrics"] == reference["last_train_metrics"]

    def variables(workdir):
        with Checkpointer(str(workdir), read_only=True) as checkpointer:
            assert checkpointer.steps == [3, 6]
            return checkpointer.restore_variables(6)

    import jax

    for got, expected in zip(
        jax.tree.leaves(variables(resumed)),
        jax.tree.leaves(variables(detector_workdir)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))

    def records(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
            for line in lines
        ]

    assert records(resumed) == records(detector_workdir)


# Bad flags, checked in-process: the config raises a ConfigError naming the flag, with the line the
# main prints (``error: <message>``); the main's exit status and stderr are checked once below.
BAD_FLAGS = [
    ("--learning_rate=-0.1", "learning_rate", "must be positive, got -0.1"),
    (
        "--preset=resnet9000",
        "preset",
        "must be one of ('tiny', 'resnet50_fpn', 'resnext101_fpn', 'vgg16'), got 'resnet9000'",
    ),
    ("--num_classes=151", "num_classes", "must be <= 150 (VG150 classes), got 151"),
    ("--num_classes=-1", "num_classes", "must be >= 0, got -1"),
    ("--image_size=16", "image_size", "must be >= 32, got 16"),
    ("--synthetic_images=5", "synthetic_images", "must be >= 10, got 5"),
    ("--batch_size=0", "batch_size", "must be positive, got 0"),
    ("--keep_checkpoints=0", "keep_checkpoints", "must be positive, got 0"),
    ("--weight_decay=nan", "weight_decay", "must be a finite number >= 0, got nan"),
    ("--clip_norm=-1", "clip_norm", "must be a finite number >= 0, got -1.0"),
    # The detector and optimizer configs check their own fields, also before any data.
    ("--fpn_channels=0", "fpn_channels", "must be a positive integer, got 0"),
    ("--score_thresh=2", "score_thresh", "must be a number in [0, 1], got 2.0"),
    ("--momentum=1.0", "momentum", "must be in [0, 1), got 1.0"),
]


@pytest.mark.parametrize("flag, option, message", BAD_FLAGS)
def test_bad_flag_is_a_config_error_naming_it(flag, option, message):
    error = config_error(detector, "--flagfile=experiments/flags/detector_smoke.flags", flag)
    assert error.option == option
    assert error_line(error) == f"error: option '{option}': {message}"


def test_smoke_flagfile_config_lists_every_flag_in_order():
    config = config_of(detector, "--flagfile=experiments/flags/detector_smoke.flags")
    assert isinstance(config, DetectorExperimentConfig)
    assert (config.num_classes, config.image_size, config.num_steps) == (5, 64, 6)
    assert config.fast_compile and config.detections_per_image == 6
    # config.json's "flags" (read back by the relation experiments' --detector_workdir): the
    # workdir, then every other flag in definition order.
    flag_values = parse_flags(detector)
    names = [flag.name for flag in flag_values.flags_by_module_dict()[detector.__name__]]
    assert list(config.flag_values("/w")) == names
    assert config.flag_values("/w")["workdir"] == "/w"


def test_bad_flag_exits_2_in_one_line_before_any_data(tmp_path):
    result = _run(
        "--flagfile=experiments/flags/detector_smoke.flags",
        f"--workdir={tmp_path}",
        "--learning_rate=-0.1",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: option 'learning_rate': must be positive, got -0.1"]
    assert not (tmp_path / "images").exists()  # nothing generated, nothing compiled


def _relation_run(*flags, module="experiments.ra_sgg", timeout=300):
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.e2e
def test_sgdet_from_pixels_end_to_end_then_predict_on_images(detector_workdir, tmp_path):
    workdir = tmp_path / "sgdet"
    result = _relation_run(
        "--flagfile=experiments/flags/penet_pixels_smoke.flags",
        f"--detector_workdir={detector_workdir}",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "sgdet" and results["dataset"] == "synthetic_pixels"
    penet = results["runs"]["PE-Net"]
    for key in ("R@20", "R@100", "mR@100", "ngR@100"):
        assert math.isfinite(penet[key]) and 0.0 <= penet[key] <= 1.0
    test_images = results["runs"]["FREQ (predcls)"]["num_images_evaluated"]
    assert penet["num_images_evaluated"] + penet["num_images_skipped_no_gt"] >= test_images
    # The frozen detector kept its pretrained weights: compare one leaf of the (self-contained)
    # export with the detector's run. The periodic checkpoints leave the frozen detector out and
    # record its source instead.
    from sgg_jax.train.checkpoint import Checkpointer
    from sgg_jax.train.export import restore_variables

    with Checkpointer(str(detector_workdir), read_only=True) as checkpointer:
        detector = checkpointer.restore_variables()
    with Checkpointer(str(workdir), read_only=True) as checkpointer:
        stored = checkpointer.restore_variables()
        reference = checkpointer.external_reference()
    assert "detector" not in stored["params"]["features"]
    assert reference["source"] == {"detector_workdir": str(detector_workdir)}
    relation = restore_variables(workdir / "export" / "params")
    import numpy as np

    np.testing.assert_array_equal(
        relation["params"]["features"]["detector"]["fc7"]["kernel"],
        detector["params"]["fc7"]["kernel"],
    )
    config = json.loads((workdir / "export" / "config.json").read_text())
    assert config["image_transform"]["image_size"] == 64
    assert config["vocab"]["object_names"][0] == "__background__"
    # The export draws scene graphs of images (one of the rendered test images, enlarged 2x).
    from PIL import Image

    image = sorted((detector_workdir / "images").glob("*.png"))[0]
    big = tmp_path / "big.png"
    Image.open(image).resize((128, 128)).save(big)
    out = tmp_path / "predictions"
    result = _relation_run(
        f"--export_dir={workdir / 'export'}",
        f"--images={big}",
        f"--out={out}",
        "--score_thresh=0",
        module="experiments.predict",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    graphs = json.loads((out / "scene_graphs.json").read_text())["images"]
    assert len(graphs) == 1 and graphs[0]["width"] == 128
    objects = graphs[0]["objects"]
    assert 0 < len(objects) <= 6  # the smoke detector keeps 6 detections
    for item in objects:
        x1, y1, x2, y2 = item["box"]
        assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 128
        assert item["label"] in config["vocab"]["object_names"][1:]
    assert (out / "big_scene_graph.png").stat().st_size > 0
    assert (out / "big_graph.png").stat().st_size > 0


@pytest.mark.e2e
def test_pixel_run_killed_after_a_checkpoint_resumes_with_the_detector_re_merged(
    detector_workdir, tmp_path
):
    import shutil

    import jax
    import numpy as np

    from sgg_jax.train.checkpoint import Checkpointer

    flags = (
        "--flagfile=experiments/flags/penet_pixels_smoke.flags",
        f"--detector_workdir={detector_workdir}",
        "--task=sgcls",
        "--checkpoint_every=2",
    )
    whole = tmp_path / "whole"
    result = _relation_run(*flags, f"--workdir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]
    # As if killed after checkpoint 2: checkpoint 4, the results and the export are gone.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    shutil.rmtree(resumed / "export")
    (resumed / "results.json").unlink()
    result = _relation_run(*flags, f"--workdir={resumed}")
    assert result.returncode == 0, result.stderr[-3000:]

    def stored(workdir):
        with Checkpointer(str(workdir), read_only=True) as checkpointer:
            assert checkpointer.steps == [2, 4]
            reference = checkpointer.external_reference(4)
            return checkpointer.restore_variables(4), reference

    (got, got_reference), (expected, expected_reference) = stored(resumed), stored(whole)
    assert "detector" not in got["params"]["features"]  # left out, recorded by its digest
    assert got_reference == expected_reference
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    results = json.loads((resumed / "results.json").read_text())
    assert results["runs"] == json.loads((whole / "results.json").read_text())["runs"]


@pytest.mark.e2e
def test_sgcls_from_an_sgb_checkpoint_on_a_data_prep_dataset(detector_workdir, tmp_path):
    """A Scene-Graph-Benchmark ``.pth`` (tiny, random weights, torch's zip format) as the detector
    of a PE-Net SGCls run on a data_prep dataset of the smoke run's images: the SGB convention
    (BGR, 600 / 1000 resize) end to end, the file's path and sha256 in the run config."""
    import hashlib

    from data_prep import common as prep
    from sgg_jax.data.validation import ReadReport
    from sgg_jax.experiment import relation
    from tests.detection import write_sgb_checkpoint

    data = relation.DataConfig(
        dataset="synthetic_pixels", feature_source="roi", detector_workdir=str(detector_workdir)
    )
    splits, vocab = relation.load_splits(data)

    class Pixels(prep.SceneGraphBuilder, skip_registration=True):
        name = "pixels"

        def _read_splits(self):
            return {name: (list(graphs), ReadReport()) for name, graphs in splits.items()}, vocab

    prep.prepare(Pixels, tmp_path / "tfds", {}, verify=False)
    checkpoint = tmp_path / "model_final.pth"
    write_sgb_checkpoint(checkpoint, vocab.num_classes + 1)
    workdir = tmp_path / "sgcls"
    result = _relation_run(
        "--flagfile=experiments/flags/penet_pixels_smoke.flags",
        "--dataset=tfds",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        "--tfds_name=pixels",
        "--detector_workdir=",
        f"--detector_checkpoint={checkpoint}",
        "--task=sgcls",
        "--num_steps=2",
        "--checkpoint_every=1",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["detector_checkpoint"] == str(checkpoint)
    assert (
        config["detector_checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    )
    from sgg_jax.train.checkpoint import Checkpointer

    with Checkpointer(str(workdir), read_only=True) as checkpointer:
        assert checkpointer.steps == [1, 2]
        reference = checkpointer.external_reference(1)
        assert "detector" not in checkpointer.restore_variables(1)["params"]["features"]
    assert reference["source"] == {
        key: config[key] for key in ("detector_checkpoint", "detector_checkpoint_sha256")
    }
    export = json.loads((workdir / "export" / "config.json").read_text())
    assert export["image_transform"]["image_size"] == 1000 and export["image_transform"]["bgr"]
    penet = json.loads((workdir / "results.json").read_text())["runs"]["PE-Net"]
    assert 0.0 <= penet["R@100"] <= 1.0


@pytest.mark.e2e
@pytest.mark.parametrize("task", ["sgcls", "sgdet"])
def test_ra_sgg_from_pixels_end_to_end(detector_workdir, tmp_path, task):
    """RA-SGG (phase 1, memory bank from the RoI features, phase 2) through the CLI on the smoke
    detector. In SGDet its 6-update detector matches no ground-truth relation, so the bank is empty
    and phase 2 keeps the one-hot targets (tests/projects/ra_sgg/test_pixels.py covers a filled
    SGDet bank); in SGCls every training relation is in the bank."""
    workdir = tmp_path / task
    result = _relation_run(
        "--flagfile=experiments/flags/penet_pixels_smoke.flags",
        f"--detector_workdir={detector_workdir}",
        f"--workdir={workdir}",
        f"--task={task}",
        "--method=ra_sgg",
        "--phase2_steps=2",
        "--num_neighbours=4",
        "--noexport",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == task and results["dataset"] == "synthetic_pixels"
    for row in ("PE-Net", "RA-SGG"):
        assert 0.0 <= results["runs"][row]["R@100"] <= 1.0
    bank_size = results["ra_sgg"]["bank_sizes"]["full"]
    if task == "sgcls":
        assert bank_size == 5  # the smoke split's 5 training relations
        augmentation = results["ra_sgg"]["augmentation"]["RA-SGG"]
        assert augmentation["foreground_relations"] > 0
    else:
        assert bank_size >= 0 and "memory bank" in result.stdout
    assert (workdir / "phase2" / "metrics.jsonl").stat().st_size > 0


@pytest.mark.e2e
def test_cce_scorer_sgdet_from_pixels_on_both_base_models(detector_workdir, tmp_path):
    # CE and +CCE+Scorer of MotifNet and PE-Net on the smoke detector's detections (SGCls and
    # PredCls differ by --task only; the pieces are covered by tests/projects/cce_scorer).
    workdir = tmp_path / "cce_scorer"
    result = _relation_run(
        "--flagfile=experiments/flags/cce_scorer_pixels_smoke.flags",
        f"--detector_workdir={detector_workdir}",
        f"--workdir={workdir}",
        module="experiments.cce_scorer",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "sgdet" and results["dataset"] == "synthetic_pixels"
    expected = {
        f"{base}/{row}"
        for base in ("motifs", "penet")
        for row in ("ce", "cce_scorer", "cce_scorer/scorer_x_predicate")
    }
    assert set(results["runs"]) == expected
    for metrics in results["runs"].values():
        for key in ("R@20", "R@100", "mR@100", "ngR@100"):
            assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0
        assert metrics["num_images_evaluated"] + metrics["num_images_skipped_no_gt"] == 4
    assert results["cce_scorer"]["train_confusion"] == {}  # no confusion on detection pairs
    # Every row kept the pretrained detector frozen: its checkpoints leave it out, recorded by
    # the detector run it is re-merged from (checked by its digest on resume).
    from sgg_jax.train.checkpoint import Checkpointer

    for row in ("motifs/ce", "penet/cce_scorer"):
        with Checkpointer(str(workdir / row), read_only=True) as checkpointer:
            step = checkpointer.latest_step()
            relation = checkpointer.restore_variables(step)
            reference = checkpointer.external_reference(step)
        assert "detector" not in relation["params"]["base"]["features"]
        assert reference["source"] == {"detector_workdir": str(detector_workdir)}
    assert "scorer" in relation["params"]
