"""``experiments.ra_sgg --method=ra_sgg`` (phase 1, phase 2, an ablation) end to end, and flag errors."""

import json

import pytest

from tests.experiments import run_ra_sgg as _run


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tau=-1"], "error: option 'tau': must be a finite number >= 0, got -1.0"),
        (["--phase2_steps=0"], "error: option 'phase2_steps': must be positive, got 0"),
        (["--num_neighbours=0"], "error: option 'num_neighbours': must be an integer >= 1, got 0"),
        (["--ablations=typo"], "error: option 'ablations': unknown ['typo']"),
    ],
)
def test_bad_phase2_flags_are_one_line_errors(tmp_path, args, message):
    result = _run("--flagfile=experiments/flags/ra_sgg_smoke.flags", f"--workdir={tmp_path}", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "phase1").exists()


@pytest.mark.parametrize("dataset, option", [("vg150", "vg150_h5"), ("gqa200", "gqa200_train")])
@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_official_ra_sgg_flagfiles_parse_and_ask_for_their_data(tmp_path, dataset, option, task):
    result = _run(
        f"--flagfile=experiments/flags/ra_sgg_{dataset}_{task}.flags", f"--workdir={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: option '{option}': is required with --dataset={dataset}"
    )
