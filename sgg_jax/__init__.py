"""sgg_jax: scene graph generation and scene-graph embeddings in JAX/Flax."""

from typing import Any

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import Prediction, SceneGraph, SceneGraphBatch, Vocab

__all__ = [
    "ConfigError",
    "DataError",
    "Prediction",
    "SceneGraph",
    "SceneGraphBatch",
    "Vocab",
    "load_exported",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import sgg_jax` stays light (no orbax).
    if name == "load_exported":
        from sgg_jax.train.export import load_exported

        return load_exported
    raise AttributeError(f"module 'sgg_jax' has no attribute {name!r}")
