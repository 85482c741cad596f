"""Head / body / tail predicate sets of the official RA-SGG code, by dataset.

Copied as data (lists of predicate ids) from ``maskrcnn_benchmark/config/defaults.py`` of
``KanghoonYoon/torch-rasgg`` at commit e8be01b: ``_C.HEAD_IDS`` / ``_C.BODY_IDS`` / ``_C.TAIL_IDS``
(lines 503-505, VG150, the 50 predicates of Scene-Graph-Benchmark's ``VG-SGG-dicts-with-attri.json``)
and ``_C.GQA_HEAD_IDS`` / ``_C.GQA_BODY_IDS`` / ``_C.GQA_TAIL_IDS`` (lines 507-509, GQA-200, the 100
predicates of ``GQA_200_ID_Info.json``; ids 50-100 are the rarest half, as the bundled split's counts
confirm). ``ReTAGPENet`` reads the tail set to decide which relations it may relabel
(``roi_relation_predictors.py``:443 / 455, used at 686 and 690).

Ids are 1-based predicate indices of the dataset's own vocabulary (0 = background), so they apply
to every split of the dataset, including the bundled GQA-200-mini re-split.
"""

from __future__ import annotations

import numpy as np

VG150_HEAD_IDS = (8, 20, 22, 29, 30, 31, 48)
VG150_BODY_IDS = (1, 5, 6, 7, 9, 11, 16, 19, 21, 23, 25, 33, 35, 38, 40, 41, 43, 46, 47, 49, 50)
VG150_TAIL_IDS = (
    2,
    3,
    4,
    10,
    12,
    13,
    14,
    15,
    17,
    18,
    24,
    26,
    27,
    28,
    32,
    34,
    36,
    37,
    39,
    42,
    44,
    45,
)

GQA200_HEAD_IDS = tuple(range(1, 8))
GQA200_BODY_IDS = tuple(range(8, 50))
GQA200_TAIL_IDS = tuple(range(50, 101))

#: dataset name (the ``--dataset`` flag) -> (number of predicates, official tail ids)
OFFICIAL_TAIL_IDS = {
    "vg150": (50, VG150_TAIL_IDS),
    "gqa200": (100, GQA200_TAIL_IDS),
    "gqa200_mini": (100, GQA200_TAIL_IDS),
}


def official_tail_ids(dataset: str) -> tuple[int, ...] | None:
    """The official tail set of ``dataset`` (``--dataset`` name), or None when it has none."""
    entry = OFFICIAL_TAIL_IDS.get(dataset)
    return None if entry is None else entry[1]


def rarest_predicates(predicate_counts, fraction: float) -> np.ndarray:
    """The rarest ``ceil(fraction * P_seen)`` of the ``P_seen`` predicates seen in training, by
    training count (ties: lower id first).

    The tail set of a dataset without an official one (e.g. the synthetic data). A predicate never
    seen in training has no memory-bank entry, so no neighbour can carry it: counting it as tail
    would only shrink the tail set that can fire (the synthetic pixel data keeps 18 of its 50
    predicates; with every predicate counted its rarest third were all unseen and the official rule
    never fired). With every predicate seen this is the rarest ``ceil(fraction * P)``.

    Args:
      predicate_counts: int[P+1] (index 0 ignored).
      fraction: in (0, 1].

    Returns:
      int64 sorted predicate ids (empty when no predicate is seen).
    """
    counts = np.asarray(predicate_counts, np.int64)[1:]
    seen = np.flatnonzero(counts > 0)
    number = int(np.ceil(fraction * seen.shape[0]))
    order = seen[np.lexsort((seen, counts[seen]))]  # ascending count, then id
    return np.sort(order[:number] + 1).astype(np.int64)
