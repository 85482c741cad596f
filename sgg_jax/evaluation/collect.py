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


def detection_predictions(
    batch: SceneGraphBatch,
    outputs: dict[str, np.ndarray],
    scales: np.ndarray | None = None,
) -> dict[int, Prediction]:
    """SGDet predictions of the real images of one batch: the model's own objects and pairs.

    Args:
      batch: the host batch the model ran on (``graph_mask``, ``image_index``).
      outputs: host arrays of an SGDet model (``sgg_jax.experiment.relation.predict_outputs``):
        ``boxes`` [B, D, 4], ``object_mask`` [B, D], ``object_labels``, ``object_scores``
        [B, D], ``pairs`` [B, P, 2] into the D detections, ``pair_mask`` [B, P],
        ``predicate_scores`` [B, P, C].
      scales: float[B] resized / original image size (the image transform's); boxes are divided
        by it to return to the original image's pixels. None = 1.

    Returns:
      ``image_index -> Prediction`` with the valid detections (in slot order) as objects and the
      valid pairs re-indexed to them; an image without detections has no object and no pair.
    """
    boxes = np.asarray(outputs["boxes"], np.float32)
    object_mask = np.asarray(outputs["object_mask"], bool)
    pair_mask = np.asarray(outputs["pair_mask"], bool)
    pairs_all = np.asarray(outputs["pairs"], np.int64)
    scores_all = np.asarray(outputs["predicate_scores"], np.float32)
    predictions = {}
    for row in np.flatnonzero(np.asarray(batch.graph_mask)):
        keep = object_mask[row]
        position = np.cumsum(keep) - 1  # slot -> index among the kept detections
        valid = pair_mask[row]
        pairs = pairs_all[row][valid]
        valid_pairs = keep[pairs[:, 0]] & keep[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
        pairs = pairs[valid_pairs]
        scale = 1.0 if scales is None else float(scales[row])
        predictions[int(batch.image_index[row])] = Prediction(
            boxes=boxes[row][keep] / scale,
            labels=np.asarray(outputs["object_labels"])[row][keep],
            object_scores=np.asarray(outputs["object_scores"])[row][keep],
            pairs=position[pairs].reshape(-1, 2),
            predicate_scores=scores_all[row][valid][valid_pairs],
        )
    return predictions
