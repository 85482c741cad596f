"""Dataset summaries: counts per split and the predicate long tail, as data and as text tables.

Used by the ``data_prep`` command lines (after building a dataset) and by the experiments (before
training), so every tool reports a dataset the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sgg_jax.data.validation import ReadReport
from sgg_jax.structures import SceneGraph, Vocab


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """Counts of one split.

    Attributes:
      name: split name.
      images, boxes, relations: totals over the split.
      max_objects: largest number of objects in one image.
      images_without_relations: images with no relation.
      predicate_counts: int64[P+1] relations per predicate (index 0, background, is 0).
      report: what the reader read, repaired and dropped for this split (empty when not given).
    """

    name: str
    images: int
    boxes: int
    relations: int
    max_objects: int
    images_without_relations: int
    predicate_counts: np.ndarray
    report: ReadReport = dataclasses.field(default_factory=ReadReport)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (predicate counts as a list)."""
        return {
            "name": self.name,
            "images": self.images,
            "boxes": self.boxes,
            "relations": self.relations,
            "max_objects": self.max_objects,
            "images_without_relations": self.images_without_relations,
            "predicate_counts": [int(c) for c in self.predicate_counts],
            "report": dataclasses.asdict(self.report),
        }


def summarize_split(
    name: str, graphs: Sequence[SceneGraph], vocab: Vocab, report: ReadReport | None = None
) -> SplitSummary:
    """Counts images, boxes, relations and relations per predicate of one split.

    Args:
      name: split name.
      graphs: the split's scene graphs.
      vocab: the dataset vocabulary (for the number of predicates).
      report: the reader's report for the split.

    Returns:
      The split's summary.
    """
    num_columns = len(vocab.predicate_names)
    predicate_counts = np.zeros(num_columns, np.int64)
    for graph in graphs:
        predicate_counts += np.bincount(graph.relations[:, 2], minlength=num_columns)[:num_columns]
    return SplitSummary(
        name=name,
        images=len(graphs),
        boxes=sum(graph.num_objects for graph in graphs),
        relations=sum(graph.num_relations for graph in graphs),
        max_objects=max((graph.num_objects for graph in graphs), default=0),
        images_without_relations=sum(graph.num_relations == 0 for graph in graphs),
        predicate_counts=predicate_counts,
        report=ReadReport() if report is None else report,
    )


def text_table(rows: list[list[str]], left_columns: tuple[int, ...] = (0,)) -> list[str]:
    """Formats rows of cells: columns in ``left_columns`` left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i in left_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _report_counts(report: ReadReport) -> list[int]:
    """Repaired boxes, self-relations, and images dropped for holding no box or no relation."""
    return [
        report.repaired_boxes,
        report.self_relations,
        report.dropped_images_without_boxes + report.dropped_images_without_relations,
    ]


def format_splits(splits: Sequence[SplitSummary], *, with_report: bool = True) -> list[str]:
    """One row per split and a total row: images, boxes, relations[, what the reader repaired].

    Args:
      splits: split summaries.
      with_report: add the columns ``repaired_boxes``, ``self_relations`` and ``dropped_images``
        (images dropped for holding no box or no relation) from each split's reader report.

    Returns:
      Text lines of the table.
    """
    header = ["images", "boxes", "relations"]
    if with_report:
        header += ["repaired_boxes", "self_relations", "dropped_images"]
    counts = {}
    for split in splits:
        values = [split.images, split.boxes, split.relations]
        counts[split.name] = values + (_report_counts(split.report) if with_report else [])
    totals = [sum(column) for column in zip(*counts.values(), strict=True)]
    rows = [["split", *header]]
    rows += [[name, *map(str, values)] for name, values in counts.items()]
    rows.append(["total", *map(str, totals)])
    return text_table(rows)


def format_predicate_histogram(
    splits: Sequence[SplitSummary], predicate_names: Sequence[str], *, top_k: int = 10
) -> list[str]:
    """The predicate histogram: the ``top_k`` most and least frequent predicates over all splits.

    Args:
      splits: split summaries.
      predicate_names: P+1 names (index 0 = background).
      top_k: predicates shown at each end (all of them when there are at most ``2 * top_k``).

    Returns:
      Text lines: a heading and a table with the count per split, the total and the share.
    """
    per_split = np.stack([s.predicate_counts for s in splits])  # [S, P+1]
    total = per_split.sum(0)
    grand_total = max(int(total.sum()), 1)
    order = [int(i) for i in sorted(range(1, len(predicate_names)), key=lambda p: (-total[p], p))]
    rank = {predicate: position + 1 for position, predicate in enumerate(order)}
    occurring = int((total[1:] > 0).sum())
    if len(order) <= 2 * top_k:
        shown, heading = order, "all"
    else:
        shown, heading = order[:top_k] + [-1] + order[-top_k:], f"top {top_k} and bottom {top_k}"
    lines = [f"predicates: {len(predicate_names) - 1}, {occurring} occur; {heading} by total count"]
    rows = [["rank", "predicate", *(s.name for s in splits), "total", "share"]]
    for predicate in shown:
        if predicate < 0:
            rows.append(["...", "", *([""] * len(splits)), "", ""])
            continue
        rows.append(
            [
                str(rank[predicate]),
                predicate_names[predicate],
                *(str(int(c)) for c in per_split[:, predicate]),
                str(int(total[predicate])),
                f"{100.0 * total[predicate] / grand_total:.2f}%",
            ]
        )
    return lines + text_table(rows, left_columns=(1,))
