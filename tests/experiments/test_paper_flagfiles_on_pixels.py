"""The papers' flagfiles on pixels, as a researcher with the real files runs them: a VG150 dataset in
the released formats with JPEGs of the stated sizes and a Scene-Graph-Benchmark-layout ``.pth``
(tiny, random weights), through the real command line with the laptop overrides
(``experiments/flags/laptop/``). The bad inputs of such a run fail in one line before any update.
"""

import hashlib
import json
import os
import shutil

import pytest

from sgg_jax.data.images import InputConvention
from sgg_jax.errors import DataError
from tests.experiments import config_of
from tests.experiments.test_detector_experiment import _relation_run
from tests.experiments.vg150_fixture import paper_flag_args


@pytest.fixture(scope="module")
def vg150_files(tmp_path_factory):
    return paper_flag_args(tmp_path_factory.mktemp("vg150_paper"))["vg150"]


def _flag(args, name):
    return next(arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}="))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "module, flagfile",
    [
        ("experiments.ra_sgg", "ra_sgg_vg150_sgdet"),
        ("experiments.cce_scorer", "cce_scorer_vg150_sgdet"),
    ],
)
def test_paper_flagfile_runs_on_a_vg150_fixture_with_an_sgb_pth(
    vg150_files, tmp_path, module, flagfile
):
    method = module.split(".")[1]
    workdir = tmp_path / flagfile
    result = _relation_run(
        f"--flagfile=experiments/flags/{flagfile}.flags",
        f"--flagfile=experiments/flags/laptop/{method}.flags",
        *vg150_files,
        f"--workdir={workdir}",
        module=module,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["dataset"] == "vg150" and results["task"] == flagfile.rsplit("_", 1)[1]
    for metrics in results["runs"].values():
        assert 0.0 <= metrics["R@100"] <= 1.0 and 0.0 <= metrics["mR@100"] <= 1.0
    # The run records the SGB checkpoint it read (path and sha256).
    checkpoint = _flag(vg150_files, "detector_checkpoint")
    digest = hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    configs = [json.loads(path.read_text()) for path in workdir.rglob("config.json")]
    recorded = [c for c in configs if c.get("detector_checkpoint_sha256")]
    assert recorded and all(c["detector_checkpoint_sha256"] == digest for c in recorded)
    if method == "ra_sgg":
        assert results["runs"].keys() >= {"PE-Net", "RA-SGG"}
        export = json.loads((workdir / "export" / "config.json").read_text())
        transform = export["image_transform"]
        assert transform["bgr"] and transform["input_convention"] == InputConvention.sgb().to_dict()
    else:
        assert {"motifs/ce", "penet/cce_scorer"} <= results["runs"].keys()


def test_a_missing_image_stops_the_paper_run_in_one_line_before_training(vg150_files, tmp_path):
    from experiments import ra_sgg
    from sgg_jax.projects.ra_sgg import experiment

    image_dir = tmp_path / "VG_100K"
    shutil.copytree(_flag(vg150_files, "vg150_image_dir"), image_dir)
    missing = sorted(os.listdir(image_dir))[0]
    os.remove(image_dir / missing)
    args = [arg for arg in vg150_files if not arg.startswith("--vg150_image_dir=")]
    config = config_of(
        ra_sgg,
        "--flagfile=experiments/flags/ra_sgg_vg150_sgcls.flags",
        "--flagfile=experiments/flags/laptop/ra_sgg.flags",
        *args,
        f"--vg150_image_dir={image_dir}",
    )
    with pytest.raises(DataError) as caught:
        experiment.run(config, str(tmp_path / "run"))
    message = str(caught.value)
    assert "\n" not in message and missing in message and "image_path" in message
    assert not (tmp_path / "run" / "phase1" / "checkpoints").exists()
