"""Synthetic captions for scene graphs: informative about the graph, through a hidden scene type, but noisy.

The scene-graph embeddings of Maheshwari et al. are supervised by caption similarities. For graphs
without real captions (e.g. :mod:`sgg_jax.data.synthetic`) this module writes captions whose
similarity is informative about the graphs but noisy, as real captions are.

Generative model (seeded; image ``i`` draws from ``Generator([seed, i])``):

1. **Hidden scene type.** ``num_scene_types`` types. Object class ``c`` belongs to type
   ``c mod num_scene_types``; an image's type is the type holding most of its objects (ties to the
   lower type). Each type has ``words_per_type`` private scene words (``scene3_word1`` ...), so two
   images of one type share vocabulary that no graph node names.
2. **Caption content.** Each of ``captions_per_image`` captions takes, in order: ``scene_words``
   words drawn from the image's type words; then up to ``triplets_per_caption`` relations of the graph
   drawn without replacement, each written as ``subject-name predicate-name object-name`` (class and
   predicate names from the vocabulary; multi-word names keep their words); objects without relation
   may be named alone when the graph has fewer relations than requested.
3. **Noise.** Every word is independently replaced, with probability ``noise``, by a word drawn
   uniformly from the whole caption vocabulary (object, predicate and scene words), so captions of
   unrelated images share words by chance and captions of the same image disagree.

The result is informative (images with common objects, relations or scene type get similar captions)
but noisy, and the degree is set by ``noise`` and ``scene_words``. The generator never looks at
anything but the graph and the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sgg_jax.errors import ConfigError, check_int, is_finite_number
from sgg_jax.structures import SceneGraph, Vocab

_STREAM = 0xCA9_7105


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    """Options of :func:`synthesize` (module docstring).

    Attributes:
      num_scene_types: hidden scene types.
      words_per_type: private words of each scene type.
      captions_per_image: captions written per image (the paper uses 5 per image).
      scene_words: scene-type words at the start of each caption.
      triplets_per_caption: relations named per caption (at most the graph's).
      noise: probability that a word is replaced by a random vocabulary word.
      seed: generator seed.
    """

    num_scene_types: int = 8
    words_per_type: int = 6
    captions_per_image: int = 5
    scene_words: int = 2
    triplets_per_caption: int = 2
    noise: float = 0.3
    seed: int = 0

    def __post_init__(self):
        check_int("num_scene_types", self.num_scene_types, minimum=1)
        check_int("words_per_type", self.words_per_type, minimum=1)
        check_int("captions_per_image", self.captions_per_image, minimum=1)
        check_int("scene_words", self.scene_words, minimum=0)
        check_int("triplets_per_caption", self.triplets_per_caption, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if not is_finite_number(self.noise) or not 0.0 <= self.noise <= 1.0:
            raise ConfigError("noise", f"must lie in [0, 1], got {self.noise!r}")
        if self.scene_words == 0 and self.triplets_per_caption == 0:
            raise ConfigError("triplets_per_caption", "captions would be empty (scene_words is 0)")


def scene_type(graph: SceneGraph, num_scene_types: int) -> int:
    """The hidden type of an image: the type (``class mod num_scene_types``) of most objects."""
    if graph.num_objects == 0:
        return 0
    votes = np.bincount(graph.labels % num_scene_types, minlength=num_scene_types)
    return int(np.argmax(votes))


def _words(name: str) -> list[str]:
    return name.replace("_", " ").split()


def synthesize(
    graphs: Sequence[SceneGraph], vocab: Vocab, config: CaptionConfig | None = None
) -> tuple[list[SceneGraph], np.ndarray]:
    """Writes captions for every graph (module docstring).

    Args:
      graphs: scene graphs over ``vocab``.
      vocab: their vocabulary (names of objects and predicates).
      config: generator options.

    Returns:
      ``(graphs with captions, scene_types int32[N])``; the types are returned for analysis only.
    """
    config = config or CaptionConfig()
    type_words = [
        [f"scene{t}_word{w}" for w in range(config.words_per_type)]
        for t in range(config.num_scene_types)
    ]
    object_words = [_words(name) for name in vocab.object_names]
    predicate_words = [_words(name) for name in vocab.predicate_names]
    vocabulary = sorted(
        {w for words in object_words[1:] + predicate_words[1:] for w in words}
        | {w for words in type_words for w in words}
    )
    captioned, types = [], np.zeros(len(graphs), np.int32)
    for index, graph in enumerate(graphs):
        rng = np.random.default_rng((config.seed, _STREAM, index))
        kind = scene_type(graph, config.num_scene_types)
        types[index] = kind
        relations = graph.relations[graph.relations[:, 0] != graph.relations[:, 1]]
        captions = []
        for _ in range(config.captions_per_image):
            words = list(rng.choice(type_words[kind], size=config.scene_words))
            count = min(config.triplets_per_caption, relations.shape[0])
            for row in rng.choice(relations.shape[0], size=count, replace=False):
                subject, obj, predicate = (int(v) for v in relations[row])
                words += object_words[graph.labels[subject]]
                words += predicate_words[predicate]
                words += object_words[graph.labels[obj]]
            missing = config.triplets_per_caption - count
            if missing and graph.num_objects:
                for obj in rng.choice(graph.num_objects, size=missing):
                    words += object_words[graph.labels[obj]]
            if not words:  # no scene words and an empty graph: one random word
                words = [vocabulary[int(rng.integers(len(vocabulary)))]]
            replace = rng.random(len(words)) < config.noise
            random_words = rng.integers(0, len(vocabulary), size=len(words))
            words = [
                vocabulary[r] if swap else word
                for word, swap, r in zip(words, replace, random_words, strict=True)
            ]
            captions.append(" ".join(words))
        captioned.append(graph.replace(captions=tuple(captions)))
    return captioned, types
