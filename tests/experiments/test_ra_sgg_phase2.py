"""``experiments.ra_sgg --method=ra_sgg`` (phase 1, phase 2, an ablation) end to end; flag errors.

The flag errors are checked in-process on the config the main builds before loading any data.
"""

import json

import numpy as np
import pytest

from experiments import ra_sgg
from sgg_jax.errors import ConfigError
from tests.experiments import config_error, config_of, error_line
from tests.experiments import run_ra_sgg as _run


@pytest.mark.e2e
def test_phase1_phase2_and_an_ablation_run_and_resume(tmp_path):
    args = ("--flagfile=experiments/flags/ra_sgg_smoke.flags", f"--workdir={tmp_path}")
    result = _run(*args, "--ablations=no_ipss", "--noexport")
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert set(document["runs"]) == {"FREQ (predcls)", "PE-Net", "RA-SGG", "RA-SGG w/o IPSS"}
    for run in document["runs"].values():
        assert 0.0 <= run["mR@100"] <= run["mR@all"] + 1e-12 <= 1.0 + 1e-12
    augmentation = document["ra_sgg"]["augmentation"]["RA-SGG"]
    assert augmentation["foreground_relations"] > 0
    assert 0.0 < augmentation["selected_fraction"] <= 1.0
    assert augmentation["augmented_fraction"] <= augmentation["selected_fraction"]
    deltas = document["ra_sgg"]["delta_vs_penet"]
    ra, penet = document["runs"]["RA-SGG"], document["runs"]["PE-Net"]
    assert deltas["mR@100"] == pytest.approx(ra["mR@100"] - penet["mR@100"], abs=1e-12)
    # phase 2 starts from phase 1 and logs the retrieval statistics with its training metrics
    phase2 = [
        json.loads(line)
        for line in (tmp_path / "phase2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in phase2 if r["kind"] == "train"][-1] == 6
    assert all("ra/selected_fraction" in r for r in phase2 if r["kind"] == "train")
    assert (tmp_path / "phase1" / "checkpoints").is_dir()
    assert (tmp_path / "phase2_no_ipss" / "checkpoints").is_dir()
    assert "RA-SGG - PE-Net (points): R@100" in result.stdout

    again = _run(*args, "--ablations=no_ipss", "--noexport")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert resumed["runs"]["RA-SGG"]["R@100"] == pytest.approx(ra["R@100"], abs=1e-12)


@pytest.mark.e2e
def test_phase2_with_a_scann_tree_is_reproducible_run_to_run(tmp_path):
    """Same flags and seed -> identical results.json, with a ScaNN tree (not brute force).

    Both RA-SGG variants run (the official one with its capped bank built once, the paper one
    with the full bank refreshed), each above the brute-force threshold, so ScaNN trains its k-means
    partitioner and hashing at every build.
    """
    args = (
        "--flagfile=experiments/flags/ra_sgg_smoke.flags",
        "--variant=official",
        "--bank=official",
        "--bank_refresh_steps=3",
        "--ablations=paper",
        "--scann_brute_force_threshold=100",
        "--noexport",
    )
    documents = []
    for name in ("first", "second"):
        result = _run(*args, f"--workdir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        documents.append(json.loads((tmp_path / name / "results.json").read_text()))
    first, second = documents
    assert first["ra_sgg"]["bank_sizes"]["official"] >= 100
    assert first["ra_sgg"]["bank_sizes"]["full"] > first["ra_sgg"]["bank_sizes"]["official"]
    assert first["ra_sgg"]["augmentation"]["RA-SGG"]["background_relabelled"] > 0
    for label in first["runs"]:
        assert set(first["runs"][label]) == set(second["runs"][label])
        for key, value in first["runs"][label].items():
            assert second["runs"][label][key] == value, (label, key)
    assert first == second


@pytest.mark.e2e
def test_phase2_with_the_retrieval_inside_the_step(tmp_path):
    """``--retrieval=in_step``: both variants train (finite losses, the step's ``loss/ra/*``)."""
    result = _run(
        "--flagfile=experiments/flags/ra_sgg_smoke.flags",
        f"--workdir={tmp_path}",
        "--variant=official",
        "--bank=official",
        "--retrieval=in_step",
        "--ablations=paper",
        "--noexport",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert {"RA-SGG", "RA-SGG (paper)"} <= set(document["runs"])
    for label in ("RA-SGG", "RA-SGG (paper)"):
        assert 0.0 <= document["runs"][label]["R@100"] <= 1.0
        assert "ra/selected_fraction" in document["ra_sgg"]["augmentation"][label]
    for folder in ("phase2", "phase2_paper"):
        records = [
            json.loads(line)
            for line in (tmp_path / folder / "metrics.jsonl").read_text().splitlines()
        ]
        train = [r for r in records if r["kind"] == "train"]
        assert train[-1]["step"] == 6 and all(np.isfinite(r["loss"]) for r in train)
        assert all(0.0 <= r["loss/ra/selected_fraction"] <= 1.0 for r in train)


def test_in_step_retrieval_refuses_sgdet_before_any_work():
    # RASGGExperimentConfig.validate runs this check for every run of --task=sgdet
    from sgg_jax.projects.ra_sgg.in_step import check_supported

    config = config_of(ra_sgg, "--flagfile=experiments/flags/ra_sgg_smoke.flags")
    with pytest.raises(ConfigError, match="option 'retrieval': in_step supports predcls and sgcls"):
        check_supported(config.ra_config(retrieval="in_step"), detection=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant=typo"], "error: option 'variant': must be one of ('paper', 'official')"),
        (["--bank=typo"], "error: option 'bank': must be one of ('full', 'official')"),
        (["--threshold=1.5"], "error: option 'threshold': must lie in [0, 1], got 1.5"),
        (["--memory_size=0"], "error: option 'memory_size': must be an integer >= 1, got 0"),
        (["--tail_fraction=0"], "error: option 'tail_fraction': must lie in (0, 1], got 0.0"),
        (["--tail_ids=0,3"], "error: option 'tail_ids': id 0 is outside the predicate vocabulary"),
        (
            ["--dataset=gqa200_mini", "--tail_ids=101"],
            "error: option 'tail_ids': id 101 is outside the predicate vocabulary [1, 100]",
        ),
        (
            ["--synthetic_context_bias=0.6,0.5"],
            "error: option 'synthetic_context_bias': must be two numbers 0 <= lo <= hi <= 1",
        ),
        (["--tau=-1"], "error: option 'tau': must be a finite number >= 0, got -1.0"),
        (["--phase2_steps=0"], "error: option 'phase2_steps': must be positive, got 0"),
        (["--num_neighbours=0"], "error: option 'num_neighbours': must be an integer >= 1, got 0"),
        (["--ablations=typo"], "error: option 'ablations': unknown ['typo']"),
        (
            ["--retrieval=in_step", "--relabel_background"],
            "error: option 'relabel_background': is not supported with --retrieval=in_step",
        ),
    ],
)
def test_bad_phase2_flags_are_one_line_errors(args, message):
    # config_from_flags is all the main runs before loading data: the error comes before any work
    error = config_error(ra_sgg, "--flagfile=experiments/flags/ra_sgg_smoke.flags", *args)
    assert error_line(error).startswith(message)
    assert error.option == message.split("'")[1]
    assert "\n" not in str(error)


@pytest.mark.parametrize("dataset, option", [("vg150", "vg150_h5"), ("gqa200", "gqa200_train")])
@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_official_ra_sgg_flagfiles_parse_and_ask_for_their_data(dataset, option, task, tmp_path):
    error = config_error(ra_sgg, f"--flagfile=experiments/flags/ra_sgg_{dataset}_{task}.flags")
    assert error_line(error) == f"error: option '{option}': is required with --dataset={dataset}"
    # with the files given (any existing path passes the check; the checkpoint's contents are
    # read when the run starts) the flagfile is a valid config
    checkpoint = tmp_path / "model_final.pth"
    checkpoint.write_bytes(b"")
    paths = {
        "vg150": ("vg150_h5", "vg150_dicts", "vg150_image_data"),
        "gqa200": ("gqa200_train", "gqa200_test", "gqa200_id_info"),
    }[dataset]
    config = config_of(
        ra_sgg,
        f"--flagfile=experiments/flags/ra_sgg_{dataset}_{task}.flags",
        *(f"--{name}={__file__}" for name in paths),
        f"--detector_checkpoint={checkpoint}",
    )
    assert (config.method, config.data.dataset, config.data.task) == ("ra_sgg", dataset, task)
    assert config.data.feature_source == "roi" and config.data.union_features == "sgb"
    assert config.phase2.variant == "official" and config.phase2.bank == "official"
