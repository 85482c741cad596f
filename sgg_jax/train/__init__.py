"""Training machinery: device mesh, optimizer, train state, checkpoints, the trainer, export.

* :mod:`~sgg_jax.train.mesh` — the ``"data"`` mesh, shardings, :func:`shard_batch`.
* :mod:`~sgg_jax.train.optim` — :class:`OptimConfig`, :func:`make_optimizer` (SGD / AdamW by name,
  SGB ``WarmupMultiStepLR`` or warmup + cosine).
* :mod:`~sgg_jax.train.state` — :class:`TrainState`, :func:`create_train_state`.
* :mod:`~sgg_jax.train.checkpoint` — :class:`Checkpointer` (orbax, async, auto-resume),
  :class:`ExternalVariables` (a frozen subtree left out of checkpoints, digest-checked on resume).
* :mod:`~sgg_jax.train.loop` — the one trainer: :func:`fit` (any step, any random-access loader,
  hooks), :func:`make_step`, :func:`make_train_step`, :class:`TrainConfig`, :func:`train`
  (relation models), :class:`ComposedTransform` (batch transforms in sequence).
* :mod:`~sgg_jax.train.loaders` — :class:`EpochBatches` (in-memory examples as a loader).
* :mod:`~sgg_jax.train.export` — ``export.export``, :func:`load_exported` (``jax.export``), and
  the variables / function files every export is made of.

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
    "EpochBatches": "loaders",
    "OptimConfig": "optim",
    "make_optimizer": "optim",
    "warmup_multistep_schedule": "optim",
    "TrainState": "state",
    "create_train_state": "state",
    "Checkpointer": "checkpoint",
    "ExternalVariables": "checkpoint",
    "ComposedTransform": "loop",
    "TrainConfig": "loop",
    "check_finite": "loop",
    "fit": "loop",
    "make_step": "loop",
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
