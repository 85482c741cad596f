"""Optimizers and learning-rate schedules by name: the one builder of every training run.

:func:`make_optimizer` turns an :class:`OptimConfig` into ``(optax transformation, schedule)``;
the relation models, the detector and the scene-graph embedder all train with it. Two schedules:

* ``"multistep"`` (default): SGB's ``WarmupMultiStepLR`` below; without warmup and milestones it is
  the constant rate (the embedder's Adam at a fixed rate).
* ``"cosine"``: linear warmup from ``warmup_factor * learning_rate`` to ``learning_rate`` over
  ``warmup_steps`` updates, then cosine decay to ``cosine_end_factor * learning_rate`` at update
  ``max(num_steps, warmup_steps + 2)`` (``optax.warmup_cosine_decay_schedule``; the detector's).

The multi-step schedule is SGB's ``WarmupMultiStepLR`` (``maskrcnn_benchmark/solver/lr_scheduler.py``) with
linear warmup, as a function of the number of updates already applied ``t`` (0 for the first
update)::

    lr(t) = learning_rate * warmup(t) * decay_gamma ** bisect_right(decay_steps, t)
    warmup(t) = warmup_factor * (1 - t / warmup_steps) + t / warmup_steps   if t < warmup_steps
              = 1                                                           otherwise

i.e. a linear ramp from ``warmup_factor * learning_rate`` to ``learning_rate`` over
``warmup_steps`` updates, and a drop by ``decay_gamma`` at every milestone of ``decay_steps``
(the update with index ``t = milestone`` already uses the lower rate).

The update is SGB's: gradients are clipped to a global L2 norm of ``clip_norm`` (SGB
``clip_grad_norm(max_norm=5)``) and then

* ``"sgd"``: ``torch.optim.SGD`` with momentum and coupled L2 weight decay
  (``g + weight_decay * param``, then the momentum trace ``m = momentum * m + g``);
* ``"adamw"``: AdamW with decoupled weight decay (``optax.adamw``, as ``torch.optim.AdamW``).

By default every parameter gets ``learning_rate`` and ``weight_decay``. Two optional rules make the
update SGB's ``make_optimizer`` exactly (``maskrcnn_benchmark/solver/build.py:7-26``, identical in
Scene-Graph-Benchmark, VL-Group/PENET and KanghoonYoon/torch-rasgg)::

    for key, value in model.named_parameters():          # trainable ones only
        lr, weight_decay = BASE_LR, WEIGHT_DECAY
        if "bias" in key:
            lr, weight_decay = BASE_LR * BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS     # (0.0)
        params += [{"params": [value], "lr": lr * rl_factor, "weight_decay": weight_decay}]
    torch.optim.SGD(params, lr=BASE_LR, momentum=MOMENTUM)

with ``rl_factor = float(cfg.SOLVER.IMS_PER_BATCH)`` in ``tools/relation_train_net.py``
(torch-rasgg ``:93-94``, PENET ``:86-87``, Scene-Graph-Benchmark ``:73-74``).

* ``scale_lr_by_batch``: the rate of every parameter is ``learning_rate * images_per_batch``
  (SGB's ``rl_factor``; ``IMS_PER_BATCH`` is the global batch over all GPUs). The schedule
  (warmup, milestones) multiplies the scaled rate, as ``WarmupMultiStepLR`` multiplies each
  group's initial ``lr``.
* ``bias_rules="sgb"``: a parameter is a *bias* when ``"bias"`` occurs in its path in the Flax
  parameter tree (keys joined by ``/``, e.g. ``params/subject_fusion/gate/bias``), the analogue of
  SGB's ``"bias" in key`` on PyTorch's dotted names. Biases get no weight decay (SGB
  ``WEIGHT_DECAY_BIAS`` = 0.0, ``config/defaults.py``) and ``bias_lr_factor`` times the rate of
  the other parameters, at every step of the schedule. As in PyTorch, this includes the ``bias``
  of LayerNorm / BatchNorm (Flax names their shift ``bias`` too) and, in MotifNet, the trainable
  ``frequency_bias`` table (SGB's ``freq_bias.obj_baseline.weight`` contains "bias" as well).
  ``maskrcnn_benchmark/config/defaults.py`` sets ``BIAS_LR_FACTOR = 2``, but every relation
  config (``configs/e2e_relation_X_101_32_8_FPN_1x.yaml`` ``SOLVER.BIAS_LR_FACTOR: 1`` in all
  three repositories) overrides it to 1: the SGG runs of SGB, PE-Net and RA-SGG train biases at
  the rate of the weights, only without weight decay.

With SGD the bias factor scales the momentum-SGD step (``p -= factor * lr * buf``), which is
``torch.optim.SGD`` with the group's ``lr``; with AdamW it scales the Adam step of the biases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgg_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine")
BIAS_RULES = ("none", "sgb")

Schedule = Callable[[jax.Array | int], jax.Array]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
      optimizer: ``"sgd"`` (momentum, coupled weight decay) or ``"adamw"`` (with
        ``weight_decay=0`` this is Adam).
      learning_rate: base learning rate (SGB ``BASE_LR``); the peak of the cosine schedule.
      schedule: ``"multistep"`` or ``"cosine"`` (module docstring).
      momentum: SGD momentum (ignored by AdamW).
      weight_decay: L2 weight decay (SGB ``WEIGHT_DECAY``).
      warmup_steps: updates of linear warmup (SGB ``WARMUP_ITERS``); 0 = none.
      warmup_factor: learning-rate multiplier at update 0 (SGB ``WARMUP_FACTOR``).
      decay_steps: increasing milestones (SGB ``STEPS``) at which the rate is multiplied by
        ``decay_gamma``.
      decay_gamma: multiplier at each milestone (SGB ``GAMMA``).
      cosine_end_factor: final rate of the cosine schedule as a fraction of ``learning_rate``.
      clip_norm: largest global L2 norm of the gradients; 0 disables clipping.
      adam_b1, adam_b2, adam_eps: AdamW moments and epsilon.
      scale_lr_by_batch: multiply the rate of every parameter by ``images_per_batch`` (SGB
        ``rl_factor = IMS_PER_BATCH``); False = ``learning_rate`` is the rate.
      images_per_batch: global images per update (SGB ``IMS_PER_BATCH``), the factor of
        ``scale_lr_by_batch``; an integer >= 1 (unused without scaling).
      bias_rules: ``"none"`` (every parameter alike) or ``"sgb"`` (parameters whose path contains
        ``"bias"``: no weight decay, rate x ``bias_lr_factor``); see the module docstring.
      bias_lr_factor: rate multiplier of biases under ``bias_rules="sgb"`` (SGB
        ``BIAS_LR_FACTOR``: 2 in ``defaults.py``, 1 in the relation configs); positive.
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.01
    schedule: str = "multistep"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    warmup_factor: float = 0.1
    decay_steps: tuple[int, ...] = ()
    decay_gamma: float = 0.1
    cosine_end_factor: float = 0.01
    clip_norm: float = 5.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    scale_lr_by_batch: bool = False
    images_per_batch: int = 1
    bias_rules: str = "none"
    bias_lr_factor: float = 2.0

    @property
    def effective_learning_rate(self) -> float:
        """The base rate of the schedule: ``learning_rate`` (x ``images_per_batch`` if scaled)."""
        if self.scale_lr_by_batch:
            return self.learning_rate * self.images_per_batch
        return self.learning_rate

    def __post_init__(self):
        object.__setattr__(self, "decay_steps", tuple(int(s) for s in self.decay_steps))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "cosine" and self.decay_steps:
            raise ConfigError("decay_steps", "are milestones of the multistep schedule, not cosine")
        if self.bias_rules not in BIAS_RULES:
            raise ConfigError("bias_rules", f"must be one of {BIAS_RULES}, got {self.bias_rules!r}")
        _check_number("learning_rate", self.learning_rate, positive=True)
        _check_number("bias_lr_factor", self.bias_lr_factor, positive=True)
        if not isinstance(self.scale_lr_by_batch, bool | np.bool_):
            raise ConfigError(
                "scale_lr_by_batch", f"must be True or False, got {self.scale_lr_by_batch!r}"
            )
        if (
            isinstance(self.images_per_batch, bool)
            or not isinstance(self.images_per_batch, int | np.integer)
            or self.images_per_batch < 1
        ):
            raise ConfigError(
                "images_per_batch", f"must be an integer >= 1, got {self.images_per_batch!r}"
            )
        for name in (
            "momentum",
            "weight_decay",
            "clip_norm",
            "warmup_factor",
            "decay_gamma",
            "cosine_end_factor",
        ):
            _check_number(name, getattr(self, name), positive=False)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum!r}")
        if not 0.0 <= self.warmup_factor <= 1.0:
            raise ConfigError("warmup_factor", f"must be in [0, 1], got {self.warmup_factor!r}")
        if not 0.0 <= self.cosine_end_factor <= 1.0:
            raise ConfigError(
                "cosine_end_factor", f"must be in [0, 1], got {self.cosine_end_factor!r}"
            )
        if isinstance(self.warmup_steps, bool) or not isinstance(
            self.warmup_steps, int | np.integer
        ):
            raise ConfigError("warmup_steps", f"must be an integer, got {self.warmup_steps!r}")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        steps = self.decay_steps
        if any(s <= 0 for s in steps) or any(
            b <= a for a, b in zip(steps, steps[1:], strict=False)
        ):
            raise ConfigError(
                "decay_steps", f"must be positive and strictly increasing, got {list(steps)}"
            )


def _check_number(name: str, value, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ConfigError(name, f"must be a finite {kind} number, got {value!r}")


def warmup_multistep_schedule(
    learning_rate: float,
    *,
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
    decay_steps: Sequence[int] = (),
    decay_gamma: float = 0.1,
) -> Schedule:
    """SGB ``WarmupMultiStepLR`` (linear warmup) as an optax schedule.

    Args:
      learning_rate: base rate.
      warmup_steps: updates of linear warmup; 0 = none.
      warmup_factor: multiplier at update 0.
      decay_steps: increasing milestones.
      decay_gamma: multiplier per milestone passed.

    Returns:
      ``schedule(t) -> f32[]``, the rate of update ``t`` (0-based).
    """
    milestones = jnp.asarray(tuple(decay_steps), jnp.int32).reshape(-1)

    def schedule(count):
        count = jnp.asarray(count, jnp.int32)
        if warmup_steps > 0:
            alpha = count.astype(jnp.float32) / warmup_steps
            warmup = jnp.where(
                count < warmup_steps, warmup_factor * (1.0 - alpha) + alpha, jnp.float32(1.0)
            )
        else:
            warmup = jnp.float32(1.0)
        # bisect_right(milestones, t) = number of milestones <= t.
        milestones_passed = jnp.sum(milestones <= count)
        return jnp.float32(learning_rate) * warmup * jnp.float32(decay_gamma) ** milestones_passed

    return schedule


def warmup_cosine_schedule(
    learning_rate: float,
    num_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
    end_factor: float = 0.01,
) -> Schedule:
    """Linear warmup then cosine decay (``optax.warmup_cosine_decay_schedule``).

    Args:
      learning_rate: peak rate, reached after ``warmup_steps`` updates.
      num_steps: updates of the run; the cosine reaches ``end_factor * learning_rate`` at update
        ``max(num_steps, warmup_steps + 2)``.
      warmup_steps: updates of linear warmup from ``warmup_factor * learning_rate``; 0 = none.
      warmup_factor: multiplier at update 0.
      end_factor: final multiplier.

    Returns:
      ``schedule(t) -> f32[]``, the rate of update ``t`` (0-based).
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=warmup_factor * learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(num_steps, warmup_steps + 2),
        end_value=end_factor * learning_rate,
    )


def is_bias(path: str) -> bool:
    """SGB's bias test (``"bias" in key``) on a ``/``-joined Flax parameter path.

    Args:
      path: e.g. ``"params/subject_fusion/gate/bias"``.

    Returns:
      True when ``"bias"`` occurs in ``path`` (case-sensitive, as Python's ``in``).
    """
    return "bias" in path


def bias_mask(params: Any) -> Any:
    """A bool tree with the structure of ``params``: True at the biases (:func:`is_bias`)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: is_bias(jax.tree_util.keystr(path, simple=True, separator="/")), params
    )


def weights_mask(params: Any) -> Any:
    """A bool tree with the structure of ``params``: True everywhere but at the biases."""
    return jax.tree.map(lambda biased: not biased, bias_mask(params))


def make_optimizer(
    config: OptimConfig, num_steps: int
) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds the gradient transformation and its learning-rate schedule.

    Args:
      config: the optimizer configuration.
      num_steps: total number of updates of the run; every milestone must fall inside it.

    Returns:
      ``(optimizer, schedule)``: clip → (weight decay) → SGD-momentum / AdamW with the
      schedule → (bias rate factor), and the schedule itself (``schedule(t)`` = rate of update
      ``t`` of the non-bias parameters; for ``"multistep"`` ``config.effective_learning_rate``
      after warmup and before the first milestone). With
      the defaults (no scaling, ``bias_rules="none"``) the chain and its state are those of
      plain SGD / AdamW.

    Raises:
      ConfigError: ``num_steps`` not positive, or ``decay_steps`` beyond ``num_steps``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps <= 0:
        raise ConfigError("num_steps", f"must be a positive integer, got {num_steps!r}")
    late = [s for s in config.decay_steps if s >= num_steps]
    if late:
        raise ConfigError(
            "decay_steps", f"milestones {late} never take effect in a run of {num_steps} steps"
        )
    if config.schedule == "cosine":
        schedule = warmup_cosine_schedule(
            config.effective_learning_rate,
            num_steps,
            warmup_steps=config.warmup_steps,
            warmup_factor=config.warmup_factor,
            end_factor=config.cosine_end_factor,
        )
    else:
        schedule = warmup_multistep_schedule(
            config.effective_learning_rate,
            warmup_steps=config.warmup_steps,
            warmup_factor=config.warmup_factor,
            decay_steps=config.decay_steps,
            decay_gamma=config.decay_gamma,
        )
    sgb_biases = config.bias_rules == "sgb"
    # SGB WEIGHT_DECAY_BIAS = 0: decay only the non-bias parameters.
    decay_mask = weights_mask if sgb_biases else None
    transforms = []
    if config.clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.clip_norm))
    if config.optimizer == "sgd":
        if config.weight_decay > 0:
            transforms.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
        transforms.append(
            optax.sgd(schedule, momentum=config.momentum if config.momentum > 0 else None)
        )
    else:
        transforms.append(
            optax.adamw(
                schedule,
                b1=config.adam_b1,
                b2=config.adam_b2,
                eps=config.adam_eps,
                weight_decay=config.weight_decay,
                mask=decay_mask,
            )
        )
    if sgb_biases and config.bias_lr_factor != 1.0:
        # The step is linear in the rate, so scaling the final bias updates is a bias group
        # with rate bias_lr_factor * schedule(t) (SGB BIAS_LR_FACTOR).
        transforms.append(optax.masked(optax.scale(config.bias_lr_factor), bias_mask))
    return optax.chain(*transforms), schedule


def freeze(
    optimizer: optax.GradientTransformation, trainable: Callable[[Any], Any]
) -> optax.GradientTransformation:
    """``optimizer`` on the parameters ``trainable(params)`` marks True, zero updates elsewhere.

    Frozen parameters keep their values exactly: no gradient step, no weight decay, no optimizer
    state (``optax.masked``). Gradient clipping inside ``optimizer`` sees the trainable
    gradients only.

    Args:
      optimizer: the transformation of the trainable parameters.
      trainable: ``mask_fn(params) -> bool tree`` with the structure of ``params``.
    """

    def frozen(params):
        return jax.tree.map(lambda keep: not keep, trainable(params))

    return optax.chain(
        optax.masked(optimizer, trainable), optax.masked(optax.set_to_zero(), frozen)
    )
