"""Scene-graph embeddings with sg2im's graph triple convolution.

Maheshwari et al., "Scene Graph Embeddings Using Relative Similarity Supervision", AAAI 2021: a
scene graph is embedded by a stack of graph convolution layers
(the triple convolution of sg2im, Johnson et al., "Image Generation from Scene Graphs", CVPR 2018,
``GraphTripleConv``) followed by average pooling of the node states; the embedding is trained with
relative-similarity losses (:mod:`sgg_jax.projects.sg_embed.losses`).

Input: a :class:`~sgg_jax.projects.sg_embed.graph_batch.GraphBatch`, where every graph has an ``__image__`` node
and ``__in_image__`` edges from every object to it. Object nodes and edges start from embedding
tables (``C + 2`` and ``P + 2`` rows, see :mod:`sgg_jax.projects.sg_embed.graph_batch`), optionally initialised
with word vectors.

One layer, for every edge ``(u, p, v)`` with node states ``v_u, v_v`` and edge state ``v_p``
(symbols as in sg2im):

* ``g([v_u, v_p, v_v]) = (m_s, v_p', m_o)``: an MLP (3D -> H -> 2H + D) whose output is split in
  three heads: a message ``m_s`` to the subject (H), the new edge state ``v_p'`` (D) and a message
  ``m_o`` to the object (H);
* ``pooled_i = mean`` of the messages node ``i`` receives (as subject or object); a node that
  receives none (only the image node of a graph without objects) pools the zero vector;
* ``v_i' = normalize(h(pooled_i))`` with ``h`` an MLP (H -> H -> D) (``net2`` in sg2im, psi_n in
  the paper) and ``normalize`` the L2 normalisation of node states.

The graph embedding is the mean of the final node states over the graph's real nodes (objects and
the image node), L2-normalised: f32[B, D].

Details taken from sg2im (``sg2im/graph.py``, ``sg2im/layers.py``):

* every MLP layer is ``Linear -> BatchNorm -> ReLU``, the last one included (sg2im's ``build_mlp``
  with ``batch_norm='batch'`` and ``final_nonlinearity=True``), so node states and the embedding
  are non-negative unit vectors; BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. flax
  ``momentum=0.9``, epsilon 1e-5); Linear weights are Kaiming-normal (``_init_weights``).
* node and edge states keep the embedding size D in every layer. Defaults: H = 512 (sg2im's
  hidden size), D = 300 (GloVe), 5 layers.

Where this module departs from sg2im, and why:

* BatchNorm statistics are taken over real nodes / edges only (masked), so padding never changes a
  result, in training or evaluation. When a batch holds no real edge at all (every graph empty),
  the running averages are left unchanged instead of becoming NaN (:class:`MaskedBatchNorm`).
* Linear layers have no bias: a bias before BatchNorm is cancelled by it (its gradient is zero in
  training); BatchNorm's own bias takes its place.
* Messages are summed with one ``jax.ops.segment_sum`` over the flattened batch (B * Nn segments,
  static), so graphs of any size within the budgets share one compiled function. On GPU, XLA's
  scatter-add is not bitwise deterministic unless ``--xla_gpu_deterministic_ops=true``.
* Embedding tables are N(0, 1) (``nn.Embedding``'s default) unless word vectors are given; then
  rows ``1..C`` (``1..P``) are the word vectors and the rows without one (background, ``__image__``,
  ``__in_image__``) are drawn from N(0, s²) with the init key, ``s`` the standard deviation of the
  word vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.errors import ConfigError, check_interval, check_positive_int
from sgg_jax.masked import masked_mean
from sgg_jax.nn import (
    check_table,
    l2_normalize,
    replace_leaves,
    scope_path,
    table_leaf,
    table_leaf_shape,
)
from sgg_jax.projects.sg_embed.graph_batch import GraphBatch

BATCH_NORM_EPSILON = 1e-5  # PyTorch's nn.BatchNorm1d default, as in sg2im
# sg2im initialises its Linear weights with PyTorch's kaiming_normal_: N(0, 2 / fan_in).
KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

_INT_FIELDS = ("num_object_classes", "num_predicates", "embed_dim", "hidden_dim", "num_layers")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SGGCNConfig:
    """Sizes of the scene-graph GCN; invalid values raise :class:`ConfigError` naming the field.

    Word vectors are initial values of the embedding parameters, put there by :func:`with_tables`;
    configs hold only sizes and compare and hash by value.

    Attributes:
      num_object_classes: C, object classes without background; the node vocabulary has C + 2
        entries (0 background, 1..C classes, C + 1 ``__image__``).
      num_predicates: P, predicates without background; the edge vocabulary has P + 2 entries
        (0 background, 1..P predicates, P + 1 ``__in_image__``).
      embed_dim: D, size of node and edge states in every layer and of the graph embedding.
      hidden_dim: H, hidden size of the MLPs and size of the messages.
      num_layers: number of graph triple convolution layers.
      batch_norm_momentum: flax BatchNorm momentum (0.9 = PyTorch's 0.1).
    """

    num_object_classes: int
    num_predicates: int
    embed_dim: int = 300
    hidden_dim: int = 512
    num_layers: int = 5
    batch_norm_momentum: float = 0.9

    def __post_init__(self):
        for field in _INT_FIELDS:
            object.__setattr__(self, field, check_positive_int(field, getattr(self, field)))
        momentum = check_interval("batch_norm_momentum", self.batch_norm_momentum, "[0, 1)")
        object.__setattr__(self, "batch_norm_momentum", momentum)

    @property
    def num_node_labels(self) -> int:
        """C + 2: background, the classes, ``__image__``."""
        return self.num_object_classes + 2

    @property
    def num_edge_labels(self) -> int:
        """P + 2: background, the predicates, ``__in_image__``."""
        return self.num_predicates + 2

    @property
    def output_dim(self) -> int:
        """Size of the graph embedding (D)."""
        return self.embed_dim

    def replace(self, **changes: Any) -> SGGCNConfig:
        return dataclasses.replace(self, **changes)


def with_tables(
    variables: Mapping[str, Any],
    *,
    object_word_vectors: Any = None,
    predicate_word_vectors: Any = None,
    scope: str | Sequence[str] = (),
) -> dict[str, Any]:
    """The GCN's freshly initialised variables with word vectors in the embedding tables.

    A table of K + 2 rows (background, K names, one added name) takes the word vectors of the K
    names in rows 1..K; its other two rows keep their fresh N(0, 1) draw scaled by ``s``, the
    standard deviation of the K word vectors (1 when they are constant), so they are N(0, s²).

    Args:
      variables: freshly initialised ``{"params": ..., "batch_stats": ...}`` (the scaling
        assumes the fresh N(0, 1) rows).
      object_word_vectors: optional float[C + 1, D] (row 0 background, not used; as
        :func:`sgg_jax.data.word_vectors.name_vectors` returns for ``Vocab.object_names``).
      predicate_word_vectors: optional float[P + 1, D] (row 0 background, not used).
      scope: where the GCN's variables sit inside each collection.

    Returns:
      A new variables dict (the input is not changed).

    Raises:
      ConfigError: naming the table: wrong shape, NaN / inf, or not a GCN's variables.
    """
    scope = scope_path(scope)
    replacements = {}
    for field, vectors, module in (
        ("object_word_vectors", object_word_vectors, "object_embedding"),
        ("predicate_word_vectors", predicate_word_vectors, "predicate_embedding"),
    ):
        if vectors is None:
            continue
        path = ("params", *scope, module, "embedding")
        rows, dim = table_leaf_shape(variables, path, field, "not a scene-graph GCN's variables")
        vectors = check_table(
            field,
            vectors,
            (rows - 1, dim),
            f"({rows - 1}, embed_dim={dim}) with row 0 for background",
        )
        known = vectors[1:]
        spread = float(known.std()) if known.size > 1 else 0.0
        spread = spread if spread > 0 else 1.0
        table = np.float32(spread) * table_leaf(variables, path).astype(np.float32)
        table[1 : rows - 1] = known
        replacements[path] = table
    return replace_leaves(variables, replacements)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class MaskedBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` with statistics over the entries where ``mask`` is True, safe when none is.

    flax's masked statistics are ``0 / 0`` when the mask is all False (e.g. a batch whose graphs
    have no edge). Then the statistics are taken over all entries instead (every output is
    padding, so none is read) and the running averages are left unchanged.
    """

    def __call__(self, x, use_running_average=None, *, mask=None):
        if mask is None:
            return super().__call__(x, use_running_average)
        mask = jnp.asarray(mask, bool)
        any_real = jnp.any(mask)
        stats_mask = jnp.logical_or(mask, jnp.logical_not(any_real))
        previous = None
        if self.is_mutable_collection("batch_stats") and self.has_variable("batch_stats", "mean"):
            previous = {name: self.get_variable("batch_stats", name) for name in ("mean", "var")}
        outputs = super().__call__(x, use_running_average, mask=stats_mask)
        if previous is not None:
            for name, value in previous.items():
                updated = self.get_variable("batch_stats", name)
                self.put_variable("batch_stats", name, jnp.where(any_real, updated, value))
        return outputs


class MaskedMLP(nn.Module):
    """``Linear -> BatchNorm -> ReLU`` per layer (sg2im's ``build_mlp``), statistics over real rows.

    Attributes:
      features: output size of each layer.
      momentum: BatchNorm momentum.
    """

    features: Sequence[int]
    momentum: float

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Applies the MLP to every row; padded rows never enter the batch statistics.

        Args:
          inputs: f32[..., F_in].
          mask: bool[...] real rows.
          train: batch statistics (and running-average updates) instead of running averages.

        Returns:
          f32[..., features[-1]].
        """
        hidden = inputs
        for index, size in enumerate(self.features):
            hidden = nn.Dense(
                size, use_bias=False, kernel_init=KAIMING_NORMAL, name=f"dense{index}"
            )(hidden)
            hidden = MaskedBatchNorm(
                use_running_average=not train,
                momentum=self.momentum,
                epsilon=BATCH_NORM_EPSILON,
                use_fast_variance=False,
                name=f"norm{index}",
            )(hidden, mask=mask[..., None])
            hidden = nn.relu(hidden)
        return hidden


def gather_nodes(node_states: jax.Array, node_index: jax.Array) -> jax.Array:
    """``node_states[b, node_index[b, e]]``: f32[B, Nn, D], int32[B, E] -> f32[B, E, D]."""
    return jnp.take_along_axis(node_states, node_index[..., None], axis=1)


def mean_of_messages(
    to_subject: jax.Array,
    to_object: jax.Array,
    edges: jax.Array,
    edge_mask: jax.Array,
    num_nodes: int,
) -> jax.Array:
    """Average of the messages every node receives, over the real edges of its graph.

    Args:
      to_subject: f32[B, E, H] message of each edge to its subject.
      to_object: f32[B, E, H] message of each edge to its object.
      edges: int32[B, E, 2] ``(subject, object)`` node indices within each graph.
      edge_mask: bool[B, E] real edges; the others send nothing.
      num_nodes: Nn.

    Returns:
      f32[B, Nn, H]; zeros for a node that receives no message.
    """
    batch_size, num_edges, hidden = to_subject.shape
    # Node i of graph b is segment b * Nn + i of the flattened batch.
    offsets = (jnp.arange(batch_size, dtype=jnp.int32) * num_nodes)[:, None]
    segment_ids = jnp.concatenate([edges[..., 0] + offsets, edges[..., 1] + offsets], axis=1)
    valid = jnp.concatenate([edge_mask, edge_mask], axis=1)[..., None]
    messages = jnp.where(valid, jnp.concatenate([to_subject, to_object], axis=1), 0.0)
    num_segments = batch_size * num_nodes
    total = jax.ops.segment_sum(
        messages.reshape(-1, hidden), segment_ids.reshape(-1), num_segments=num_segments
    )
    count = jax.ops.segment_sum(
        valid.reshape(-1).astype(messages.dtype), segment_ids.reshape(-1), num_segments=num_segments
    )
    pooled = total / jnp.maximum(count, 1.0)[:, None]
    return pooled.reshape(batch_size, num_nodes, hidden)


class GraphTripleConv(nn.Module):
    """One graph triple convolution (sg2im ``GraphTripleConv``, average pooling).

    Attributes:
      embed_dim: D, size of node and edge states (in and out).
      hidden_dim: H, size of the messages.
      momentum: BatchNorm momentum.
    """

    embed_dim: int
    hidden_dim: int
    momentum: float

    @nn.compact
    def __call__(
        self,
        node_states: jax.Array,
        edge_states: jax.Array,
        edges: jax.Array,
        node_mask: jax.Array,
        edge_mask: jax.Array,
        *,
        train: bool,
    ) -> tuple[jax.Array, jax.Array]:
        """Updates every node and edge state from the triples it belongs to.

        Args:
          node_states: f32[B, Nn, D].
          edge_states: f32[B, E, D].
          edges: int32[B, E, 2] ``(subject, object)`` node indices.
          node_mask: bool[B, Nn] real nodes.
          edge_mask: bool[B, E] real edges.
          train: batch statistics instead of running averages.

        Returns:
          ``(node_states f32[B, Nn, D], edge_states f32[B, E, D])``: node states are unit vectors
          (zeros where padded), edge states are zeros where padded.
        """
        hidden_dim, embed_dim = self.hidden_dim, self.embed_dim
        # g([v_u, v_p, v_v]) -> (m_s, v_p', m_o)
        triples = jnp.concatenate(
            [
                gather_nodes(node_states, edges[..., 0]),
                edge_states,
                gather_nodes(node_states, edges[..., 1]),
            ],
            axis=-1,
        )
        triple_outputs = MaskedMLP(
            (hidden_dim, 2 * hidden_dim + embed_dim), self.momentum, name="triple_mlp"
        )(triples, edge_mask, train=train)
        to_subject = triple_outputs[..., :hidden_dim]
        new_edge_states = triple_outputs[..., hidden_dim : hidden_dim + embed_dim]
        to_object = triple_outputs[..., hidden_dim + embed_dim :]

        # v_i' = normalize(h(mean of received messages))
        pooled = mean_of_messages(to_subject, to_object, edges, edge_mask, node_states.shape[1])
        new_node_states = MaskedMLP((hidden_dim, embed_dim), self.momentum, name="node_mlp")(
            pooled, node_mask, train=train
        )
        new_node_states = jnp.where(node_mask[..., None], l2_normalize(new_node_states), 0.0)
        new_edge_states = jnp.where(edge_mask[..., None], new_edge_states, 0.0)
        return new_node_states, new_edge_states


# Node and edge embeddings without word vectors: N(0, 1).
WORD_EMBEDDING_INIT = nn.initializers.normal(stddev=1.0)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class SceneGraphGCN(nn.Module):
    """Scene-graph embedding network; called as ``model(batch, train=...)``.

    With ``train=True`` BatchNorm uses (masked) batch statistics and updates its running averages:
    apply with ``mutable=["batch_stats"]``.

    Attributes:
      config: sizes and options.
    """

    config: SGGCNConfig

    @nn.compact
    def __call__(
        self, batch: GraphBatch, train: bool = False
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Embeds every graph of the batch.

        Args:
          batch: B graphs, Nn nodes, E edges (:func:`sgg_jax.projects.sg_embed.graph_batch.pad_scene_graphs`
            built with the config's ``num_object_classes`` and ``num_predicates``).
          train: batch statistics instead of running averages.

        Returns:
          ``(embedding, aux)``. ``embedding``: f32[B, D] unit vectors (zeros for padding graphs).
          ``aux``: ``node_embeddings`` f32[B, Nn, D] final node states (unit vectors, zeros where
          padded) and ``edge_embeddings`` f32[B, E, D] final edge states (zeros where padded).

        Raises:
          ConfigError: the batch was built for another vocabulary, or has malformed shapes.
        """
        config = self.config
        for field in ("num_object_classes", "num_predicates"):
            built_with = getattr(batch, field, None)
            if built_with is not None and built_with != getattr(config, field):
                raise ConfigError(
                    field,
                    f"the batch was padded with {built_with}, the model has {getattr(config, field)}",
                )
        node_labels = jnp.asarray(batch.node_labels, jnp.int32)
        edges = jnp.asarray(batch.edges, jnp.int32)
        if node_labels.ndim != 2 or edges.ndim != 3 or edges.shape[-1] != 2:
            raise ConfigError(
                "batch",
                f"needs node_labels [B, Nn] and edges [B, E, 2], got {node_labels.shape} and {edges.shape}",
            )
        node_mask = jnp.asarray(batch.node_mask, bool)
        edge_mask = jnp.asarray(batch.edge_mask, bool)

        object_table = nn.Embed(
            config.num_node_labels,
            config.embed_dim,
            embedding_init=WORD_EMBEDDING_INIT,
            name="object_embedding",
        )
        predicate_table = nn.Embed(
            config.num_edge_labels,
            config.embed_dim,
            embedding_init=WORD_EMBEDDING_INIT,
            name="predicate_embedding",
        )
        node_states = jnp.where(node_mask[..., None], object_table(node_labels), 0.0)
        edge_states = jnp.where(
            edge_mask[..., None], predicate_table(jnp.asarray(batch.edge_labels, jnp.int32)), 0.0
        )
        for layer in range(config.num_layers):
            node_states, edge_states = GraphTripleConv(
                config.embed_dim,
                config.hidden_dim,
                config.batch_norm_momentum,
                name=f"layer{layer}",
            )(node_states, edge_states, edges, node_mask, edge_mask, train=train)

        embedding = l2_normalize(masked_mean(node_states, node_mask[..., None], axis=1))
        aux = {"node_embeddings": node_states, "edge_embeddings": edge_states}
        return embedding, aux
