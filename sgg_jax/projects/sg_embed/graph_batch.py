"""Scene graphs as padded, static-shape graphs for the scene-graph embedding GCN.

Maheshwari et al., "Scene Graph Embeddings Using Relative Similarity Supervision", AAAI 2021, embed
a whole scene graph with the graph triple convolution of sg2im (Johnson et al., CVPR 2018). As in
sg2im, every graph gets one extra node for the image, ``__image__``, and one ``__in_image__`` edge
from every object to it, so that the graph is connected and information flows between objects that
share no relation.

Layout of graph ``b`` with ``N`` kept objects and ``R`` kept relations (``Nn = max_nodes``,
``E = max_edges``, ``C`` object classes, ``P`` predicates):

* nodes ``0..N-1``: the objects in their order in the :class:`~sgg_jax.structures.SceneGraph`,
  labels ``1..C``; node ``N``: the image node, label ``C + 1``; nodes ``N+1..Nn-1``: padding,
  label 0, ``node_mask`` False. The node vocabulary therefore has ``C + 2`` entries:
  ``0 = __background__`` (padding), ``1..C`` the classes, ``C + 1 = __image__``.
* edges ``0..R-1``: the relations ``(subject, object)`` in their order, labels ``1..P``; edges
  ``R..R+N-1``: ``(i, N)`` for every object ``i``, label ``P + 1`` (``__in_image__``); the rest:
  padding ``(Nn - 1, Nn - 1)`` with label 0 and ``edge_mask`` False. The edge vocabulary has
  ``P + 2`` entries: ``0 = __background__`` (padding), ``1..P`` the predicates,
  ``P + 1 = __in_image__``.

The sink rule: padded edges point at node ``Nn - 1``, which is never a real node, because at most
``max_nodes - 2`` objects are kept (one slot for the image node, one for the sink). Padded graphs
(``graph_mask`` False, added to fill ``batch_size``) have no real node and no real edge at all.

Budgets (never silent): a graph with more than ``max_nodes - 2`` objects keeps the first
``max_nodes - 2`` and counts the rest in ``num_truncated_nodes``. Its relations among kept objects
are kept in order while they fit in the ``max_edges - N`` slots left by the ``__in_image__`` edges
(``max_edges >= max_nodes - 2`` is required, so these always fit); ``num_truncated_edges`` counts
every relation that is not in the batch (an endpoint truncated, or over the edge budget).

Everything here is host-side numpy; the model (:mod:`sgg_jax.projects.sg_embed.sg_gcn`) reads the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import numpy as np

from sgg_jax.data.pipeline import check_graph
from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.structures import SceneGraph

IMAGE_NODE_NAME = "__image__"
IN_IMAGE_EDGE_NAME = "__in_image__"


@flax.struct.dataclass
class GraphBatch:
    """A padded batch of scene graphs with image nodes (device pytree); see the module docstring.

    Shapes use B = batch size, Nn = ``max_nodes``, E = ``max_edges``.

    Attributes:
      node_labels: int32[B, Nn] object class ``1..C`` per object node, ``C + 1`` for the image node,
        0 for padding.
      node_mask: bool[B, Nn] real nodes (objects and the image node).
      edges: int32[B, E, 2] ``(subject, object)`` node indices within the graph; padded edges are
        ``(Nn - 1, Nn - 1)``, the sink node, which is always padding.
      edge_labels: int32[B, E] predicate ``1..P``, ``P + 1`` for ``__in_image__``, 0 for padding.
      edge_mask: bool[B, E] real edges.
      graph_mask: bool[B] real graphs (False for padding graphs of a partial batch).
      num_truncated_nodes: int32[B] objects dropped because the graph was over the node budget.
      num_truncated_edges: int32[B] relations dropped (endpoint dropped, or over the edge budget).
      num_object_classes: C the labels were built with (static; the model checks it).
      num_predicates: P the labels were built with (static; the model checks it).
    """

    node_labels: jax.Array
    node_mask: jax.Array
    edges: jax.Array
    edge_labels: jax.Array
    edge_mask: jax.Array
    graph_mask: jax.Array
    num_truncated_nodes: jax.Array
    num_truncated_edges: jax.Array
    num_object_classes: int | None = flax.struct.field(pytree_node=False, default=None)
    num_predicates: int | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def batch_size(self) -> int:
        return int(self.node_labels.shape[0])

    @property
    def max_nodes(self) -> int:
        return int(self.node_labels.shape[1])

    @property
    def max_edges(self) -> int:
        return int(self.edges.shape[1])


def _check_labels(graph: SceneGraph, num_object_classes: int) -> None:
    labels = graph.labels
    bad = np.flatnonzero((labels < 1) | (labels > num_object_classes))
    if bad.size:
        raise DataError(
            f"object {int(bad[0])} has label {int(labels[bad[0]])} outside 1..{num_object_classes}",
            record=graph.image_id,
            field="labels",
        )


def pad_scene_graphs(
    graphs: Sequence[SceneGraph],
    max_nodes: int,
    max_edges: int,
    *,
    num_object_classes: int,
    num_predicates: int,
    batch_size: int | None = None,
) -> GraphBatch:
    """Pads scene graphs, each with an image node and ``__in_image__`` edges, to static budgets.

    Args:
      graphs: G scene graphs (labels ``1..C``, relations ``(subject, object, predicate)`` with
        predicates ``1..P``).
      max_nodes: Nn, node budget per graph, >= 2; at most ``Nn - 2`` objects are kept (the image
        node and the sink node take the other two slots).
      max_edges: E, edge budget per graph, >= ``max(1, Nn - 2)`` so that every kept object's
        ``__in_image__`` edge fits.
      num_object_classes: C; the image node gets label ``C + 1``.
      num_predicates: P; ``__in_image__`` edges get label ``P + 1``.
      batch_size: B >= G; graphs ``G..B-1`` are padding (``graph_mask`` False). Default G.

    Returns:
      A :class:`GraphBatch` of numpy arrays with B graphs.

    Raises:
      ConfigError: a budget or size is invalid (names the option).
      DataError: a graph has an object label outside ``1..C``, a relation index outside its
        objects or a predicate outside ``1..P`` (names the image id and the field).
    """
    check_int("max_nodes", max_nodes, minimum=2)
    check_int("max_edges", max_edges, minimum=1)
    if max_edges < max_nodes - 2:
        raise ConfigError(
            "max_edges",
            f"must be >= max_nodes - 2 = {max_nodes - 2} (one __in_image__ edge per kept object), "
            f"got {max_edges}",
        )
    check_int("num_object_classes", num_object_classes, minimum=1)
    check_int("num_predicates", num_predicates, minimum=1)
    graphs = list(graphs)
    if batch_size is None:
        batch_size = len(graphs)
        if batch_size == 0:
            raise ConfigError("graphs", "no scene graphs to pad and no batch_size given")
    check_int("batch_size", batch_size, minimum=max(1, len(graphs)))
    max_nodes, max_edges, batch_size = int(max_nodes), int(max_edges), int(batch_size)
    image_label, in_image_label = num_object_classes + 1, num_predicates + 1
    sink = max_nodes - 1

    node_labels = np.zeros((batch_size, max_nodes), np.int32)
    node_mask = np.zeros((batch_size, max_nodes), bool)
    edges = np.full((batch_size, max_edges, 2), sink, np.int32)
    edge_labels = np.zeros((batch_size, max_edges), np.int32)
    edge_mask = np.zeros((batch_size, max_edges), bool)
    graph_mask = np.zeros((batch_size,), bool)
    num_truncated_nodes = np.zeros((batch_size,), np.int32)
    num_truncated_edges = np.zeros((batch_size,), np.int32)

    for row, graph in enumerate(graphs):
        if not isinstance(graph, SceneGraph):
            raise DataError(
                f"expected a SceneGraph, got {type(graph).__name__}",
                record=str(row),
                record_kind="graph",
            )
        _check_labels(graph, num_object_classes)
        check_graph(graph, num_predicates)

        num_objects = min(graph.num_objects, max_nodes - 2)
        relations = graph.relations
        among_kept = relations[(relations[:, :2] < num_objects).all(axis=1)]
        relations_kept = among_kept[: max_edges - num_objects]
        num_relations = relations_kept.shape[0]

        node_labels[row, :num_objects] = graph.labels[:num_objects]
        node_labels[row, num_objects] = image_label
        node_mask[row, : num_objects + 1] = True

        edges[row, :num_relations] = relations_kept[:, :2]
        edge_labels[row, :num_relations] = relations_kept[:, 2]
        in_image = slice(num_relations, num_relations + num_objects)
        edges[row, in_image, 0] = np.arange(num_objects)
        edges[row, in_image, 1] = num_objects
        edge_labels[row, in_image] = in_image_label
        edge_mask[row, : num_relations + num_objects] = True

        graph_mask[row] = True
        num_truncated_nodes[row] = graph.num_objects - num_objects
        num_truncated_edges[row] = graph.num_relations - num_relations

    return GraphBatch(
        node_labels=node_labels,
        node_mask=node_mask,
        edges=edges,
        edge_labels=edge_labels,
        edge_mask=edge_mask,
        graph_mask=graph_mask,
        num_truncated_nodes=num_truncated_nodes,
        num_truncated_edges=num_truncated_edges,
        num_object_classes=int(num_object_classes),
        num_predicates=int(num_predicates),
    )
