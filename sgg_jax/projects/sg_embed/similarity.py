"""Image-image similarity ``s_XY`` from captions, and user similarity matrices from ``.npy`` files.

The supervision of Maheshwari et al., "Scene Graph Embeddings Using Relative Similarity Supervision"
(AAAI 2021, Sec. "Training"): every caption is embedded as the average of the word vectors (GloVe) of
its words, normalised to unit length, and the similarity of images ``X`` and ``Y`` is the mean of the
inner products between their caption embeddings (5 x 5 = 25 products for the 5 COCO captions per
image), a value in ``[-1, 1]``::

  s_XY = 1 / (|C_X| |C_Y|) sum_{i in C_X} sum_{j in C_Y} c_X^i . c_Y^j,   |c_X^i| = 1

Any number of captions per image is supported. By bilinearity ``s_XY = m_X . m_Y`` with ``m_X`` the
mean caption embedding of ``X``, which is how the ``N x N`` matrix is computed (one matrix product,
in float64, returned as float32).

Captions come from :mod:`sgg_jax.data.captions` (image id -> captions), word vectors from
:func:`sgg_jax.data.word_vectors.read_glove` (word -> float32[D]);
:func:`caption_similarity_from_files` reads both, loading only the caption words from the GloVe file.

Documented choices:

* **Tokens** (:func:`tokenize`): the caption is lower-cased and split into maximal runs of letters and
  digits; every other character (punctuation, ``_``, whitespace) separates tokens, so ``"t-shirt,"``
  gives ``t``, ``shirt`` and ``"child's"`` gives ``child``, ``s``.
* **Missing words** are skipped (unlike class names, captions get no random vectors): a caption's
  embedding averages its *known* tokens only. Every missing token occurrence is counted
  (:class:`CaptionSimilarityReport`). A caption without any known token is dropped (counted); an
  image whose captions are all dropped is treated like an image without captions.
* **Images without captions** (absent from the caption table, or with no usable caption) are skipped
  and listed in the report; the matrix has one row per *kept* image, in input order
  (``report.image_ids``, ``report.image_indices``). When no image of the split is left a
  :class:`~sgg_jax.errors.DataError` is raised.
* **Scale.** ``normalise_captions=True`` (the default, and the default of every entry point)
  L2-normalises each caption embedding, so ``s_XY`` is a mean cosine in ``[-1, 1]``, the range the
  Probability / Reject samplers (:mod:`sgg_jax.projects.sg_embed.triplet_samplers`: ``Pr(P) ∝ s``,
  ``Pr(N) ∝ 1 - s``) are defined on. ``normalise_captions=False`` keeps the raw inner products of
  the averaged vectors (GloVe 300d: values of a few units; ``s_XX`` is usually not the row maximum):
  the Ranking loss target ``s_AP / (s_AP + s_AN)`` and the Random / Extreme samplers do not depend on
  the scale, but the Probability / Reject samplers reject such a matrix (a
  :class:`~sgg_jax.errors.DataError`) instead of clipping it to a uniform draw.
* **User matrices** (:func:`load_similarity_matrix`) must lie in ``[-1, 1]`` too (values within the
  rounding tolerance :data:`~sgg_jax.projects.sg_embed.triplet_samplers.RANGE_TOLERANCE` outside are clipped);
  one value beyond it is a ``DataError`` naming the file, unless ``bounded=False`` (for the Random /
  Extreme samplers only, which read the order of the values). Rescale such a matrix yourself (e.g.
  divide by its largest absolute value) to use it with the Probability / Reject samplers: which
  rescaling is right depends on what the values mean, so it is not guessed here.

:func:`load_similarity_matrix` reads a user-provided similarity (``.npy``, float ``[N, N]``, finite,
``N`` = number of images of the split; not required to be symmetric).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from sgg_jax.data import captions as captions_lib
from sgg_jax.data import word_vectors
from sgg_jax.data.fileio import load_numpy
from sgg_jax.errors import ConfigError, DataError, check_int
from sgg_jax.projects.sg_embed.triplet_samplers import RANGE_TOLERANCE, SIMILARITY_RANGE

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(caption: str) -> list[str]:
    """Lower-cased runs of letters and digits of ``caption`` (punctuation and ``_`` separate tokens)."""
    return _TOKEN.findall(caption.lower())


def caption_vocabulary(captions: Iterable[Sequence[str]]) -> set[str]:
    """The set of tokens of every caption of every image (to read only those words from GloVe)."""
    return {token for texts in captions for text in texts for token in tokenize(text)}


@dataclasses.dataclass
class CaptionSimilarityReport:
    """What :func:`caption_similarity` used and skipped.

    Attributes:
      image_ids: ids of the kept images, one per row / column of the matrix, in input order.
      image_indices: int64[N] positions of the kept images in the input ``image_ids``.
      images_without_captions: ids absent from the caption table (or with an empty caption list).
      images_without_known_words: ids whose captions all lack any word of the word-vector table.
      num_captions: captions averaged into the kept images' embeddings.
      num_captions_without_known_words: captions dropped because none of their tokens has a vector.
      num_tokens: token occurrences in the captions of the images that have captions.
      num_missing_tokens: token occurrences without a vector (skipped).
      missing_words: distinct missing tokens, in order of first occurrence.
    """

    image_ids: list[str] = dataclasses.field(default_factory=list)
    image_indices: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    images_without_captions: list[str] = dataclasses.field(default_factory=list)
    images_without_known_words: list[str] = dataclasses.field(default_factory=list)
    num_captions: int = 0
    num_captions_without_known_words: int = 0
    num_tokens: int = 0
    num_missing_tokens: int = 0
    missing_words: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_skipped_images(self) -> int:
        return len(self.images_without_captions) + len(self.images_without_known_words)


def _vector_dim(word_to_vector: Mapping[str, np.ndarray]) -> int:
    dims = {np.shape(vector) for vector in word_to_vector.values()}
    if not dims:
        raise ConfigError("word_to_vector", "is empty: no word has a vector")
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise ConfigError(
            "word_to_vector", f"expected 1-D vectors of one dimension, got shapes {sorted(dims)}"
        )
    return next(iter(dims))[0]


def caption_similarity(
    image_ids: Sequence[str] | None,
    captions: Mapping[str, Sequence[str]],
    word_to_vector: Mapping[str, np.ndarray],
    *,
    normalise_captions: bool = True,
    captions_path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, CaptionSimilarityReport]:
    """The caption similarity matrix ``s_XY`` of the images of a split (module docstring).

    Args:
      image_ids: the split's image ids (e.g. ``[g.image_id for g in graphs]``); None = every image of
        ``captions`` in table order.
      captions: image id -> captions (e.g. :func:`sgg_jax.data.captions.read`).
      word_to_vector: word -> float[D] (e.g. :func:`sgg_jax.data.word_vectors.read_glove`).
      normalise_captions: L2-normalise each caption embedding (``s_XY`` = mean cosine, in
        ``[-1, 1]``, the paper's); False = raw inner products of the averaged word vectors
        (unbounded; not for the Probability / Reject samplers).
      captions_path: the caption file, only to name it in error messages.

    Returns:
      ``(similarity float32[N, N], report)`` with ``N`` the number of kept images
      (``report.image_ids``); ``similarity[x, y] = s_XY``, symmetric.

    Raises:
      ConfigError: ``image_ids`` is empty or ``word_to_vector`` is empty / of mixed dimensions.
      DataError: no image of the split has a usable caption.
    """
    if image_ids is None:
        image_ids = list(captions)
    image_ids = [str(image_id) for image_id in image_ids]
    if not image_ids:
        raise ConfigError("image_ids", "is empty: the split has no image")
    dim = _vector_dim(word_to_vector)
    path = None if captions_path is None else os.fspath(captions_path)
    report = CaptionSimilarityReport()
    missing: dict[str, None] = {}
    mean_embeddings = []
    kept = []
    for position, image_id in enumerate(image_ids):
        texts = captions.get(image_id)
        if not texts:
            report.images_without_captions.append(image_id)
            continue
        caption_embeddings = []
        for text in texts:
            tokens = tokenize(text)
            known = [word_to_vector[t] for t in tokens if t in word_to_vector]
            report.num_tokens += len(tokens)
            report.num_missing_tokens += len(tokens) - len(known)
            for token in tokens:
                if token not in word_to_vector:
                    missing.setdefault(token)
            if not known:
                report.num_captions_without_known_words += 1
                continue
            # c_X^i: the average word vector of caption i of image X.
            embedding = np.mean(np.asarray(known, np.float64), axis=0)
            if normalise_captions:
                norm = np.linalg.norm(embedding)
                embedding = embedding / norm if norm > 0 else embedding
            caption_embeddings.append(embedding)
        if not caption_embeddings:
            report.images_without_known_words.append(image_id)
            continue
        report.num_captions += len(caption_embeddings)
        mean_embeddings.append(np.mean(caption_embeddings, axis=0))
        kept.append(position)
    report.missing_words = list(missing)
    if not kept:
        if report.images_without_known_words:
            reason = (
                f"none of the {len(image_ids)} images has a caption with a word of the word-vector "
                f"table ({len(report.images_without_captions)} have no caption at all)"
            )
        else:
            reason = f"none of the {len(image_ids)} images of the split has a caption"
        raise DataError(reason, path=path, field="captions")
    report.image_ids = [image_ids[position] for position in kept]
    report.image_indices = np.asarray(kept, np.int64)
    means = np.stack(mean_embeddings).reshape(len(kept), dim)
    # s_XY = mean_{i,j} c_X^i . c_Y^j = m_X . m_Y.
    similarity = means @ means.T
    return similarity.astype(np.float32), report


def caption_similarity_from_files(
    image_ids: Sequence[str] | None,
    captions_path: str | os.PathLike,
    glove_path: str | os.PathLike,
    *,
    normalise_captions: bool = True,
) -> tuple[np.ndarray, CaptionSimilarityReport]:
    """:func:`caption_similarity` from a caption file and a GloVe text file.

    Args:
      image_ids: the split's image ids; None = every image of the caption file.
      captions_path: caption JSON (:func:`sgg_jax.data.captions.read`).
      glove_path: GloVe ``.txt`` (only the caption words are kept while reading).
      normalise_captions: as in :func:`caption_similarity`.

    Returns:
      ``(similarity float32[N, N], report)``.

    Raises:
      DataError: a file is malformed, or no image has a usable caption.
    """
    table = captions_lib.read(captions_path)
    wanted = table.values() if image_ids is None else [table.get(str(i), ()) for i in image_ids]
    vectors = word_vectors.read_glove(glove_path, caption_vocabulary(wanted))
    if not vectors:
        raise DataError(
            "no word of the captions has a vector in the file", path=os.fspath(glove_path)
        )
    return caption_similarity(
        image_ids,
        table,
        vectors,
        normalise_captions=normalise_captions,
        captions_path=captions_path,
    )


def load_similarity_matrix(
    path: str | os.PathLike, num_images: int, *, bounded: bool = True
) -> np.ndarray:
    """Reads a user similarity matrix from a ``.npy`` file (no pickles).

    Args:
      path: ``.npy`` file holding a real float/int array ``[num_images, num_images]`` (row/column ``i``
        = image ``i`` of the split, in the split's order).
      num_images: number of images of the split.
      bounded: require every value in ``[-1, 1]`` (values up to ``RANGE_TOLERANCE`` outside are
        clipped to it), as caption similarities are; False = any finite values (only for the
        Random / Extreme samplers).

    Returns:
      float32[num_images, num_images].

    Raises:
      ConfigError: ``num_images`` is not an integer >= 1.
      DataError: naming the file when it is missing or unreadable, not a 2-D square real array, of
        the wrong size, holds NaN / inf (or values beyond float32's range), or (``bounded``) holds
        a value outside ``[-1, 1]``.
    """
    check_int("num_images", num_images, minimum=1)
    path = os.fspath(path)
    matrix = np.asarray(load_numpy(path, ".npy", prefix="not a readable .npy array"))
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise DataError(f"expected a real numeric array, got dtype {matrix.dtype}", path=path)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DataError(f"expected a square 2-D matrix, got shape {matrix.shape}", path=path)
    if matrix.shape[0] != num_images:
        raise DataError(
            f"is {matrix.shape[0]} x {matrix.shape[1]} but the split has {num_images} images",
            path=path,
        )
    with np.errstate(over="ignore", invalid="ignore"):
        result = matrix.astype(np.float32)
    bad = ~np.isfinite(result)
    if np.any(bad):
        row, column = np.argwhere(bad)[0]
        raise DataError(
            f"{int(bad.sum())} entries are NaN, infinite or beyond float32's range "
            f"(first at row {row}, column {column})",
            path=path,
        )
    if bounded:
        low, high = SIMILARITY_RANGE
        outside = (result < low - RANGE_TOLERANCE) | (result > high + RANGE_TOLERANCE)
        if np.any(outside):
            row, column = np.argwhere(outside)[0]
            raise DataError(
                f"{int(outside.sum())} entries lie outside [-1, 1] (values in "
                f"[{float(result.min()):.6g}, {float(result.max()):.6g}], first at row {row}, column "
                f"{column}): similarities must be cosine-like for the Probability / Reject samplers; "
                "rescale the matrix, or read it unbounded for the Random / Extreme samplers only",
                path=path,
            )
        result = np.clip(result, low, high)
    return result
