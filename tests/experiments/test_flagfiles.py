"""Every relation, scene-graph-embedding and detector flagfile parses (base flagfiles included)
into its experiment's config.

Flagfiles share ``base_*.flags`` through nested ``--flagfile=`` lines; a flag a base does not know,
a missing base or a bad value fails here, in-process, instead of at the start of a long run.
"""

import os

import pytest

from experiments import cce_scorer, detector, ra_sgg, sg_embed
from tests.experiments import ROOT, config_error, config_of, parse_flags

FLAGS_DIR = ROOT / "experiments" / "flags"
RELATION = sorted(
    path.name
    for path in FLAGS_DIR.glob("*.flags")
    if not path.name.startswith(("base_", "detector", "sg_embed"))
)
DETECTOR = sorted(path.name for path in FLAGS_DIR.glob("detector*.flags"))
# Flagfiles whose data is not bundled: the file a run must be given, named by the error.
NEEDS = {"vg150": "vg150_h5", "gqa200": "gqa200_train", "synthetic_pixels": "detector_workdir"}
# Known bad flagfiles, with the flag they get wrong (none today).
BROKEN: dict[str, str] = {}
SG_EMBED = sorted(path.name for path in FLAGS_DIR.glob("sg_embed*.flags"))
# sg_embed datasets that are not bundled: the flags a run must be given (placeholder paths here).
SG_EMBED_NEEDS = {
    "vg_json": (
        "--vg_relationships=/data/vg/relationships.json",
        "--vg_image_data=/data/vg/image_data.json",
        "--coco_captions=/data/coco/captions_train2017.json",
        "--glove=/data/glove/glove.6B.300d.txt",
    )
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"bad --{BROKEN[name]}"))
        if name in BROKEN
        else name
        for name in RELATION
    ],
)
def test_relation_flagfile_builds_its_config(name):
    from sgg_jax.errors import ConfigError

    module = cce_scorer if name.startswith("cce_scorer") else ra_sgg
    try:
        config = config_of(module, f"--flagfile=experiments/flags/{name}")
    except ConfigError as error:
        assert error.option in NEEDS.values(), (name, str(error))
        return
    # It builds: its data is bundled, or the file it needs exists on this machine.
    needed = NEEDS.get(config.data.dataset)
    assert needed is None or os.path.exists(getattr(config.data, needed)), name


@pytest.mark.parametrize("name", SG_EMBED)
def test_sg_embed_flagfile_builds_its_config(name):
    flagfile = f"--flagfile=experiments/flags/{name}"
    needed = SG_EMBED_NEEDS.get(parse_flags(sg_embed, flagfile).dataset, ())
    if needed:
        # Not bundled: the error names a file the run must be given; with them it builds.
        error = config_error(sg_embed, flagfile)
        assert any(arg.startswith(f"--{error.option}=") for arg in needed), (name, str(error))
    config = config_of(sg_embed, flagfile, *needed)
    assert config.method == "grid" and config.grid.objectives and config.grid.samplers


@pytest.mark.parametrize("name", DETECTOR)
def test_detector_flagfile_builds_its_config(name):
    from sgg_jax.projects.detector.experiment import DetectorExperimentConfig

    config = config_of(detector, f"--flagfile=experiments/flags/{name}")
    assert isinstance(config, DetectorExperimentConfig)
    # Every flag the file sets reaches the config (none is ignored or misspelt into a default).
    for line in (FLAGS_DIR / name).read_text().splitlines():
        if line.startswith("--") and not line.startswith(("--workdir=", "--flagfile=")):
            flag = line[2:].split("=", 1)[0]
            assert flag in {field for field in config.flag_values("")}, (name, flag)


def test_every_base_flagfile_is_included_and_only_holds_flags():
    text = {path.name: path.read_text() for path in FLAGS_DIR.glob("*.flags")}
    bases = sorted(name for name in text if name.startswith("base_"))
    assert bases
    for base in bases:
        assert any(f"--flagfile=experiments/flags/{base}\n" in t for t in text.values()), base
        lines = [line for line in text[base].splitlines() if line.strip()]
        assert all(line.startswith(("#", "--")) for line in lines), base


# The papers' settings on the RoI features of a Scene-Graph-Benchmark detector: every flagfile that
# includes base_sgb_roi.flags, built with the files its command names (a VG150 fixture in the
# released formats, the bundled GQA-200 files, a tiny SGB-layout .pth), alone and with the laptop
# overrides of its experiment.
def _includes(name: str) -> set[str]:
    """The flagfiles ``name`` includes, at any depth."""
    found = set()
    for line in (FLAGS_DIR / name).read_text().splitlines():
        if line.startswith("--flagfile=experiments/flags/"):
            child = line.split("/", 2)[2]
            found |= {child, *_includes(child)}
    return found


PAPER_ROI = sorted(name for name in RELATION if "base_sgb_roi.flags" in _includes(name))


@pytest.fixture(scope="module")
def paper_files(tmp_path_factory):
    from tests.experiments.vg150_fixture import paper_flag_args

    return paper_flag_args(tmp_path_factory.mktemp("paper_files"), num_train=4, num_test=2)


def test_every_paper_task_has_a_roi_flagfile():
    expected = {
        f"{method}_{dataset}_{task}.flags"
        for method in ("ra_sgg", "cce_scorer")
        for dataset in ("vg150", "gqa200")
        for task in ("predcls", "sgcls", "sgdet")
    }
    assert expected <= set(PAPER_ROI)


@pytest.mark.parametrize("laptop", [False, True], ids=["paper", "laptop"])
@pytest.mark.parametrize("name", PAPER_ROI)
def test_paper_roi_flagfile_builds_with_its_files(name, laptop, paper_files):
    method = "cce_scorer" if name.startswith("cce_scorer") else "ra_sgg"
    module = cce_scorer if method == "cce_scorer" else ra_sgg
    dataset = "gqa200" if "gqa200" in name else "vg150"
    args = [f"--flagfile=experiments/flags/{name}"]
    if laptop:
        args.append(f"--flagfile=experiments/flags/laptop/{method}.flags")
    config = config_of(module, *args, *paper_files[dataset])
    data = config.data
    assert data.dataset == dataset and name.endswith(f"_{data.task}.flags")
    assert (data.feature_source, data.union_features, data.freeze_detector) == ("roi", "sgb", True)
    assert data.detector_checkpoint and data.detections_per_image == (8 if laptop else 80)
    if not laptop:
        assert config.num_steps >= 20000 and config.model_size == "official"
        return
    # Scaled down with every milestone inside its shortened phase: no hand-edited schedule.
    assert config.num_steps == 6 and config.model_size == "small" and data.batch_size == 4
    assert all(0 < step < config.num_steps for step in config.optim.decay_steps)
    if method == "ra_sgg":
        phase2 = config.phase2
        assert all(0 < step < phase2.phase2_steps for step in phase2.phase2_decay_steps)
        assert phase2.ablations == ("continue_penet",)
