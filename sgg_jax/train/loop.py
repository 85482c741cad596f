"""The jitted train step and the training loop.

:func:`make_train_step` builds one ``jax.jit`` of ``(state, batch) -> (state, metrics)`` over the
device mesh: the state is replicated, the batch is split along ``"data"``, the state argument is
donated (updated in place) and XLA inserts the gradient all-reduce. Shapes are static (padded
batches), so the step is traced once for a whole run whatever the real graph sizes.

:func:`train` runs ``num_steps`` updates over a :class:`~sgg_jax.data.pipeline.SceneGraphLoader`::

    restore <workdir>/checkpoints (if any) -> loader.iter_from(step)
    for each step: shard batch -> train step -> host check (finite loss and grad norm)
                   -> metrics.jsonl / TensorBoard / progress bar -> eval_fn -> checkpoint

A resumed run reads the same batches (the loader is random access by step), draws the same dropout
keys (``fold_in(key, step)``) and continues ``metrics.jsonl`` after the restored step, so killing
and resuming a run gives the same parameters and metrics as an uninterrupted run.

Workdir layout: ``checkpoints/`` (orbax), ``config.json``, ``metrics.jsonl`` (one JSON object per
line: ``{"step", "kind": "train" | "eval", ...}``) and ``tensorboard/`` (scalars ``train/<name>``,
``eval/<name>``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh
from tensorboardX import SummaryWriter

from sgg_jax.data.pipeline import SceneGraphLoader
from sgg_jax.errors import ConfigError, check_int
from sgg_jax.structures import SceneGraphBatch
from sgg_jax.train import mesh as mesh_lib
from sgg_jax.train.checkpoint import Checkpointer, jsonable
from sgg_jax.train.optim import OptimConfig, Schedule, freeze, make_optimizer
from sgg_jax.train.state import TrainState, create_train_state

LossFn = Callable[
    [dict[str, jax.Array], dict[str, jax.Array], SceneGraphBatch],
    tuple[jax.Array, dict[str, jax.Array]],
]
EvalFn = Callable[[TrainState, int], Mapping[str, Any]]
BatchTransform = Callable[
    [Mapping[str, Any], int, SceneGraphBatch], tuple[SceneGraphBatch, Mapping[str, float]]
]
TrainStep = Callable[[TrainState, SceneGraphBatch], tuple[TrainState, dict[str, jax.Array]]]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

_LOG = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Train step
# ----------------------------------------------------------------------------------------------


def make_train_step(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    learning_rate_fn: Schedule | None = None,
) -> TrainStep:
    """One jitted training update on the mesh.

    Args:
      model: module applied as ``model.apply(variables, batch, train=True, rngs={"dropout": key},
        mutable=[...])`` returning ``(outputs, aux)``.
      loss_fn: ``(outputs, aux, batch) -> (loss f32[], {term: f32[]})`` with masked reductions.
      optimizer: the gradient transformation the state's ``opt_state`` belongs to.
      mesh: the device mesh; None = all devices.
      learning_rate_fn: the schedule, to report ``learning_rate``; None = not reported.

    Returns:
      ``train_step(state, batch) -> (state, metrics)``, jitted with the state replicated and
      donated, the batch sharded along ``"data"``. ``metrics`` (replicated f32[] scalars):
      ``loss``, ``loss/<term>`` for every term, ``grad_norm`` (global L2 norm before clipping),
      ``learning_rate`` (the rate of this update).
    """
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    replicated = mesh_lib.replicated(mesh)

    def train_step(state: TrainState, batch: SceneGraphBatch):
        dropout_key = state.step_key()
        mutable = sorted(state.collections)

        def compute_loss(params):
            variables = {"params": params, **state.collections}
            if mutable:
                (outputs, aux), new_collections = model.apply(
                    variables, batch, train=True, rngs={"dropout": dropout_key}, mutable=mutable
                )
            else:
                outputs, aux = model.apply(
                    variables, batch, train=True, rngs={"dropout": dropout_key}
                )
                new_collections = {}
            loss, terms = loss_fn(outputs, aux, batch)
            return loss, (terms, dict(new_collections))

        (loss, (terms, new_collections)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            collections={**state.collections, **new_collections},
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        for name, value in terms.items():
            metrics[f"loss/{name}"] = value
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        metrics = {name: jnp.asarray(value, jnp.float32) for name, value in metrics.items()}
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated, mesh_lib.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def check_finite(metrics: Mapping[str, float], step: int, names=("loss", "grad_norm")) -> None:
    """Raises FloatingPointError naming ``step`` when a watched metric is NaN or infinite."""
    bad = {name: metrics[name] for name in names if name in metrics}
    bad = {name: value for name, value in bad.items() if not math.isfinite(value)}
    if bad:
        described = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise FloatingPointError(f"step {step}: non-finite {described}; stopping")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train`.

    Attributes:
      num_steps: total number of updates of the run (a resumed run continues up to it).
      seed: model seed (initialisation and dropout keys).
      checkpoint_every: save a checkpoint every this many steps (and always at the end); 0 = only
        at the end.
      max_to_keep: newest checkpoints kept.
      async_checkpointing: write checkpoints in the background.
      eval_every: run ``eval_fn`` every this many steps (and always at the end); 0 = only at the
        end.
      log_every: write training metrics to ``metrics.jsonl`` / TensorBoard every this many steps
        (the last step is always written). Every step is checked for NaN / inf regardless.
      progress: show a tqdm progress bar (process 0 only).
    """

    num_steps: int
    seed: int = 0
    checkpoint_every: int = 1000
    max_to_keep: int = 3
    async_checkpointing: bool = True
    eval_every: int = 0
    log_every: int = 1
    progress: bool = True

    def __post_init__(self):
        check_int("num_steps", self.num_steps, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("max_to_keep", self.max_to_keep, minimum=1)
        check_int("eval_every", self.eval_every, minimum=0)
        check_int("log_every", self.log_every, minimum=1)


# ----------------------------------------------------------------------------------------------
# Metrics output
# ----------------------------------------------------------------------------------------------


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``<workdir>/metrics.jsonl`` (empty when the file does not exist)."""
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _truncate_metrics(workdir: str, last_step: int) -> None:
    """Drops records after ``last_step`` (written by a run that died after its last checkpoint)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return
    kept = [record for record in read_metrics(workdir) if record["step"] <= last_step]
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        for record in kept:
            handle.write(json.dumps(record) + "\n")
    os.replace(temporary, path)


class _MetricsWriter:
    """Appends to ``metrics.jsonl`` and writes TensorBoard scalars (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        self._jsonl = None
        self._tensorboard = None
        if enabled:
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
            self._tensorboard = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, step: int, kind: str, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **jsonable(dict(metrics))}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            if isinstance(value, int | float | np.number) and not isinstance(value, bool):
                self._tensorboard.add_scalar(f"{kind}/{name}", float(value), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.flush()
            self._tensorboard.close()


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------


def _host_scalars(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    return {name: float(value) for name, value in jax.device_get(dict(metrics)).items()}


def _prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in metrics.items()}


def train(
    model: nn.Module,
    loss_fn: LossFn,
    loader: SceneGraphLoader,
    *,
    workdir: str | os.PathLike,
    train_config: TrainConfig,
    optim_config: OptimConfig,
    eval_fn: EvalFn | None = None,
    mesh: Mesh | None = None,
    config: Mapping[str, Any] | None = None,
    batch_transform: BatchTransform | None = None,
    init_variables: Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    example_batch: SceneGraphBatch | None = None,
    trainable: Callable[[Any], Any] | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """Trains ``model`` for ``train_config.num_steps`` updates, resuming from ``workdir``.

    Args:
      model: the flax module (see :func:`make_train_step`).
      loss_fn: ``(outputs, aux, batch) -> (loss, terms)``.
      loader: the training loader; batch ``t`` of ``loader.iter_from(t)`` feeds update ``t``.
      workdir: the run's folder (checkpoints, metrics, TensorBoard events, config).
      train_config: loop options.
      optim_config: optimizer and schedule.
      eval_fn: optional ``eval_fn(state, step) -> {name: value}``, run every
        ``train_config.eval_every`` steps and at the end; its metrics go to ``metrics.jsonl``
        (``kind: "eval"``), TensorBoard (``eval/<name>``) and the returned metrics
        (``eval/<name>``).
      mesh: the device mesh; None = all devices.
      config: extra configuration (JSON-able) stored with the checkpoints, next to the train,
        optimizer and pipeline configs.
      batch_transform: optional ``transform(variables, step, host_batch) -> (host_batch,
        metrics)`` applied to the batch of update ``step`` (1-based) with the variables entering
        that update, before it is placed on the devices (e.g. RA-SGG's retrieval-augmented soft
        targets); its float metrics are logged with the step's training metrics. A transform
        with a true ``wants_dropout_key`` attribute is also given ``dropout_key=`` the key the
        update draws its dropout from (RA-SGG's official variant queries with the training
        forward pass).
      init_variables: optional ``{"params": ..., **collections}`` replacing the initialisation
        of a fresh run (e.g. a phase-1 checkpoint), or a function of the freshly initialised
        variables (host numpy) returning them (e.g. a pretrained detector merged into one
        subtree); the optimizer state starts fresh. Ignored when the workdir holds a checkpoint
        to resume from.
      example_batch: the batch the variables are initialised with (default: the loader's first
        batch); needed when ``batch_transform`` adds inputs the model reads, e.g. images.
      trainable: optional ``mask_fn(params) -> bool tree``: parameters with False get zero
        updates (no gradient step, no weight decay), e.g. a frozen detector.

    Returns:
      ``(state, metrics)``: the final state (on the mesh) and the metrics of the last step (train
      metrics, plus ``eval/<name>`` of the last evaluation).

    Raises:
      FloatingPointError: the loss or the gradient norm of a step is NaN or infinite (the message
        names the step); checkpoints already written are kept.
      ConfigError: the loader has fewer batches than ``num_steps``, or its batch does not split
        over the devices.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    num_steps = train_config.num_steps
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    mesh_lib.check_batch_size(loader.config.batch_size, mesh)
    if loader.num_batches is not None and loader.num_batches < num_steps:
        raise ConfigError(
            "num_steps",
            f"{num_steps} steps but the loader yields only {loader.num_batches} batches "
            "(raise num_epochs or set it to None)",
        )
    is_chief = jax.process_index() == 0

    optimizer, schedule = make_optimizer(optim_config, num_steps)
    if trainable is not None:
        optimizer = freeze(optimizer, trainable)
    example = loader.dataset[0] if example_batch is None else example_batch
    state = create_train_state(model, optimizer, example, train_config.seed, mesh=mesh)
    if callable(init_variables):
        init_variables = init_variables(jax.device_get(state.variables))
    if init_variables is not None:
        state = _with_variables(state, init_variables, optimizer, mesh)
    full_config = {
        "train": jsonable(train_config),
        "optim": jsonable(optim_config),
        "pipeline": jsonable(loader.config),
        **jsonable(dict(config or {})),
    }
    checkpointer = Checkpointer(
        workdir,
        save_every=train_config.checkpoint_every,
        max_to_keep=train_config.max_to_keep,
        async_save=train_config.async_checkpointing,
        config=full_config,
    )
    writer = None
    progress = None
    try:
        restored = checkpointer.restore_latest(state)
        start_step = 0
        if restored is not None:
            state, start_step = restored
            _LOG.info("resuming %s from step %d", workdir, start_step)
        if is_chief:
            _truncate_metrics(workdir, start_step)
        if start_step >= num_steps:
            return state, _last_recorded_metrics(workdir, eval_fn is not None)

        train_step = make_train_step(
            model, loss_fn, optimizer, mesh=mesh, learning_rate_fn=schedule
        )
        writer = _MetricsWriter(workdir, enabled=is_chief)
        progress = tqdm.tqdm(
            total=num_steps,
            initial=start_step,
            desc="train",
            unit="step",
            disable=not (train_config.progress and is_chief),
            dynamic_ncols=True,
        )
        state, last_metrics = _run_steps(
            state=state,
            train_step=train_step,
            batches=loader.iter_from(start_step),
            start_step=start_step,
            num_steps=num_steps,
            mesh=mesh,
            train_config=train_config,
            eval_fn=eval_fn,
            checkpointer=checkpointer,
            writer=writer,
            progress=progress,
            batch_transform=batch_transform,
        )
        return state, last_metrics
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
        checkpointer.close()


def _run_steps(
    *,
    state: TrainState,
    train_step: TrainStep,
    batches: Iterator[SceneGraphBatch],
    start_step: int,
    num_steps: int,
    mesh: Mesh,
    train_config: TrainConfig,
    eval_fn: EvalFn | None,
    checkpointer: Checkpointer,
    writer: _MetricsWriter,
    progress: tqdm.tqdm,
    batch_transform: BatchTransform | None = None,
) -> tuple[TrainState, dict[str, float]]:
    last_train: dict[str, float] = {}
    last_eval: dict[str, Any] = {}
    window_start, window_steps, window_relations = time.perf_counter(), 0, 0

    def prepare(batch: SceneGraphBatch, step: int, state: TrainState):
        extra: Mapping[str, float] = {}
        if batch_transform is not None:
            if getattr(batch_transform, "wants_dropout_key", False):
                # The key this update's train_step draws (state.step == step - 1 here).
                batch, extra = batch_transform(
                    state.variables, step, batch, dropout_key=state.step_key()
                )
            else:
                batch, extra = batch_transform(state.variables, step, batch)
        return batch, mesh_lib.shard_batch(batch, mesh), dict(extra)

    host_batch, device_batch, extra = prepare(next(batches), start_step + 1, state)
    for step in range(start_step + 1, num_steps + 1):
        # Relation candidates classified: the real (foreground and background) pairs.
        num_relations = int(np.asarray(host_batch.pair_mask).sum())
        state, device_metrics = train_step(state, device_batch)
        step_extra = extra
        if step < num_steps:  # prepare the next batch while the devices compute
            host_batch, device_batch, extra = prepare(next(batches), step + 1, state)
        metrics = {**_host_scalars(device_metrics), **step_extra}
        check_finite(metrics, step)
        last_train = metrics

        window_steps += 1
        window_relations += num_relations * jax.process_count()
        final = step == num_steps
        if step % train_config.log_every == 0 or final:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            perf = {
                "perf/steps_per_sec": window_steps / elapsed,
                "perf/relations_per_sec": window_relations / elapsed,
            }
            writer.write(step, "train", {**metrics, **perf})
            progress.set_postfix(
                loss=f"{metrics['loss']:.4f}",
                steps_per_s=f"{perf['perf/steps_per_sec']:.2f}",
                rel_per_s=f"{perf['perf/relations_per_sec']:.0f}",
                refresh=False,
            )
            window_start, window_steps, window_relations = time.perf_counter(), 0, 0
        progress.update(1)

        if eval_fn is not None and (
            final or (train_config.eval_every > 0 and step % train_config.eval_every == 0)
        ):
            last_eval = jsonable(dict(eval_fn(state, step)))
            writer.write(step, "eval", last_eval)
        checkpointer.maybe_save(step, state, final=final)
    return state, {**last_train, **_prefixed(last_eval, "eval/")}


def _with_variables(
    state: TrainState,
    variables: Mapping[str, Any],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
    """``state`` with the given variables (same structure and shapes) and a fresh optimizer."""
    variables = dict(variables)
    if "params" not in variables:
        raise ConfigError("init_variables", "must hold a 'params' collection")
    params = variables.pop("params")
    expected = jax.tree.structure(state.params)
    if jax.tree.structure(params) != expected or any(
        np.shape(a) != np.shape(b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True)
    ):
        raise ConfigError(
            "init_variables", "parameters do not match the model's structure and shapes"
        )
    collections = {**state.collections, **variables}
    # Through the host: fresh buffers, so donating the state never deletes the caller's arrays.
    params, collections = mesh_lib.replicate(jax.device_get((params, collections)), mesh)
    return state.replace(
        params=params,
        opt_state=jax.jit(optimizer.init, out_shardings=mesh_lib.replicated(mesh))(params),
        collections=collections,
    )


def _last_recorded_metrics(workdir: str, with_eval: bool) -> dict[str, float]:
    """Metrics of the last step recorded in ``metrics.jsonl`` (for a run that is already done)."""
    records = read_metrics(workdir)
    metrics: dict[str, Any] = {}
    for kind, prefix in (("train", ""), ("eval", "eval/")):
        if kind == "eval" and not with_eval:
            continue
        of_kind = [record for record in records if record["kind"] == kind]
        if of_kind:
            last = {
                name: value
                for name, value in of_kind[-1].items()
                if name not in ("step", "kind") and not name.startswith("perf/")
            }
            metrics.update(_prefixed(last, prefix))
    return metrics
