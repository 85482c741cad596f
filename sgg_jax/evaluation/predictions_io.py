"""Saved predictions: one ``.npz`` file holding the :class:`Prediction` of every image.

Layout (all arrays flat over images, sliced by offsets; ``I`` images, ``M`` boxes, ``Q`` pairs):

====================  ===================  ==================================================
key                   dtype / shape        meaning
====================  ===================  ==================================================
``image_ids``         str[I]               image id of each prediction, in evaluation order
``box_offsets``       int64[I+1]           image i's boxes are rows ``box_offsets[i]:box_offsets[i+1]``
``boxes``             float32[M, 4]        xyxy pixels
``labels``            int32[M]             predicted classes (1-based)
``object_scores``     float32[M]           object confidences
``pair_offsets``      int64[I+1]           image i's pairs are rows ``pair_offsets[i]:pair_offsets[i+1]``
``pairs``             int32[Q, 2]          (subject, object) indices into the image's own boxes
``predicate_scores``  float32[Q, P+1]      predicate distribution, column 0 = background
====================  ===================  ==================================================

A model's evaluation loop writes this file with :func:`save_predictions`; the command line
``python -m sgg_jax.evaluation`` reads it with :func:`load_predictions`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from sgg_jax.data.fileio import check_offsets, load_npz
from sgg_jax.errors import DataError
from sgg_jax.structures import Prediction

_KEYS = (
    "image_ids",
    "box_offsets",
    "boxes",
    "labels",
    "object_scores",
    "pair_offsets",
    "pairs",
    "predicate_scores",
)


def save_predictions(
    path: str | os.PathLike, image_ids: Sequence[str], predictions: Sequence[Prediction]
) -> None:
    """Writes predictions in the layout of the module docstring (compressed ``.npz``).

    Args:
      path: output file.
      image_ids: image id per prediction.
      predictions: one :class:`Prediction` per image; all with the same number of predicate columns.
    """
    if len(image_ids) != len(predictions):
        raise ValueError(f"{len(image_ids)} image ids for {len(predictions)} predictions")
    columns = {p.predicate_scores.shape[1] for p in predictions if p.num_pairs}
    if len(columns) > 1:
        raise ValueError(f"predictions have different predicate score widths {sorted(columns)}")
    width = columns.pop() if columns else 1
    np.savez_compressed(
        path,
        image_ids=np.asarray([str(i) for i in image_ids]),
        box_offsets=np.concatenate([[0], np.cumsum([p.num_objects for p in predictions])]),
        boxes=np.concatenate([p.boxes for p in predictions] or [np.zeros((0, 4))]).astype(
            np.float32
        ),
        labels=np.concatenate([p.labels for p in predictions] or [np.zeros(0)]).astype(np.int32),
        object_scores=np.concatenate(
            [p.object_scores for p in predictions] or [np.zeros(0)]
        ).astype(np.float32),
        pair_offsets=np.concatenate([[0], np.cumsum([p.num_pairs for p in predictions])]),
        pairs=np.concatenate([p.pairs for p in predictions] or [np.zeros((0, 2))]).astype(np.int32),
        predicate_scores=np.concatenate(
            [p.predicate_scores.reshape(p.num_pairs, width) for p in predictions]
            or [np.zeros((0, width))]
        ).astype(np.float32),
    )


def load_predictions(path: str | os.PathLike) -> tuple[list[str], list[Prediction]]:
    """Reads a predictions file written by :func:`save_predictions`.

    Args:
      path: the ``.npz`` file.

    Returns:
      ``(image_ids, predictions)``.

    Raises:
      DataError: naming the file, the image and the field when the file is missing, corrupt or
        inconsistent.
    """
    path = os.fspath(path)
    arrays = load_npz(path, _KEYS)
    num_images = arrays["image_ids"].shape[0]
    for offsets_key, rows_key in (("box_offsets", "boxes"), ("pair_offsets", "pairs")):
        check_offsets(
            arrays[offsets_key],
            num_images,
            arrays[rows_key].shape[0],
            path=path,
            field=offsets_key,
            rows=rows_key,
        )
    for key, rows_key in (
        ("labels", "boxes"),
        ("object_scores", "boxes"),
        ("predicate_scores", "pairs"),
    ):
        if arrays[key].shape[0] != arrays[rows_key].shape[0]:
            raise DataError(
                f"has {arrays[key].shape[0]} rows, {rows_key} has {arrays[rows_key].shape[0]}",
                path=path,
                field=key,
            )
    image_ids = [str(i) for i in arrays["image_ids"]]
    predictions = []
    box_offsets, pair_offsets = arrays["box_offsets"], arrays["pair_offsets"]
    for index in range(num_images):
        boxes = slice(box_offsets[index], box_offsets[index + 1])
        pairs = slice(pair_offsets[index], pair_offsets[index + 1])
        predictions.append(
            Prediction(
                boxes=arrays["boxes"][boxes],
                labels=arrays["labels"][boxes],
                object_scores=arrays["object_scores"][boxes],
                pairs=arrays["pairs"][pairs],
                predicate_scores=arrays["predicate_scores"][pairs],
            )
        )
    return image_ids, predictions
