"""Optimizers and the learning-rate schedule of Scene-Graph-Benchmark.

The schedule is SGB's ``WarmupMultiStepLR`` (``maskrcnn_benchmark/solver/lr_scheduler.py``) with
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

Weight decay applies to every parameter.
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

Schedule = Callable[[jax.Array | int], jax.Array]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
      optimizer: ``"sgd"`` (momentum, coupled weight decay) or ``"adamw"``.
      learning_rate: base learning rate (SGB ``BASE_LR``).
      momentum: SGD momentum (ignored by AdamW).
      weight_decay: L2 weight decay (SGB ``WEIGHT_DECAY``).
      warmup_steps: updates of linear warmup (SGB ``WARMUP_ITERS``); 0 = none.
      warmup_factor: learning-rate multiplier at update 0 (SGB ``WARMUP_FACTOR``).
      decay_steps: increasing milestones (SGB ``STEPS``) at which the rate is multiplied by
        ``decay_gamma``.
      decay_gamma: multiplier at each milestone (SGB ``GAMMA``).
      clip_norm: largest global L2 norm of the gradients; 0 disables clipping.
      adam_b1, adam_b2, adam_eps: AdamW moments and epsilon.
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    warmup_factor: float = 0.1
    decay_steps: tuple[int, ...] = ()
    decay_gamma: float = 0.1
    clip_norm: float = 5.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8

    def __post_init__(self):
        object.__setattr__(self, "decay_steps", tuple(int(s) for s in self.decay_steps))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check_number("learning_rate", self.learning_rate, positive=True)
        for name in ("momentum", "weight_decay", "clip_norm", "warmup_factor", "decay_gamma"):
            _check_number(name, getattr(self, name), positive=False)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum!r}")
        if not 0.0 <= self.warmup_factor <= 1.0:
            raise ConfigError("warmup_factor", f"must be in [0, 1], got {self.warmup_factor!r}")
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


def make_optimizer(
    config: OptimConfig, num_steps: int
) -> tuple[optax.GradientTransformation, Schedule]:
    """Builds the gradient transformation and its learning-rate schedule.

    Args:
      config: the optimizer configuration.
      num_steps: total number of updates of the run; every milestone must fall inside it.

    Returns:
      ``(optimizer, schedule)``: clip → (weight decay) → SGD-momentum / AdamW with the
      schedule, and the schedule itself (``schedule(t)`` = rate of update ``t``).

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
    schedule = warmup_multistep_schedule(
        config.learning_rate,
        warmup_steps=config.warmup_steps,
        warmup_factor=config.warmup_factor,
        decay_steps=config.decay_steps,
        decay_gamma=config.decay_gamma,
    )
    transforms = []
    if config.clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.clip_norm))
    if config.optimizer == "sgd":
        if config.weight_decay > 0:
            transforms.append(optax.add_decayed_weights(config.weight_decay))
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
            )
        )
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
