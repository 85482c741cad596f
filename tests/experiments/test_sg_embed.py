"""python -m experiments.sg_embed: end to end (subprocess) and its config and data errors (in-process).

The flags are parsed by a fresh ``FlagValues`` and turned into the experiment's config as the main
does; errors found while reading data come from :func:`sgg_jax.projects.sg_embed.experiment.run`.
One subprocess test checks the main's one-line error and exit status 2.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from experiments import sg_embed
from sgg_jax.data import captions as captions_lib
from sgg_jax.data import gqa200
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.projects.sg_embed import experiment
from sgg_jax.projects.sg_embed.experiment import SGEmbedExperimentConfig
from tests.experiments import ROOT, config_error, config_of, error_line, parse_flags

TINY = (
    "--embed_dim=16",
    "--hidden_dim=32",
    "--num_layers=1",
    "--epochs=1",
    "--baseline_repeats=2",
    "--eval_every=1",
)


def run_sg_embed(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.sg_embed", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.e2e
def test_synthetic_grid_writes_results_table_and_plot(tmp_path):
    result = run_sg_embed(
        "--dataset=synthetic",
        "--synthetic_images=120",
        "--objectives=ranking,triplet",
        "--samplers=probability,extreme",
        "--noise_ms=1,20",
        f"--workdir={tmp_path}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["grid"]) == [
        "ranking/probability",
        "ranking/extreme",
        "triplet/probability",
        "triplet/extreme",
    ]
    assert results["data"]["split_sizes"] == {"train": 84, "val": 24, "test": 12}
    for cell in results["grid"].values():
        (run,) = cell["runs"]
        assert run["steps"] == 6  # ceil(84 / 16) anchors batches, one epoch
        correlations = run["test"]["correlations"]
        assert correlations["num_images"] == 12
        for key in ("kendall_row", "spearman_all", "pearson_row"):
            assert -1.0 <= correlations[key] <= 1.0
        sweep = run["test"]["noise_sweep"]
        assert set(sweep) == {"1", "20"}
        assert 0.0 < sweep["1"]["MRR"] <= 1.0 and math.isfinite(sweep["20"]["MRR"])
        assert [h["epoch"] for h in run["val_history"]] == [1]
    assert set(results["baselines"]) == {"random N(0, I) embeddings", "untrained GCN"}
    table = (tmp_path / "results.md").read_text()
    assert "| ranking | probability |" in table and "| untrained GCN | — |" in table
    assert (tmp_path / "noise_sweep.png").stat().st_size > 10_000
    images = (tmp_path / "images.txt").read_text().splitlines()
    assert len(images) == 120 and {line.split("\t")[1] for line in images} == {
        "train",
        "val",
        "test",
    }
    assert "best by test kendall_row" in result.stdout
    saved = results["saved_embedder"]
    assert saved["run"] in results["grid"] and saved["path"] == str(tmp_path / "embedder")
    assert (tmp_path / "embedder" / "embed.jax_exported").is_file()


@pytest.mark.e2e
def test_real_gqa200_images_with_captions_and_partial_captions(tmp_path):
    # Real GQA-200 graphs with real COCO captions; a caption file that lacks some of them.
    bundled = captions_lib.load_bundled()
    graphs, _ = gqa200.load_bundled("all")
    with_captions = captions_lib.attach(graphs, bundled)
    assert len(with_captions) == 117
    kept = [g.image_id for g in with_captions if 3 <= g.num_objects <= 40 and g.num_relations]
    assert len(kept) == 116
    # Drop the captions of 10 kept images: they are skipped and counted, the rest is used.
    partial = {k: list(v) for k, v in bundled.items() if k not in set(kept[:10])}
    path = tmp_path / "partial_captions.json"
    path.write_text(json.dumps({"captions": partial}))
    workdir = tmp_path / "partial"
    result = run_sg_embed(
        "--dataset=gqa200_captions",
        f"--captions={path}",
        "--objectives=ranking",
        "--samplers=reject",
        "--noise_ms=1,5",
        f"--workdir={workdir}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["data"]["filters"]["input"] == 107
    assert results["data"]["filters"]["too_few_objects"] == 1
    assert results["data"]["graphs_with_captions"] == 107
    assert results["data"]["num_images"] == 106
    assert results["grid"]["ranking/reject"]["runs"][0]["test"]["correlations"]["num_images"] == 11


def _data_error(config: SGEmbedExperimentConfig, workdir) -> DataError:
    """The DataError the experiment raises while reading the data of ``config``."""
    with pytest.raises(DataError) as caught:
        experiment.run(config, str(workdir))
    return caught.value


def test_split_without_any_caption_is_an_error(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"captions": {"no-such-image": ["a cat on a mat"]}}))
    config = config_of(sg_embed, "--dataset=gqa200_captions", f"--captions={path}")
    line = error_line(_data_error(config, tmp_path))
    assert "no GQA-200 image has a caption" in line and str(path) in line


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.zeros((5, 6), np.float32), "not square|square"),
        (np.zeros((7, 7), np.float32), "7"),
    ],
)
def test_similarity_matrix_of_the_wrong_shape_is_an_error(tmp_path, matrix, message):
    path = tmp_path / "similarity.npy"
    np.save(path, matrix)
    config = config_of(
        sg_embed, "--dataset=synthetic", "--synthetic_images=30", f"--similarity_npy={path}"
    )
    line = error_line(_data_error(config, tmp_path))
    assert str(path) in line
    assert any(part in line for part in message.split("|"))


@pytest.mark.e2e
def test_user_similarity_matrix_replaces_captions(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.random((30, 30)).astype(np.float32)
    path = tmp_path / "similarity.npy"
    np.save(path, (values + values.T) / 2)
    result = run_sg_embed(
        "--dataset=synthetic",
        "--synthetic_images=30",
        f"--similarity_npy={path}",
        "--objectives=triplet",
        "--samplers=random",
        "--noise_ms=1",
        f"--workdir={tmp_path}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["similarity"] == f"user matrix {path}"


@pytest.mark.parametrize(
    "flag, option",
    [
        ("--learning_rate=-1", "learning_rate"),
        ("--objectives=ranking,contrastive", "objectives"),
        ("--samplers=hardest", "samplers"),
        ("--split_fractions=0.7,0.2", "split_fractions"),
        ("--seeds=a", "seeds"),
        ("--dataset=vg_json", "vg_relationships"),
        ("--vg_vocab_min_count=0", "vg_vocab_min_count"),
        ("--similarity_npy_unbounded", "similarity_npy_unbounded"),
        # Raw inner products with the default samplers (probability / reject among them).
        ("--nonormalise_captions", "normalise_captions"),
    ],
)
def test_bad_flags_fail_before_loading_data(flag, option):
    # The config is checked when built: nothing has been read yet.
    error = config_error(sg_embed, flag)
    assert error.option == option
    assert error_line(error).startswith(f"error: option '{option}': ")


@pytest.mark.parametrize(
    "flags, option, message",
    [
        (("--nonormalise_captions", "--samplers=random,reject"), "normalise_captions", "reject"),
        (
            (
                "--similarity_npy=/no/such.npy",
                "--similarity_npy_unbounded",
                "--samplers=probability",
            ),
            "similarity_npy_unbounded",
            "probability",
        ),
        (
            ("--similarity_npy=/no/such.npy", "--nonormalise_captions", "--samplers=random"),
            "normalise_captions",
            "no effect",
        ),
    ],
)
def test_invalid_similarity_flag_combinations(flags, option, message):
    # The .npy does not exist: the ConfigError comes before any file is read.
    error = config_error(sg_embed, *flags)
    assert error.option == option and message in str(error)


def test_user_similarity_outside_minus_one_one(tmp_path):
    path = tmp_path / "raw.npy"
    raw = np.arange(900, dtype=np.float32).reshape(30, 30) / 100  # 0 .. 8.99
    np.save(path, raw)
    common = ("--dataset=synthetic", "--synthetic_images=30", f"--similarity_npy={path}")
    line = error_line(_data_error(config_of(sg_embed, *common), tmp_path))
    assert line.startswith(f"error: {path}: ") and "lie outside [-1, 1]" in line
    # Explicitly unbounded: accepted (the order-only samplers; --method=data reads it and stops).
    workdir = tmp_path / "unbounded"
    config = config_of(
        sg_embed,
        *common,
        "--similarity_npy_unbounded",
        "--samplers=random,extreme",
        "--method=data",
    )
    returned = experiment.run(config, str(workdir))
    summary = json.loads((workdir / "data_summary.json").read_text())
    assert summary == returned
    assert summary["similarity"] == f"user matrix {path}" and summary["num_images"] == 30
    assert len((workdir / "images.txt").read_text().splitlines()) == 30
    assert not (workdir / "results.json").exists()


def test_vg_coco_flagfile_passes_the_flag_checks(tmp_path):
    # The data is not bundled: with absent files the config builds (every flag check passes) and
    # the run stops at the first file it reads, naming it.
    missing = tmp_path / "missing"
    config = config_of(
        sg_embed,
        "--flagfile=experiments/flags/sg_embed_vg_coco.flags",
        f"--vg_relationships={missing}/relationships.json",
        f"--vg_image_data={missing}/image_data.json",
        f"--coco_captions={missing}/captions_train2017.json",
        f"--glove={missing}/glove.txt",
    )
    assert config.source.dataset == "vg_json" and config.model.init_word_vectors
    line = error_line(_data_error(config, tmp_path / "out"))
    assert "option '" not in line and str(missing) in line and "file not found" in line


def test_default_flags_build_the_default_config():
    flag_values = parse_flags(sg_embed)
    config = sg_embed.config_from_flags(flag_values)
    assert config == SGEmbedExperimentConfig()
    # results.json's config.flags: every flag of the main, as parsed.
    assert config.flag_values(flag_values.workdir) == {
        name: flag_values[name].value for name in sorted(flag_values)
    }


def test_flag_values_round_trip_non_default_flags():
    args = (
        "--dataset=gqa200_captions",
        "--split_fractions=0.8,0,0.2",
        "--seeds=0,1,2",
        "--noise_ms=1,5",
        "--objectives=triplet",
        "--samplers=random",
        "--nonormalise_captions",
        "--learning_rate=1e-3",
    )
    flag_values = parse_flags(sg_embed, *args)
    config = sg_embed.config_from_flags(flag_values)
    assert config.split.split_fractions == (0.8, 0.0, 0.2)
    assert config.grid.seeds == (0, 1, 2) and config.evaluation.noise_ms == (1, 5)
    assert config.flag_values("/w") == {
        **{name: flag_values[name].value for name in sorted(flag_values)},
        "workdir": "/w",
    }


def test_library_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="option 'seeds': must not be empty"):
        SGEmbedExperimentConfig(grid=experiment.GridConfig(seeds=()))
    with pytest.raises(ConfigError, match="option 'method'"):
        SGEmbedExperimentConfig(method="train")
    with pytest.raises(ConfigError, match=r"option 'split_fractions': must be numbers"):
        config_of(sg_embed, "--split_fractions=0.7,x,0.1")


def test_bad_flag_is_one_error_line_with_exit_status_2(tmp_path):
    # The main prints the config's error on one line and exits with 2 before any data is read.
    workdir = tmp_path / "out"
    line = _error_line(run_sg_embed("--learning_rate=-1", f"--workdir={workdir}"))
    assert line.startswith("error: option 'learning_rate': ")
    assert not workdir.exists()
