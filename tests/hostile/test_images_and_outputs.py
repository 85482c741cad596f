"""Hostile images and outputs: huge pixel counts, unwritable output paths, an old torch."""

import json
import os
import struct
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from sgg_jax.data import fileio
from sgg_jax.data.image_io import DEFAULT_MAX_PIXELS, load_image
from sgg_jax.errors import ConfigError, DataError
from tests.experiments import EXPORT_SIDE, run_predict, write_tiny_sgdet_export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S = EXPORT_SIDE  # side of the test export's images


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` RGB pixels and whose data is a few bytes.

    Decoding it would fail ("truncated"), so a pixel-count error proves the header was checked
    before any decoding."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


def _photo(height, width, seed=0):
    """A photo-like image: smooth gradients, a few blobs and noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            128 + 100 * np.sin(xs / 300.0),
            128 + 100 * np.cos(ys / 250.0),
            128 + 80 * np.sin((xs + ys) / 400.0),
        ],
        axis=-1,
    )
    for _ in range(6):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(100, 600)
        image[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# 1. Pixel budget of image readers and drawings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,message",
    [
        (12000, 12000, "image of 12000x12000 = 144000000 pixels exceeds the limit of 50000000"),
        # Pillow's own decompression-bomb refusal (in Image.open) becomes the same DataError.
        (100000, 100000, "image of 10000000000 pixels exceeds the limit of 50000000"),
    ],
)
def test_huge_image_header_is_one_data_error_naming_the_file(tmp_path, width, height, message):
    path = _png_header_only(tmp_path / "huge.png", width, height)
    with pytest.raises(DataError) as caught:
        load_image(path)
    assert str(caught.value) == f"{path}: {message} pixels (option max_image_pixels)"
    assert caught.value.path == path
    assert "\n" not in str(caught.value)


def test_max_pixels_bound_is_inclusive(tmp_path):
    path = str(tmp_path / "small.png")
    Image.fromarray(np.full((10, 20, 3), 7, np.uint8)).save(path)
    assert load_image(path, max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(DataError, match="20x10 = 200 pixels exceeds the limit of 199 pixels"):
        load_image(path, max_pixels=199)
    with pytest.raises(ConfigError, match="option 'max_image_pixels'"):
        load_image(path, max_pixels=0)
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_image_batch_transform_applies_max_pixels(tmp_path):
    from sgg_jax.data.images import ImageBatchTransform
    from sgg_jax.structures import SceneGraph

    path = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    graph = SceneGraph(
        image_id="a",
        width=40,
        height=30,
        boxes=np.zeros((0, 4), np.float32),
        labels=np.zeros(0, np.int32),
        relations=np.zeros((0, 3), np.int32),
        image_path=path,
    )
    pixels, scale = ImageBatchTransform([graph], 16)._pixels(0)
    assert pixels.shape == (16, 16, 3) and scale == pytest.approx(0.4)
    with pytest.raises(DataError, match="40x30 = 1200 pixels exceeds the limit of 1199"):
        ImageBatchTransform([graph], 16, max_pixels=1199)._pixels(0)


def test_large_image_is_drawn_on_a_downscaled_copy():
    from sgg_jax.evaluation.viz import MAX_DRAWING_SIDE, draw_scene_graph

    image = np.full((1000, 3000, 3), 255, np.uint8)  # white
    # One box in the original pixels: x 1500..2400, y 200..800.
    out = draw_scene_graph(
        image, [[1500, 200, 2400, 800]], [1], ["a"], legend_width=100, max_side=600
    )
    assert out.shape == (200, 700, 3)  # 3000 -> 600 (factor 0.2), plus the legend
    # The box's left edge at x = 1500 * 0.2 = 300 is coloured; far from any box stays white.
    row = out[100, :600].astype(int)
    assert np.abs(row[298:303] - 255).sum() > 0
    assert (out[20:40, 20:200] == 255).all()
    # Default: the longer side is bounded by MAX_DRAWING_SIDE.
    wide = np.zeros((10, MAX_DRAWING_SIDE * 2, 3), np.uint8)
    assert draw_scene_graph(wide, [], [], legend_width=0).shape == (5, MAX_DRAWING_SIDE, 3)
    # Small images keep their integer enlargement.
    assert draw_scene_graph(np.zeros((64, 32, 3), np.uint8), [], [], legend_width=0).shape == (
        512,
        256,
        3,
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny random PE-Net SGDet export of one image (tests/experiments/__init__.py)."""
    return write_tiny_sgdet_export(tmp_path_factory.mktemp("export") / "export", batch_size=1)


@pytest.mark.parametrize("side", [12000, 100000])
def test_predict_refuses_a_huge_image_before_loading_or_writing(
    export_dir, tmp_path, capsys, monkeypatch, side
):
    from sgg_jax.train import export as export_module

    def no_load(path):
        raise AssertionError("the export was loaded before the images were checked")

    monkeypatch.setattr(export_module, "load_exported", no_load)
    image = _png_header_only(tmp_path / "huge.png", side, side)
    out = tmp_path / "out"
    assert run_predict(f"--export_dir={export_dir}", f"--images={image}", f"--out={out}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {image}: image of ")
    assert "exceeds the limit of 50000000 pixels (option max_image_pixels)" in err
    assert not out.exists()


def test_predict_max_image_pixels_flag(export_dir, tmp_path, capsys):
    image = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    common = (f"--export_dir={export_dir}", f"--images={image}", f"--out={out}")
    assert run_predict(*common, "--max_image_pixels=1199") == 2
    assert "40x30 = 1200 pixels exceeds the limit of 1199" in capsys.readouterr().err
    assert run_predict(*common, "--max_image_pixels=0") == 2
    assert "option 'max_image_pixels': must be a positive integer" in capsys.readouterr().err
    assert run_predict(*common, "--max_image_pixels=1200") == 0
    assert json.loads((out / "scene_graphs.json").read_text())["images"][0]["width"] == 40


@pytest.mark.e2e
def test_predict_peak_memory_on_a_12_megapixel_photo(export_dir, tmp_path):
    """The whole command on a 4000x3000 photo stays under 2 GiB resident (it went past 15 GB on
    a 12000x12000 image when the drawing was made at full resolution)."""
    image = str(tmp_path / "photo.jpg")
    Image.fromarray(_photo(3000, 4000)).save(image, quality=90)
    out = tmp_path / "out"
    wrapper = (
        "import resource, subprocess, sys\n"
        "status = subprocess.run(sys.argv[1:]).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(status)\n"
    )
    command = [sys.executable, "-m", "experiments.predict", f"--export_dir={export_dir}"]
    command += [f"--images={image}", f"--out={out}"]
    result = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    peak_kib = int(result.stdout.strip().splitlines()[-1])
    print(f"peak RSS of experiments.predict on a 4000x3000 photo: {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    drawing = Image.open(out / "photo_scene_graph.png")
    assert drawing.size == (2048 + 300, 1536)
    record = json.loads((out / "scene_graphs.json").read_text())["images"][0]
    assert (record["width"], record["height"]) == (4000, 3000)


# ----------------------------------------------------------------------------------------------
# 2. Unwritable outputs
# ----------------------------------------------------------------------------------------------


def test_check_writable_dir(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as caught:
        fileio.check_writable_dir(a_file, "workdir")
    assert str(caught.value) == f"option 'workdir': {a_file} exists and is not a folder"
    with pytest.raises(ConfigError, match=f"cannot be created: {a_file} exists and is not a"):
        fileio.check_writable_dir(a_file / "sub" / "dir", "out")
    with pytest.raises(ConfigError, match="option 'out': is required"):
        fileio.check_writable_dir("", "out")
    missing = tmp_path / "new" / "nested"
    assert fileio.check_writable_dir(missing, "out") == str(missing)
    assert not (tmp_path / "new").exists()  # nothing is created
    assert fileio.check_writable_dir(tmp_path, "out") == str(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError) as caught:
        fileio.check_writable_dir(missing, "out")
    assert (
        str(caught.value) == f"option 'out': {missing} is not writable ({tmp_path} is not writable)"
    )


def test_check_writable_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=f"option 'out': {tmp_path} is a folder, not a file"):
        fileio.check_writable_file(tmp_path, "out")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=f"cannot be written: {a_file} is not a folder"):
        fileio.check_writable_file(a_file / "aggregate.json", "out")
    assert fileio.check_writable_file(a_file, "out") == str(a_file)
    assert fileio.check_writable_file(tmp_path / "new" / "x.json", "out")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=f"{a_file} is not writable"):
        fileio.check_writable_file(a_file, "out")


def test_predict_out_that_is_a_file_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    from sgg_jax.experiment import predict as predict_lib

    def no_check(export_dir):
        raise AssertionError("the export was read before --out was checked")

    monkeypatch.setattr(predict_lib, "check_export", no_check)
    image = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    out.write_text("a file")
    assert run_predict("--export_dir=/nowhere", f"--images={image}", f"--out={out}") == 2
    assert capsys.readouterr().err == f"error: option 'out': {out} exists and is not a folder\n"


def _project_runs():
    from sgg_jax.experiment import relation
    from sgg_jax.projects.cce_scorer import experiment as cce
    from sgg_jax.projects.detector import experiment as detector
    from sgg_jax.projects.ra_sgg import experiment as ra_sgg
    from sgg_jax.projects.sg_embed import experiment as sg_embed

    return {
        "ra_sgg": (ra_sgg.run, ra_sgg.RASGGExperimentConfig, relation, "load_splits"),
        "cce_scorer": (cce.run, cce.CCEScorerExperimentConfig, relation, "load_splits"),
        "sg_embed": (sg_embed.run, sg_embed.SGEmbedExperimentConfig, sg_embed, "load_data"),
        "detector": (detector.run, detector.DetectorExperimentConfig, detector, "load_data"),
    }


@pytest.mark.parametrize("name", ["ra_sgg", "cce_scorer", "sg_embed", "detector"])
def test_workdir_that_is_a_file_is_refused_before_loading_data(name, tmp_path, monkeypatch):
    run, config_class, loader_module, loader = _project_runs()[name]

    def no_load(*args, **kwargs):
        raise AssertionError("data were loaded before --workdir was checked")

    monkeypatch.setattr(loader_module, loader, no_load)
    workdir = tmp_path / "workdir"
    workdir.write_text("a file")
    with pytest.raises(ConfigError) as caught:
        run(config_class(), str(workdir))
    assert str(caught.value) == f"option 'workdir': {workdir} exists and is not a folder"


def test_experiment_command_with_a_file_workdir_exits_2_with_one_line(tmp_path):
    workdir = tmp_path / "workdir"
    workdir.write_text("a file")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.ra_sgg", f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: option 'workdir': {workdir} exists and is not a folder\n"
    assert workdir.read_text() == "a file"


def test_evaluation_cli_checks_out_and_baseline_before_writing(tmp_path):
    def evaluate(*args):
        return subprocess.run(
            [sys.executable, "-m", "sgg_jax.evaluation", "--groundtruth=gqa200_mini:test", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    out_file = tmp_path / "out_file"
    out_file.write_text("x")
    result = evaluate("--predictions=/nowhere.npz", f"--out={out_file}")
    assert result.returncode == 2
    assert result.stderr == f"error: option 'out': {out_file} exists and is not a folder\n"
    out = tmp_path / "out"
    result = evaluate(
        "--predictions=/nowhere.npz", f"--out={out}", f"--baseline={tmp_path / 'none.json'}"
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'none.json'}: file not found\n"
    assert not out.exists()


def _seed_results(folder, seed, runs):
    folder.mkdir(parents=True)
    document = {"experiment": "x", "dataset": "d", "task": "predcls", "seed": seed, "runs": runs}
    (folder / "results.json").write_text(json.dumps(document))


def test_seeds_missing_baseline_and_bad_out_write_nothing(tmp_path, capsys):
    from sgg_jax.evaluation import seeds

    for seed in range(2):
        _seed_results(tmp_path / f"seed{seed}", seed, {"A": {"R@100": 0.5 + seed / 10}})
    assert seeds.main([str(tmp_path), "--baseline", "B"]) == 2
    assert capsys.readouterr().err == "error: field 'baseline': no run 'B' in every seed\n"
    assert not (tmp_path / "aggregate.json").exists()
    assert seeds.main([str(tmp_path), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: option 'out': {tmp_path} is a folder, not a file\n"
    assert not (tmp_path / "aggregate.json").exists()
    assert seeds.main([str(tmp_path), "--baseline", "A"]) == 0
    assert json.loads((tmp_path / "aggregate.json").read_text())["baseline"] == "A"


def test_data_prep_out_that_is_a_file_is_refused_before_reading(tmp_path, capsys):
    from data_prep import gqa200

    out = tmp_path / "out"
    out.write_text("x")
    status = gqa200.main(
        ["gqa200", "--split_json=train=/nowhere.json", "--id_info=/nowhere.json", f"--out={out}"]
    )
    assert status == 2
    assert capsys.readouterr().err == f"option 'out': {out} exists and is not a folder\n"


# ----------------------------------------------------------------------------------------------
# 3. torch.load of an old torch
# ----------------------------------------------------------------------------------------------


def _fake_torch(monkeypatch, version):
    calls = []
    fake = types.ModuleType("torch")
    fake.__version__ = version

    def fake_load(path, **kwargs):
        calls.append((path, kwargs))
        return {"model": {"w": np.ones((2, 3), np.float32)}}

    fake.load = fake_load
    monkeypatch.setitem(sys.modules, "torch", fake)
    return calls


@pytest.mark.parametrize("version", ["2.5.1", "2.5.1+cu121", "1.13.0", "2.6.0rc1", "2.6.0a0", "x"])
def test_old_torch_is_refused_before_loading(tmp_path, monkeypatch, version):
    from sgg_jax.detection import convert

    calls = _fake_torch(monkeypatch, version)
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not read")
    with pytest.raises(ConfigError) as caught:
        convert.load_state_dict(path)
    message = str(caught.value)
    assert message.startswith(f"option 'path': reading '{path}' needs torch >= 2.6.0")
    assert f"installed: torch {version};" in message
    assert "CVE-2025-32434" in message and "\n" not in message
    assert calls == []


@pytest.mark.parametrize("version", ["2.6.0", "2.6.0+cu124", "2.7.1", "2.10.0", "3.0"])
def test_safe_torch_loads(tmp_path, monkeypatch, version):
    from sgg_jax.detection import convert

    calls = _fake_torch(monkeypatch, version)
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not read")
    loaded = convert.load_state_dict(path)
    assert list(loaded) == ["w"]
    np.testing.assert_array_equal(loaded["w"], np.ones((2, 3), np.float32))
    assert calls == [(str(path), {"map_location": "cpu", "weights_only": True})]


@pytest.mark.parametrize("module_name", ["ra_sgg", "cce_scorer", "detector"])
def test_max_image_pixels_flag_of_the_experiments(module_name):
    import importlib

    from tests.experiments import config_error, config_of

    module = importlib.import_module(f"experiments.{module_name}")
    config = config_of(module, "--max_image_pixels=1234")
    data = getattr(config, "data", config)
    assert data.max_image_pixels == 1234
    assert config_of(module).__class__ is config.__class__
    assert getattr(config_of(module), "data", config_of(module)).max_image_pixels == 50_000_000
    error = config_error(module, "--max_image_pixels=0")
    assert str(error) == "option 'max_image_pixels': must be a positive integer, got 0"
