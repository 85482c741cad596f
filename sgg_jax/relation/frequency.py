"""Frequency baseline and frequency bias: ``p(predicate | subject class, object class)``.

Zellers et al., "Neural Motifs: Scene Graph Parsing with Global Context", CVPR 2018, Sec. 4 (the
FREQ baseline) and the ``FrequencyBias`` of MotifNet. The table follows Scene-Graph-Benchmark's
``get_VG_statistics`` / ``get_dataset_statistics``:

* foreground ``counts[s, o, p]`` = number of training relations ``(s, o, p)`` (every relation row,
  duplicates on one pair included);
* background ``counts[s, o, 0]`` = number of ordered pairs ``(i, j)``, ``i != j``, of training
  boxes with classes ``(s, o)`` whose boxes overlap (IoU > 0, continuous-pixel convention); an image
  with no overlapping pair counts all its ordered pairs (``must_overlap=False`` always counts all
  ordered pairs). Annotated pairs are counted here too, as in the reference. Every cell then gets
  +1, so no row is empty;
* ``log_bias = log(counts / Σ_p counts + ε)``, ε = 1e-3.

:class:`FrequencyBaseline` holds the table on the host and scores pairs with
``softmax(log_bias[s, o])``, the FREQ baseline's predicate distribution (column 0 = background).
:class:`FrequencyBias` is the Flax module that starts from the same table and is trained with a
relation model (MotifNet adds its output to the relation logits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.boxes import pairwise_iou
from sgg_jax.errors import DataError
from sgg_jax.structures import SceneGraph, SceneGraphBatch

DEFAULT_EPSILON = 1e-3


def _ordered_pairs(graph: SceneGraph, must_overlap: bool) -> np.ndarray:
    """int[M, 2] the background candidate pairs of one image (see the module docstring)."""
    num_objects = graph.num_objects
    off_diagonal = ~np.eye(num_objects, dtype=bool)
    if must_overlap:
        overlapping = (pairwise_iou(graph.boxes, graph.boxes) > 0) & off_diagonal
        if overlapping.any():
            return np.argwhere(overlapping)
    return np.argwhere(off_diagonal)


@dataclasses.dataclass(frozen=True, eq=False)
class FrequencyBaseline:
    """The predicate-frequency table of a training split.

    Attributes:
      counts: int64[K+1, K+1, C] counts per (subject class, object class, predicate); column 0
        holds the background counts (+1 smoothing already applied).
      epsilon: ε of ``log(counts / Σ counts + ε)``.
    """

    counts: np.ndarray
    epsilon: float = DEFAULT_EPSILON

    def __post_init__(self):
        counts = np.array(self.counts, np.int64)
        if counts.ndim != 3 or counts.shape[0] != counts.shape[1] or counts.shape[2] < 2:
            raise ValueError(f"counts must have shape [K+1, K+1, C], got {counts.shape}")
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def from_graphs(
        cls,
        graphs: Iterable[SceneGraph],
        num_classes: int,
        num_predicates: int,
        *,
        must_overlap: bool = True,
        epsilon: float = DEFAULT_EPSILON,
    ) -> FrequencyBaseline:
        """Counts a training split.

        Args:
          graphs: training scene graphs.
          num_classes: K, object classes without background.
          num_predicates: predicates without background (C = num_predicates + 1).
          must_overlap: background counts only overlapping pairs (Scene-Graph-Benchmark: True).
          epsilon: ε of the log.

        Returns:
          The baseline.

        Raises:
          DataError: naming the image and field of a label or predicate out of range.
        """
        num_labels = num_classes + 1
        num_columns = num_predicates + 1
        foreground = np.zeros(num_labels * num_labels * num_columns, np.int64)
        background = np.zeros(num_labels * num_labels, np.int64)
        for graph in graphs:
            labels = graph.labels
            if labels.size and (labels.min() < 1 or labels.max() > num_classes):
                raise DataError(
                    f"object class outside 1..{num_classes}", record=graph.image_id, field="labels"
                )
            relations = graph.relations
            if relations.shape[0]:
                predicates = relations[:, 2]
                if predicates.min() < 1 or predicates.max() > num_predicates:
                    raise DataError(
                        f"predicate outside 1..{num_predicates}",
                        record=graph.image_id,
                        field="relations",
                    )
                subject_labels = labels[relations[:, 0]].astype(np.int64)
                object_labels = labels[relations[:, 1]].astype(np.int64)
                cells = (subject_labels * num_labels + object_labels) * num_columns + predicates
                np.add.at(foreground, cells, 1)
            if graph.num_objects >= 2:
                pairs = _ordered_pairs(graph, must_overlap)
                cells = labels[pairs[:, 0]].astype(np.int64) * num_labels + labels[pairs[:, 1]]
                np.add.at(background, cells, 1)
        counts = foreground.reshape(num_labels, num_labels, num_columns)
        counts[:, :, 0] = background.reshape(num_labels, num_labels) + 1
        return cls(counts=counts, epsilon=epsilon)

    @property
    def num_classes(self) -> int:
        """K, object classes without background."""
        return int(self.counts.shape[0]) - 1

    @property
    def num_predicates(self) -> int:
        """Predicates without background."""
        return int(self.counts.shape[2]) - 1

    @property
    def log_bias(self) -> np.ndarray:
        """float32[K+1, K+1, C] ``log(counts / Σ_p counts + ε)``."""
        totals = self.counts.sum(axis=-1, keepdims=True)
        return np.log(self.counts / totals + self.epsilon).astype(np.float32)

    def predict_scores(self, subject_labels, object_labels) -> np.ndarray:
        """The FREQ baseline's predicate distribution ``softmax(log_bias[s, o])``.

        Args:
          subject_labels: int[...] subject classes in ``0..K``.
          object_labels: int[...] object classes in ``0..K`` (same shape).

        Returns:
          float32[..., C]; column 0 = background.
        """
        logits = self.log_bias[np.asarray(subject_labels), np.asarray(object_labels)]
        logits = logits - logits.max(axis=-1, keepdims=True)
        probabilities = np.exp(logits)
        return (probabilities / probabilities.sum(axis=-1, keepdims=True)).astype(np.float32)

    def predict_batch(self, batch: SceneGraphBatch) -> np.ndarray:
        """Scores every pair of a host batch by its ground-truth classes (PredCls).

        Args:
          batch: a batch of numpy arrays with ``labels[B, N]`` and ``pairs[B, P, 2]``.

        Returns:
          float32[B, P, C]; rows of padded pairs score the (0, 0) class pair.
        """
        labels = np.asarray(batch.labels)
        pairs = np.asarray(batch.pairs)
        rows = np.arange(labels.shape[0])[:, None]
        return self.predict_scores(labels[rows, pairs[..., 0]], labels[rows, pairs[..., 1]])


class FrequencyBias(nn.Module):
    """Trainable ``log_bias[s, o]`` per pair, initialised from a :class:`FrequencyBaseline`.

    The parameter ``log_bias`` is the flattened table f32[(K+1)², C], indexed by
    ``s · (K+1) + o`` as MotifNet's ``index_with_labels``.

    Attributes:
      baseline: the table it starts from.
    """

    baseline: FrequencyBaseline

    @nn.compact
    def __call__(self, subject_labels: jax.Array, object_labels: jax.Array) -> jax.Array:
        """Looks up the bias of every pair.

        Args:
          subject_labels: int[...] subject classes in ``0..K``.
          object_labels: int[...] object classes in ``0..K``.

        Returns:
          f32[..., C] the bias logits.
        """
        num_labels = self.baseline.num_classes + 1
        initial = self.baseline.log_bias.reshape(num_labels * num_labels, -1)
        table = self.param("log_bias", lambda key: jnp.asarray(initial))
        cells = jnp.asarray(subject_labels, jnp.int32) * num_labels + jnp.asarray(
            object_labels, jnp.int32
        )
        return table[cells]
