"""Word vectors for class and predicate names: GloVe text files and the bundled predicate vectors.

A GloVe text file has one word per line followed by its D numbers, separated by spaces
(``glove.6B.300d.txt``). Class names may have several words (``"in front of"``, ``"traffic light"``);
the vector of a name is the average of the vectors of its words (names split on spaces and
underscores, lower-cased). A word missing from the file gets a seeded random vector drawn from
``N(0, std²)`` where ``std`` is the standard deviation of the vectors that were found (0.4 when none
were), keyed by ``(seed, word)`` so that a word gets the same vector in every name and every run.
Missing words are counted and returned, never hidden.

Scene-graph embeddings (Maheshwari et al.) initialise object and predicate embeddings this way, and
embed captions as the average of their word vectors.

The package also bundles GloVe vectors of the 50 VG150 predicates (+ background) in 50/100/200/300
dimensions (from stevehuanghe/scene_graph, MIT; GloVe, PDDL): :func:`load_bundled_predicate_vectors`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from sgg_jax.data.fileio import load_json
from sgg_jax.errors import ConfigError, DataError, check_int, is_finite_number

BACKGROUND = "__background__"
_SPLIT = re.compile(r"[\s_]+")


def words_of(name: str) -> list[str]:
    """The lower-cased words of a class name (split on spaces and underscores)."""
    return [w for w in _SPLIT.split(name.strip().lower()) if w]


@dataclasses.dataclass
class WordVectorReport:
    """What a lookup found: missing words and names with no known word at all."""

    num_words: int = 0
    missing_words: list[str] = dataclasses.field(default_factory=list)
    names_without_vectors: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_missing(self) -> int:
        return len(self.missing_words)


def read_glove(
    path: str | os.PathLike, vocabulary: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Reads a GloVe text file, keeping only ``vocabulary`` words when given (streams the file).

    Args:
      path: GloVe ``.txt`` file (``word x1 ... xD`` per line).
      vocabulary: words to keep (lower-cased); all words when None.

    Returns:
      word -> float32[D].

    Raises:
      DataError: naming the file, the line and the field on a malformed line or mixed dimensions.
    """
    path = os.fspath(path)
    wanted = None if vocabulary is None else {w.lower() for w in vocabulary}
    vectors: dict[str, np.ndarray] = {}
    dim = None
    try:
        handle = open(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise DataError(f"cannot be read: {exc.strerror}", path=path) from None
    with handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if len(parts) < 2:
                    if not line.strip():
                        continue
                    raise DataError(
                        "expected a word followed by numbers",
                        path=path,
                        record=line_number,
                        record_kind="line",
                        field="vector",
                    )
                if dim is None:
                    dim = len(parts) - 1
                elif len(parts) - 1 != dim:
                    raise DataError(
                        f"has {len(parts) - 1} numbers, earlier lines have {dim}",
                        path=path,
                        record=line_number,
                        record_kind="line",
                        field="vector",
                    )
                word = parts[0].lower()
                if wanted is not None and word not in wanted:
                    continue
                try:
                    vector = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(
                        "contains a value that is not a number",
                        path=path,
                        record=line_number,
                        record_kind="line",
                        field="vector",
                    ) from None
                if not np.all(np.isfinite(vector)):
                    raise DataError(
                        "contains NaN/inf",
                        path=path,
                        record=line_number,
                        record_kind="line",
                        field="vector",
                    )
                vectors.setdefault(word, vector)
        except UnicodeDecodeError:
            raise DataError("is not UTF-8 text (corrupt file?)", path=path) from None
    if dim is None:
        raise DataError("the file holds no vectors", path=path)
    return vectors


def _random_word_vector(word: str, dim: int, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(word.encode("utf-8"))])
    return (rng.standard_normal(dim) * std).astype(np.float32)


def random_word_vectors(
    words: Iterable[str], dim: int = 300, *, std: float = 0.4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random vectors for words without pre-trained ones: word -> float32[dim].

    Each word's vector is ``N(0, std^2 I)`` drawn from a generator seeded by ``(seed, crc32(word))``,
    so a word always gets the same vector, whatever other words are asked for (the fallback of
    :func:`name_vectors` uses the same rule). In 300 dimensions distinct words are nearly orthogonal,
    so averages of such vectors compare captions by their shared words (a bag-of-words similarity),
    which is what caption similarities reduce to without GloVe.

    Raises:
      ConfigError: ``dim`` is not a positive integer or ``std`` not a finite number > 0.
    """
    check_int("dim", dim, minimum=1)
    if not is_finite_number(std) or std <= 0:
        raise ConfigError("std", f"must be a finite number > 0, got {std!r}")
    return {word: _random_word_vector(word, int(dim), float(std), seed) for word in words}


def name_vectors(
    names: Sequence[str],
    word_to_vector: dict[str, np.ndarray],
    *,
    dim: int | None = None,
    seed: int = 0,
    background: str = "zeros",
) -> tuple[np.ndarray, WordVectorReport]:
    """Vectors of (possibly multi-word) names: the average of their words' vectors.

    Args:
      names: class or predicate names; ``__background__`` is handled by ``background``.
      word_to_vector: word -> float32[D] (e.g. from :func:`read_glove`).
      dim: D; required when ``word_to_vector`` is empty.
      seed: seed of the random vectors of missing words.
      background: ``"zeros"`` (a zero vector) or ``"random"`` (a seeded random vector).

    Returns:
      ``(vectors float32[len(names), D], report)``.
    """
    if word_to_vector:
        known = np.stack(list(word_to_vector.values()))
        dim = known.shape[1] if dim is None else dim
        if known.shape[1] != dim:
            raise ValueError(f"word vectors have dimension {known.shape[1]}, asked for {dim}")
        std = float(known.std()) if known.size > 1 else 0.4
    elif dim is None:
        raise ValueError("dim is required when no word vectors are given")
    else:
        std = 0.4
    if background not in ("zeros", "random"):
        raise ValueError(f"background must be 'zeros' or 'random', got {background!r}")
    report = WordVectorReport()
    vectors = np.zeros((len(names), dim), np.float32)
    missing: dict[str, None] = {}
    for row, name in enumerate(names):
        if name == BACKGROUND:
            if background == "random":
                vectors[row] = _random_word_vector(BACKGROUND, dim, std, seed)
            continue
        words = words_of(name)
        if not words:
            raise ValueError(f"name {row} is empty")
        found = [w for w in words if w in word_to_vector]
        report.num_words += len(words)
        for word in words:
            if word not in word_to_vector:
                missing.setdefault(word)
        if not found:
            report.names_without_vectors.append(name)
        vectors[row] = np.mean(
            [
                word_to_vector[w] if w in word_to_vector else _random_word_vector(w, dim, std, seed)
                for w in words
            ],
            axis=0,
        )
    report.missing_words = list(missing)
    return vectors, report


def glove_name_vectors(
    path: str | os.PathLike, names: Sequence[str], *, seed: int = 0, background: str = "zeros"
) -> tuple[np.ndarray, WordVectorReport]:
    """Reads only the needed words of a GloVe file and returns :func:`name_vectors` of ``names``."""
    vocabulary = {w for name in names if name != BACKGROUND for w in words_of(name)}
    word_to_vector = read_glove(path, vocabulary)
    dim = None
    if not word_to_vector:
        dim = len(open(path, encoding="utf-8").readline().split()) - 1
    return name_vectors(names, word_to_vector, dim=dim, seed=seed, background=background)


def load_bundled_predicate_vectors(dim: int = 300) -> dict[str, np.ndarray]:
    """GloVe vectors of the 50 VG150 predicate names and ``__background__``.

    Args:
      dim: 50, 100, 200 or 300.

    Returns:
      predicate name -> float32[dim].
    """
    path = str(
        importlib.resources.files("sgg_jax.data")
        / "resources"
        / "vg150_predicates_glove_vec.json.gz"
    )
    table = load_json(path)
    key = f"d{dim}"
    if key not in table:
        raise ValueError(f"dim must be one of {sorted(int(k[1:]) for k in table)}, got {dim}")
    return {name: np.asarray(v, np.float32) for name, v in table[key].items()}
