"""Shared pieces of the detection tests: random detector variables and Scene-Graph-Benchmark
checkpoint files made from them (the converter's inverse, written in torch's zip format)."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sgg_jax.detection.detector import DetectorConfig, FasterRCNN

IMAGE_SIZES = np.array([[64, 60]], np.float32)  # (height, width); the image is padded on the right


def random_detector_variables(config: DetectorConfig, seed: int = 0):
    """``FasterRCNN(config)`` variables filled on the host (shapes from a traced ``init``)."""
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(FasterRCNN(config).init, jax.random.key(0), images, IMAGE_SIZES)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(dict(shapes)).items():
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            value = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[:-1])), shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # biases, BN shifts / means
            value = rng.normal(0.0, 0.1, shape)
        flat[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def write_sgb_checkpoint(path, num_classes: int, seed: int = 0):
    """A tiny Scene-Graph-Benchmark relation checkpoint with random weights at ``path`` (``.pth``,
    torch's zip format, or ``.npz``): ``{"model": state dict, "iteration", "optimizer"}`` with
    ``module.``-prefixed keys, the detector of ``DetectorConfig.tiny(num_classes=num_classes)``
    (classes + background) and a few ``roi_heads.relation.*`` keys (not the detector's).

    Returns:
      the detector's variables (what converting the file must give).
    """
    from sgg_jax.data.torch_zip import write_torch_zip
    from sgg_jax.detection import convert

    config = DetectorConfig.tiny(num_classes=num_classes)
    variables = random_detector_variables(config, seed)
    state_dict = convert.to_maskrcnn_benchmark_detector(variables, config)
    rng = np.random.default_rng(seed + 1)
    state_dict["roi_heads.relation.predictor.rel_compress.weight"] = rng.normal(
        size=(51, 32)
    ).astype(np.float32)
    model = collections.OrderedDict((f"module.{key}", value) for key, value in state_dict.items())
    if str(path).endswith(".npz"):
        convert.save_npz(model, path)
    else:
        checkpoint = {"model": model, "iteration": 50000, "optimizer": {"state": {}, "lr": 0.01}}
        write_torch_zip(checkpoint, path)
    return variables
