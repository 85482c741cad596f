"""Reader of image captions keyed by Visual Genome image id.

The caption file (Scene-Graph-Benchmark's ``vg_capgraphs_anno.json`` mapped to VG ids, or the bundled
subset of 1,403 VG images with 5 COCO captions each; COCO captions, CC BY 4.0) is a JSON object
``{"captions": {"<VG image id>": ["caption", ...], ...}}``; a bare ``{"<id>": [...]}`` mapping is
accepted too. Captions are whitespace-normalised (newlines and runs of spaces collapse to one space).
These captions supervise the scene-graph embeddings of Maheshwari et al. (caption similarities).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping, Sequence

from sgg_jax.data.fileio import load_json
from sgg_jax.errors import DataError
from sgg_jax.structures import SceneGraph

BUNDLED_CAPTIONS = "vg_coco_captions_subset.json.gz"


def read(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Reads a caption file.

    Args:
      path: JSON (plain or ``.gz``).

    Returns:
      image id -> tuple of normalised captions (file order).

    Raises:
      DataError: naming the file, the image id and the field on malformed content.
    """
    path = os.fspath(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}", path=path)
    table = data["captions"] if "captions" in data else data
    if not isinstance(table, dict):
        raise DataError("expected an object keyed by image id", path=path, field="captions")
    if not table:
        raise DataError("no captions in the file", path=path, field="captions")
    captions = {}
    for image_id, texts in table.items():
        if not isinstance(texts, list) or not texts:
            raise DataError(
                "expected a non-empty list of captions",
                path=path,
                record=image_id,
                field="captions",
            )
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(
                    f"caption {position} is not a non-empty string: {text!r}",
                    path=path,
                    record=image_id,
                    field="captions",
                )
        captions[str(image_id)] = tuple(" ".join(text.split()) for text in texts)
    return captions


def load_bundled() -> dict[str, tuple[str, ...]]:
    """The bundled captions: 5 COCO captions (6 for 4 images) for each of 1,403 Visual Genome images."""
    return read(str(importlib.resources.files("sgg_jax.data") / "resources" / BUNDLED_CAPTIONS))


def attach(
    graphs: Sequence[SceneGraph],
    captions: Mapping[str, Sequence[str]],
    *,
    keep_missing: bool = False,
) -> list[SceneGraph]:
    """Returns the graphs with their captions filled in.

    Args:
      graphs: scene graphs.
      captions: image id -> captions.
      keep_missing: keep graphs without captions (with empty ``captions``) instead of dropping them.

    Returns:
      The graphs (in input order) that have captions, or all of them when ``keep_missing``.
    """
    result = []
    for graph in graphs:
        texts = captions.get(graph.image_id)
        if texts:
            result.append(graph.replace(captions=tuple(texts)))
        elif keep_missing:
            result.append(graph)
    return result
