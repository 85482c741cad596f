"""Scene graph generation metrics: R@K, ngR@K, mR@K, ngmR@K, zR@K, ngzR@K, A@K, F@K, mR@all.

The numbers are those of Scene-Graph-Benchmark (Tang et al., "Unbiased Scene Graph Generation from
Biased Training", CVPR 2020; ``maskrcnn_benchmark/data/datasets/evaluation/vg/sgg_eval.py`` and
``vg_eval.py``), computed image by image exactly as there, but vectorised: images are processed in
chunks of concatenated arrays and no Python loop runs over predictions or ground-truth relations.

Per image (SGB ``evaluate_relation_of_one_image``):

* Objects. PredCls uses the ground-truth boxes and labels with object scores 1 (the prediction's
  labels and scores are ignored; ``Prediction.pairs`` index the ground-truth objects). SGCls uses the
  ground-truth boxes with the prediction's labels and object scores. SGDet uses the prediction's
  boxes, labels and scores.
* Graph-constrained ranking (SGB ``RelationPostProcessor`` then ``SGRecall``): each predicted pair
  gets predicate ``1 + argmax(scores[:, 1:])`` and the triplet score
  ``max(scores[:, 1:]) * object_score[subject] * object_score[object]``; pairs are sorted by it,
  descending, with a *stable* sort (ties keep the order of ``Prediction.pairs``; SGB's ``torch.sort``
  leaves ties unspecified).
* No graph constraint (SGB ``SGNoGraphConstraintRecall``): on the graph-constrained pair order,
  every (pair, predicate >= 1) entry is scored ``(object_score[s] * object_score[o]) * score`` and the
  row-major flattened ``[pairs, predicates]`` matrix is ranked descending (stable: ties keep the
  row-major order; SGB's ``argsort_desc`` uses an unstable ``np.argsort``). SGB keeps the top 100
  entries (hard-coded), so its ngR@K for K > 100 equals its ngR@100; here ngR@K always uses the top K
  entries, which is identical for every K <= 100.
* Matching (SGB ``_compute_pred_matches``): a predicted triplet matches a ground-truth relation when
  (subject class, predicate, object class) are equal and the subject IoU and the object IoU are both
  ``>= iou_threshold``, with the inclusive-pixel IoU (``x2 - x1 + 1``) of SGB's ``bbox_overlaps``;
  with ``phrdet=True`` the IoU of the two union boxes is used instead.
* R@K = |ground-truth relations matched by the top-K predictions| / |ground-truth relations|, then
  the mean over images. Duplicate ground-truth relations are separate entries. Images without
  ground-truth relations are skipped. Images with no predicted pair are skipped as in SGB
  (``empty_prediction="skip"``) or count as zero in every metric (``empty_prediction="zero"``).

Other metrics: mR@K (SGB ``SGMeanRecall``) averages, per predicate, the image recalls
``hits_c / count_c`` over the images whose ground truth holds predicate c, then averages over all P
predicates (a predicate never present contributes 0). zR@K (``SGZeroShotRecall``) is the recall over
the ground-truth relations whose (subject class, object class, predicate) is listed, averaged over the
images holding at least one. A@K (``SGPairAccuracy``, PredCls / SGCls) keeps, in rank order, only the
predicted pairs equal to some ground-truth pair, and is ``sum(hits@K) / sum(#ground truth)`` over
images (SGB: ``mean(hits) / mean(counts)``). mR@all is mR with K = every predicted pair of the
image. ngmR / ngzR are mR / zR on the no-graph-constraint ranking.

Where this differs from SGB, on purpose: sorts are stable (above); scores, products and IoUs are
float64 (SGB forms the triplet score and the IoU in float32 torch, so two triplets whose scores differ
below float32 resolution can swap there); ngR@K for K > 100 (above); the ground-truth-pair test of A@K
compares index pairs exactly (SGB encodes ``subject * 1024 + object``, which collides from 1024
objects on); SGCls with a box count different from the ground truth raises (SGB prints a warning);
box areas are clipped at 0 (SGB's ``x2 - x1 + 1`` can go negative for inverted boxes).

Implementation: for every ground-truth relation the *first-hit rank* (the best rank among the
predictions matching it) is computed once per ranking; "matched within the top K" is then
``first_hit_rank < K`` for all K at once, and mR, zR and A@K are reductions of the same ranks.
Candidate (prediction, ground truth) pairs are found by a sorted join on
``(image, subject class, object class, predicate)`` and only those are checked for IoU. The top-K
entries of the no-graph-constraint matrix are selected without sorting whole matrices: a per-image
lower bound on the K-th largest entry (from the per-row maxima, or per-row top-r for small images)
keeps only a few entries per image, which are then ranked exactly. Memory is bounded by
``chunk_size`` predicted pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from sgg_jax import boxes as box_ops
from sgg_jax.distributed import allgather_rows
from sgg_jax.errors import ConfigError, DataError
from sgg_jax.structures import Prediction, SceneGraph

MODES = ("predcls", "sgcls", "sgdet")
EMPTY_PREDICTION_POLICIES = ("skip", "zero")
DEFAULT_KS = (20, 50, 100)
DEFAULT_CHUNK_SIZE = 65_536  # predicted pairs per chunk
MAX_IMAGES_PER_CHUNK = 4_096
_NO_HIT = np.iinfo(np.int64).max
_INT64_SAFE = 2**62


# ---------------------------------------------------------------------------------------------------
# Configuration checks.
# ---------------------------------------------------------------------------------------------------


def _check_config(
    mode, num_predicates, ks, iou_threshold, empty_prediction, chunk_size
) -> tuple[int, ...]:
    if mode not in MODES:
        raise ConfigError("mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(num_predicates, bool) or not isinstance(num_predicates, (int, np.integer)):
        raise ConfigError("num_predicates", f"expected an int, got {num_predicates!r}")
    if num_predicates < 1:
        raise ConfigError("num_predicates", f"must be >= 1, got {num_predicates}")
    try:
        ks = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise ConfigError("ks", f"expected a sequence of ints, got {ks!r}") from None
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise ConfigError("ks", f"expected distinct positive ints, got {ks!r}")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ConfigError("iou_threshold", f"must be in [0, 1], got {iou_threshold!r}")
    if empty_prediction not in EMPTY_PREDICTION_POLICIES:
        raise ConfigError(
            "empty_prediction", f"expected 'skip' or 'zero', got {empty_prediction!r}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ConfigError("chunk_size", f"expected an int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ConfigError("chunk_size", f"must be >= 1, got {chunk_size}")
    return ks


def _check_zeroshot(zeroshot_triplets) -> np.ndarray | None:
    if zeroshot_triplets is None:
        return None
    try:
        triplets = np.asarray(zeroshot_triplets)
    except (TypeError, ValueError):
        raise ConfigError("zeroshot_triplets", "expected an int array [Z, 3]") from None
    if triplets.size == 0:
        triplets = triplets.reshape(0, 3)
    if triplets.ndim != 2 or triplets.shape[1] != 3:
        raise ConfigError(
            "zeroshot_triplets",
            f"expected rows (subject_class, object_class, predicate), got shape {triplets.shape}",
        )
    if not np.issubdtype(triplets.dtype, np.integer):
        if not np.issubdtype(triplets.dtype, np.floating) or np.any(triplets != np.round(triplets)):
            raise ConfigError("zeroshot_triplets", "entries must be integers")
    return triplets.astype(np.int64)


def _predicate_names_list(predicate_names, num_predicates) -> list[str] | None:
    if predicate_names is None:
        return None
    names = [str(name) for name in predicate_names]
    if len(names) == num_predicates + 1:
        names = names[1:]
    if len(names) != num_predicates:
        raise ConfigError(
            "predicate_names",
            f"expected {num_predicates} names (or {num_predicates + 1} with the background), "
            f"got {len(names)}",
        )
    return names


def _group_members(predicate_groups, names, num_predicates) -> dict[str, np.ndarray]:
    if predicate_groups is None:
        return {}
    if not isinstance(predicate_groups, Mapping):
        raise ConfigError("predicate_groups", "expected a dict: group name -> predicate ids")
    groups = {}
    for group, members in predicate_groups.items():
        ids = []
        for member in members:
            if isinstance(member, str):
                if names is None or member not in names:
                    raise ConfigError(
                        "predicate_groups",
                        f"group {group!r}: unknown predicate name {member!r}"
                        + (" (give predicate_names to use names)" if names is None else ""),
                    )
                ids.append(names.index(member) + 1)
            else:
                ids.append(int(member))
        ids = np.asarray(sorted(set(ids)), np.int64)
        if ids.size == 0:
            raise ConfigError("predicate_groups", f"group {group!r} is empty")
        if ids.min() < 1 or ids.max() > num_predicates:
            raise ConfigError(
                "predicate_groups",
                f"group {group!r}: predicate ids must be in 1..{num_predicates}, got {ids.tolist()}",
            )
        groups[str(group)] = ids
    return groups


def _record(index: int, image_id: str) -> str:
    return f"{image_id} (index {index})"


# ---------------------------------------------------------------------------------------------------
# Chunk assembly: concatenated, validated arrays for a group of images.
# ---------------------------------------------------------------------------------------------------


class _Chunk:
    """Concatenated, validated arrays of the evaluated images of one chunk.

    Boxes and object scores are float64, indices and labels int64, predicate scores float32 (as
    given). Object arrays (``gt_*`` over ground-truth objects, ``obj_*`` over the objects the
    predictions refer to) are global over the chunk; per-relation and per-pair arrays hold global
    object indices, and ``*_image`` the position of their image in the chunk.
    """

    def __init__(self, items, mode: str, num_predicates: int):
        self.num_images = len(items)
        indices = [index for index, _, _ in items]
        graphs = [graph for _, graph, _ in items]
        preds = [pred for _, _, pred in items]
        num_columns = num_predicates + 1

        # Per-image shape checks (constant work per image).
        for index, graph, pred in items:
            rec = _record(index, graph.image_id)
            scores = pred.predicate_scores
            if scores.ndim != 2 or scores.shape != (pred.num_pairs, num_columns):
                raise DataError(
                    f"expected shape ({pred.num_pairs}, {num_columns}) = (pairs, num_predicates + 1)"
                    f", got {scores.shape}",
                    record=rec,
                    field="predicate_scores",
                )
            if mode in ("predcls", "sgcls") and pred.num_objects != graph.num_objects:
                raise DataError(
                    f"{mode} predictions must have one box per ground-truth object: "
                    f"{pred.num_objects} boxes for {graph.num_objects} ground-truth objects",
                    record=rec,
                    field="boxes",
                )
            if mode in ("sgcls", "sgdet"):
                for field, array in (
                    ("labels", pred.labels),
                    ("object_scores", pred.object_scores),
                ):
                    if array.shape[0] != pred.num_objects:
                        raise DataError(
                            f"{array.shape[0]} entries for {pred.num_objects} boxes",
                            record=rec,
                            field=field,
                        )

        def records_of(image_positions):
            position = int(image_positions)
            return _record(indices[position], graphs[position].image_id)

        # Ground truth.
        gt_num_objects = np.array([g.num_objects for g in graphs], np.int64)
        gt_num_relations = np.array([g.num_relations for g in graphs], np.int64)
        gt_object_offset = _exclusive_cumsum(gt_num_objects)
        self.gt_boxes = np.concatenate([g.boxes for g in graphs]).astype(np.float64)
        self.gt_labels = np.concatenate([g.labels for g in graphs]).astype(np.int64)
        relations = np.concatenate([g.relations for g in graphs]).astype(np.int64)
        self.gt_image = np.repeat(np.arange(self.num_images), gt_num_relations)
        bad = ~np.isfinite(self.gt_boxes).all(axis=1)
        if bad.any():
            position = np.searchsorted(gt_object_offset, np.flatnonzero(bad)[0], side="right") - 1
            raise DataError("non-finite coordinates", record=records_of(position), field="boxes")
        limit = gt_num_objects[self.gt_image]
        bad = (relations[:, :2] < 0).any(axis=1) | (relations[:, :2] >= limit[:, None]).any(axis=1)
        if bad.any():
            row = np.flatnonzero(bad)[0]
            raise DataError(
                f"relation (subject, object) = {tuple(relations[row, :2].tolist())} indexes "
                f"outside the {limit[row]} ground-truth boxes",
                record=records_of(self.gt_image[row]),
                field="relations",
            )
        bad = (relations[:, 2] < 1) | (relations[:, 2] > num_predicates)
        if bad.any():
            row = np.flatnonzero(bad)[0]
            raise DataError(
                f"predicate {relations[row, 2]} outside 1..{num_predicates}",
                record=records_of(self.gt_image[row]),
                field="relations",
            )
        self.gt_num_relations = gt_num_relations
        self.gt_subject = relations[:, 0] + gt_object_offset[self.gt_image]
        self.gt_object = relations[:, 1] + gt_object_offset[self.gt_image]
        self.gt_local_pairs = relations[:, :2]
        self.gt_predicate = relations[:, 2]

        # Objects the predictions refer to.
        if mode == "predcls":
            obj_num = gt_num_objects
            self.obj_boxes = self.gt_boxes
            self.obj_labels = self.gt_labels
            self.obj_scores = np.ones(self.gt_labels.shape[0], np.float64)
        else:
            obj_num = np.array([p.num_objects for p in preds], np.int64)
            self.obj_labels = np.concatenate([p.labels for p in preds]).astype(np.int64)
            self.obj_scores = np.concatenate([p.object_scores for p in preds]).astype(np.float64)
            if mode == "sgcls":
                self.obj_boxes = self.gt_boxes
            else:
                self.obj_boxes = np.concatenate([p.boxes for p in preds]).astype(np.float64)
        obj_offset = _exclusive_cumsum(obj_num)
        if mode != "predcls":
            bad = ~np.isfinite(self.obj_scores) | (self.obj_scores < 0)
            if bad.any():
                row = np.flatnonzero(bad)[0]
                position = np.searchsorted(obj_offset, row, side="right") - 1
                raise DataError(
                    f"object scores must be finite and >= 0, got {self.obj_scores[row]}",
                    record=records_of(position),
                    field="object_scores",
                )
        if mode == "sgdet":
            bad = ~np.isfinite(self.obj_boxes).all(axis=1)
            if bad.any():
                position = np.searchsorted(obj_offset, np.flatnonzero(bad)[0], side="right") - 1
                raise DataError(
                    "non-finite coordinates", record=records_of(position), field="boxes"
                )

        # Predicted pairs and predicate scores.
        num_pairs = np.array([p.num_pairs for p in preds], np.int64)
        self.pair_offset = _exclusive_cumsum(num_pairs)
        self.num_pairs = num_pairs
        self.pair_image = np.repeat(np.arange(self.num_images), num_pairs)
        pairs = np.concatenate([p.pairs for p in preds]).astype(np.int64).reshape(-1, 2)
        limit = obj_num[self.pair_image]
        bad = (pairs < 0).any(axis=1) | (pairs >= limit[:, None]).any(axis=1)
        if bad.any():
            row = np.flatnonzero(bad)[0]
            raise DataError(
                f"pair {row - self.pair_offset[self.pair_image[row]]} = "
                f"{tuple(pairs[row].tolist())} indexes outside the {limit[row]} boxes",
                record=records_of(self.pair_image[row]),
                field="pairs",
            )
        self.pair_local = pairs
        self.pair_subject = pairs[:, 0] + obj_offset[self.pair_image]
        self.pair_object = pairs[:, 1] + obj_offset[self.pair_image]
        # Predicate scores as given (float32 [pairs, P + 1]); `scores` is the foreground view
        # [pairs, P]. Products of scores are formed in float64; comparisons and argmax read the
        # float32 values directly, which is exact.
        self.scores_all = np.concatenate(
            [p.predicate_scores for p in preds], dtype=np.float32
        ).reshape(-1, num_columns)
        self.scores = self.scores_all[:, 1:]
        if not np.isfinite(self.scores_all).all():
            row = np.flatnonzero(~np.isfinite(self.scores_all).all(axis=1))[0]
            raise DataError(
                f"non-finite score in pair {row - self.pair_offset[self.pair_image[row]]}",
                record=records_of(self.pair_image[row]),
                field="predicate_scores",
            )
        # The background column is never ranked: with -inf there, a contiguous argmax over all
        # P + 1 columns is 1 + argmax over the foreground columns (first maximum on ties).
        self.scores_all[:, 0] = -np.inf

        # Dense class codes shared by ground truth and predictions (for the join keys).
        classes, codes = np.unique(
            np.concatenate([self.gt_labels, self.obj_labels]), return_inverse=True
        )
        self.num_codes = max(int(classes.size), 1)
        self.gt_codes = codes[: self.gt_labels.shape[0]]
        self.obj_codes = codes[self.gt_labels.shape[0] :]
        if self.num_images * self.num_codes**2 * num_columns >= _INT64_SAFE:
            raise ConfigError("chunk_size", "too many images x classes in one chunk; lower it")


# ---------------------------------------------------------------------------------------------------
# Array kernels.
# ---------------------------------------------------------------------------------------------------


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.int64)
    return np.cumsum(counts) - counts


def _segment_descending_order(
    values: np.ndarray, segments: np.ndarray, num_segments: int, tiebreak: np.ndarray
) -> np.ndarray:
    """Permutation sorting by (segment ascending, value descending, tiebreak ascending).

    Args:
      values: float64[n].
      segments: int64[n] in ``[0, num_segments)``.
      num_segments: number of segments.
      tiebreak: int64[n] >= 0, unique within a segment.

    Returns:
      int64[n] permutation.
    """
    if values.size == 0:
        return np.zeros(0, np.int64)
    unique_values, dense = np.unique(values, return_inverse=True)
    num_unique = int(unique_values.size)
    tie_range = int(tiebreak.max()) + 1
    if num_segments * num_unique * tie_range < _INT64_SAFE:
        key = (segments * num_unique + (num_unique - 1 - dense)) * tie_range + tiebreak
        return np.argsort(key)  # keys are unique: any sort gives the same permutation
    return np.lexsort((tiebreak, -values, segments))


def _segment_kth_largest(
    values: np.ndarray, segments: np.ndarray, num_segments: int, kth: int
) -> np.ndarray:
    """The ``kth`` largest value (1-based, with multiplicity) of each segment; -inf if too short.

    Args:
      values: float64[n].
      segments: int64[n] in ``[0, num_segments)``.
      num_segments: number of segments.
      kth: rank to select (>= 1).

    Returns:
      float64[num_segments].
    """
    result = np.full(num_segments, -np.inf)
    if values.size == 0:
        return result
    unique_values, dense = np.unique(values, return_inverse=True)
    num_unique = int(unique_values.size)
    sorted_keys = np.sort(segments * num_unique + (num_unique - 1 - dense))
    counts = np.bincount(segments, minlength=num_segments)
    starts = _exclusive_cumsum(counts)
    long_enough = np.flatnonzero(counts >= kth)
    chosen = sorted_keys[starts[long_enough] + kth - 1] - long_enough * num_unique
    result[long_enough] = unique_values[num_unique - 1 - chosen]
    return result


def _expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``[starts[i], starts[i] + counts[i])``: (owner i, position) of every element."""
    owners = np.repeat(np.arange(counts.shape[0]), counts)
    within = np.arange(owners.shape[0]) - np.repeat(_exclusive_cumsum(counts), counts)
    return owners, np.repeat(starts, counts) + within


class _Matcher:
    """Matches ranked predicted triplets against the ground-truth relations of a chunk."""

    def __init__(self, chunk: _Chunk, num_predicates: int, iou_threshold: float, phrdet: bool):
        self.chunk = chunk
        self.num_columns = num_predicates + 1
        self.iou_threshold = iou_threshold
        self.phrdet = phrdet
        gt_keys = self._keys(
            chunk.gt_image,
            chunk.gt_codes[chunk.gt_subject],
            chunk.gt_codes[chunk.gt_object],
            chunk.gt_predicate,
        )
        self.gt_order = np.argsort(gt_keys, kind="stable")
        self.gt_sorted_keys = gt_keys[self.gt_order]

    def _keys(self, image, subject_code, object_code, predicate):
        num_codes = self.chunk.num_codes
        return ((image * num_codes + subject_code) * num_codes + object_code) * self.num_columns + (
            predicate
        )

    def candidates(self, image, subject, object_, predicate) -> tuple[np.ndarray, np.ndarray]:
        """Matching (prediction, ground truth) index pairs: equal classes/predicate and IoU test.

        Args:
          image: int64[n] image of each predicted triplet (chunk position).
          subject, object_: int64[n] global indices into the chunk's predicted objects.
          predicate: int64[n] predicted predicate (1-based).

        Returns:
          ``(prediction_index, gt_index)``, int64[m] each.
        """
        chunk = self.chunk
        keys = self._keys(image, chunk.obj_codes[subject], chunk.obj_codes[object_], predicate)
        low = np.searchsorted(self.gt_sorted_keys, keys, side="left")
        high = np.searchsorted(self.gt_sorted_keys, keys, side="right")
        prediction_index, sorted_position = _expand_ranges(low, high - low)
        gt_index = self.gt_order[sorted_position]
        pred_subject_boxes = chunk.obj_boxes[subject[prediction_index]]
        pred_object_boxes = chunk.obj_boxes[object_[prediction_index]]
        gt_subject_boxes = chunk.gt_boxes[chunk.gt_subject[gt_index]]
        gt_object_boxes = chunk.gt_boxes[chunk.gt_object[gt_index]]
        if self.phrdet:
            keep = (
                box_ops.elementwise_iou(
                    box_ops.union_boxes(pred_subject_boxes, pred_object_boxes),
                    box_ops.union_boxes(gt_subject_boxes, gt_object_boxes),
                    plus_one=True,
                )
                >= self.iou_threshold
            )
        else:
            keep = (
                box_ops.elementwise_iou(pred_subject_boxes, gt_subject_boxes, plus_one=True)
                >= self.iou_threshold
            ) & (
                box_ops.elementwise_iou(pred_object_boxes, gt_object_boxes, plus_one=True)
                >= self.iou_threshold
            )
        return prediction_index[keep], gt_index[keep]

    def first_hits(self, prediction_index, gt_index, ranks) -> np.ndarray:
        """Per ground-truth relation, the smallest rank of a matching prediction (or _NO_HIT)."""
        first = np.full(self.chunk.gt_predicate.shape[0], _NO_HIT, np.int64)
        np.minimum.at(first, gt_index, ranks[prediction_index])
        return first


def _graph_constrained(chunk: _Chunk):
    """SGB RelationPostProcessor ranking: per pair its best predicate and the pair's rank.

    Returns:
      ``(predicate, rank, order, best_score)``: int64[Q] predicate (1-based) and rank within its
      image of every pair (chunk order), the int64[Q] permutation listing the pairs image by image
      in rank order, and float64[Q] the predicate's score.
    """
    num_pairs_total = chunk.pair_image.shape[0]
    predicate = chunk.scores_all.argmax(axis=1) if num_pairs_total else np.zeros(0, np.int64)
    best_score = chunk.scores_all[np.arange(num_pairs_total), predicate].astype(np.float64)
    # SGB: triple_scores = rel_scores * obj_scores0 * obj_scores1 (left to right).
    triplet_score = (
        best_score * chunk.obj_scores[chunk.pair_subject] * chunk.obj_scores[chunk.pair_object]
    )
    order = _segment_descending_order(
        triplet_score, chunk.pair_image, chunk.num_images, np.arange(num_pairs_total)
    )
    rank = np.empty(num_pairs_total, np.int64)
    rank[order] = np.arange(num_pairs_total) - chunk.pair_offset[chunk.pair_image[order]]
    return predicate, rank, order, best_score


def _no_graph_constraint_top(chunk: _Chunk, rank: np.ndarray, best_score: np.ndarray, top: int):
    """The ``top`` best (pair, predicate) entries of each image without the graph constraint.

    Entry scores are ``(object_score[s] * object_score[o]) * scores[pair, c]``; images rank their
    entries by score descending, ties in row-major order of the graph-constrained pair order.

    Returns:
      ``(pair_index, predicate, entry_rank)``: int64[n] each, entries with rank < ``top``.
    """
    num_predicates = chunk.scores.shape[1]
    num_images = chunk.num_images
    if chunk.pair_image.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    pair_weight = chunk.obj_scores[chunk.pair_subject] * chunk.obj_scores[chunk.pair_object]
    if np.all(pair_weight == 1.0):
        entry_scores = chunk.scores  # 1.0 * x == x exactly: compare the float32 values directly
    else:
        entry_scores = pair_weight[:, None] * chunk.scores  # float64
    # Row maxima: pair_weight >= 0 and rounding is monotone, so max_c(w * s_c) == w * max_c(s_c).
    row_max = pair_weight * best_score

    # Lower bound per image on the top-th largest entry: the top-th largest of a set of distinct
    # entries holding at least `top` of them (row maxima, or each row's r best when rows are few).
    picks_per_row = np.minimum(num_predicates, -(-top // np.maximum(chunk.num_pairs, 1)))
    row_pick = picks_per_row[chunk.pair_image]
    sample_values = [row_max[row_pick == 1]]
    sample_images = [chunk.pair_image[row_pick == 1]]
    for picks in np.unique(row_pick[row_pick > 1]):
        rows = np.flatnonzero(row_pick == picks)
        best = np.partition(entry_scores[rows], num_predicates - picks, axis=1)
        sample_values.append(best[:, num_predicates - picks :].reshape(-1))
        sample_images.append(np.repeat(chunk.pair_image[rows], picks))
    threshold = _segment_kth_largest(
        np.concatenate(sample_values), np.concatenate(sample_images), num_images, top
    )

    # Every entry at or above the bound (only rows whose maximum reaches it can hold one), then
    # the exact ranking of those.
    rows = np.flatnonzero(row_max >= threshold[chunk.pair_image])
    survivors = np.flatnonzero(entry_scores[rows] >= threshold[chunk.pair_image[rows]][:, None])
    pair_index = rows[survivors // num_predicates]
    column = survivors % num_predicates
    values = entry_scores[pair_index, column].astype(np.float64)
    image = chunk.pair_image[pair_index]
    row_major_position = rank[pair_index] * num_predicates + column
    order = _segment_descending_order(values, image, num_images, row_major_position)
    image_sorted = image[order]
    starts = _exclusive_cumsum(np.bincount(image_sorted, minlength=num_images))
    entry_rank = np.arange(order.shape[0]) - starts[image_sorted]
    keep = entry_rank < top
    chosen = order[keep]
    return pair_index[chosen], column[chosen] + 1, entry_rank[keep]


def _gt_pair_flags(chunk: _Chunk):
    """SGB SGPairAccuracy.prepare_gtpair: does each predicted pair equal some ground-truth pair."""
    size = int(
        max(
            chunk.pair_local.max(initial=0),
            chunk.gt_local_pairs.max(initial=0),
        )
        + 1
    )
    gt_keys = np.unique(
        (chunk.gt_image * size + chunk.gt_local_pairs[:, 0]) * size + chunk.gt_local_pairs[:, 1]
    )
    pred_keys = (chunk.pair_image * size + chunk.pair_local[:, 0]) * size + chunk.pair_local[:, 1]
    position = np.minimum(np.searchsorted(gt_keys, pred_keys), max(gt_keys.shape[0] - 1, 0))
    return gt_keys[position] == pred_keys if gt_keys.size else np.zeros(pred_keys.shape, bool)


# ---------------------------------------------------------------------------------------------------
# Accumulation over chunks.
# ---------------------------------------------------------------------------------------------------


class _RecallSums:
    """Per-image terms of one ranking's recall family (R, mR, zR), summed exactly at the end.

    The sums are exactly rounded (``math.fsum``), so results do not depend on the chunking.
    """

    def __init__(self, ks, num_predicates):
        self.ks = ks
        self.num_columns = num_predicates + 1
        self._recall = {k: [] for k in ks}
        self._class_ids = []
        self._class_recall = {k: [] for k in ks}
        self._zeroshot = {k: [] for k in ks}

    def add(self, first_hit, chunk: _Chunk, class_bins, class_counts, zeroshot_mask):
        """Adds the images of a chunk given the first-hit rank of every ground-truth relation."""
        num_images = chunk.num_images
        present_image, present_class = np.nonzero(class_counts)
        self._class_ids.append(present_class)
        present_counts = class_counts[present_image, present_class]
        if zeroshot_mask is not None:
            zeroshot_counts = np.bincount(
                chunk.gt_image, weights=zeroshot_mask, minlength=num_images
            )
            has_zeroshot = zeroshot_counts > 0
        for k in self.ks:
            hit = (first_hit < k).astype(np.float64)
            hits_per_image = np.bincount(chunk.gt_image, weights=hit, minlength=num_images)
            self._recall[k].append(hits_per_image / chunk.gt_num_relations)
            class_hits = np.bincount(
                class_bins, weights=hit, minlength=num_images * self.num_columns
            ).reshape(num_images, self.num_columns)
            self._class_recall[k].append(class_hits[present_image, present_class] / present_counts)
            if zeroshot_mask is not None:
                zeroshot_hits = np.bincount(
                    chunk.gt_image, weights=hit * zeroshot_mask, minlength=num_images
                )
                self._zeroshot[k].append(
                    zeroshot_hits[has_zeroshot] / zeroshot_counts[has_zeroshot]
                )

    def gather(self) -> None:
        """Replaces the terms of this process by those of every process (same per-image values)."""
        for terms in (self._recall, self._class_recall, self._zeroshot):
            for k in self.ks:
                terms[k] = [allgather_rows(np.concatenate([np.zeros(0), *terms[k]]))]
        self._class_ids = [
            allgather_rows(np.concatenate([np.zeros(0, np.int64), *self._class_ids]))
        ]

    def recall(self, k) -> float:
        """Sum over images of the image's recall."""
        return math.fsum(np.concatenate([[], *self._recall[k]]))

    def zeroshot(self, k) -> float:
        """Sum over images with zero-shot relations of the image's zero-shot recall."""
        return math.fsum(np.concatenate([[], *self._zeroshot[k]]))

    def class_recall(self, k) -> np.ndarray:
        """float64[P + 1]: per predicate, the sum over images holding it of the image's recall."""
        ids = np.concatenate([np.zeros(0, np.int64), *self._class_ids])
        values = np.concatenate([[], *self._class_recall[k]])
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(ids[order], np.arange(self.num_columns + 1))
        sorted_values = values[order]
        return np.array(
            [math.fsum(sorted_values[bounds[c] : bounds[c + 1]]) for c in range(self.num_columns)]
        )


def _zeroshot_mask(chunk: _Chunk, zeroshot_triplets: np.ndarray) -> np.ndarray:
    """SGB SGZeroShotRecall.prepare_zeroshot: is (subject class, object class, predicate) listed."""
    gt_triplets = np.stack(
        [
            chunk.gt_labels[chunk.gt_subject],
            chunk.gt_labels[chunk.gt_object],
            chunk.gt_predicate,
        ],
        axis=1,
    )
    both = np.concatenate([gt_triplets, zeroshot_triplets])
    _, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return np.isin(inverse[: gt_triplets.shape[0]], inverse[gt_triplets.shape[0] :]).astype(
        np.float64
    )


def _iterate_chunks(
    groundtruths, predictions, empty_prediction, chunk_size, counts, local=None
) -> Iterator[list[tuple[int, SceneGraph, Prediction]]]:
    """Groups the evaluated images into chunks of at most ``chunk_size`` predicted pairs.

    ``local``: bool[num_images], the images this process evaluates (None = all).
    """
    items, pairs_in_chunk = [], 0
    first_index: dict[str, int] = {}
    for index in range(len(groundtruths)):
        graph = groundtruths[index]
        if not isinstance(graph, SceneGraph):
            raise DataError(
                f"expected a SceneGraph, got {type(graph).__name__}",
                record=f"index {index}",
                field="groundtruths",
            )
        if graph.image_id in first_index:
            raise DataError(
                f"image id also at index {first_index[graph.image_id]}: one prediction would be "
                "scored against two ground truths",
                record=_record(index, graph.image_id),
                field="groundtruths",
            )
        first_index[graph.image_id] = index
        if local is not None and not local[index]:
            continue
        if graph.num_relations == 0:
            counts["num_images_skipped_no_gt"] += 1
            continue
        pred = predictions[index]
        if not isinstance(pred, Prediction):
            raise DataError(
                f"expected a Prediction, got {type(pred).__name__}",
                record=_record(index, graph.image_id),
                field="predictions",
            )
        if pred.num_pairs == 0:
            counts["num_images_empty_prediction"] += 1
            if empty_prediction == "skip":
                continue
        if items and (
            pairs_in_chunk + pred.num_pairs > chunk_size or len(items) >= MAX_IMAGES_PER_CHUNK
        ):
            yield items
            items, pairs_in_chunk = [], 0
        items.append((index, graph, pred))
        pairs_in_chunk += pred.num_pairs
    if items:
        yield items


# ---------------------------------------------------------------------------------------------------
# Public entry point.
# ---------------------------------------------------------------------------------------------------


def evaluate(
    groundtruths: Sequence[SceneGraph],
    predictions: Sequence[Prediction],
    *,
    mode: str,
    num_predicates: int,
    ks: Sequence[int] = DEFAULT_KS,
    zeroshot_triplets=None,
    iou_threshold: float = 0.5,
    predicate_names: Sequence[str] | None = None,
    predicate_groups: Mapping[str, Sequence[int | str]] | None = None,
    phrdet: bool = False,
    empty_prediction: str = "skip",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    images: Sequence[int] | np.ndarray | None = None,
) -> dict:
    """Scene Graph Benchmark metrics of predictions against ground-truth scene graphs.

    Args:
      groundtruths: sequence of ``SceneGraph`` (one per image). Images without relations are skipped.
      predictions: sequence of ``Prediction`` in the same order (indexable; read chunk by chunk, once
        each; predictions of images without ground-truth relations are not read). PredCls / SGCls
        predictions must carry one box per ground-truth object.
      mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"`` (which object boxes / labels / scores are used;
        see the module docstring).
      num_predicates: P, the number of foreground predicates; ``predicate_scores`` has P + 1 columns.
      ks: the K of every @K metric. ngR@K for K > 100 uses the true top K (SGB caps at 100).
      zeroshot_triplets: optional int[Z, 3] rows ``(subject_class, object_class, predicate)``; adds
        ``zR@K`` / ``ngzR@K`` and ``num_images_zeroshot``.
      iou_threshold: IoU needed for the subject and the object boxes (inclusive-pixel IoU).
      predicate_names: optional P names (or P + 1 with the background first); returned as
        ``predicate_names`` and usable as members of ``predicate_groups``.
      predicate_groups: optional ``{group: predicate ids (1-based) or names}``, e.g. head / body /
        tail; adds ``mR@K/<group>``, the mean of the per-predicate recalls of the group.
      phrdet: phrase detection: match on the IoU of the union boxes instead.
      empty_prediction: ``"skip"`` (SGB: images with no predicted pair are left out of every mean)
        or ``"zero"`` (they count as images with zero recall).
      chunk_size: images are processed in chunks of at most this many predicted pairs (an image
        with more forms a chunk alone). Working memory is about ``chunk_size * (P + 1) * 13`` bytes
        (the results do not depend on it).
      images: several processes: the indices of the images this process evaluates (its
        predictions; the other entries of ``predictions`` are not read and may be None). Every
        process of the job calls ``evaluate`` with its own images (disjoint, together every
        image) and gets the metrics of all of them: the per-image terms (recalls per image, per
        image and predicate, zero-shot recalls, pair-accuracy hits and counts) are gathered
        (:func:`sgg_jax.distributed.allgather_rows`, bit for bit) and summed exactly as one process
        sums them, so the result equals a single-process evaluation exactly. No process holds
        the others' predictions. None = every image, nothing gathered.

    Returns:
      dict of python floats in [0, 1]: ``R@K``, ``ngR@K``, ``mR@K``, ``ngmR@K``, ``zR@K`` and
      ``ngzR@K`` (with zero-shot triplets), ``A@K`` (predcls / sgcls), ``F@K`` (harmonic mean of R@K
      and mR@K, 0 when both are 0), ``mR@all`` (mR with K = all predicted pairs of each image),
      ``mR@K/<group>``; lists over predicates 1..P ``per_predicate_R@K`` and ``per_predicate_ngR@K``
      (0 for a predicate absent from the evaluated ground truth) and ``per_predicate_num_images``
      (images whose ground truth holds the predicate); ints ``num_images_evaluated``,
      ``num_images_skipped_no_gt``, ``num_images_empty_prediction``. Means over zero images are 0.

    Raises:
      ConfigError: an invalid option.
      DataError: malformed input, naming the image (index and id) and the field.
    """
    ks = _check_config(mode, num_predicates, ks, iou_threshold, empty_prediction, chunk_size)
    num_predicates = int(num_predicates)
    iou_threshold = float(iou_threshold)
    zeroshot = _check_zeroshot(zeroshot_triplets)
    names = _predicate_names_list(predicate_names, num_predicates)
    groups = _group_members(predicate_groups, names, num_predicates)
    if len(predictions) != len(groundtruths):
        raise DataError(
            f"{len(predictions)} predictions for {len(groundtruths)} ground-truth images",
            field="predictions",
        )

    num_columns = num_predicates + 1
    ng_top = max(ks)
    counts = {
        "num_images_evaluated": 0,
        "num_images_skipped_no_gt": 0,
        "num_images_empty_prediction": 0,
    }
    graph_sums = _RecallSums(ks, num_predicates)
    free_sums = _RecallSums(ks, num_predicates)
    all_sums = _RecallSums((1,), num_predicates)
    class_images = np.zeros(num_columns)
    num_images_zeroshot = 0
    accuracy_hits = dict.fromkeys(ks, 0.0)
    accuracy_count = 0.0

    local = None
    if images is not None:
        local = np.zeros(len(groundtruths), bool)
        chosen = np.asarray(images, np.int64).reshape(-1)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= len(groundtruths)):
            raise ConfigError("images", f"indices must lie in [0, {len(groundtruths)})")
        local[chosen] = True
    chunks = _iterate_chunks(groundtruths, predictions, empty_prediction, chunk_size, counts, local)
    for items in chunks:
        chunk = _Chunk(items, mode, num_predicates)
        counts["num_images_evaluated"] += chunk.num_images
        matcher = _Matcher(chunk, num_predicates, iou_threshold, phrdet)
        class_bins = chunk.gt_image * num_columns + chunk.gt_predicate
        class_counts = np.bincount(class_bins, minlength=chunk.num_images * num_columns).reshape(
            chunk.num_images, num_columns
        )
        class_images += (class_counts > 0).sum(axis=0)
        zeroshot_mask = None if zeroshot is None else _zeroshot_mask(chunk, zeroshot)
        if zeroshot_mask is not None:
            per_image = np.bincount(
                chunk.gt_image, weights=zeroshot_mask, minlength=chunk.num_images
            )
            num_images_zeroshot += int(np.count_nonzero(per_image))

        # Graph constraint: one predicate per pair.
        predicate, rank, order, best_score = _graph_constrained(chunk)
        prediction_index, gt_index = matcher.candidates(
            chunk.pair_image, chunk.pair_subject, chunk.pair_object, predicate
        )
        first_hit = matcher.first_hits(prediction_index, gt_index, rank)
        args = (chunk, class_bins, class_counts, zeroshot_mask)
        graph_sums.add(first_hit, *args)
        # mR@all: K = every predicted pair of the image, i.e. "matched by some pair" (rank 0 < 1).
        all_sums.add(np.where(first_hit < _NO_HIT, 0, _NO_HIT), *args)

        # Pair accuracy (SGB SGPairAccuracy): ranks among the pairs that are ground-truth pairs.
        if mode != "sgdet":
            flags = _gt_pair_flags(chunk)
            flags_sorted = flags[order].astype(np.int64)
            before = np.cumsum(flags_sorted) - flags_sorted
            image_sorted = chunk.pair_image[order]
            start_of_image = before[chunk.pair_offset[image_sorted]] if order.size else before
            accuracy_rank = np.empty_like(rank)
            accuracy_rank[order] = before - start_of_image
            flagged = flags[prediction_index]
            accuracy_first = matcher.first_hits(
                prediction_index[flagged], gt_index[flagged], accuracy_rank
            )
            for k in ks:
                accuracy_hits[k] += float(np.count_nonzero(accuracy_first < k))
            accuracy_count += float(chunk.gt_predicate.shape[0])

        # No graph constraint: every (pair, predicate) entry competes.
        pair_index, ng_predicate, ng_rank = _no_graph_constraint_top(
            chunk, rank, best_score, ng_top
        )
        ng_prediction, ng_gt = matcher.candidates(
            chunk.pair_image[pair_index],
            chunk.pair_subject[pair_index],
            chunk.pair_object[pair_index],
            ng_predicate,
        )
        free_sums.add(matcher.first_hits(ng_prediction, ng_gt, ng_rank), *args)

    if images is not None:  # every process's per-image terms, summed as one process does
        for sums in (graph_sums, free_sums, all_sums):
            sums.gather()
        count_names = list(counts)  # integer image counts, then the other totals
        local = [*(counts[n] for n in count_names), num_images_zeroshot, accuracy_count]
        local += [*(accuracy_hits[k] for k in ks), *class_images]
        totals = allgather_rows(np.array([local], np.float64)).sum(axis=0)
        counts = {name: int(total) for name, total in zip(count_names, totals, strict=False)}
        num_images_zeroshot = int(totals[len(count_names)])
        accuracy_count = float(totals[len(count_names) + 1])
        first_hit = len(count_names) + 2
        accuracy_hits = {k: float(totals[first_hit + i]) for i, k in enumerate(ks)}
        class_images = totals[first_hit + len(ks) :]

    return _finalise(
        ks=ks,
        mode=mode,
        counts=counts,
        graph_sums=graph_sums,
        free_sums=free_sums,
        all_sums=all_sums,
        class_images=class_images,
        zeroshot=zeroshot is not None,
        num_images_zeroshot=num_images_zeroshot,
        accuracy_hits=accuracy_hits,
        accuracy_count=accuracy_count,
        names=names,
        groups=groups,
    )


def _finalise(
    *,
    ks,
    mode,
    counts,
    graph_sums,
    free_sums,
    all_sums,
    class_images,
    zeroshot,
    num_images_zeroshot,
    accuracy_hits,
    accuracy_count,
    names,
    groups,
) -> dict:
    num_images = counts["num_images_evaluated"]

    def mean(total, count):
        return float(total / count) if count else 0.0

    def per_predicate(class_recall):
        present = class_images[1:] > 0
        return np.where(present, class_recall[1:] / np.where(present, class_images[1:], 1), 0.0)

    results: dict = {}
    per_predicate_graph = {k: per_predicate(graph_sums.class_recall(k)) for k in ks}
    per_predicate_free = {k: per_predicate(free_sums.class_recall(k)) for k in ks}
    for k in ks:
        results[f"R@{k}"] = mean(graph_sums.recall(k), num_images)
    for k in ks:
        results[f"ngR@{k}"] = mean(free_sums.recall(k), num_images)
    for k in ks:
        # SGB calculate_mean_recall: sum over all P predicates / P (absent ones contribute 0).
        results[f"mR@{k}"] = float(per_predicate_graph[k].mean())
    for k in ks:
        results[f"ngmR@{k}"] = float(per_predicate_free[k].mean())
    if zeroshot:
        for k in ks:
            results[f"zR@{k}"] = mean(graph_sums.zeroshot(k), num_images_zeroshot)
        for k in ks:
            results[f"ngzR@{k}"] = mean(free_sums.zeroshot(k), num_images_zeroshot)
    if mode != "sgdet":
        for k in ks:
            # SGB SGPairAccuracy: mean(hits) / mean(counts) == sum(hits) / sum(counts).
            results[f"A@{k}"] = mean(accuracy_hits[k], accuracy_count)
    for k in ks:
        recall, mean_recall = results[f"R@{k}"], results[f"mR@{k}"]
        total = recall + mean_recall
        results[f"F@{k}"] = 2.0 * recall * mean_recall / total if total > 0 else 0.0
    results["mR@all"] = float(per_predicate(all_sums.class_recall(1)).mean())
    for group, members in groups.items():
        for k in ks:
            results[f"mR@{k}/{group}"] = float(per_predicate_graph[k][members - 1].mean())
    for k in ks:
        results[f"per_predicate_R@{k}"] = [float(v) for v in per_predicate_graph[k]]
    for k in ks:
        results[f"per_predicate_ngR@{k}"] = [float(v) for v in per_predicate_free[k]]
    results["per_predicate_num_images"] = [int(v) for v in class_images[1:]]
    if names is not None:
        results["predicate_names"] = list(names)
    results.update(counts)
    if zeroshot:
        results["num_images_zeroshot"] = num_images_zeroshot
    return results


__all__ = ["DEFAULT_KS", "MODES", "evaluate"]


def frequency_groups(
    predicate_counts: Sequence[int], thresholds: tuple[int, int] = (10_000, 500)
) -> dict[str, list[int]]:
    """Head / body / tail predicate groups from training counts, for ``predicate_groups``.

    The default thresholds are the usual VG150 convention (BGNN, Li et al. CVPR 2021): head = more
    than 10,000 training relations, tail = fewer than 500, body = the rest. For smaller datasets pass
    thresholds that fit their counts.

    Args:
      predicate_counts: int[P+1] training counts (index 0, background, ignored).
      thresholds: ``(head_above, tail_below)``.

    Returns:
      ``{"head": ids, "body": ids, "tail": ids}`` with 1-based predicate ids in id order.
    """
    head_above, tail_below = thresholds
    if tail_below > head_above:
        raise ConfigError("thresholds", f"tail_below {tail_below} exceeds head_above {head_above}")
    counts = np.asarray(predicate_counts, np.int64)
    ids = np.arange(1, counts.shape[0])
    return {
        "head": ids[counts[1:] > head_above].tolist(),
        "body": ids[(counts[1:] <= head_above) & (counts[1:] >= tail_below)].tolist(),
        "tail": ids[counts[1:] < tail_below].tolist(),
    }
