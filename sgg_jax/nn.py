"""Helpers shared by the model configurations and modules.

* :func:`configs_equal` / :func:`config_hash`: value equality and hashing of frozen config dataclasses
  that hold numpy arrays (word vectors, frequency tables) next to scalars, so configs can be compared
  and used as static (hashable) arguments of jitted functions. Arrays compare by value and hash by
  shape only (equal configs hash equally; hashing stays cheap).
* :func:`l2_normalize`: unit vectors along the last axis, with finite gradients at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def configs_equal(
    mine: Any, theirs: Any, scalar_fields: Sequence[str], array_fields: Sequence[str]
) -> bool:
    """True when every scalar field is equal and every array field is None on both or equal."""
    if any(getattr(mine, f) != getattr(theirs, f) for f in scalar_fields):
        return False
    for field in array_fields:
        a, b = getattr(mine, field), getattr(theirs, field)
        if (a is None) != (b is None):
            return False
        if a is not None and not np.array_equal(a, b):
            return False
    return True


def config_hash(config: Any, scalar_fields: Sequence[str], array_fields: Sequence[str]) -> int:
    """Hash of the scalar fields and of the shapes of the array fields."""
    shapes = tuple(
        None if getattr(config, f) is None else np.shape(getattr(config, f)) for f in array_fields
    )
    return hash((tuple(getattr(config, f) for f in scalar_fields), shapes))


def l2_normalize(vectors: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    """``vectors / ‖vectors‖`` along the last axis (zero vectors stay zero, gradients finite)."""
    squared_norm = jnp.sum(jnp.square(vectors), axis=-1, keepdims=True)
    return vectors * jax.lax.rsqrt(jnp.maximum(squared_norm, epsilon**2))
