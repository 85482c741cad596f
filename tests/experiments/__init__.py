"""Shared helpers of the experiment tests: run a main in a subprocess, or parse its flags in-process."""

import contextlib
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from sgg_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_ra_sgg(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs the experiment from the repository root with ``args``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.ra_sgg", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_flags(main_module, *args: str) -> flags.FlagValues:
    """``args`` parsed by a fresh ``FlagValues`` holding the flags of ``main_module``.

    Parsed in the repository root, as on the command line: flagfile paths (and the base flagfiles
    they include) are relative to it.
    """
    flag_values = flags.FlagValues()
    main_module.define_flags(flag_values)
    with contextlib.chdir(ROOT):
        flag_values(["prog", *args])
    return flag_values


def config_of(main_module, *args: str):
    """The experiment config ``main_module.config_from_flags`` builds from ``args``."""
    return main_module.config_from_flags(parse_flags(main_module, *args))


def config_error(main_module, *args: str) -> ConfigError:
    """The ConfigError ``main_module.config_from_flags`` raises for ``args`` (fails without one)."""
    with pytest.raises(ConfigError) as caught:
        config_of(main_module, *args)
    return caught.value


def error_line(error: ConfigError) -> str:
    """The line the main prints on stderr for ``error``."""
    return f"error: {error}"


EXPORT_SIDE = 64  # the image side of :func:`write_tiny_sgdet_export`'s export
EXPORT_OBJECT_NAMES = ["__background__", "man", "horse", "hat"]
EXPORT_PREDICATE_NAMES = ["__background__", "riding", "wearing"]


def write_tiny_sgdet_export(path, batch_size: int) -> str:
    """A tiny random PE-Net SGDet export (``roi`` features of a tiny detector) of ``batch_size``
    images of side :data:`EXPORT_SIDE`, written to ``path``; returns the export folder."""
    import jax
    import numpy as np

    from sgg_jax.detection.detector import DetectorConfig
    from sgg_jax.experiment.relation import predict_outputs
    from sgg_jax.relation.penet import PENet, PENetConfig
    from sgg_jax.relation.sgdet import SGDetConfig
    from sgg_jax.structures import SceneGraphBatch
    from sgg_jax.train.export import export

    side, b = EXPORT_SIDE, batch_size
    det = DetectorConfig.tiny(detections_per_image=4, score_thresh=0.0)
    config = PENetConfig.small(
        3,
        2,
        task="sgdet",
        feature_source="roi",
        detector=det,
        sgdet=SGDetConfig(train_pairs=8, train_fg=4),
    )
    model = PENet(config)
    batch = SceneGraphBatch(
        boxes=np.zeros((b, 1, 4), np.float32),
        labels=np.zeros((b, 1), np.int32),
        object_mask=np.ones((b, 1), bool),
        pairs=np.zeros((b, 1, 2), np.int32),
        pair_labels=np.zeros((b, 1), np.int32),
        pair_mask=np.zeros((b, 1), bool),
        image_size=np.full((b, 2), side, np.int32),
        graph_mask=np.ones(b, bool),
        image_index=np.arange(b, dtype=np.int32),
        num_truncated_objects=np.zeros(b, np.int32),
        num_truncated_pairs=np.zeros(b, np.int32),
        images=np.zeros((b, side, side, 3), np.float32),
    )
    variables = jax.jit(
        lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    )(batch)
    config_json = {
        "task": "sgdet",
        "vocab": {"object_names": EXPORT_OBJECT_NAMES, "predicate_names": EXPORT_PREDICATE_NAMES},
        "image_transform": {
            "image_size": side,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "scale_255": True,
            "bgr": False,
        },
    }
    return str(export(variables, predict_outputs(model), batch, config_json, path))


def run_predict(*args: str) -> int:
    """``experiments.predict`` in-process: a fresh ``FlagValues`` with its flags, then its main."""
    from experiments import predict

    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    argv = flag_values(["predict", *args])
    return predict.main(argv, flag_values)
