"""experiments.predict: scene graphs of user images from a real (tiny, random) SGDet export."""

import json
import os
import shutil

import numpy as np
import pytest
from absl import flags
from PIL import Image

from experiments import predict
from tests.experiments import (
    EXPORT_OBJECT_NAMES,
    EXPORT_PREDICATE_NAMES,
    EXPORT_SIDE,
    config_error,
    config_of,
    write_tiny_sgdet_export,
)
from tests.experiments import run_predict as _main

S = EXPORT_SIDE
OBJECT_NAMES = EXPORT_OBJECT_NAMES
PREDICATE_NAMES = EXPORT_PREDICATE_NAMES
TOP_K = 5
THRESH = 0.3


def _png(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return write_tiny_sgdet_export(tmp_path_factory.mktemp("export") / "export", batch_size=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three images (two sharing the stem ``big``): 300x200 RGB, 48x40 grey, 100x150 JPEG."""
    tmp = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (tmp / "sub").mkdir()
    paths = [str(tmp / "big.png"), str(tmp / "gray.png"), str(tmp / "sub" / "big.jpg")]
    ys, xs = np.mgrid[0:200, 0:300]
    big = np.stack([xs % 256, ys, (xs + ys) % 256], axis=-1).astype(np.uint8)
    big[60:140, 100:220] = (220, 40, 40)
    Image.fromarray(big).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8), mode="L").save(paths[1])
    Image.fromarray(rng.integers(0, 256, (150, 100, 3), dtype=np.uint8)).save(paths[2])
    return paths


@pytest.fixture(scope="module")
def predicted(export_dir, images, tmp_path_factory):
    """One CLI run over the three images, with the raw model outputs recorded."""
    from sgg_jax.train import export as export_module

    out = tmp_path_factory.mktemp("run") / "out"
    raw = []
    real_load = export_module.load_exported

    def recording_load(path):
        predictor = real_load(path)

        class Recorder:
            budgets = predictor.budgets

            def __call__(self, inputs):
                outputs = predictor(inputs)
                raw.append(({k: np.asarray(v) for k, v in inputs.items()}, outputs))
                return outputs

        return Recorder()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "load_exported", recording_load)
        code = _main(
            f"--export_dir={export_dir}",
            f"--images={','.join(images)}",
            f"--out={out}",
            f"--top_k={TOP_K}",
            f"--score_thresh={THRESH}",
        )
    assert code == 0
    result = json.loads((out / "scene_graphs.json").read_text())
    rows = []  # per image: (inputs, outputs, row)
    for inputs, outputs in raw:
        outputs = {k: np.asarray(v) for k, v in outputs.items()}
        for row in range(int(inputs["object_mask"][:, 0].sum())):
            rows.append((inputs, outputs, row))
    return out, result, raw, rows


def test_batches_are_the_export_budget_with_a_padded_last_batch(predicted):
    _, _, raw, rows = predicted
    assert len(raw) == 2 and len(rows) == 3  # B = 2: [big, gray], [big.jpg, padding]
    for inputs, _ in raw:
        assert inputs["images"].shape == (2, S, S, 3)
        assert inputs["boxes"].shape == (2, 1, 4) and inputs["pairs"].shape == (2, 1, 2)
        assert not inputs["pair_mask"].any()
    last = raw[1][0]
    assert last["object_mask"].tolist() == [[True], [False]]
    assert not last["images"][1].any()
    # big.png 300x200 -> 64x43 (round(200 * 64 / 300)); gray 48x40 -> 64x53; big.jpg 100x150 -> 43x64
    assert raw[0][0]["image_size"].tolist() == [[43, 64], [53, 64]]
    assert last["image_size"][0].tolist() == [64, 43]
    # normalised pixels in the resized region, zeros in the padding (as in training)
    first = raw[0][0]["images"][0]
    assert not first[43:].any() and first[:43].std() > 0.1


def test_json_schema_and_values(predicted, export_dir, images):
    _, result, _, rows = predicted
    assert result["export_dir"] == export_dir
    assert [r["path"] for r in result["images"]] == images
    sizes = [(300, 200), (48, 40), (100, 150)]
    total_objects = 0
    for record, (width, height), (_, outputs, row) in zip(
        result["images"], sizes, rows, strict=True
    ):
        assert (record["width"], record["height"]) == (width, height)
        mask = outputs["object_mask"][row] & (outputs["object_scores"][row] >= THRESH)
        kept = np.flatnonzero(mask)
        objects = record["objects"]
        assert len(objects) == int(mask.sum())
        total_objects += len(objects)
        scale = S / max(width, height)
        for index, (obj, d) in enumerate(zip(objects, kept, strict=True)):
            assert set(obj) == {
                "index",
                "box",
                "label",
                "label_id",
                "score",
                "detector_label",
                "detector_score",
            }
            assert obj["index"] == index
            assert obj["label_id"] == int(outputs["object_labels"][row, d])
            assert obj["label"] == OBJECT_NAMES[obj["label_id"]]
            assert obj["score"] == pytest.approx(float(outputs["object_scores"][row, d]))
            assert obj["score"] >= THRESH
            assert obj["detector_label"] == OBJECT_NAMES[int(outputs["detection_labels"][row, d])]
            assert obj["detector_score"] == pytest.approx(
                float(outputs["detection_scores"][row, d])
            )
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            expected = np.clip(outputs["boxes"][row, d] / scale, 0, [width, height] * 2)
            np.testing.assert_allclose(obj["box"], expected, atol=0.02)
        if width == 300 and objects:  # larger than S: boxes come back in the original pixels
            assert max(max(o["box"]) for o in objects) > S

        relations = record["relations"]
        pairs = outputs["pairs"][row][outputs["pair_mask"][row]]
        candidates = int(np.isin(pairs, kept).all(axis=1).sum())
        assert len(relations) == min(TOP_K, candidates)
        scores = [r["score"] for r in relations]
        assert scores == sorted(scores, reverse=True)
        for relation in relations:
            assert set(relation) == {
                "subject",
                "object",
                "predicate",
                "predicate_id",
                "score",
                "text",
            }
            s, o = relation["subject"], relation["object"]
            assert 0 <= s < len(objects) and 0 <= o < len(objects) and s != o
            assert relation["predicate"] == PREDICATE_NAMES[relation["predicate_id"]]
            assert relation["text"] == " ".join(
                (objects[s]["label"], relation["predicate"], objects[o]["label"])
            )
            # the score is the evaluator's: best predicate x subject score x object score
            q = np.flatnonzero(
                (outputs["pairs"][row] == [kept[s], kept[o]]).all(axis=1)
                & outputs["pair_mask"][row]
            )[0]
            predicate_scores = outputs["predicate_scores"][row, q]
            assert relation["predicate_id"] == 1 + int(np.argmax(predicate_scores[1:]))
            assert relation["score"] == pytest.approx(
                float(predicate_scores[1:].max()) * objects[s]["score"] * objects[o]["score"],
                rel=1e-5,
            )
    assert total_objects > 0  # the checks above are not vacuous


def test_pngs_per_image_with_unique_stems(predicted):
    out, result, _, _ = predicted
    names = sorted(os.listdir(out))
    assert names == sorted(
        ["scene_graphs.json"]
        + [
            f"{stem}_{kind}.png"
            for stem in ("big", "gray", "big_1")
            for kind in ("scene_graph", "graph")
        ]
    )
    for stem, record in zip(("big", "gray", "big_1"), result["images"], strict=True):
        drawing = _png(out / f"{stem}_scene_graph.png")
        height, width = record["height"], record["width"]
        assert drawing.shape[0] % height == 0  # the image enlarged by an integer factor
        factor = drawing.shape[0] // height
        assert factor >= 1 and drawing.shape[1] > factor * width  # + the legend panel
        assert _png(out / f"{stem}_graph.png").shape == (640, 640, 3)


def test_no_object_above_threshold_gives_an_empty_graph(export_dir, images, tmp_path, capsys):
    code = _main(
        f"--export_dir={export_dir}",
        f"--images={images[1]}",
        f"--out={tmp_path / 'out'}",
        "--score_thresh=1.01",
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{images[1]}: 0 objects, 0 relations, top: -")
    assert lines[-1].startswith(f"wrote {tmp_path / 'out' / 'scene_graphs.json'}")
    # nothing above the threshold: an empty graph, and the image still drawn, without boxes
    result = json.loads((tmp_path / "out" / "scene_graphs.json").read_text())
    assert result["images"][0]["objects"] == [] and result["images"][0]["relations"] == []
    drawing = _png(tmp_path / "out" / "gray_scene_graph.png")
    original = np.asarray(Image.open(images[1]).convert("RGB"))
    factor = drawing.shape[0] // original.shape[0]
    enlarged = np.repeat(np.repeat(original, factor, 0), factor, 1)
    np.testing.assert_array_equal(drawing[:, : enlarged.shape[1]], enlarged)
    assert (tmp_path / "out" / "gray_graph.png").exists()


@pytest.mark.parametrize("kind", ["text", "missing", "empty"])
def test_bad_image_exits_2_naming_the_file_before_writing(
    kind, export_dir, images, tmp_path, capsys
):
    bad = tmp_path / "bad.jpg"
    if kind == "text":
        bad.write_text("this is not a JPEG\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    out = tmp_path / "out"
    code = _main(f"--export_dir={export_dir}", f"--images={images[0]},{bad}", f"--out={out}")
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), captured.err
    assert "Traceback" not in captured.err
    assert not out.exists()  # every image is checked before anything is written


def test_bad_export_dir_exits_2_naming_it(tmp_path, images, capsys):
    empty = tmp_path / "not_an_export"
    empty.mkdir()
    code = _main(f"--export_dir={empty}", f"--images={images[0]}", f"--out={tmp_path / 'out'}")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: option 'export_dir': {empty}: no manifest.json (not an sgg_jax export folder)"
    ]
    assert not (tmp_path / "out").exists()


def test_non_sgdet_export_is_refused(export_dir, images, tmp_path, capsys):
    other = tmp_path / "predcls_export"
    shutil.copytree(export_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "task": "predcls"}))
    code = _main(f"--export_dir={other}", f"--images={images[0]}", f"--out={tmp_path / 'out'}")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(other) in err[0] and "'sgdet'" in err[0]


def test_bad_flag_exits_2(export_dir, images, tmp_path, capsys):
    code = _main(
        f"--export_dir={export_dir}", f"--images={images[0]}", f"--out={tmp_path}", "--top_k=-1"
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: option 'top_k': must be >= 0, got -1"


@pytest.mark.parametrize(
    "args, option, message",
    [
        (("--images=a.png", "--out=o"), "export_dir", "is required"),
        (("--export_dir=e", "--out=o"), "images", "at least one image file is required"),
        (("--export_dir=e", "--images=a.png"), "out", "is required"),
        (
            ("--export_dir=e", "--images=a.png", "--out=o", "--top_k=-1"),
            "top_k",
            "must be >= 0, got -1",
        ),
        (
            ("--export_dir=e", "--images=a.png", "--out=o", "--score_thresh=nan"),
            "score_thresh",
            "must be a finite number, got nan",
        ),
        (
            ("--export_dir=e", "--images=a.png", "--out=o", "--batch_size=0"),
            "batch_size",
            "must be >= 1, got 0",
        ),
    ],
)
def test_bad_flag_is_a_config_error_naming_it(args, option, message):
    error = config_error(predict, *args)
    assert error.option == option
    assert str(error) == f"option '{option}': {message}"


def test_positional_words_after_images_are_more_images():
    from sgg_jax.experiment.predict import PredictConfig

    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    argv = flag_values(["predict", "--export_dir=e", "--out=o", "--images", "a.png", "b.jpg"])
    config = predict.config_from_flags(flag_values, argv[1:])
    assert config == PredictConfig(export_dir="e", images=("a.png", "b.jpg"), out="o")
    assert config_of(predict, "--export_dir=e", "--out=o", "--images=a.png,b.jpg") == config
