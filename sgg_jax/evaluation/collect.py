"""Turns padded batch outputs of a relation model into per-image :class:`Prediction` objects.

A model evaluated over ``pipeline.make_loader(..., PipelineConfig.evaluation(...))`` batches returns
predicate scores ``[B, P, C]`` (and object labels / scores ``[B, N]``); this module slices the real
pairs and objects of every real image back out. Objects truncated by the pipeline's ``max_objects``
budget are never paired; they are still listed (ground-truth box and label, object score 0) so the
prediction has the ground truth's object count, as PredCls / SGCls evaluation requires. Their
relations are therefore counted as misses: the budget shows in the recall, it is never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sgg_jax.structures import Prediction, SceneGraph, SceneGraphBatch


def batch_predictions(
    graphs: Sequence[SceneGraph],
    batch: SceneGraphBatch,
    predicate_scores: np.ndarray,
    object_labels: np.ndarray | None = None,
    object_scores: np.ndarray | None = None,
) -> dict[int, Prediction]:
    """Predictions of the real images of one batch.

    Args:
      graphs: the source the batch was drawn from (indexed by ``batch.image_index``).
      batch: the host batch (numpy arrays).
      predicate_scores: float[B, P, C] predicate distribution per pair (column 0 = background).
      object_labels: int[B, N] predicted classes; ground truth when None (PredCls).
      object_scores: float[B, N] object confidences; 1 when None (PredCls).

    Returns:
      ``image_index -> Prediction`` for every image with ``graph_mask`` set.
    """
    predicate_scores = np.asarray(predicate_scores, np.float32)
    predictions = {}
    for row in np.flatnonzero(np.asarray(batch.graph_mask)):
        image_index = int(batch.image_index[row])
        graph = graphs[image_index]
        kept = int(np.asarray(batch.object_mask[row]).sum())
        labels = graph.labels.copy()
        scores = np.zeros(graph.num_objects, np.float32)
        scores[:kept] = 1.0 if object_scores is None else np.asarray(object_scores)[row, :kept]
        if object_labels is not None:
            labels[:kept] = np.asarray(object_labels)[row, :kept]
        pair_mask = np.asarray(batch.pair_mask[row])
        predictions[image_index] = Prediction(
            boxes=graph.boxes,
            labels=labels,
            object_scores=scores,
            pairs=np.asarray(batch.pairs[row])[pair_mask],
            predicate_scores=predicate_scores[row][pair_mask],
        )
    return predictions
