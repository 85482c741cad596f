"""``data_prep.extract_features`` on a tiny detector run: resume after an interruption, bad images,
then a relation training run on the store through the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_prep import extract_features
from sgg_jax.data import feature_store, pipeline
from sgg_jax.data.image_io import write_png
from sgg_jax.experiment import relation
from sgg_jax.relation.features import RoIFeatures
from tests.experiments import run_ra_sgg
from tests.experiments.test_detector_experiment import detector_workdir  # noqa: F401 (fixture)


def _extract_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_prep.extract_features", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
def test_extract_resume_bad_images_and_train_on_the_store(detector_workdir, tmp_path):  # noqa: F811
    data = relation.DataConfig(
        dataset="synthetic_pixels",
        detector_workdir=str(detector_workdir),
        feature_source="roi",
        eval_batch_size=4,
    )
    # A run killed after its first shard resumes: the finished shard is skipped, the store equals
    # an uninterrupted run's.
    with pytest.raises(KeyboardInterrupt):
        extract_features.extract(
            data, str(tmp_path / "a"), shard_images=8, interrupt_after=8, progress=False
        )
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert not manifest["complete"]
    resumed = extract_features.extract(data, str(tmp_path / "a"), shard_images=8, progress=False)
    assert resumed["skipped"] == 1 and resumed["written"] >= 2 and resumed["bad"] == []
    clean = extract_features.extract(data, str(tmp_path / "b"), shard_images=8, progress=False)
    assert clean["skipped"] == 0
    a, b = feature_store.open_store(tmp_path / "a"), feature_store.open_store(tmp_path / "b")
    splits, _ = relation.load_splits(data)
    graphs = [g for split in splits.values() for g in split]
    assert len(a) == len(graphs) == len(b)
    for graph in graphs:
        assert a[graph.image_id].shape == (graph.num_objects, 32)
        np.testing.assert_array_equal(a[graph.image_id], b[graph.image_id])
    assert np.abs(np.asarray(a[graphs[0].image_id], np.float32)).sum() > 0
    # The stored rows are the object features the roi source computes (RoIFeatures, fc7).
    pixels = relation.PixelInputs(data)
    some = list(splits["train"][:4])
    config = pipeline.PipelineConfig.evaluation(4, 8, 56, read_threads=0)
    batch = pixels.transform(some)(None, 0, next(iter(pipeline.make_loader(some, config))))[0]
    module = RoIFeatures(pixels.detector, union_dim=8, hidden_dim=8)
    variables = module.init(jax.random.PRNGKey(0), batch)
    merged = pixels.merge_detector({k: {"features": v} for k, v in variables.items()})
    roi, _ = module.apply({k: v["features"] for k, v in merged.items()}, batch)
    for row, graph in enumerate(some):
        expected = np.asarray(roi)[row, : graph.num_objects]
        np.testing.assert_allclose(a[graph.image_id], expected, rtol=1e-2, atol=1e-2)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["complete"]

    # Bad images: listed one line each and in the manifest, the rest written, exit status 1.
    broken = tmp_path / "broken_detector"
    shutil.copytree(detector_workdir, broken)
    images = sorted((broken / "images").glob("*.png"))
    images[0].write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    write_png(images[1], np.zeros((32, 48, 3), np.uint8))  # another size than annotated
    result = _extract_cli(
        "--dataset=synthetic_pixels",
        f"--detector_workdir={broken}",
        f"--out={tmp_path / 'c'}",
        "--shard_images=16",
        "--eval_batch_size=4",
    )
    assert result.returncode == 1, result.stderr[-2000:]
    bad_lines = [line for line in result.stderr.splitlines() if line.startswith("bad image: ")]
    assert len(bad_lines) == 2 and any(f"{images[1]}: field 'width'" in x for x in bad_lines)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert sorted(b["path"] for b in manifest["bad_images"]) == sorted(map(str, images[:2]))
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 images skipped")

    # Training reads the clean store through the real CLI (precomputed features).
    train = run_ra_sgg(
        "--flagfile=experiments/flags/smoke.flags",
        f"--workdir={tmp_path / 'train'}",
        "--dataset=synthetic_pixels",
        f"--detector_workdir={detector_workdir}",
        "--feature_source=precomputed",
        f"--object_features={tmp_path / 'b'}",
        "--num_steps=4",
        "--checkpoint_every=0",
        "--noexport",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    assert results["dataset"] == "synthetic_pixels" and "PE-Net" in results["runs"]
    # The store of the broken run lacks two images: one line naming the store and the image.
    refused = run_ra_sgg(
        "--flagfile=experiments/flags/smoke.flags",
        f"--workdir={tmp_path / 'train2'}",
        "--dataset=synthetic_pixels",
        f"--detector_workdir={detector_workdir}",
        "--feature_source=precomputed",
        f"--object_features={tmp_path / 'c'}",
        "--num_steps=4",
    )
    assert refused.returncode != 0
    assert "no features for this image" in refused.stderr.strip().splitlines()[-1]
