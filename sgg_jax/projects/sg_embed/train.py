"""Training and inference of scene-graph embeddings (Maheshwari et al., AAAI 2021).

A :class:`~sgg_jax.projects.sg_embed.sg_gcn.SceneGraphGCN` maps each scene graph to a unit vector; it is trained
from an ``N x N`` supervision similarity ``S`` of the training images (caption similarities,
:mod:`sgg_jax.projects.sg_embed.similarity`) with triplets ``(A, P, N)`` from a sampler
(:mod:`sgg_jax.projects.sg_embed.triplet_samplers`) and one of the objectives of
:mod:`sgg_jax.projects.sg_embed.losses`:

* ``ranking``: BCE of ``sigmoid((f_A.f_P - f_A.f_N) / nu)`` against ``s_AP / (s_AP + s_AN)``;
* ``triplet``: ``max(f_A.f_N - f_A.f_P + m, 0)`` (binary labels: P positive, N negative);
* ``infonce``: cross-entropy of picking P among {P, N} by ``f_A.f_X / lambda`` (binary labels).

One epoch visits every training image once as an anchor, in a seeded random order, in batches of
``batch_size`` anchors (the paper: Adam, learning rate 1e-4, batch 16). For every batch the sampler
draws one ``(P, N)`` per anchor from the anchor's row of ``S``; the distinct images among anchors,
positives and negatives (at most ``3 * batch_size``) are embedded together in one padded
:class:`~sgg_jax.projects.sg_embed.graph_batch.GraphBatch` of static size ``3 * batch_size`` (so BatchNorm sees each
graph once, and every step has the same shapes: one compilation). The last batch of an epoch is
padded with masked anchors.

Training runs on the library trainer (:func:`sgg_jax.train.loop.fit`): :class:`TripletBatches` is
its loader (random access by step), the step is :func:`sgg_jax.train.loop.make_step` of the
objective on one device (params, BatchNorm statistics and Adam state donated), the optimizer is
:func:`sgg_jax.train.optim.make_optimizer`'s (Adam at a constant rate), and with a ``workdir`` the run
checkpoints and resumes like every other. All randomness comes from ``seed``: anchor order and triplets from ``numpy.random.default_rng([seed,
epoch])``, initialisation from ``jax.random.key(seed)``; the same seed gives the same run.

:func:`embed_graphs` embeds any list of graphs (also graphs without objects, e.g. noisy queries with
every relation removed: their embedding is the image node's) in fixed-size batches with one compiled
function; graphs beyond the node / edge budgets are truncated and counted.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from sgg_jax.errors import ConfigError, DataError, check_int, is_finite_number
from sgg_jax.projects.sg_embed import losses as embedding_losses
from sgg_jax.projects.sg_embed.graph_batch import GraphBatch, pad_scene_graphs
from sgg_jax.projects.sg_embed.sg_gcn import SceneGraphGCN, SGGCNConfig
from sgg_jax.projects.sg_embed.triplet_samplers import (
    SAMPLERS,
    check_similarity_range,
    sample_triplets,
)
from sgg_jax.structures import SceneGraph
from sgg_jax.train import export as export_lib
from sgg_jax.train import loop
from sgg_jax.train import mesh as mesh_lib
from sgg_jax.train.checkpoint import jsonable
from sgg_jax.train.optim import OptimConfig, make_optimizer
from sgg_jax.train.state import TrainState

_LOG = logging.getLogger(__name__)

OBJECTIVES = ("ranking", "triplet", "infonce")


@dataclasses.dataclass(frozen=True)
class EmbedTrainConfig:
    """Options of :func:`train_embedding`; invalid values raise :class:`ConfigError`.

    Attributes:
      objective: ``ranking``, ``triplet`` or ``infonce``.
      sampler: ``random``, ``extreme``, ``probability`` or ``reject``.
      epochs: passes over the training images as anchors.
      batch_size: anchors per step.
      learning_rate: Adam learning rate.
      nu: Ranking loss temperature.
      margin: Triplet loss margin.
      temperature: InfoNCE temperature.
      max_nodes: node budget per graph (objects + image node + sink).
      max_edges: edge budget per graph (relations + one ``__in_image__`` edge per object).
      eval_batch_size: graphs per batch in :func:`embed_graphs`.
      seed: seed of initialisation, anchor order and triplets.
    """

    objective: str = "ranking"
    sampler: str = "probability"
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-4
    nu: float = embedding_losses.DEFAULT_NU
    margin: float = embedding_losses.DEFAULT_MARGIN
    temperature: float = embedding_losses.DEFAULT_TEMPERATURE
    max_nodes: int = 42
    max_edges: int = 256
    eval_batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError("sampler", f"must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("max_nodes", self.max_nodes, minimum=3)
        check_int("max_edges", self.max_edges, minimum=max(1, self.max_nodes - 2))
        check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        check_int("seed", self.seed, minimum=0)
        for name in ("learning_rate", "nu", "temperature"):
            value = getattr(self, name)
            if not is_finite_number(value) or value <= 0:
                raise ConfigError(name, f"must be a finite number > 0, got {value!r}")
        if not is_finite_number(self.margin) or self.margin < 0:
            raise ConfigError("margin", f"must be a finite number >= 0, got {self.margin!r}")


def graph_budgets(graphs: Sequence[SceneGraph]) -> tuple[int, int]:
    """The smallest ``(max_nodes, max_edges)`` that hold every graph without truncation."""
    most_objects = max((g.num_objects for g in graphs), default=0)
    most_edges = max((g.num_relations + g.num_objects for g in graphs), default=0)
    max_nodes = most_objects + 2
    return max_nodes, max(most_edges, max_nodes - 2, 1)


class Embedder:
    """Embeds lists of scene graphs with fixed variables; one compiled function for all batches.

    Attributes:
      model: the GCN.
      variables: ``{"params", "batch_stats"}``.
      max_nodes, max_edges, batch_size: the static batch shape.
      num_truncated_nodes, num_truncated_edges: totals over every graph embedded so far.
    """

    def __init__(
        self,
        model: SceneGraphGCN,
        variables: Any,
        *,
        max_nodes: int,
        max_edges: int,
        batch_size: int = 64,
    ):
        self.model = model
        self.variables = variables
        self.max_nodes, self.max_edges, self.batch_size = max_nodes, max_edges, batch_size
        self.num_truncated_nodes = 0
        self.num_truncated_edges = 0
        self._apply = _compiled_embed(model.config)

    def __call__(self, graphs: Sequence[SceneGraph]) -> np.ndarray:
        """float32[len(graphs), D] unit embeddings (a graph without objects: the image node's)."""
        graphs = list(graphs)
        config = self.model.config
        outputs = []
        for start in range(0, len(graphs), self.batch_size):
            chunk = graphs[start : start + self.batch_size]
            batch = pad_scene_graphs(
                chunk,
                self.max_nodes,
                self.max_edges,
                num_object_classes=config.num_object_classes,
                num_predicates=config.num_predicates,
                batch_size=self.batch_size,
            )
            self.num_truncated_nodes += int(batch.num_truncated_nodes.sum())
            self.num_truncated_edges += int(batch.num_truncated_edges.sum())
            outputs.append(np.asarray(self._apply(self.variables, batch))[: len(chunk)])
        if not outputs:
            return np.zeros((0, config.output_dim), np.float32)
        return np.concatenate(outputs).astype(np.float32)


def _check_similarity(similarity: Any, num_graphs: int) -> np.ndarray:
    matrix = np.asarray(similarity)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError("similarity", f"must be a square [N, N] matrix, got shape {matrix.shape}")
    if matrix.shape[0] != num_graphs:
        raise ConfigError(
            "similarity",
            f"is {matrix.shape[0]} x {matrix.shape[1]} but there are {num_graphs} graphs",
        )
    if not np.issubdtype(matrix.dtype, np.number) or not np.all(np.isfinite(matrix)):
        raise DataError("must hold finite numbers", field="similarity", record_kind="matrix")
    return matrix.astype(np.float32)


def _objective_loss(objective: str, nu: float, margin: float, temperature: float) -> Callable:
    if objective == "ranking":

        def loss(fa, fp, fn, s_ap, s_an, mask):
            return embedding_losses.ranking_loss(fa, fp, fn, s_ap, s_an, mask, nu=nu)

    elif objective == "triplet":

        def loss(fa, fp, fn, s_ap, s_an, mask):
            return embedding_losses.triplet_loss(fa, fp, fn, mask, margin=margin)

    else:

        def loss(fa, fp, fn, s_ap, s_an, mask):
            return embedding_losses.info_nce_loss(fa, fp, fn, mask, temperature=temperature)

    return loss


def _stack_rows(padded: GraphBatch, rows: np.ndarray) -> GraphBatch:
    """Rows of a pre-padded batch (host numpy), ``-1`` = an empty padding graph."""
    rows = np.asarray(rows, np.int64)
    take = np.where(rows < 0, 0, rows)
    valid = rows >= 0
    node_mask = padded.node_mask[take] & valid[:, None]
    edge_mask = padded.edge_mask[take] & valid[:, None]
    sink = padded.max_nodes - 1
    return padded.replace(
        node_labels=np.where(node_mask, padded.node_labels[take], 0),
        node_mask=node_mask,
        edges=np.where(edge_mask[..., None], padded.edges[take], sink),
        edge_labels=np.where(edge_mask, padded.edge_labels[take], 0),
        edge_mask=edge_mask,
        graph_mask=padded.graph_mask[take] & valid,
        num_truncated_nodes=np.where(valid, padded.num_truncated_nodes[take], 0),
        num_truncated_edges=np.where(valid, padded.num_truncated_edges[take], 0),
    )


class TripletBatches:
    """The training batches of :func:`train_embedding`, random access by step (a trainer loader).

    Epoch ``e`` draws the anchor order and, batch after batch, the triplets from
    ``numpy.random.default_rng([seed, e])``; :meth:`iter_from` replays the draws of the earlier
    batches of its epoch, so batch ``t`` is the same whether a run starts at 0 or resumes at ``t``.
    A batch is a dict: ``graphs`` (a :class:`GraphBatch` of ``3 * batch_size`` rows, the distinct
    anchors, positives and negatives, padded with empty graphs), ``anchor``, ``positive``,
    ``negative`` (int32[batch_size] rows of ``graphs``), ``s_ap``, ``s_an`` (float32[batch_size]
    similarities) and ``mask`` (bool[batch_size], False for the padding anchors of the last batch).

    Attributes:
      steps_per_epoch: ``ceil(num_graphs / batch_size)``.
      num_batches: ``epochs * steps_per_epoch``.
      batch_size: anchors per batch.
    """

    def __init__(
        self,
        padded: GraphBatch,
        similarity: np.ndarray,
        sampler: str,
        *,
        batch_size: int,
        epochs: int,
        seed: int,
    ):
        self.padded = padded
        self.similarity = similarity
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.num_graphs = similarity.shape[0]
        self.steps_per_epoch = math.ceil(self.num_graphs / batch_size)
        self.num_batches = epochs * self.steps_per_epoch

    def iter_from(self, step: int):
        """Batches ``step, step + 1, ..., num_batches - 1``."""
        first_epoch, first_index = divmod(step, self.steps_per_epoch)
        for epoch in range(first_epoch, self.num_batches // self.steps_per_epoch):
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.num_graphs)
            for index in range(self.steps_per_epoch):
                anchors = order[index * self.batch_size : (index + 1) * self.batch_size]
                triplets = sample_triplets(self.sampler, self.similarity, anchors, rng)
                if epoch == first_epoch and index < first_index:
                    continue  # drawn only to advance rng to this batch's state
                yield self._batch(anchors, triplets)

    def _batch(self, anchors: np.ndarray, triplets) -> dict[str, Any]:
        batch_size = self.batch_size
        count = anchors.shape[0]
        members, inverse = np.unique(
            np.concatenate([anchors, triplets.positive, triplets.negative]), return_inverse=True
        )
        rows = np.full(3 * batch_size, -1, np.int64)
        rows[: members.shape[0]] = members
        position = np.zeros((3, batch_size), np.int32)
        position[:, :count] = inverse.reshape(3, count)
        mask = np.zeros(batch_size, bool)
        mask[:count] = True
        s_ap = np.zeros(batch_size, np.float32)
        s_an = np.zeros(batch_size, np.float32)
        s_ap[:count] = self.similarity[anchors, triplets.positive]
        s_an[:count] = self.similarity[anchors, triplets.negative]
        return {
            "graphs": _stack_rows(self.padded, rows),
            "anchor": position[0],
            "positive": position[1],
            "negative": position[2],
            "s_ap": s_ap,
            "s_an": s_an,
            "mask": mask,
        }


def optim_config(learning_rate: float) -> OptimConfig:
    """Adam at a constant rate (the paper's), as the trainer's optimizer configuration."""
    return OptimConfig(
        optimizer="adamw", learning_rate=learning_rate, weight_decay=0.0, clip_norm=0.0
    )


@functools.lru_cache(maxsize=16)
def _compiled_step(
    model_config: SGGCNConfig,
    objective: str,
    learning_rate: float,
    nu: float,
    margin: float,
    temperature: float,
    num_steps: int,
):
    """``(model, optimizer, jitted trainer step, mesh)``, shared by runs that differ only in seed /
    data; the step runs on one device.

    Cached so that a grid of seeds (or repeated calls) compiles the step once per shape.
    """
    model = SceneGraphGCN(model_config)
    loss_of = _objective_loss(objective, nu, margin, temperature)
    optimizer, schedule = make_optimizer(optim_config(learning_rate), num_steps)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])

    def embedding_loss(params, collections, batch, dropout_key):
        del dropout_key  # the GCN has no dropout
        (embedding, _), updates = model.apply(
            {"params": params, **collections},
            batch["graphs"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = loss_of(
            embedding[batch["anchor"]],
            embedding[batch["positive"]],
            embedding[batch["negative"]],
            batch["s_ap"],
            batch["s_an"],
            batch["mask"],
        )
        return loss, ({}, {"batch_stats": updates["batch_stats"]})

    step = loop.make_step(embedding_loss, optimizer, mesh=mesh, learning_rate_fn=schedule)
    return model, optimizer, step, mesh


@functools.lru_cache(maxsize=16)
def _compiled_embed(model_config: SGGCNConfig):
    model = SceneGraphGCN(model_config)
    return jax.jit(lambda variables, batch: model.apply(variables, batch, train=False)[0])


@dataclasses.dataclass
class EmbedTrainResult:
    """What :func:`train_embedding` returns.

    Attributes:
      variables: trained ``{"params", "batch_stats"}``.
      embedder: an :class:`Embedder` with the trained variables.
      losses: mean training loss per epoch.
      steps: updates of the run at its end (all epochs, also when resumed).
      train_seconds: wall time of this call's training (compilation included, evaluation not).
      history: ``eval_fn`` results per evaluated epoch (``{"epoch": e, **metrics}``).
      num_truncated_nodes, num_truncated_edges: truncation of the training graphs by the budgets.
    """

    variables: Any
    embedder: Embedder
    losses: list[float]
    steps: int
    train_seconds: float
    history: list[dict[str, Any]]
    num_truncated_nodes: int
    num_truncated_edges: int


def train_embedding(
    graphs: Sequence[SceneGraph],
    similarity: Any,
    model_config: SGGCNConfig,
    config: EmbedTrainConfig,
    *,
    eval_fn: Callable[[Embedder], dict[str, Any]] | None = None,
    eval_every: int = 0,
    log: Callable[[str], None] | None = None,
    workdir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    init_variables: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> EmbedTrainResult:
    """Trains a scene-graph GCN on ``graphs`` supervised by ``similarity`` (module docstring).

    Runs on the library trainer (:func:`sgg_jax.train.loop.fit`) with :class:`TripletBatches` and
    the optimizer of :func:`optim_config`; with a ``workdir`` it checkpoints and resumes there.

    Args:
      graphs: N >= 3 training scene graphs over the model's vocabulary.
      similarity: float[N, N] supervision similarity of the graphs (row / column ``i`` = ``graphs[i]``),
        in ``[-1, 1]`` for the ``probability`` / ``reject`` samplers.
      model_config: the GCN's sizes.
      config: training options.
      eval_fn: called with an :class:`Embedder` of the current variables every ``eval_every`` epochs
        and after the last; its dicts are collected in ``history``.
      eval_every: epochs between evaluations (0 = only after the last epoch, when ``eval_fn``).
      log: called with one progress line per epoch.
      workdir: the run's folder (checkpoints, ``metrics.jsonl``, TensorBoard); a run there
        resumes from its newest checkpoint. None = nothing written.
      checkpoint_every: with a workdir, save every this many steps (and at the end); 0 = only at
        the end.
      init_variables: optional function of the freshly initialised variables returning the
        initial ones, e.g. ``functools.partial(sg_gcn.with_tables, object_word_vectors=...)``.

    Returns:
      :class:`EmbedTrainResult` (``losses`` and ``history`` of the epochs trained by this call; an
      epoch resumed in its middle averages the losses of the steps after the resume).

    Raises:
      ConfigError: fewer than 3 graphs, a similarity that is not ``[N, N]``, bad options.
      DataError: a graph that does not fit the vocabulary (names the image and field), non-finite
        similarities, or similarities outside ``[-1, 1]`` for the ``probability`` / ``reject``
        samplers (:func:`sgg_jax.projects.sg_embed.triplet_samplers.check_similarity_range`).
      FloatingPointError: a step's loss or gradient norm is NaN or infinite (names the step).
    """
    graphs = list(graphs)
    if len(graphs) < 3:
        raise ConfigError("graphs", f"need at least 3 training graphs, got {len(graphs)}")
    similarity = _check_similarity(similarity, len(graphs))
    # Probability / Reject read similarities in [-1, 1]: fail here, not at the first bad batch.
    check_similarity_range(similarity, config.sampler)
    check_int("eval_every", eval_every, minimum=0)
    check_int("checkpoint_every", checkpoint_every, minimum=0)
    num = len(graphs)
    slots = 3 * config.batch_size
    padded = pad_scene_graphs(
        graphs,
        config.max_nodes,
        config.max_edges,
        num_object_classes=model_config.num_object_classes,
        num_predicates=model_config.num_predicates,
    )
    batches = TripletBatches(
        padded,
        similarity,
        config.sampler,
        batch_size=config.batch_size,
        epochs=config.epochs,
        seed=config.seed,
    )
    steps_per_epoch = batches.steps_per_epoch
    model, optimizer, step, mesh = _compiled_step(
        model_config,
        config.objective,
        config.learning_rate,
        config.nu,
        config.margin,
        config.temperature,
        batches.num_batches,
    )
    first = _stack_rows(padded, np.arange(min(slots, num)).tolist() + [-1] * max(0, slots - num))
    first = jax.tree.map(np.asarray, first)
    variables = model.init(jax.random.key(config.seed), first, train=False)
    if init_variables is not None:
        variables = init_variables(variables)
    params = variables["params"]
    state = mesh_lib.replicate(
        TrainState(
            step=np.zeros((), np.int32),
            params=params,
            opt_state=optimizer.init(params),
            collections={"batch_stats": variables.get("batch_stats", {})},
            rng=jax.random.key(config.seed),
        ),
        mesh,
    )

    def embedder_of(state: TrainState) -> Embedder:
        return Embedder(
            model,
            {"params": state.params, "batch_stats": state.collections["batch_stats"]},
            max_nodes=config.max_nodes,
            max_edges=config.max_edges,
            batch_size=config.eval_batch_size,
        )

    losses, history, epoch_losses = [], [], []
    eval_seconds = [0.0]

    def evaluate(state: TrainState, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        metrics = eval_fn(embedder_of(state))
        history.append({"epoch": step // steps_per_epoch, **metrics})
        eval_seconds[0] += time.perf_counter() - start
        return metrics

    def on_step(step, state, metrics, eval_metrics):
        del state
        epoch_losses.append(metrics["loss"])
        if step % steps_per_epoch:
            return
        epoch = step // steps_per_epoch
        epoch_loss = float(np.mean(np.asarray(epoch_losses, np.float32)))
        epoch_losses.clear()
        losses.append(epoch_loss)
        line = f"epoch {epoch}/{config.epochs}: loss {epoch_loss:.4f}"
        if eval_metrics is not None:
            line += " " + " ".join(
                f"{k} {v:.4f}" for k, v in history[-1].items() if isinstance(v, float)
            )
        if log is not None:
            log(line)

    start = time.perf_counter()
    state, _ = loop.fit(
        state,
        step,
        batches,
        workdir=workdir,
        train_config=loop.TrainConfig(
            num_steps=batches.num_batches,
            seed=config.seed,
            checkpoint_every=checkpoint_every,
            eval_every=eval_every * steps_per_epoch,
            log_every=steps_per_epoch,
            progress=False,
        ),
        mesh=mesh,
        config={"embed": jsonable(config), "model": jsonable(model_config)},
        eval_fn=None if eval_fn is None else evaluate,
        throughput=("anchors", lambda batch: int(batch["mask"].sum())),
        on_step=on_step,
    )
    return EmbedTrainResult(
        variables={"params": state.params, "batch_stats": state.collections["batch_stats"]},
        embedder=embedder_of(state),
        losses=losses,
        steps=int(state.step),
        train_seconds=time.perf_counter() - start - eval_seconds[0],
        history=history,
        num_truncated_nodes=int(padded.num_truncated_nodes.sum()),
        num_truncated_edges=int(padded.num_truncated_edges.sum()),
    )


def initial_embedder(
    model_config: SGGCNConfig,
    *,
    max_nodes: int,
    max_edges: int,
    seed: int = 0,
    batch_size: int = 64,
    init_variables: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Embedder:
    """An :class:`Embedder` of the untrained GCN (initial parameters and BatchNorm statistics);
    ``init_variables`` as in :func:`train_embedding`."""
    model = SceneGraphGCN(model_config)
    empty = pad_scene_graphs(
        [],
        max_nodes,
        max_edges,
        num_object_classes=model_config.num_object_classes,
        num_predicates=model_config.num_predicates,
        batch_size=1,
    )
    variables = model.init(jax.random.key(seed), empty, train=False)
    if init_variables is not None:
        variables = init_variables(variables)
    return Embedder(
        model, variables, max_nodes=max_nodes, max_edges=max_edges, batch_size=batch_size
    )


# ---------------------------------------------------------------------------------------------
# Saving and loading trained embedders
# ---------------------------------------------------------------------------------------------

EMBEDDER_CONFIG = "embedder.json"
EMBEDDER_PARAMS = "variables"
EMBEDDER_FUNCTION = "embed.jax_exported"
EMBEDDER_FILES = (EMBEDDER_PARAMS, EMBEDDER_FUNCTION)
GRAPH_INPUTS = ("node_labels", "node_mask", "edges", "edge_labels", "edge_mask", "graph_mask")


def save_embedder(
    embedder: Embedder,
    path: str | os.PathLike,
    *,
    object_names: Sequence[str] | None = None,
    predicate_names: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Writes a trained embedder to the folder ``path`` (created; must not exist).

    Layout (written with :mod:`sgg_jax.train.export`'s variables and function files)::

        variables/          params and BatchNorm statistics (orbax StandardCheckpointer)
        embedder.json       model sizes, budgets, vocabulary names, ``extra``, and ``files``:
                            the SHA-256 of every file of ``variables/`` and of the function
        embed.jax_exported  ``embed(variables, node_labels, node_mask, edges, edge_labels,
                            edge_mask, graph_mask) -> f32[B, D]`` for the saved batch shape,
                            serialised with ``jax.export`` (runs without sgg_jax's model code)

    Loading checks the checksums first (:func:`sgg_jax.train.export.verify_checksums`): a file
    changed, damaged, missing or added is a one-line DataError naming it; a folder saved before
    the checksums were recorded loads with one warning that it is unverified.

    Returns:
      The folder written.
    """
    from sgg_jax.train.checkpoint import write_json

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise ConfigError("path", f"{path} already exists")
    os.makedirs(path)
    variables = jax.tree.map(np.asarray, jax.device_get(embedder.variables))
    export_lib.save_variables(os.path.join(path, EMBEDDER_PARAMS), variables)
    config = embedder.model.config
    example = pad_scene_graphs(
        [],
        embedder.max_nodes,
        embedder.max_edges,
        num_object_classes=config.num_object_classes,
        num_predicates=config.num_predicates,
        batch_size=embedder.batch_size,
    )
    model = embedder.model

    def embed(variables, node_labels, node_mask, edges, edge_labels, edge_mask, graph_mask):
        batch = GraphBatch(
            node_labels=node_labels,
            node_mask=node_mask,
            edges=edges,
            edge_labels=edge_labels,
            edge_mask=edge_mask,
            graph_mask=graph_mask,
            num_truncated_nodes=jax.numpy.zeros(graph_mask.shape, jax.numpy.int32),
            num_truncated_edges=jax.numpy.zeros(graph_mask.shape, jax.numpy.int32),
        )
        return model.apply(variables, batch, train=False)[0]

    specs = [
        jax.ShapeDtypeStruct(np.shape(getattr(example, n)), getattr(example, n).dtype)
        for n in GRAPH_INPUTS
    ]
    variable_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    exported = jax.export.export(jax.jit(embed))(variable_specs, *specs)
    export_lib.write_exported(os.path.join(path, EMBEDDER_FUNCTION), exported)
    write_json(
        os.path.join(path, EMBEDDER_CONFIG),
        {
            "format": "sgg_jax.sg_embed",
            "model": {
                "num_object_classes": config.num_object_classes,
                "num_predicates": config.num_predicates,
                "embed_dim": config.embed_dim,
                "hidden_dim": config.hidden_dim,
                "num_layers": config.num_layers,
                "batch_norm_momentum": config.batch_norm_momentum,
            },
            "max_nodes": embedder.max_nodes,
            "max_edges": embedder.max_edges,
            "batch_size": embedder.batch_size,
            "object_names": list(object_names) if object_names is not None else None,
            "predicate_names": list(predicate_names) if predicate_names is not None else None,
            "extra": jsonable(extra or {}),
            export_lib.CHECKSUMS: export_lib.file_checksums(path, EMBEDDER_FILES),
        },
    )
    return path


def _read_embedder_files(path: str) -> tuple[dict[str, Any], Any]:
    config_path = os.path.join(path, EMBEDDER_CONFIG)
    if not os.path.exists(config_path):
        raise DataError("not a saved embedder (no embedder.json)", path=path)
    try:
        document = export_lib.read_json(config_path)
        if not isinstance(document, dict) or document.get("format") != "sgg_jax.sg_embed":
            raise DataError("not an sgg_jax.sg_embed file", path=config_path, field="format")
        if export_lib.CHECKSUMS in document:
            export_lib.verify_checksums(
                path, document[export_lib.CHECKSUMS], EMBEDDER_FILES, named_in=config_path
            )
        else:
            _LOG.warning(
                "%s: embedder saved without checksums; loaded unverified (save it again to "
                "verify it)",
                path,
            )
        variables = export_lib.restore_variables(os.path.join(path, EMBEDDER_PARAMS))
    except export_lib.ExportError as error:
        raise DataError(error.reason, path=error.path) from None
    return document, variables


def load_embedder(path: str | os.PathLike) -> Embedder:
    """Loads :func:`save_embedder`'s folder as an :class:`Embedder` (uses the model code)."""
    path = os.path.abspath(os.fspath(path))
    document, variables = _read_embedder_files(path)
    try:
        model_config = SGGCNConfig(**document["model"])
    except TypeError as error:  # e.g. a field the config no longer has (word vectors: variables)
        raise DataError(
            str(error), path=os.path.join(path, EMBEDDER_CONFIG), field="model"
        ) from None
    model = SceneGraphGCN(model_config)
    return Embedder(
        model,
        variables,
        max_nodes=document["max_nodes"],
        max_edges=document["max_edges"],
        batch_size=document["batch_size"],
    )


def load_exported_embed_function(path: str | os.PathLike) -> Callable[..., jax.Array]:
    """The serialised embed function of a saved embedder, bound to its variables.

    Returns ``embed(node_labels, node_mask, edges, edge_labels, edge_mask, graph_mask) -> f32[B, D]``
    over arrays of the saved batch shape (e.g. the fields of a
    :class:`~sgg_jax.projects.sg_embed.graph_batch.GraphBatch`); it does not call sgg_jax's model code.
    """
    path = os.path.abspath(os.fspath(path))
    _, variables = _read_embedder_files(path)
    try:
        exported = export_lib.read_exported(os.path.join(path, EMBEDDER_FUNCTION))
    except export_lib.ExportError as error:
        raise DataError(error.reason, path=error.path) from None

    def embed(*arrays):
        return exported.call(variables, *arrays)

    return embed


__all__ = [
    "OBJECTIVES",
    "EmbedTrainConfig",
    "EmbedTrainResult",
    "Embedder",
    "graph_budgets",
    "initial_embedder",
    "load_embedder",
    "load_exported_embed_function",
    "save_embedder",
    "train_embedding",
]
