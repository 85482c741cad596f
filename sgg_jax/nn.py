"""Helpers shared by the model configurations and modules.

* :func:`word_vector_table`, :func:`frequency_table`, :func:`check_table`,
  :func:`replace_leaves`: the pieces of the
  models' ``with_tables`` functions, which put large tables (word vectors, frequency statistics)
  into a model's variables. Configs hold only what shapes the graph (scalars, strings, tuples,
  nested configs), so they compare and hash by value with the default dataclass methods and can be
  static arguments of jitted functions; the tables are initial values of variables.
* :func:`l2_normalize`: unit vectors along the last axis, with finite gradients at zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.errors import ConfigError

VariablePath = tuple[str, ...]


def scope_path(scope: str | Sequence[str]) -> VariablePath:
    """``"base/head"`` or ``("base", "head")`` -> ``("base", "head")``; ``""`` / ``()`` -> ``()``."""
    if isinstance(scope, str):
        return tuple(part for part in scope.split("/") if part)
    return tuple(scope)


def check_table(
    field: str, table: Any, shape: Sequence[int], shape_text: str | None = None
) -> np.ndarray:
    """``table`` as a float32 array of ``shape`` with finite values.

    Args:
      field: the name the error gives (e.g. ``"object_word_vectors"``).
      table: array-like.
      shape: the shape it must have.
      shape_text: how the message writes the shape (default ``tuple(shape)``).

    Returns:
      A float32 copy of ``table``.

    Raises:
      ConfigError: naming ``field``: not numeric, another shape, or NaN / inf values.
    """
    try:
        array = np.array(table, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ConfigError(field, f"must be a float array: {error}") from None
    if array.shape != tuple(shape):
        text = shape_text if shape_text is not None else str(tuple(shape))
        raise ConfigError(field, f"must have shape {text}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConfigError(field, "contains NaN or inf")
    return array


def _leaf(variables: Mapping[str, Any], path: VariablePath) -> Any:
    node: Any = variables
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def table_leaf_shape(
    variables: Mapping[str, Any], path: VariablePath, field: str, missing: str
) -> tuple[int, ...]:
    """The shape of the variable at ``path`` (collection first); ConfigError naming ``field``
    with the reason ``missing`` when the variables hold none there."""
    leaf = _leaf(variables, path)
    if leaf is None or isinstance(leaf, Mapping):
        raise ConfigError(field, f"{missing} (no variable {'/'.join(path)})")
    return tuple(np.shape(leaf))


def table_leaf(variables: Mapping[str, Any], path: VariablePath) -> np.ndarray:
    """The variable at ``path`` as a host numpy array (it must exist)."""
    return np.asarray(jax.device_get(_leaf(variables, path)))


def word_vector_table(
    variables: Mapping[str, Any], path: VariablePath, field: str, vectors: Any, model: str
) -> np.ndarray:
    """``vectors`` checked against the embedding table at ``path``: float32[rows, E], finite.

    Raises:
      ConfigError: naming ``field``: the shape differs ("must have shape (rows, embed_dim=E)"),
        NaN / inf, or the variables hold no such table (not ``model``'s variables).
    """
    rows, dim = table_leaf_shape(variables, path, field, f"not a {model}'s variables")
    return check_table(field, vectors, (rows, dim), f"({rows}, embed_dim={dim})")


def frequency_table(variables: Mapping[str, Any], path: VariablePath, table: Any) -> np.ndarray:
    """``table`` float[K+1, K+1, C] (``FrequencyBaseline.log_bias``) flattened to the layout of the
    frequency-bias variable at ``path``, float32[(K+1)², C].

    Raises:
      ConfigError: naming ``frequency_bias``: wrong shape, NaN / inf, or no such variable (the
        model was built with ``frequency_bias=False``).
    """
    field = "frequency_bias"
    cells, columns = table_leaf_shape(
        variables, path, field, "the model was built with frequency_bias=False"
    )
    labels = math.isqrt(cells)
    return check_table(field, table, (labels, labels, columns)).reshape(cells, columns)


def replace_leaves(
    variables: Mapping[str, Any], replacements: Mapping[VariablePath, np.ndarray]
) -> dict[str, Any]:
    """``variables`` (nested mappings) with the leaf at each path replaced; the input is unchanged.

    Dicts along the replaced paths are copied; every other subtree is shared with the input.
    """
    result = dict(variables)
    for path, value in replacements.items():
        node = result
        for key in path[:-1]:
            node[key] = dict(node[key])
            node = node[key]
        node[path[-1]] = value
    return result


def l2_normalize(vectors: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    """``vectors / ‖vectors‖`` along the last axis (zero vectors stay zero, gradients finite)."""
    squared_norm = jnp.sum(jnp.square(vectors), axis=-1, keepdims=True)
    return vectors * jax.lax.rsqrt(jnp.maximum(squared_norm, epsilon**2))
