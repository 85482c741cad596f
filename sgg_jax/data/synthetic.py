"""Seeded, long-tailed synthetic scene graphs over the VG150 vocabulary, with planted ambiguity.

The scenes use the real VG150 vocabulary (150 object classes, 50 predicates, read from the bundled
``VG-SGG-dicts-with-attri.json.gz``) and reproduce the two properties of Visual Genome that
multi-label scene graph methods (RA-SGG, "Adaptive Visual Scene Graph Generation with Retrieval-
Augmented Multi-label Learning") address: a long-tailed predicate distribution, and annotators who
record the generic head predicate ("on") where a specific tail predicate ("parked on") is equally
true. Because every relation's full set of valid predicates is known here, recovery of tail
predicates can be measured exactly.

Generative model (the contract later experiments rely on)
----------------------------------------------------------

*World.* A seeded "world" (``SyntheticConfig.world_seed``), shared by every image and every split:

1. **Ambiguity groups.** :data:`AMBIGUITY_GROUPS` puts 31 of the 50 predicates into 11 groups,
   each describing one geometric situation (head first)::

     on | sitting on, standing on, walking on, laying on, parked on, lying on
     has | with                          of | belonging to, part of
     wearing | wears                     in | flying in, walking in
     near | along, against               above | over
     holding | carrying, using            attached to | mounted on
     watching | looking at              riding | on back of

   Every other predicate is a singleton group. A group's *head* is its most frequent member in the
   real VG150 ``predicate_count``.
2. **Class profiles.** For each predicate and each role (subject, object), a sparse distribution
   over the 150 classes: ``profile_classes`` classes drawn uniformly without replacement, weighted
   by ``Dirichlet(profile_concentration) * object_count`` (real VG150 counts). Triplets therefore
   have structure a frequency-bias baseline can learn.
3. **Geometry.** Every group (and every singleton) has one *placement*
   (:func:`predicate_placements`): a distribution over the box of one role expressed in the frame
   of the other role's box (see :class:`Placement`). The ``on`` group puts the subject horizontally
   inside the object with its bottom edge in the object's top 15% (resting on it); ``under`` puts
   it beneath (centred, its bottom edge 5-30% of the object height below the object's); ``above``
   above with a vertical gap; ``in`` and ``of`` inside the object (lower part, resp. small);
   ``has`` and ``wearing`` put the object inside the subject (small in its upper part, resp. a
   wide band over torso or legs); ``holding`` at the subject's side at mid height; ``near`` side
   by side with a gap and bottoms aligned; ``watching`` apart across a wide gap; ``behind`` /
   ``in front of`` overlapping with the subject shifted up and smaller, resp. down and larger;
   ``riding``, ``attached to``, ``hanging from``, ``covering``, ``covered in``, ``eating``,
   ``painted on``, ``says``, ``growing on``, ``made of``, ``across`` and ``playing`` have their
   own placements (see the table in the code). The remaining predicates (``and, at, between, for,
   from, to``) each sit at their own angle on a ring around the object.

*Images.* Image ``i`` of a dataset is drawn from its own stream ``Generator([seed, i])``, so the
first ``k`` images do not depend on ``num_images``:

4. Width and height are uniform integers in ``[min_image_size, max_image_size]``; the number of
   objects ``N`` is uniform in ``[min_objects, max_objects]`` and the number of relations ``R``
   uniform in ``[min_relations, min(max_relations, N - 1)]``.
5. For each relation: the TRUE predicate is drawn with probability proportional to
   ``predicate_count ** frequency_power``; the subject and object classes are drawn from that
   predicate's profiles. If an object of the subject class (else of the object class) is already
   in the image, it is reused as that endpoint (``man wearing shirt`` and ``man on street`` then
   share the man) and the other endpoint is a new object; otherwise both endpoints are new
   objects (a new connected set), unless the object budget ``N`` would then not leave one new
   object for every remaining relation, in which case the placed object most plausible for the
   predicate (highest profile probability in either role) is reused; with the default config
   about 11% of relations get such an off-profile endpoint. The new endpoint's box is placed
   from the reused box through the group's placement (or its exact inverse), so every relation
   realises its geometry exactly; relations never relate an object to itself and no
   (subject, object) pair repeats.
6. A placement is redrawn (up to 20 times) while it would make a box of its connected set
   smaller than ``min_box_size / min_image_size`` of the set's extent; if a voluntary reuse still
   fails, the relation starts a new set instead. Every connected set is then scaled uniformly
   (which preserves all relative geometry) to ``U(0.35, 0.9)`` of the largest size that fits the
   image (raised, where the fit allows, until its smallest box side is ``min_box_size``) and
   shifted to a uniform position inside it. Objects left over from the budget are unrelated
   distractors with classes drawn in proportion to ``object_count`` and boxes anywhere in the
   image. Object and relation order are shuffled.
7. **Annotation.** The true relation admits every predicate of its group (all are geometrically
   consistent): its valid set is the group. The annotator records one predicate: the group's head
   with probability ``annotator_bias``, otherwise the true predicate. Tail predicates of a group
   are therefore under-annotated, as in Visual Genome; singleton predicates are always recorded
   as drawn. With ``context_bias_range = (lo, hi)`` (the *head-minority* regime) the probability
   of recording the head instead depends on the relation's context, its (subject class, object
   class) pair: a value drawn once per context, uniformly in ``[lo, hi]`` (seeded by
   ``world_seed``). With a range below one half, annotators of every context mostly record the
   specific predicate and a minority the head one, in proportions that vary across contexts.

The :class:`~sgg_jax.structures.SceneGraph` of an image carries the annotated predicates; the
parallel ``true_predicates`` and ``valid_predicates`` of :class:`SyntheticDataset` carry the truth.
The dataset's ``vocab`` counts are recomputed from the annotated graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from sgg_jax.data import validation, vg150
from sgg_jax.errors import ConfigError
from sgg_jax.structures import SceneGraph, Vocab

# Predicates describing the same geometric situation. Order inside a group does not matter: the head
# is the member with the largest real VG150 count.
AMBIGUITY_GROUPS: tuple[tuple[str, ...], ...] = (
    ("on", "sitting on", "standing on", "walking on", "laying on", "lying on", "parked on"),
    ("has", "with"),
    ("of", "part of", "belonging to"),
    ("wearing", "wears"),
    ("in", "walking in", "flying in"),
    ("near", "along", "against"),
    ("above", "over"),
    ("holding", "carrying", "using"),
    ("attached to", "mounted on"),
    ("watching", "looking at"),
    ("riding", "on back of"),
)

_WORLD_STREAM = 0x5EED_0001
_IMAGE_STREAM = 0x5EED_0002
_COMPONENT_SCALE = (0.35, 0.9)
_DISTRACTOR_SIZE = (0.05, 0.35)
_ROOT_ASPECT = (0.5, 2.0)
_PLACEMENT_TRIES = 20


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AxisPlacement:
    """Where a placed box lies along one axis of a reference box, in units of the reference side.

    With fixed anchors, the point at fraction ``placed_anchor`` of the placed box (0 = left/top edge,
    0.5 = centre, 1 = right/bottom edge) coincides with the point at fraction ``reference_anchor``
    of the reference box, shifted by ``offset`` (uniform) times the reference side. With both
    anchors ``None`` the two boxes share one anchor fraction drawn from ``containment`` (a placed box
    no larger than the reference then lies inside it). ``mirror`` flips the axis with probability
    1/2 (left of <-> right of).
    """

    placed_anchor: float | None
    reference_anchor: float | None
    offset: tuple[float, float] = (0.0, 0.0)
    containment: tuple[float, float] = (0.0, 1.0)
    mirror: bool = False

    def sample_start(self, size: float, rng: np.random.Generator) -> float:
        """Returns the placed box's start coordinate (reference box = [0, 1]) for a placed size."""
        shift = rng.uniform(*self.offset)
        if self.placed_anchor is None or self.reference_anchor is None:
            fraction = rng.uniform(*self.containment)
            start = fraction * (1.0 - size) + shift
        else:
            start = self.reference_anchor + shift - self.placed_anchor * size
        if self.mirror and rng.random() < 0.5:
            start = 1.0 - start - size
        return start


def _inside(low: float = 0.0, high: float = 1.0) -> AxisPlacement:
    return AxisPlacement(None, None, containment=(low, high))


@dataclasses.dataclass(frozen=True)
class Placement:
    """A distribution over one box relative to another: the geometry of a predicate group.

    The *placed* box is the subject, in the frame of the object box (the *reference*), unless
    ``object_in_subject_frame`` is set. Sizes are log-uniform ratios of the reference sides.
    """

    x: AxisPlacement
    y: AxisPlacement
    width_ratio: tuple[float, float]
    height_ratio: tuple[float, float]
    object_in_subject_frame: bool = False

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Returns float64[4] ``(x1, y1, w, h)`` of the placed box in the frame of the reference."""
        width = math.exp(rng.uniform(math.log(self.width_ratio[0]), math.log(self.width_ratio[1])))
        height = math.exp(
            rng.uniform(math.log(self.height_ratio[0]), math.log(self.height_ratio[1]))
        )
        return np.array(
            [self.x.sample_start(width, rng), self.y.sample_start(height, rng), width, height]
        )


def _from_reference(reference_xywh: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """The placed box (xywh) given the reference box (xywh) and the relative placement."""
    x, y, w, h = reference_xywh
    return np.array([x + relative[0] * w, y + relative[1] * h, relative[2] * w, relative[3] * h])


def _to_reference(placed_xywh: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """The reference box (xywh) given the placed box (xywh): the exact inverse of the above."""
    w, h = placed_xywh[2] / relative[2], placed_xywh[3] / relative[3]
    return np.array([placed_xywh[0] - relative[0] * w, placed_xywh[1] - relative[1] * h, w, h])


_ON_TOP = Placement(_inside(), AxisPlacement(1.0, 0.0, (0.0, 0.15)), (0.2, 0.9), (0.3, 1.5))
_GROUP_PLACEMENTS: dict[str, Placement] = {
    # Subject resting on top of the object: horizontally inside, bottom edge in its top 15%.
    "on": _ON_TOP,
    # Object small, inside the subject, in its upper part.
    "has": Placement(_inside(0.1, 0.9), _inside(0.0, 0.6), (0.15, 0.45), (0.15, 0.45), True),
    # Subject small, inside the object.
    "of": Placement(_inside(), _inside(0.0, 0.7), (0.1, 0.35), (0.1, 0.35)),
    # Object a wide band inside the subject (torso, legs).
    "wearing": Placement(_inside(0.3, 0.7), _inside(0.3, 0.95), (0.55, 0.95), (0.2, 0.5), True),
    # Subject inside the object, in its lower part.
    "in": Placement(_inside(), _inside(0.3, 1.0), (0.15, 0.6), (0.15, 0.6)),
    # Side by side: a horizontal gap, bottoms aligned.
    "near": Placement(
        AxisPlacement(0.0, 1.0, (0.05, 0.5), mirror=True),
        AxisPlacement(1.0, 1.0, (-0.15, 0.15)),
        (0.5, 1.5),
        (0.5, 1.5),
    ),
    # Subject above the object with a vertical gap.
    "above": Placement(
        AxisPlacement(0.5, 0.5, (-0.3, 0.3)),
        AxisPlacement(1.0, 0.0, (-0.6, -0.15)),
        (0.3, 1.5),
        (0.2, 0.8),
    ),
    # Object at the subject's side at mid height, partly outside it.
    "holding": Placement(
        AxisPlacement(0.5, 1.0, (-0.15, 0.1), mirror=True),
        _inside(0.35, 0.7),
        (0.15, 0.5),
        (0.1, 0.35),
        True,
    ),
    # Subject small, straddling the object's top edge.
    "attached to": Placement(
        _inside(0.05, 0.95), AxisPlacement(0.5, 0.0, (0.0, 0.25)), (0.1, 0.4), (0.1, 0.4)
    ),
    # Apart, facing each other across a wide gap.
    "watching": Placement(
        AxisPlacement(1.0, 0.0, (-1.5, -0.6), mirror=True),
        AxisPlacement(0.5, 0.5, (-0.3, 0.3)),
        (0.5, 1.5),
        (0.5, 1.5),
    ),
    # Subject over the object's upper half, overlapping it deeply.
    "riding": Placement(
        _inside(0.2, 0.8), AxisPlacement(1.0, 0.0, (0.3, 0.6)), (0.3, 0.8), (0.6, 1.3)
    ),
}
_COVERING = Placement(
    AxisPlacement(0.5, 0.5, (-0.1, 0.1)),
    AxisPlacement(0.0, 0.0, (-0.1, 0.05)),
    (0.9, 1.3),
    (0.3, 0.6),
)
_SINGLETON_PLACEMENTS: dict[str, Placement] = {
    # Subject beneath: horizontally centred, bottom edge below the object's bottom edge.
    "under": Placement(
        AxisPlacement(0.5, 0.5, (-0.25, 0.25)),
        AxisPlacement(1.0, 1.0, (0.05, 0.3)),
        (0.3, 1.0),
        (0.3, 0.8),
    ),
    # Overlapping, subject shifted up and smaller (farther away).
    "behind": Placement(
        AxisPlacement(0.5, 0.5, (-0.4, 0.4)),
        AxisPlacement(1.0, 1.0, (-0.5, -0.2)),
        (0.5, 1.0),
        (0.5, 1.0),
    ),
    # Overlapping, subject shifted down and larger (closer).
    "in front of": Placement(
        AxisPlacement(0.5, 0.5, (-0.3, 0.3)),
        AxisPlacement(1.0, 1.0, (0.1, 0.3)),
        (0.9, 1.6),
        (0.9, 1.6),
    ),
    # Subject's top edge touching the object's bottom edge.
    "hanging from": Placement(
        _inside(0.1, 0.9), AxisPlacement(0.0, 1.0, (-0.05, 0.05)), (0.1, 0.5), (0.3, 1.5)
    ),
    # Subject a wide band over the object's top; "covered in" is the same with the roles swapped.
    "covering": _COVERING,
    "covered in": dataclasses.replace(_COVERING, object_in_subject_frame=True),
    # Object (food) small at the subject's upper side.
    "eating": Placement(
        AxisPlacement(0.5, 1.0, (-0.3, 0.0), mirror=True),
        _inside(0.1, 0.4),
        (0.15, 0.4),
        (0.1, 0.3),
        True,
    ),
    # Subject a flat strip inside the object.
    "painted on": Placement(_inside(0.1, 0.9), _inside(0.2, 0.9), (0.3, 0.8), (0.05, 0.2)),
    # Object (text) a strip inside the subject (sign).
    "says": Placement(_inside(0.2, 0.8), _inside(0.2, 0.8), (0.4, 0.9), (0.1, 0.3), True),
    # Subject sprouting from the object's left or right edge.
    "growing on": Placement(
        AxisPlacement(0.5, 1.0, (-0.1, 0.1), mirror=True),
        _inside(0.0, 0.6),
        (0.15, 0.5),
        (0.15, 0.5),
    ),
    # Nearly the same box.
    "made of": Placement(
        AxisPlacement(0.5, 0.5, (-0.05, 0.05)),
        AxisPlacement(0.5, 0.5, (-0.05, 0.05)),
        (0.9, 1.1),
        (0.9, 1.1),
    ),
    # Subject a wide thin strip through the object's middle.
    "across": Placement(
        AxisPlacement(0.5, 0.5, (-0.1, 0.1)),
        AxisPlacement(0.5, 0.5, (-0.2, 0.2)),
        (1.2, 2.0),
        (0.1, 0.35),
    ),
    # Object (ball, frisbee) small, beyond the subject's upper corner.
    "playing": Placement(
        AxisPlacement(0.5, 1.0, (0.1, 0.6), mirror=True),
        AxisPlacement(0.5, 0.0, (-0.2, 0.3)),
        (0.1, 0.35),
        (0.1, 0.35),
        True,
    ),
}


def _ring_placement(position: int, count: int) -> Placement:
    """The fallback: subject centre on a ring around the object's centre, at its own angle."""
    angle = 2.0 * math.pi * (position + 0.5) / count
    dx, dy = 0.8 * math.cos(angle), 0.8 * math.sin(angle)
    return Placement(
        AxisPlacement(0.5, 0.5, (dx - 0.1, dx + 0.1)),
        AxisPlacement(0.5, 0.5, (dy - 0.1, dy + 0.1)),
        (0.4, 0.7),
        (0.4, 0.7),
    )


def predicate_placements(predicate_names: tuple[str, ...]) -> tuple[Placement | None, ...]:
    """The placement of every predicate (index 0 = background -> ``None``).

    Members of an ambiguity group share the group's placement; singletons without a hand-written
    placement get :func:`_ring_placement` at their own angle, in vocabulary order.

    Args:
      predicate_names: P+1 names, index 0 = ``__background__``.

    Returns:
      A tuple of P+1 placements.
    """
    shared = {}
    for group in AMBIGUITY_GROUPS:
        spec = next(_GROUP_PLACEMENTS[name] for name in group if name in _GROUP_PLACEMENTS)
        shared.update(dict.fromkeys(group, spec))
    shared.update(_SINGLETON_PLACEMENTS)
    leftovers = [name for name in predicate_names[1:] if name not in shared]
    rings = {name: _ring_placement(i, len(leftovers)) for i, name in enumerate(leftovers)}
    return (None, *(shared.get(name, rings.get(name)) for name in predicate_names[1:]))


# ----------------------------------------------------------------------------------------------
# Vocabulary and world
# ----------------------------------------------------------------------------------------------


def _cumulative(probabilities: np.ndarray) -> np.ndarray:
    return np.cumsum(probabilities / probabilities.sum(axis=-1, keepdims=True), axis=-1)


def _draw(cumulative: np.ndarray, rng: np.random.Generator) -> int:
    """One index from a cumulative distribution (index 0 has probability 0 here)."""
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, cumulative.shape[0] - 1)


@dataclasses.dataclass(frozen=True)
class _World:
    """Everything shared by the images of one world seed (see the module docstring, 1-3)."""

    vocab: Vocab
    groups: tuple[tuple[int, ...], ...]
    head_of: np.ndarray  # int32[P+1]
    valid_sets: np.ndarray  # bool[P+1, P+1], row p = the group of p
    predicate_cdf: np.ndarray  # float64[P+1]
    subject_profiles: np.ndarray  # float64[P+1, C+1]
    object_profiles: np.ndarray  # float64[P+1, C+1]
    subject_cdf: np.ndarray
    object_cdf: np.ndarray
    distractor_cdf: np.ndarray  # float64[C+1]
    placements: tuple[Placement | None, ...]


def _build_world(config: SyntheticConfig) -> _World:
    vocab = vg150.load_bundled_vocab()
    name_to_id = {name: i for i, name in enumerate(vocab.predicate_names)}
    real_counts = vocab.predicate_counts.astype(np.float64)
    grouped = {name for group in AMBIGUITY_GROUPS for name in group}
    groups = [
        tuple(sorted((name_to_id[n] for n in group), key=lambda p: (-real_counts[p], p)))
        for group in AMBIGUITY_GROUPS
    ]
    groups += [
        (p,) for p in range(1, vocab.num_predicates + 1) if vocab.predicate_names[p] not in grouped
    ]
    groups.sort(key=lambda group: group[0])
    head_of = np.zeros(vocab.num_predicates + 1, np.int32)
    valid_sets = np.zeros((vocab.num_predicates + 1,) * 2, bool)
    for group in groups:
        head_of[list(group)] = group[0]
        valid_sets[np.ix_(group, group)] = True

    predicate_weights = real_counts**config.frequency_power
    predicate_weights[0] = 0.0

    rng = np.random.default_rng([_WORLD_STREAM, config.world_seed])
    object_counts = np.maximum(vocab.object_counts.astype(np.float64), 1.0)
    profiles = np.zeros((2, vocab.num_predicates + 1, vocab.num_classes + 1))
    for role in range(2):
        for predicate in range(1, vocab.num_predicates + 1):
            support = 1 + rng.choice(vocab.num_classes, config.profile_classes, replace=False)
            weights = rng.dirichlet(np.full(config.profile_classes, config.profile_concentration))
            profiles[role, predicate, support] = weights * object_counts[support]
    profiles[:, 0, 1:] = 1.0  # background row: never drawn, kept normalisable
    profiles /= profiles.sum(axis=-1, keepdims=True)
    return _World(
        vocab=vocab,
        groups=tuple(groups),
        head_of=head_of,
        valid_sets=valid_sets,
        predicate_cdf=_cumulative(predicate_weights),
        subject_profiles=profiles[0],
        object_profiles=profiles[1],
        subject_cdf=_cumulative(profiles[0]),
        object_cdf=_cumulative(profiles[1]),
        distractor_cdf=_cumulative(object_counts),
        placements=predicate_placements(vocab.predicate_names),
    )


# ----------------------------------------------------------------------------------------------
# Config and dataset
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Options of :func:`generate`; invalid values raise :class:`~sgg_jax.errors.ConfigError`.

    Attributes:
      num_images: number of images.
      min_objects, max_objects: objects per image (inclusive range, ``min_objects >= 2``).
      min_relations, max_relations: relations per image (inclusive range; an image with ``N``
        objects holds at most ``N - 1``; ``min_relations <= min_objects - 1``).
      min_image_size, max_image_size: image width and height in pixels (inclusive range).
      min_box_size: smallest box side in pixels that related boxes are kept above (see step 6).
      annotator_bias: probability that the annotator records the group's head predicate instead of
        the true one.
      context_bias_range: ``(lo, hi)`` with ``0 <= lo <= hi <= 1``: the head-minority regime
        (step 7), replacing ``annotator_bias`` by a per-context probability in ``[lo, hi]``;
        None keeps one ``annotator_bias`` everywhere.
      frequency_power: true predicates are drawn proportionally to ``predicate_count ** power``
        (1 = the real VG150 frequencies, 0 = uniform).
      profile_classes: classes in the support of each predicate's subject (and object) profile.
      profile_concentration: Dirichlet concentration of the profile weights.
      seed: seed of the images.
      world_seed: seed of the class profiles (keep it fixed across splits generated separately).
    """

    num_images: int = 1000
    min_objects: int = 3
    max_objects: int = 12
    min_relations: int = 1
    max_relations: int = 8
    min_image_size: int = 256
    max_image_size: int = 512
    min_box_size: float = 4.0
    annotator_bias: float = 0.7
    context_bias_range: tuple[float, float] | None = None
    frequency_power: float = 1.0
    profile_classes: int = 12
    profile_concentration: float = 0.5
    seed: int = 0
    world_seed: int = 0

    def __post_init__(self):
        def require(condition: bool, option: str, message: str) -> None:
            if not condition:
                raise ConfigError(option, f"{message}, got {getattr(self, option)!r}")

        for option in (
            "num_images", "min_objects", "max_objects", "min_relations", "max_relations",
            "min_image_size", "max_image_size", "profile_classes", "seed", "world_seed",
        ):  # fmt: skip
            value = getattr(self, option)
            require(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                option,
                "must be an integer",
            )
        for option in (
            "min_box_size",
            "annotator_bias",
            "frequency_power",
            "profile_concentration",
        ):
            value = getattr(self, option)
            require(
                isinstance(value, (int, float, np.number)) and math.isfinite(value),
                option,
                "must be a finite number",
            )
        require(self.num_images >= 0, "num_images", "must be >= 0")
        require(self.min_objects >= 2, "min_objects", "must be >= 2")
        require(self.max_objects >= self.min_objects, "max_objects", "must be >= min_objects")
        require(self.min_relations >= 1, "min_relations", "must be >= 1")
        require(
            self.min_relations <= self.min_objects - 1,
            "min_relations",
            f"must be <= min_objects - 1 = {self.min_objects - 1}",
        )
        require(
            self.max_relations >= self.min_relations, "max_relations", "must be >= min_relations"
        )
        require(self.min_image_size >= 16, "min_image_size", "must be >= 16")
        require(
            self.max_image_size >= self.min_image_size,
            "max_image_size",
            "must be >= min_image_size",
        )
        require(
            0.0 < self.min_box_size <= self.min_image_size / 8,
            "min_box_size",
            f"must lie in (0, min_image_size / 8 = {self.min_image_size / 8:g}]",
        )
        require(0.0 <= self.annotator_bias <= 1.0, "annotator_bias", "must lie in [0, 1]")
        if self.context_bias_range is not None:
            try:
                low, high = (float(v) for v in self.context_bias_range)
            except (TypeError, ValueError):
                low, high = float("nan"), float("nan")
            require(
                0.0 <= low <= high <= 1.0,
                "context_bias_range",
                "must be two numbers 0 <= lo <= hi <= 1",
            )
            object.__setattr__(self, "context_bias_range", (low, high))
        require(self.frequency_power >= 0.0, "frequency_power", "must be >= 0")
        require(1 <= self.profile_classes <= 150, "profile_classes", "must lie in [1, 150]")
        require(self.profile_concentration > 0.0, "profile_concentration", "must be > 0")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.world_seed >= 0, "world_seed", "must be >= 0")


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticDataset:
    """Annotated synthetic scene graphs with the truth behind every annotation.

    Attributes:
      graphs: one :class:`SceneGraph` per image; ``relations[:, 2]`` holds the ANNOTATED predicate.
      true_predicates: per image int32[R], the true predicate of each relation (row-aligned with
        ``graphs[i].relations``).
      valid_predicates: per image bool[R, P+1], the predicates valid for each relation (its
        ambiguity group; column 0 = background, always False).
      vocab: the VG150 names with counts recomputed from the annotated graphs.
      reference_vocab: the VG150 names with the real VG150 counts the data were drawn from.
      groups: the ambiguity groups as predicate ids, every predicate in exactly one group, the
        group's head first.
      config: the options the data were generated with.
    """

    graphs: tuple[SceneGraph, ...]
    true_predicates: tuple[np.ndarray, ...]
    valid_predicates: tuple[np.ndarray, ...]
    vocab: Vocab
    reference_vocab: Vocab
    groups: tuple[tuple[int, ...], ...]
    config: SyntheticConfig

    def __len__(self) -> int:
        return len(self.graphs)

    @functools.cached_property
    def head_of(self) -> np.ndarray:
        """int32[P+1]: the head predicate of each predicate's group (0 for background)."""
        head_of = np.zeros(self.vocab.num_predicates + 1, np.int32)
        for group in self.groups:
            head_of[list(group)] = group[0]
        return head_of

    def true_predicate_counts(self) -> np.ndarray:
        """int64[P+1]: how often each predicate is the TRUE predicate of a relation."""
        counts = np.zeros(self.vocab.num_predicates + 1, np.int64)
        for true in self.true_predicates:
            counts += np.bincount(true, minlength=counts.shape[0])
        return counts


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _choose_anchor(
    world: _World,
    predicate: int,
    subject_class: int,
    object_class: int,
    classes: list[int],
    must_reuse: bool,
    rng: np.random.Generator,
) -> tuple[int | None, bool]:
    """Returns ``(index of the reused object or None, whether it is the subject)`` (step 5)."""
    for role_class, is_subject in ((subject_class, True), (object_class, False)):
        matches = [i for i, c in enumerate(classes) if c == role_class]
        if matches:
            return matches[int(rng.integers(len(matches)))], is_subject
    if not must_reuse:
        return None, True
    subject_scores = world.subject_profiles[predicate, classes]
    object_scores = world.object_profiles[predicate, classes]
    if subject_scores.max() >= object_scores.max():
        return int(np.argmax(subject_scores)), True
    return int(np.argmax(object_scores)), False


def _spread(xywh: np.ndarray) -> float:
    """Smallest box side over the largest side of the set's extent, for boxes float[K, 4] xywh."""
    extent = (xywh[:, :2] + xywh[:, 2:]).max(axis=0) - xywh[:, :2].min(axis=0)
    return float(xywh[:, 2:].min() / extent.max())


def _fit_components(
    frame_boxes: np.ndarray,
    components: np.ndarray,
    width: int,
    height: int,
    min_box_size: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Scales and shifts each connected set of boxes into the image (step 6); returns xyxy."""
    boxes = np.zeros_like(frame_boxes)
    for component in range(int(components.max()) + 1 if components.size else 0):
        members = components == component
        xyxy = frame_boxes[members].copy()
        smallest_side = xyxy[:, 2:].min()
        xyxy[:, 2:] += xyxy[:, :2]
        low, high = xyxy[:, :2].min(axis=0), xyxy[:, 2:].max(axis=0)
        extent = high - low
        largest_scale = min(width / extent[0], height / extent[1])
        scale_range = largest_scale * np.array(_COMPONENT_SCALE)
        scale_range = np.clip(scale_range, min_box_size / smallest_side, largest_scale)
        scale = rng.uniform(*scale_range)
        free = np.array([width, height]) - extent * scale
        shift = rng.uniform(0.0, 1.0, size=2) * free
        boxes[members] = (xyxy - np.tile(low, 2)) * scale + np.tile(shift, 2)
    return np.clip(boxes, 0.0, [width, height, width, height])  # rounding residue only


def _place_fresh(
    frame_boxes: list[np.ndarray],
    components: list[int],
    anchor: int,
    anchor_is_subject: bool,
    placement: Placement,
    min_spread: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, bool]:
    """Places the new endpoint of a relation from its anchor box (xywh, frame of the anchor's set).

    Draws the placement up to ``_PLACEMENT_TRIES`` times until the set's smallest box side stays at
    least ``min_spread`` of its extent; returns the first such box and True, or the draw with the
    largest spread and False.
    """
    component_boxes = [
        box for box, c in zip(frame_boxes, components, strict=True) if c == components[anchor]
    ]
    anchor_is_reference = anchor_is_subject == placement.object_in_subject_frame
    transform = _from_reference if anchor_is_reference else _to_reference
    best_box, best_spread = None, -1.0
    for _ in range(_PLACEMENT_TRIES):
        fresh_box = transform(frame_boxes[anchor], placement.sample(rng))
        spread = _spread(np.array([*component_boxes, fresh_box]))
        if spread >= min_spread:
            return fresh_box, True
        if spread > best_spread:
            best_box, best_spread = fresh_box, spread
    return best_box, False


_CONTEXT_STREAM = 0xC0B1A5


def _context_head_probability(
    config: SyntheticConfig, subject_classes: np.ndarray, object_classes: np.ndarray
) -> np.ndarray:
    """float64[R] head-recording probability of each relation's (subject, object) class context."""
    low, high = config.context_bias_range
    values = [
        np.random.default_rng([_CONTEXT_STREAM, config.world_seed, int(s), int(o)]).random()
        for s, o in zip(subject_classes, object_classes, strict=True)
    ]
    return low + (high - low) * np.asarray(values, np.float64)


def _generate_image(
    world: _World, config: SyntheticConfig, index: int
) -> tuple[SceneGraph, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([_IMAGE_STREAM, config.seed, index])
    width = int(rng.integers(config.min_image_size, config.max_image_size + 1))
    height = int(rng.integers(config.min_image_size, config.max_image_size + 1))
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    max_relations = min(config.max_relations, num_objects - 1)
    num_relations = int(rng.integers(config.min_relations, max_relations + 1))
    min_spread = config.min_box_size / config.min_image_size

    frame_boxes: list[np.ndarray] = []  # xywh, in the frame of their component
    classes: list[int] = []
    components: list[int] = []
    relations = np.zeros((num_relations, 2), np.int64)
    true_predicates = np.zeros(num_relations, np.int32)
    for k in range(num_relations):
        predicate = _draw(world.predicate_cdf, rng)
        subject_class = _draw(world.subject_cdf[predicate], rng)
        object_class = _draw(world.object_cdf[predicate], rng)
        must_reuse = len(classes) + 2 + (num_relations - k - 1) > num_objects
        anchor, anchor_is_subject = _choose_anchor(
            world, predicate, subject_class, object_class, classes, must_reuse, rng
        )
        placement = world.placements[predicate]
        if anchor is not None:
            fresh_box, fits = _place_fresh(
                frame_boxes, components, anchor, anchor_is_subject, placement, min_spread, rng
            )
            if not fits and not must_reuse:
                anchor = None  # the reused set would crowd its smallest box: start a new set
        if anchor is None:  # a new connected set, rooted at the reference box
            aspect = math.exp(rng.uniform(*np.log(_ROOT_ASPECT)))
            anchor = len(classes)
            anchor_is_subject = placement.object_in_subject_frame
            frame_boxes.append(np.array([0.0, 0.0, 1.0, aspect]))
            classes.append(subject_class if anchor_is_subject else object_class)
            components.append(max(components, default=-1) + 1)
            fresh_box, _ = _place_fresh(
                frame_boxes, components, anchor, anchor_is_subject, placement, min_spread, rng
            )
        frame_boxes.append(fresh_box)
        classes.append(object_class if anchor_is_subject else subject_class)
        components.append(components[anchor])
        fresh = len(classes) - 1
        relations[k] = (anchor, fresh) if anchor_is_subject else (fresh, anchor)
        true_predicates[k] = predicate

    boxes = _fit_components(
        np.array(frame_boxes), np.array(components), width, height, config.min_box_size, rng
    )
    num_distractors = num_objects - len(classes)
    distractor_size = rng.uniform(*_DISTRACTOR_SIZE, size=(num_distractors, 2)) * [width, height]
    distractor_start = rng.uniform(size=(num_distractors, 2)) * ([width, height] - distractor_size)
    boxes = np.concatenate(
        [boxes, np.concatenate([distractor_start, distractor_start + distractor_size], axis=1)]
    )
    classes += [_draw(world.distractor_cdf, rng) for _ in range(num_distractors)]

    head_probability = np.full(num_relations, config.annotator_bias)
    if config.context_bias_range is not None:
        class_array = np.asarray(classes)
        head_probability = _context_head_probability(
            config, class_array[relations[:, 0]], class_array[relations[:, 1]]
        )
    annotated = np.where(
        rng.random(num_relations) < head_probability,
        world.head_of[true_predicates],
        true_predicates,
    )
    object_order = rng.permutation(num_objects)
    new_index = np.argsort(object_order)
    relation_order = rng.permutation(num_relations)
    relation_rows = np.concatenate(
        [new_index[relations[relation_order]], annotated[relation_order, None]], axis=1
    )
    graph = validation.build_graph(
        path="<synthetic>",
        image_id=f"synthetic-{config.seed}-{index:07d}",
        width=width,
        height=height,
        boxes=boxes[object_order],
        labels=np.asarray(classes)[object_order],
        relations=relation_rows,
        num_classes=world.vocab.num_classes,
        num_predicates=world.vocab.num_predicates,
        strict=True,
    )
    true_predicates = true_predicates[relation_order]
    return graph, true_predicates, world.valid_sets[true_predicates]


def generate(config: SyntheticConfig) -> SyntheticDataset:
    """Generates a synthetic dataset following the generative model of the module docstring.

    Args:
      config: the options; the same config always gives the same dataset.

    Returns:
      A :class:`SyntheticDataset` of ``config.num_images`` images: graphs with the annotated
      predicates, and per image the true predicates int32[R] and valid sets bool[R, P+1].
    """
    world = _build_world(config)
    images = [_generate_image(world, config, index) for index in range(config.num_images)]
    graphs = tuple(graph for graph, _, _ in images)
    return SyntheticDataset(
        graphs=graphs,
        true_predicates=tuple(true for _, true, _ in images),
        valid_predicates=tuple(valid for _, _, valid in images),
        vocab=world.vocab.with_counts_from(graphs),
        reference_vocab=world.vocab,
        groups=world.groups,
        config=config,
    )


def train_val_test(
    dataset: SyntheticDataset, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> tuple[SyntheticDataset, SyntheticDataset, SyntheticDataset]:
    """Splits a dataset into consecutive train / val / test images (images are i.i.d.).

    Every split's ``vocab`` carries the counts of the train split, as readers of the real datasets
    do.

    Args:
      dataset: the dataset to split.
      fractions: ``(train, val, test)`` fractions, non-negative, summing to 1.

    Returns:
      The three splits; test takes the images left after rounding train and val.
    """
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ConfigError("fractions", f"must be three non-negative numbers, got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError("fractions", f"must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    num_train = round(fractions[0] * len(dataset))
    num_val = min(round(fractions[1] * len(dataset)), len(dataset) - num_train)
    bounds = [(0, num_train), (num_train, num_train + num_val), (num_train + num_val, len(dataset))]
    train_vocab = dataset.vocab.with_counts_from(dataset.graphs[:num_train])
    return tuple(
        dataclasses.replace(
            dataset,
            graphs=dataset.graphs[start:stop],
            true_predicates=dataset.true_predicates[start:stop],
            valid_predicates=dataset.valid_predicates[start:stop],
            vocab=train_vocab,
        )
        for start, stop in bounds
    )
