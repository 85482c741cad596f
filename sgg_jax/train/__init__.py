"""Training machinery: device mesh, optimizer, train state, checkpoints, train loop, export.

* :mod:`~sgg_jax.train.mesh` — the ``"data"`` mesh, shardings, :func:`shard_batch`.
* :mod:`~sgg_jax.train.optim` — :class:`OptimConfig`, SGB ``WarmupMultiStepLR``, SGD / AdamW.
* :mod:`~sgg_jax.train.state` — :class:`TrainState`, :func:`create_train_state`.
* :mod:`~sgg_jax.train.checkpoint` — :class:`Checkpointer` (orbax, async, auto-resume).
* :mod:`~sgg_jax.train.loop` — :func:`make_train_step`, :class:`TrainConfig`, :func:`train`.
* :mod:`~sgg_jax.train.export` — ``export.export``, :func:`load_exported` (``jax.export``).

Names are imported lazily, so ``import sgg_jax.train.export`` does not pull in the training loop
(grain, tensorboardX, flax). ``sgg_jax.train.export`` is the module; its writer is
``sgg_jax.train.export.export``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATA_AXIS": "mesh",
    "batch_sharding": "mesh",
    "initialize_distributed": "mesh",
    "make_mesh": "mesh",
    "replicate": "mesh",
    "replicated": "mesh",
    "shard_batch": "mesh",
    "OptimConfig": "optim",
    "make_optimizer": "optim",
    "warmup_multistep_schedule": "optim",
    "TrainState": "state",
    "create_train_state": "state",
    "Checkpointer": "checkpoint",
    "TrainConfig": "loop",
    "check_finite": "loop",
    "make_train_step": "loop",
    "read_metrics": "loop",
    "train": "loop",
    "ExportedPredictor": "export",
    "load_exported": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
