"""Masked reductions: padding never changes a loss or a metric.

Every batch is padded to static budgets (``SceneGraphBatch``); every reduction over objects, pairs or
images goes through :func:`masked_mean`, which replaces masked-out entries by 0 before summing (so even
inf / NaN in padding cannot leak) and divides by the number of real entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def masked_mean(values: jax.Array, mask: jax.Array, axis: int | Sequence[int] | None = None):
    """Mean of ``values`` over the entries where ``mask`` is True.

    Computes ``sum(values * mask) / max(sum(mask), 1)``.

    Args:
      values: float[...] array.
      mask: bool[...] broadcastable to ``values.shape``.
      axis: axes to reduce; None = all.

    Returns:
      The masked mean, with ``axis`` reduced (0 where the mask is all False).
    """
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.float32)
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), values.shape)
    total = jnp.sum(jnp.where(mask, values, 0), axis=axis)
    count = jnp.sum(mask, axis=axis, dtype=values.dtype)
    return total / jnp.maximum(count, 1)
