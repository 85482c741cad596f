"""The synthetic caption generator: exact composition without noise, noise rate, informativeness."""

import numpy as np
import pytest

from sgg_jax.data import synthetic
from sgg_jax.errors import ConfigError
from sgg_jax.projects.sg_embed.synthetic_captions import CaptionConfig, scene_type, synthesize
from sgg_jax.structures import SceneGraph, Vocab

VOCAB = Vocab(
    object_names=("__background__", "man", "horse", "street", "traffic light"),
    predicate_names=("__background__", "riding", "on", "parked on"),
)


def graph(labels, relations, image_id="g"):
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (len(labels), 1))
    return SceneGraph(image_id, 50, 50, boxes, labels, np.reshape(relations, (-1, 3)))


def test_scene_type_is_the_majority_type_with_ties_to_the_lower():
    assert scene_type(graph([1, 3, 5], []), 2) == 1  # types 1, 1, 1
    assert scene_type(graph([1, 2], []), 2) == 0  # one each: the lower type
    assert scene_type(graph([], []), 3) == 0


def test_noise_free_captions_name_the_scene_and_the_relations():
    config = CaptionConfig(
        num_scene_types=2, words_per_type=3, scene_words=1, triplets_per_caption=1, noise=0.0
    )
    graphs, types = synthesize([graph([1, 2], [[0, 1, 1]]), graph([4, 4, 3], [])], VOCAB, config)
    assert types.tolist() == [0, 0]
    first = graphs[0].captions
    assert len(first) == 5
    for caption in first:
        words = caption.split()
        assert words[0] in {"scene0_word0", "scene0_word1", "scene0_word2"}
        assert words[1:] == ["man", "riding", "horse"]
    # a graph without relations names one of its objects instead
    for caption in graphs[1].captions:
        words = caption.split()
        assert words[0].startswith("scene0_") and " ".join(words[1:]) in {"traffic light", "street"}
    again, _ = synthesize([graph([1, 2], [[0, 1, 1]]), graph([4, 4, 3], [])], VOCAB, config)
    assert [g.captions for g in again] == [g.captions for g in graphs]


def test_noise_replaces_the_expected_share_of_words():
    config = CaptionConfig(num_scene_types=2, noise=0.5, captions_per_image=50, seed=3)
    graphs, _ = synthesize([graph([1, 2, 3], [[0, 1, 1], [1, 2, 2]])], VOCAB, config)
    clean, _ = synthesize(
        [graph([1, 2, 3], [[0, 1, 1], [1, 2, 2]])],
        VOCAB,
        CaptionConfig(num_scene_types=2, noise=0.0, captions_per_image=50, seed=3),
    )
    allowed = set(" ".join(clean[0].captions).split())
    words = " ".join(graphs[0].captions).split()
    foreign = np.mean([w not in allowed for w in words])
    # a replacement is uniform over the vocabulary: it lands outside the clean words with
    # probability 1 - |allowed| / |vocabulary|
    vocabulary = {"man", "horse", "street", "traffic", "light", "riding", "on", "parked"}
    vocabulary |= {f"scene{t}_word{w}" for t in range(2) for w in range(6)}
    expected = 0.5 * (1 - len(allowed) / len(vocabulary))
    assert abs(foreign - expected) < 0.06, (foreign, expected)


def test_captions_are_informative_about_the_scene_type():
    data = synthetic.generate(synthetic.SyntheticConfig(num_images=120, seed=0))
    graphs, types = synthesize(list(data.graphs), data.vocab, CaptionConfig(seed=1))
    bags = [set(" ".join(g.captions).split()) for g in graphs]

    def jaccard(a, b):
        return len(a & b) / len(a | b)

    same, different = [], []
    for i in range(len(bags)):
        for j in range(i + 1, len(bags)):
            (same if types[i] == types[j] else different).append(jaccard(bags[i], bags[j]))
    assert np.mean(same) > 1.5 * np.mean(different)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"noise": 1.5}, "noise"),
        ({"num_scene_types": 0}, "num_scene_types"),
        ({"captions_per_image": 0}, "captions_per_image"),
        ({"scene_words": 0, "triplets_per_caption": 0}, "triplets_per_caption"),
    ],
)
def test_bad_config(options, name):
    with pytest.raises(ConfigError, match=f"'{name}'"):
        CaptionConfig(**options)
