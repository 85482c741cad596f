"""The detector experiment runs end to end (smoke flags) and rejects bad flags in one line; the
relation experiment then runs SGDet from pixels on top of the smoke detector, and its export draws
scene graphs of images with experiments.predict (SGCls from pixels differs by the task flag only: its
pieces are covered by the model tests and experiments/flags/penet_synthetic_sgcls.flags)."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


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
    assert [m["step"] for m in losses] == [3, 6]
    assert all(math.isfinite(m["total"]) for m in losses)
    assert (tmp_path / "results.md").read_text().count("| chance") == 2
    assert (tmp_path / "plots" / "detections_0.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
    assert len(list((tmp_path / "images").glob("*.png"))) == sum(results["data"]["images"].values())


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--learning_rate=-0.1", "error: option 'learning_rate': must be positive, got -0.1"),
        (
            "--preset=resnet9000",
            "error: option 'preset': must be one of ('tiny', 'resnet50_fpn', 'resnext101_fpn', "
            "'vgg16'), got 'resnet9000'",
        ),
        (
            "--num_classes=151",
            "error: option 'num_classes': must be <= 150 (VG150 classes), got 151",
        ),
    ],
)
def test_bad_flags_exit_2_in_one_line(tmp_path, flag, message):
    result = _run(
        "--flagfile=experiments/flags/detector_smoke.flags", f"--workdir={tmp_path}", flag
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines == [message]
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
    # The frozen detector kept its pretrained weights: compare one leaf with the detector's run.
    from sgg_jax.train.checkpoint import Checkpointer

    with Checkpointer(str(detector_workdir), read_only=True) as checkpointer:
        detector = checkpointer.restore_variables()
    with Checkpointer(str(workdir), read_only=True) as checkpointer:
        relation = checkpointer.restore_variables()
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
