"""sgg_jax: scene graph generation and scene-graph embeddings in JAX/Flax."""

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import Prediction, SceneGraph, SceneGraphBatch, Vocab

__all__ = ["ConfigError", "DataError", "Prediction", "SceneGraph", "SceneGraphBatch", "Vocab"]
__version__ = "0.1.0"
