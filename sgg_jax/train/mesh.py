"""Device mesh, shardings and the host-to-device move of a batch (data parallelism).

One mesh axis, ``"data"``: parameters and optimizer state are replicated on every device
(``NamedSharding(mesh, P())``) and a batch is split along its leading (batch) axis
(``NamedSharding(mesh, P("data"))``). A single ``jax.jit`` of the train step then runs on the whole
mesh and XLA inserts the gradient all-reduce; this replaces ``pmap``.

The mesh axis is of type ``AxisType.Auto`` (the compiler propagates shardings), not
``AxisType.Explicit``: model code is written for one device and never has to name the mesh.

Multi-host: call :func:`initialize_distributed` first; every process builds the same mesh over all
devices, reads its own shard of the data (``PipelineConfig.shard_index``) and :func:`shard_batch`
assembles the per-process batches into one global array with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgg_jax import distributed
from sgg_jax.errors import ConfigError

DATA_AXIS = "data"


def initialize_distributed(enabled: bool, **options: Any) -> bool:
    """Connects the processes of a multi-host job (``jax.distributed.initialize``).

    Must run before any other JAX call when ``enabled``. On a single host leave it disabled.

    Args:
      enabled: whether to initialise; False does nothing.
      **options: passed to ``jax.distributed.initialize`` (``coordinator_address``,
        ``num_processes``, ``process_id``, ...); empty = the variables of ``python -m
        sgg_jax.launch``, else JAX's cluster detection (Slurm, TPU pods, ...). See
        :func:`sgg_jax.distributed.initialize`.

    Returns:
      True when ``jax.distributed.initialize`` was called.
    """
    if not enabled:
        return False
    return distributed.initialize(**options)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis ``"data"`` mesh.

    Args:
      devices: the devices of the mesh; None = all devices (``jax.devices()``) of all processes.

    Returns:
      ``Mesh`` of shape ``(len(devices),)`` with axis name ``"data"`` (``AxisType.Auto``).
    """
    if devices is None:
        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise ConfigError("devices", "the mesh needs at least one device")
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh`` (params, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``"data"`` axis of ``mesh``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_device_count(mesh: Mesh) -> int:
    """Number of devices of ``mesh`` owned by this process."""
    return len(mesh.local_devices)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises ConfigError unless this process's batch splits evenly over its devices of ``mesh``.

    Args:
      batch_size: examples per batch per process (``PipelineConfig.batch_size``).
      mesh: the device mesh.
    """
    devices = local_device_count(mesh)
    if batch_size % devices:
        raise ConfigError(
            "batch_size",
            f"{batch_size} images per process do not split evenly over the {devices} devices of "
            f"this process on the '{DATA_AXIS}' mesh axis",
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts every leaf of ``tree`` on all devices of ``mesh`` (the same value everywhere)."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Moves this process's host batch onto ``mesh``, split along the batch axis.

    With several processes, each passes its own ``B`` examples and the result is one global batch
    of ``B * process_count`` examples (process ``k``'s examples in rows ``k * B ... (k + 1) * B -
    1``, as the pipeline's global order).

    Args:
      batch: any pytree of numpy arrays with a leading batch axis, e.g. a
        :class:`~sgg_jax.structures.SceneGraphBatch` (``None`` fields stay None); leaves may differ in their leading
        size (e.g. anchors and the graphs they index), each must split over the devices.

      Leaves that are already ``jax.Array`` s are taken to be global arrays on ``mesh`` and pass
      through unchanged (e.g. RA-SGG's memory bank held on the devices, rows split over
      ``"data"``).

    Returns:
      The batch as global ``jax.Array`` leaves with sharding ``P("data")``.

    Raises:
      ConfigError: ``batch_size`` when a leading size is not divisible by this process's devices
        of ``mesh``.
    """
    leaves = [
        np.asarray(leaf) for leaf in jax.tree.leaves(batch) if not isinstance(leaf, jax.Array)
    ]
    if any(leaf.ndim == 0 for leaf in leaves):
        raise ConfigError("batch", "every array of a batch needs a leading batch axis")
    for size in sorted({int(leaf.shape[0]) for leaf in leaves}):
        check_batch_size(size, mesh)
    sharding = batch_sharding(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array):
            return leaf
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(put, batch)


def process_local(tree: Any) -> Any:
    """Numpy copies of this process's rows of the (batch-sharded) arrays of ``tree``.

    An array whose devices all belong to this process (one process), or that is replicated, is
    copied whole; a ``P("data")`` array of a multi-process mesh gives this process's rows, in
    order: the rows of the batch this process passed to :func:`shard_batch`. Non-array leaves
    pass through ``np.asarray``.
    """

    def local(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_shards[0].data)
        blocks: dict[int, np.ndarray] = {}
        for shard in leaf.addressable_shards:
            start = (shard.index[0].start or 0) if shard.index else 0
            blocks.setdefault(start, np.asarray(shard.data))
        return np.concatenate([blocks[start] for start in sorted(blocks)])

    return jax.tree.map(local, tree)
