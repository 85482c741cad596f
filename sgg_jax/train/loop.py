"""The one training loop of sgg_jax: a jitted step, a random-access loader and hooks.

Every model trains through :func:`fit` (the relation models through :func:`train`, which builds
their state and step first; the detector and the scene-graph embedder build their own step with
:func:`make_step`)::

    restore <workdir>/checkpoints (if any) -> loader.iter_from(step)
    for each step: batch_transform -> shard batch -> train step -> NaN / inf stop
                   -> metrics.jsonl / TensorBoard / progress bar / on_log -> eval_fn
                   -> checkpoint -> on_step
    at the end: export_fn(state)

* Step: ``train_step(state, batch) -> (state, metrics)``, one ``jax.jit`` over the device mesh
  (state replicated and donated, batch split along ``"data"`` or replicated, XLA inserts the
  gradient all-reduce). :func:`make_step` builds it from a loss of the parameters;
  :func:`make_train_step` from a flax model and a loss of its outputs. Shapes are static (padded
  batches), so the step is traced once for a whole run.
* Loader (:class:`Loader`): anything with ``iter_from(step)`` (batch ``t`` of ``iter_from(t)``
  feeds update ``t + 1``), ``num_batches`` (None = endless) and a batch size (``batch_size`` or
  ``config.batch_size``). A batch is any pytree of host arrays with a leading batch axis
  (a :class:`~sgg_jax.structures.SceneGraphBatch`, the detector's image dict, the embedder's
  triplets); :mod:`sgg_jax.train.loaders` adapts arrays to it.
* Hooks: ``eval_fn``, ``batch_transform``, ``on_log``, ``on_step``, ``export_fn`` (see :func:`fit`);
  checkpoints, metrics files and the progress bar are options of :class:`TrainConfig`.

A resumed run reads the same batches (the loader is random access by step), draws the same dropout
keys (``fold_in(key, step)``) and continues ``metrics.jsonl`` after the restored step, so killing
and resuming a run gives the same parameters and metrics as an uninterrupted run.

Workdir layout: ``checkpoints/`` (orbax), ``config.json``, ``metrics.jsonl`` (one JSON object per
line: ``{"step", "kind": "train" | "eval", ...}``) and ``tensorboard/`` (scalars ``train/<name>``,
``eval/<name>``). Without a workdir nothing is written and nothing is resumed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh
from tensorboardX import SummaryWriter

from sgg_jax.data.pipeline import SceneGraphLoader
from sgg_jax.errors import ConfigError, check_bool, check_int
from sgg_jax.structures import SceneGraphBatch
from sgg_jax.train import mesh as mesh_lib
from sgg_jax.train.checkpoint import Checkpointer, ExternalVariables, jsonable
from sgg_jax.train.optim import OptimConfig, Schedule, freeze, make_optimizer
from sgg_jax.train.state import TrainState, create_train_state

LossFn = Callable[
    [dict[str, jax.Array], dict[str, jax.Array], SceneGraphBatch],
    tuple[jax.Array, dict[str, jax.Array]],
]
# (params, collections, batch, dropout_key) -> (loss f32[], ({term: f32[]}, new collections))
ParamsLossFn = Callable[
    [Any, dict[str, Any], Any, jax.Array],
    tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]],
]
EvalFn = Callable[[TrainState, int], Mapping[str, Any]]
BatchTransform = Callable[[Mapping[str, Any], int, Any], tuple[Any, Mapping[str, float]]]
TrainStep = Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]
StepHook = Callable[[int, TrainState, Mapping[str, float], Mapping[str, Any] | None], None]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

_LOG = logging.getLogger(__name__)


class ComposedTransform:
    """Several batch transforms as one: each sees the batch the previous one returned.

    ``ComposedTransform(images, augment)`` puts the pixels into a batch, then hands it to a
    transform that runs the model on it (RA-SGG's retrieval with RoI features). Metrics of the
    transforms are merged (a later one's value wins on a shared name). ``wants_dropout_key`` is
    true when any part wants the update's dropout key; only those parts are given it.

    Args:
      transforms: ``transform(variables, step, batch[, dropout_key]) -> (batch, metrics)``; None
        entries are skipped.
    """

    def __init__(self, *transforms: BatchTransform | None):
        self.transforms = tuple(t for t in transforms if t is not None)
        self.wants_dropout_key = any(
            getattr(t, "wants_dropout_key", False) for t in self.transforms
        )

    def __call__(self, variables, step: int, batch: Any, dropout_key: Any = None):
        metrics: dict[str, float] = {}
        for transform in self.transforms:
            if getattr(transform, "wants_dropout_key", False):
                batch, extra = transform(variables, step, batch, dropout_key=dropout_key)
            else:
                batch, extra = transform(variables, step, batch)
            metrics.update(extra)
        return batch, metrics


class Loader(Protocol):
    """What :func:`fit` reads batches from (e.g. :class:`~sgg_jax.data.pipeline.SceneGraphLoader`).

    Attributes:
      num_batches: batches available from step 0; None = endless.
      batch_size: examples per batch of this process (or ``config.batch_size``).
    """

    num_batches: int | None

    def iter_from(self, step: int) -> Iterator[Any]:
        """The batches of updates ``step + 1, step + 2, ...``, the same on every call."""
        ...


def loader_batch_size(loader: Any) -> int | None:
    """``loader.batch_size``, else ``loader.config.batch_size``, else None."""
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "config", None), "batch_size", None)
    return None if size is None else int(size)


# ----------------------------------------------------------------------------------------------
# Train step
# ----------------------------------------------------------------------------------------------


def model_loss(model: nn.Module, loss_fn: LossFn) -> ParamsLossFn:
    """The loss of the parameters of a model of the model contract.

    Args:
      model: module applied as ``model.apply(variables, batch, train=True, rngs={"dropout": key},
        mutable=[...])`` returning ``(outputs, aux)``; every collection besides ``params`` is
        mutable.
      loss_fn: ``(outputs, aux, batch) -> (loss f32[], {term: f32[]})`` with masked reductions;
        a loss with a true ``wants_step_key`` attribute is called ``loss_fn(outputs, aux, batch,
        step_key)`` with the update's dropout key (e.g. RA-SGG's in-step retrieval draws from it).

    Returns:
      ``loss(params, collections, batch, dropout_key) -> (loss, (terms, new_collections))``.
    """

    def compute_loss(params, collections, batch, dropout_key):
        mutable = sorted(collections)
        variables = {"params": params, **collections}
        if mutable:
            (outputs, aux), new_collections = model.apply(
                variables, batch, train=True, rngs={"dropout": dropout_key}, mutable=mutable
            )
        else:
            outputs, aux = model.apply(variables, batch, train=True, rngs={"dropout": dropout_key})
            new_collections = {}
        if getattr(loss_fn, "wants_step_key", False):
            loss, terms = loss_fn(outputs, aux, batch, dropout_key)
        else:
            loss, terms = loss_fn(outputs, aux, batch)
        return loss, (terms, dict(new_collections))

    return compute_loss


def make_step(
    loss_of_params: ParamsLossFn,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    learning_rate_fn: Schedule | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> TrainStep:
    """One jitted training update on the mesh, from a loss of the parameters.

    Args:
      loss_of_params: ``(params, collections, batch, dropout_key) -> (loss f32[], (terms,
        new_collections))``; ``dropout_key`` is ``fold_in(state.rng, state.step)``;
        ``new_collections`` (possibly empty) replace those of the state.
      optimizer: the gradient transformation the state's ``opt_state`` belongs to.
      mesh: the device mesh; None = all devices.
      learning_rate_fn: the schedule, to report ``learning_rate``; None = not reported.
      compiler_options: XLA options of the jit (e.g. ``{"xla_backend_optimization_level": 0}``).

    Returns:
      ``train_step(state, batch) -> (state, metrics)``, jitted with the state replicated and
      donated, the batch sharded along ``"data"``. ``metrics`` (replicated f32[] scalars):
      ``loss``, ``loss/<term>`` for every term, ``grad_norm`` (global L2 norm before clipping),
      ``learning_rate`` (the rate of this update).
    """
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    replicated = mesh_lib.replicated(mesh)

    def train_step(state: TrainState, batch: Any):
        dropout_key = state.step_key()

        def compute_loss(params):
            return loss_of_params(params, state.collections, batch, dropout_key)

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

    options = {"compiler_options": dict(compiler_options)} if compiler_options else {}
    return jax.jit(
        train_step,
        in_shardings=(replicated, mesh_lib.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        **options,
    )


def make_train_step(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    learning_rate_fn: Schedule | None = None,
) -> TrainStep:
    """:func:`make_step` of a flax model and a loss of its outputs (:func:`model_loss`)."""
    return make_step(
        model_loss(model, loss_fn), optimizer, mesh=mesh, learning_rate_fn=learning_rate_fn
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
    """Options of :func:`fit` and :func:`train`.

    Attributes:
      num_steps: total number of updates of the run (a resumed run continues up to it).
      seed: model seed (initialisation and dropout keys; used by :func:`train`).
      checkpoint_every: save a checkpoint every this many steps (and always at the end); 0 = only
        at the end.
      max_to_keep: newest checkpoints kept.
      async_checkpointing: write checkpoints in the background.
      eval_every: run ``eval_fn`` every this many steps (and always at the end); 0 = only at the
        end.
      log_every: write training metrics to ``metrics.jsonl`` / TensorBoard (and call ``on_log``)
        every this many steps (the last step always). Every step is checked for NaN / inf
        regardless.
      progress: show a tqdm progress bar (process 0 only).
      allow_config_change: resume a workdir whose newest checkpoint was written with another
        configuration (the old one is appended to ``config_history.jsonl``); False = stop with a
        ``ConfigError`` naming the differing keys before any update. Not part of the recorded
        configuration. See :mod:`sgg_jax.train.checkpoint` for the keys that may always differ.
    """

    num_steps: int
    seed: int = 0
    checkpoint_every: int = 1000
    max_to_keep: int = 3
    async_checkpointing: bool = True
    eval_every: int = 0
    log_every: int = 1
    progress: bool = True
    allow_config_change: bool = False

    def __post_init__(self):
        check_int("num_steps", self.num_steps, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("max_to_keep", self.max_to_keep, minimum=1)
        check_int("eval_every", self.eval_every, minimum=0)
        check_int("log_every", self.log_every, minimum=1)
        check_bool("allow_config_change", self.allow_config_change)


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
    """Appends to ``metrics.jsonl`` and writes TensorBoard scalars (process 0, with a workdir)."""

    def __init__(self, workdir: str | None, enabled: bool):
        self.enabled = enabled and workdir is not None
        self._jsonl = None
        self._tensorboard = None
        if self.enabled:
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
# The training loop
# ----------------------------------------------------------------------------------------------


def _host_scalars(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    return {name: float(value) for name, value in jax.device_get(dict(metrics)).items()}


def _prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in metrics.items()}


def fit(
    state: TrainState,
    train_step: TrainStep,
    loader: Loader,
    *,
    workdir: str | os.PathLike | None,
    train_config: TrainConfig,
    mesh: Mesh | None = None,
    config: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    batch_transform: BatchTransform | None = None,
    throughput: tuple[str, Callable[[Any], int]] | None = None,
    external_variables: ExternalVariables | None = None,
    on_log: Callable[[int, Mapping[str, float]], None] | None = None,
    on_step: StepHook | None = None,
    export_fn: Callable[[TrainState], Any] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Runs ``train_step`` up to ``train_config.num_steps`` updates, resuming from ``workdir``.

    Args:
      state: the fresh state of update 0 (on ``mesh``, replicated); replaced by the newest
        checkpoint of ``workdir`` when there is one.
      train_step: ``(state, batch) -> (state, metrics)`` (:func:`make_step`), jitted on ``mesh``;
        ``metrics`` holds f32[] scalars, ``loss`` and ``grad_norm`` among them.
      loader: a :class:`Loader`; batch ``t`` of ``loader.iter_from(t)`` feeds update ``t + 1``.
      workdir: the run's folder (checkpoints, ``metrics.jsonl``, TensorBoard events,
        ``config.json``); None = write nothing and start from ``state``.
      train_config: loop options (``seed`` is not read here: ``state`` carries the keys).
      mesh: the device mesh the step was built for; None = all devices.
      config: configuration (JSON-able) stored with the checkpoints after ``{"train": ...}``.
      eval_fn: optional ``eval_fn(state, step) -> {name: value}``, run every
        ``train_config.eval_every`` steps and at the end; its metrics go to ``metrics.jsonl``
        (``kind: "eval"``), TensorBoard (``eval/<name>``) and the returned metrics
        (``eval/<name>``).
      batch_transform: optional ``transform(variables, step, host_batch) -> (host_batch,
        metrics)`` applied to the batch of update ``step`` (1-based) with the variables entering
        that update, before it is placed on the devices (e.g. RA-SGG's retrieval-augmented soft
        targets); its float metrics are logged with the step's training metrics. A transform
        with a true ``wants_dropout_key`` attribute is also given ``dropout_key=`` the key the
        update draws its dropout from.
      throughput: optional ``(name, count_fn)``: ``perf/<name>_per_sec`` is logged with
        ``count_fn(host_batch)`` examples per batch (e.g. relations); ``perf/steps_per_sec``
        always is.
      external_variables: a frozen subtree of ``state``'s variables that checkpoints leave out
        (:class:`~sgg_jax.train.checkpoint.ExternalVariables`, e.g. a pretrained detector read
        from a file): ``state`` must hold it (re-read from its source), and a resumed checkpoint
        takes it from ``state`` once its digest matches (else one DataError naming the source).
      on_log: ``on_log(step, metrics)`` at every logged step, with the training metrics and
        ``perf/*`` (e.g. a line on stdout).
      on_step: ``on_step(step, state, metrics, eval_metrics)`` after every update, its evaluation
        (``eval_metrics``, None when none ran) and its checkpoint.
      export_fn: ``export_fn(state)`` once the run has reached ``num_steps`` (also when the
        workdir was already complete).

    Returns:
      ``(state, metrics)``: the final state (on the mesh) and the metrics of the last step (train
      metrics, plus ``eval/<name>`` of the last evaluation).

    Raises:
      FloatingPointError: the loss or the gradient norm of a step is NaN or infinite (the message
        names the step); checkpoints already written are kept.
      ConfigError: the loader has fewer batches than ``num_steps``, or its batch does not split
        over the devices, or the workdir was trained with another configuration (without
        ``train_config.allow_config_change``).
      DataError: the workdir has checkpoints but none is intact (a broken newest one is named
        in a warning and the run resumes from the newest intact one).
    """
    workdir = None if workdir is None else os.path.abspath(os.fspath(workdir))
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
    num_steps = train_config.num_steps
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    _check_loader(loader, num_steps, mesh)
    is_chief = jax.process_index() == 0
    checkpointer = None
    if workdir is not None:
        recorded_train = jsonable(train_config)
        del recorded_train["allow_config_change"]
        checkpointer = Checkpointer(
            workdir,
            save_every=train_config.checkpoint_every,
            max_to_keep=train_config.max_to_keep,
            async_save=train_config.async_checkpointing,
            config={"train": recorded_train, **jsonable(dict(config or {}))},
            allow_config_change=train_config.allow_config_change,
            external=external_variables,
        )
    writer = None
    progress = None
    try:
        start_step = 0
        restored = None if checkpointer is None else checkpointer.restore_latest(state)
        if restored is not None:
            state, start_step = restored
            _LOG.info("resuming %s from step %d", workdir, start_step)
        if is_chief and workdir is not None:
            _truncate_metrics(workdir, start_step)
        if start_step >= num_steps:
            metrics = _last_recorded_metrics(workdir, eval_fn is not None)
        else:
            writer = _MetricsWriter(workdir, enabled=is_chief)
            progress = tqdm.tqdm(
                total=num_steps,
                initial=start_step,
                desc="train",
                unit="step",
                disable=not (train_config.progress and is_chief),
                dynamic_ncols=True,
            )
            state, metrics = _run_steps(
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
                throughput=throughput,
                on_log=on_log,
                on_step=on_step,
            )
        if export_fn is not None:
            export_fn(state)
        return state, metrics
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
        if checkpointer is not None:
            checkpointer.close()


def _check_loader(loader: Loader, num_steps: int, mesh: Mesh) -> None:
    batch_size = loader_batch_size(loader)
    if batch_size is not None:
        mesh_lib.check_batch_size(batch_size, mesh)
    if loader.num_batches is not None and loader.num_batches < num_steps:
        raise ConfigError(
            "num_steps",
            f"{num_steps} steps but the loader yields only {loader.num_batches} batches "
            "(raise num_epochs or set it to None)",
        )


def _run_steps(
    *,
    state: TrainState,
    train_step: TrainStep,
    batches: Iterator[Any],
    start_step: int,
    num_steps: int,
    mesh: Mesh,
    train_config: TrainConfig,
    eval_fn: EvalFn | None,
    checkpointer: Checkpointer | None,
    writer: _MetricsWriter,
    progress: tqdm.tqdm,
    batch_transform: BatchTransform | None,
    throughput: tuple[str, Callable[[Any], int]] | None,
    on_log: Callable[[int, Mapping[str, float]], None] | None,
    on_step: StepHook | None,
) -> tuple[TrainState, dict[str, Any]]:
    last_train: dict[str, float] = {}
    last_eval: dict[str, Any] = {}
    window_start, window_steps, window_examples = time.perf_counter(), 0, 0

    def prepare(batch: Any, step: int, state: TrainState):
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
        num_examples = 0 if throughput is None else int(throughput[1](host_batch))
        state, device_metrics = train_step(state, device_batch)
        step_extra = extra
        if step < num_steps:  # prepare the next batch while the devices compute
            host_batch, device_batch, extra = prepare(next(batches), step + 1, state)
        metrics = {**_host_scalars(device_metrics), **step_extra}
        check_finite(metrics, step)
        last_train = metrics

        window_steps += 1
        window_examples += num_examples * jax.process_count()
        final = step == num_steps
        if step % train_config.log_every == 0 or final:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            perf = {"perf/steps_per_sec": window_steps / elapsed}
            if throughput is not None:
                perf[f"perf/{throughput[0]}_per_sec"] = window_examples / elapsed
            writer.write(step, "train", {**metrics, **perf})
            if on_log is not None:
                on_log(step, {**metrics, **perf})
            postfix = {f"{name.split('/')[-1]}": f"{value:.2f}" for name, value in perf.items()}
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", **postfix, refresh=False)
            window_start, window_steps, window_examples = time.perf_counter(), 0, 0
        progress.update(1)

        step_eval = None
        if eval_fn is not None and (
            final or (train_config.eval_every > 0 and step % train_config.eval_every == 0)
        ):
            step_eval = last_eval = jsonable(dict(eval_fn(state, step)))
            writer.write(step, "eval", last_eval)
        if checkpointer is not None:
            checkpointer.maybe_save(step, state, final=final)
        if on_step is not None:
            on_step(step, state, metrics, step_eval)
    return state, {**last_train, **_prefixed(last_eval, "eval/")}


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


# ----------------------------------------------------------------------------------------------
# Relation models: state, optimizer and step from a flax model
# ----------------------------------------------------------------------------------------------


def _count_relations(batch: SceneGraphBatch) -> int:
    """Relation candidates classified: the real (foreground and background) pairs."""
    return int(np.asarray(batch.pair_mask).sum())


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
    external_variables: ExternalVariables | None = None,
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
      external_variables: a frozen subtree (e.g. that detector, merged by ``init_variables``)
        left out of the checkpoints (see :func:`fit`).

    Returns:
      ``(state, metrics)``: the final state (on the mesh) and the metrics of the last step (train
      metrics, plus ``eval/<name>`` of the last evaluation).

    Raises:
      FloatingPointError: the loss or the gradient norm of a step is NaN or infinite (the message
        names the step); checkpoints already written are kept.
      ConfigError: the loader has fewer batches than ``num_steps``, or its batch does not split
        over the devices.
    """
    num_steps = train_config.num_steps
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    _check_loader(loader, num_steps, mesh)
    optimizer, schedule = make_optimizer(optim_config, num_steps)
    if trainable is not None:
        optimizer = freeze(optimizer, trainable)
    example = loader.dataset[0] if example_batch is None else example_batch
    state = create_train_state(model, optimizer, example, train_config.seed, mesh=mesh)
    if callable(init_variables):
        init_variables = init_variables(jax.device_get(state.variables))
    if init_variables is not None:
        state = _with_variables(state, init_variables, optimizer, mesh)
    config = {
        "optim": jsonable(optim_config),
        # The global batch: a run resumes on another number of processes with the same record.
        "pipeline": {
            **jsonable(loader.config),
            "batch_size": loader.config.batch_size * loader.config.resolved_shards()[1],
        },
        **jsonable(dict(config or {})),
    }
    train_step = make_train_step(model, loss_fn, optimizer, mesh=mesh, learning_rate_fn=schedule)
    return fit(
        state,
        train_step,
        loader,
        workdir=workdir,
        train_config=train_config,
        mesh=mesh,
        config=config,
        eval_fn=eval_fn,
        batch_transform=batch_transform,
        throughput=("relations", _count_relations),
        external_variables=external_variables,
    )


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
