"""The training state: step, parameters, optimizer state, other variable collections, PRNG key.

Randomness: ``jax.random.key(seed)`` is split once into an initialisation key and a training key;
update ``t`` (0-based) draws its dropout key as ``jax.random.fold_in(training_key, t)``. The key of
an update therefore depends only on the seed and the step, never on the number of devices or on
whether the run was resumed from a checkpoint.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sgg_jax.structures import SceneGraphBatch
from sgg_jax.train import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes (a pytree; checkpointed as a whole).

    Attributes:
      step: i32[] number of updates applied so far.
      params: the ``"params"`` collection.
      opt_state: the optimizer state of ``params``.
      collections: the other variable collections (e.g. ``"batch_stats"``), mutable in training.
      rng: the training PRNG key (typed key array); update ``t`` uses ``fold_in(rng, t)``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    collections: dict[str, Any]
    rng: jax.Array

    @property
    def variables(self) -> dict[str, Any]:
        """The variables to ``model.apply``: ``{"params": params, **collections}``."""
        return {"params": self.params, **self.collections}

    def step_key(self, step: jax.Array | int | None = None) -> jax.Array:
        """The dropout key of update ``step`` (default: the next update, ``self.step``)."""
        return jax.random.fold_in(self.rng, self.step if step is None else step)


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    example_batch: SceneGraphBatch,
    seed: int,
    mesh: Mesh | None = None,
) -> TrainState:
    """Initialises the model and the optimizer.

    The initialisation is one jitted computation from ``jax.random.key(seed)``, so the initial
    values do not depend on the device count; with ``mesh`` the result is placed replicated on
    every device of the mesh.

    Args:
      model: a flax module applied as ``model.apply(variables, batch, train=...)``.
      optimizer: the gradient transformation.
      example_batch: a batch with the training shapes (host numpy arrays are fine; only the shapes
        and dtypes matter for the variable shapes).
      seed: the model seed.
      mesh: where to place the state (replicated); None = the default device.

    Returns:
      ``TrainState`` with ``step`` 0.
    """
    init_key, train_key = jax.random.split(jax.random.key(seed))
    example_batch = jax.tree.map(jnp.asarray, example_batch)

    def initialise(batch: SceneGraphBatch) -> TrainState:
        params_key, dropout_key = jax.random.split(init_key)
        variables = model.init({"params": params_key, "dropout": dropout_key}, batch, train=False)
        variables = dict(variables)
        params = variables.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            collections=variables,
            rng=train_key,
        )

    if mesh is None:
        return jax.jit(initialise)(example_batch)
    return jax.jit(initialise, out_shardings=mesh_lib.replicated(mesh))(example_batch)
