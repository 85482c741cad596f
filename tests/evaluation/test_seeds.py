"""Results over seeds: mean ± std and paired differences of results.json files."""

import json

import numpy as np
import pytest

from sgg_jax.errors import DataError
from sgg_jax.evaluation import seeds


def write_seed(folder, seed, runs, experiment="ra_sgg"):
    path = folder / f"seed{seed}"
    path.mkdir(parents=True)
    document = {"experiment": experiment, "dataset": "d", "task": "predcls", "seed": seed}
    (path / "results.json").write_text(json.dumps({**document, "runs": runs}))
    return path / "results.json"


def three_seeds(tmp_path):
    values = {"A": [0.10, 0.12, 0.14], "B": [0.09, 0.10, 0.11]}
    for seed in range(3):
        runs = {
            run: {"mR@100": v[seed], "R@100": 0.5, "per_predicate_R@100": [0.1]}
            for run, v in values.items()
        }
        runs["only_here"] = {"mR@100": 0.3} if seed == 0 else None
        runs = {k: v for k, v in runs.items() if v is not None}
        write_seed(tmp_path, seed, runs)
    return values


def test_aggregate_mean_and_sample_std_over_seeds(tmp_path):
    values = three_seeds(tmp_path)
    documents = seeds.load_seed_results([str(tmp_path)])
    summary = seeds.aggregate(documents)
    assert summary["seeds"] == [0, 1, 2]
    assert set(summary["runs"]) == {"A", "B"}  # "only_here" is not in every seed
    entry = summary["runs"]["A"]["mR@100"]
    assert entry["mean"] == pytest.approx(0.12)
    assert entry["std"] == pytest.approx(np.std(values["A"], ddof=1))  # 0.02
    assert "per_predicate_R@100" not in summary["runs"]["A"]
    table = seeds.markdown_table(summary, ["mR@100"])
    assert "| A | 12.00 ± 2.00 |" in table


def test_paired_difference_and_the_two_std_rule(tmp_path):
    three_seeds(tmp_path)
    documents = seeds.load_seed_results([str(tmp_path)])
    difference = seeds.paired_difference(documents, "A", "B", "mR@100")
    np.testing.assert_allclose(difference.values, [0.01, 0.02, 0.03])
    assert difference.mean == pytest.approx(0.02)
    assert difference.std == pytest.approx(0.01)
    assert not difference.holds  # 0.02 is not > 2 x 0.01
    strong = seeds.Difference(values=(0.03, 0.031, 0.029), mean=0.03, std=0.001)
    assert strong.holds
    with pytest.raises(DataError, match="run 'C' has no metric 'mR@100'"):
        seeds.paired_difference(documents, "C", "B", "mR@100")


def test_cli_prints_the_table_and_writes_aggregate_json(tmp_path, capsys):
    three_seeds(tmp_path)
    assert seeds.main([str(tmp_path), "--metrics", "mR@100", "--baseline", "B"]) == 0
    printed = capsys.readouterr().out
    assert "| A | 12.00 ± 2.00 |" in printed
    assert "A − B: mR@100 +2.00 ± 1.00" in printed
    written = json.loads((tmp_path / "aggregate.json").read_text())
    assert written["differences"]["A"]["mR@100"]["mean"] == pytest.approx(0.02)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    write_seed(tmp_path / "dup", 0, {"A": {"mR@100": 0.1}})
    (tmp_path / "dup" / "seed0b").mkdir()
    (tmp_path / "dup" / "seed0b" / "results.json").write_text(
        json.dumps(
            {"experiment": "ra_sgg", "dataset": "d", "task": "predcls", "seed": 0, "runs": {}}
        )
    )
    with pytest.raises(DataError, match="seeds repeat"):
        seeds.load_seed_results([str(tmp_path / "dup")])
    broken = tmp_path / "broken" / "seed0"
    broken.mkdir(parents=True)
    (broken / "results.json").write_text("{not json")
    assert seeds.main([str(tmp_path / "broken")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    write_seed(tmp_path / "mixed", 0, {"A": {}}, experiment="ra_sgg")
    write_seed(tmp_path / "mixed", 1, {"A": {}}, experiment="cce_scorer")
    with pytest.raises(DataError, match="mixes experiments"):
        seeds.load_seed_results([str(tmp_path / "mixed")])
    assert seeds.main([str(tmp_path / "empty_dir_does_not_exist")]) == 2
