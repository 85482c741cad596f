"""PE-Net: Prototype-based Embedding Network for scene graph generation.

Zheng et al., "Prototype-based Embedding Network for Scene Graph Generation", CVPR 2023 (Sec. 3).
Subjects, objects and predicates are embedded in one space: each predicate class is a prototype
``c`` built from its word embedding, each relation instance is ``r`` built from its subject and
object, and a relation is classified by the cosine of ``r`` with every prototype.

Model (symbols as in the paper):

* entity fusion — ``s = W_s t_s + σ(g_s([W_s t_s, h(x_s)])) ⊙ h(x_s)`` (and ``o`` alike), with
  ``t_s`` the word embedding of the subject's class, ``x_s`` its visual feature and ``h`` the
  visual-to-semantic MLP ``vis2sem``; ``W_s, W_o, W_p`` are 2-layer MLPs;
* relation — ``F(s, o) = ReLU(s + o) − (s − o)²``; ``r = F(s, o) − σ(g_p([F, h(x_u)])) ⊙ h(x_u)``
  with ``x_u`` the union feature;
* prototypes — ``c = W_p t_p`` for every predicate, background included;
* prediction — ``logits = cos(r, c) / τ`` with a learnable temperature, ``1/τ = exp(logit_scale)``.

Details taken from the official code (``VL-Group/PENET``, ``roi_relation_predictors.py``, class
``PrototypeEmbeddingNetwork``) where the paper is silent or differs:

* ``x_s`` and ``x_o`` are two halves of one linear projection of the object feature (``post_emb``,
  D_obj -> 2H); ``h`` (``vis2sem``: Linear(H, 2H), ReLU, Dropout, Linear(2H, H)) is one module
  shared by subjects, objects and union features; the union feature first passes a down-sampling MLP
  (D_union -> H -> H). The gate ``g_s`` sees ``[W_s t_s, h(x_s)]``.
* "for the model convergence": ``s``, ``o`` and ``r`` each pass a residual block
  ``LayerNorm(Dropout(ReLU(Linear(x))) + x)``; the prototypes do not.
* ``r`` and ``c`` both pass ``ReLU``, ``Dropout`` and one shared projection head (MLP H -> H -> 2H)
  before the cosine; the losses of :func:`sgg_jax.relation.losses.penet_losses` use these projected vectors.
  ``aux["relation_embedding"]`` is ``r`` after its residual block, before ReLU and the head.
* ``W_s, W_o, W_p`` are MLP(E -> H/2 -> H); dropout p = 0.2; H = 2048, E = 300 (GloVe), logit scale
  initialised to ``log(1 / 0.07)``; LayerNorm epsilon 1e-5 (PyTorch's).
* SGCls: the relation head embeds the object classifier's predicted labels
  ``1 + argmax(logits[1:])``, in training too (the official ``refine_obj_labels``), not the ground
  truth.

Where this module departs from the official code, and why:

* Per-object, then gathered: ``s`` depends only on the subject (``o`` only on the object), so it is
  computed once per object and gathered per pair. The function is the same; in training the dropout
  masks of ``vis2sem`` and the residual blocks are shared by the pairs of one object (the official
  code draws them per pair).
* The object classifier (SGCls) sees the object feature and a box embedding (Linear(9, 32),
  Linear(32, 128), ReLU), then Linear(-> 512) and Linear(-> K+1) as ``lin_obj_cyx`` /
  ``out_obj``. The official box embedding has a BatchNorm after its first layer, dropped here:
  batch statistics would mix padded objects into real ones. The official classifier also sees the
  embedding of the detector's class distribution, which GT-box feature sources do not have.
* Dense layers use Flax's default initialisation (LeCun normal, zero bias), not PyTorch's; random
  word embeddings (no GloVe given) are N(0, 1) like ``nn.Embedding`` and the official fallback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax import boxes as box_ops
from sgg_jax.errors import ConfigError, check_finite
from sgg_jax.nn import (
    frequency_table,
    l2_normalize,
    replace_leaves,
    scope_path,
    word_vector_table,
)
from sgg_jax.relation.features import (
    check_relation_config,
    gather_objects,
    relation_model_features,
)
from sgg_jax.structures import SceneGraphBatch

TASKS = ("predcls", "sgcls", "sgdet")
LAYER_NORM_EPSILON = 1e-5  # PyTorch's nn.LayerNorm default, as in the official code

_INT_FIELDS = (
    "num_classes",
    "num_predicates",
    "embed_dim",
    "hidden_dim",
    "object_feature_dim",
    "union_feature_dim",
    "feature_hidden_dim",
    "object_classifier_dim",
    "box_embedding_dim",
)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PENetConfig:
    """Sizes and options of PE-Net; invalid values raise :class:`ConfigError` naming the field.

    Only what shapes the model: word vectors and the frequency table are initial values of
    variables, put there by :func:`with_tables`. Configs compare and hash by value.

    Attributes:
      num_classes: K, object classes without background.
      num_predicates: predicates without background; C = num_predicates + 1 relation classes.
      task: ``"predcls"`` (ground-truth labels), ``"sgcls"`` (labels from an object classifier)
        or ``"sgdet"`` (the detector's boxes, labels from the object classifier; needs ``"roi"``).
      feature_source: ``"geometry"``, ``"precomputed"`` or ``"roi"`` (pixels through
        ``detector``; see :mod:`sgg_jax.relation.features`).
      embed_dim: E, size of the word embeddings (300 for GloVe).
      hidden_dim: H, size of the joint embedding space (official ``mlp_dim`` 2048); the projection
        head maps H -> 2H.
      object_feature_dim: D_obj of the geometry feature source (precomputed features keep theirs).
      union_feature_dim: D_union of the feature source (official pooling dim 4096).
      feature_hidden_dim: first-layer size of the feature source's MLPs.
      object_classifier_dim: hidden size of the SGCls object classifier (official 512).
      box_embedding_dim: size of the box embedding the object classifier sees (official 128).
      dropout_rate: dropout probability (official 0.2).
      logit_scale_init: initial ``logit_scale``; logits are ``cos · exp(logit_scale)``.
      frequency_bias: the model holds a float32[(K+1)², C] table of ``log`` predicate frequencies
        per (subject class, object class) (``FrequencyBaseline.log_bias`` flattened), added to the
        relation logits at inference only and stored in the non-trainable variable collection
        ``"frequency"`` (zeros until :func:`with_tables` puts the training split's table there).
        Off by default, as in the official code: ``VL-Group/PENET``'s
        ``PrototypeEmbeddingNetwork`` (``roi_relation_predictors.py``:28-303) never reads
        ``PREDICT_USE_BIAS``; RA-SGG's copy of it adds the bias at inference when the flag is set
        (``KanghoonYoon/torch-rasgg`` ``roi_relation_predictors.py``:289-290) but every RA-SGG
        script sets ``PREDICT_USE_BIAS=False`` (``scripts/sgcls_pretrain_penet.sh``,
        ``scripts/predcls_train_retag.sh``), and ``ReTAGPENet`` never adds it.
      detector: the :class:`~sgg_jax.detection.detector.DetectorConfig` of the ``"roi"`` source (its
        variables live under ``features/detector``).
      freeze_detector: ``"roi"``: no gradient and no update reaches the detector (SGB).
      union_features: ``"roi"``: ``"sgb"`` (Scene-Graph-Benchmark's union feature extractor,
        ``representation_size`` wide, the default when None) or ``"shared_head"`` (the
        detector's box head and an MLP, ``union_feature_dim`` wide); see
        :mod:`sgg_jax.relation.features`. None for the other sources.
      sgdet: :class:`~sgg_jax.relation.sgdet.SGDetConfig` (or a mapping of its fields): how
        detections become relation candidates and training targets in SGDet.
    """

    num_classes: int
    num_predicates: int
    task: str = "predcls"
    feature_source: str = "geometry"
    embed_dim: int = 300
    hidden_dim: int = 2048
    object_feature_dim: int = 4096
    union_feature_dim: int = 4096
    feature_hidden_dim: int = 4096
    object_classifier_dim: int = 512
    box_embedding_dim: int = 128
    dropout_rate: float = 0.2
    logit_scale_init: float = math.log(1.0 / 0.07)
    frequency_bias: bool = False
    detector: Any = None
    freeze_detector: bool = True
    union_features: str | None = None
    sgdet: Any = None

    def __post_init__(self):
        check_relation_config(self, _INT_FIELDS, TASKS)
        if self.hidden_dim < 2:
            raise ConfigError("hidden_dim", f"must be >= 2 (W_s uses H/2), got {self.hidden_dim}")
        scale = check_finite("logit_scale_init", self.logit_scale_init)
        object.__setattr__(self, "logit_scale_init", scale)

    @property
    def num_relation_classes(self) -> int:
        """C = num_predicates + 1 (column 0 = background)."""
        return self.num_predicates + 1

    @property
    def projection_dim(self) -> int:
        """Size of the projected relation and prototype vectors (2H)."""
        return 2 * self.hidden_dim

    def replace(self, **changes: Any) -> PENetConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def official(cls, num_classes: int, num_predicates: int, **overrides: Any) -> PENetConfig:
        """The official sizes: E = 300, H = 2048, 4096-d features, dropout 0.2.

        Args:
          num_classes: K.
          num_predicates: number of predicates without background.
          **overrides: any other field (``task``, ``feature_source``, ``frequency_bias``, ...).
        """
        return cls(num_classes=num_classes, num_predicates=num_predicates, **overrides)

    @classmethod
    def small(cls, num_classes: int, num_predicates: int, **overrides: Any) -> PENetConfig:
        """A CPU-sized PE-Net: H = 128, E = 64 (pass ``embed_dim`` for word vectors), 128-d features.

        About 0.42M parameters for 200 classes and 100 predicates; one training step on a batch
        of 8 images x 256 pairs took 40-70 ms on a 2-core CPU, so an epoch of GQA-200-mini
        (5,741 training images, 718 such steps) takes about a minute.

        Args:
          num_classes: K.
          num_predicates: number of predicates without background.
          **overrides: any field, e.g. ``task="sgcls"`` or ``embed_dim=300``.
        """
        fields = {
            "embed_dim": 64,
            "hidden_dim": 128,
            "object_feature_dim": 128,
            "union_feature_dim": 128,
            "feature_hidden_dim": 128,
            "object_classifier_dim": 128,
            "box_embedding_dim": 32,
            **overrides,
        }
        return cls(num_classes=num_classes, num_predicates=num_predicates, **fields)


def with_tables(
    variables: Mapping[str, Any],
    *,
    object_word_vectors: Any = None,
    predicate_word_vectors: Any = None,
    frequency_bias: Any = None,
    scope: str | Sequence[str] = (),
) -> dict[str, Any]:
    """PE-Net's variables with word vectors and the frequency table put in place.

    The tables given replace the initial values of ``params/object_embedding/embedding``,
    ``params/predicate_embedding/embedding`` (trainable) and ``frequency/log_bias`` (not trained,
    inference only); every other variable is unchanged. Pass it, with the tables bound, as
    ``init_variables`` of :func:`sgg_jax.train.loop.train`.

    Args:
      variables: the model's variables, e.g. freshly initialised ``{"params": ..., ...}``.
      object_word_vectors: optional float[K+1, E] (row 0 background).
      predicate_word_vectors: optional float[C, E] (row 0 background).
      frequency_bias: optional float[K+1, K+1, C] ``FrequencyBaseline.log_bias``; the model must
        be built with ``frequency_bias=True``.
      scope: where the PE-Net's variables sit inside each collection, e.g. ``"base"`` for
        :class:`~sgg_jax.projects.cce_scorer.model.CCEScorerModel`.

    Returns:
      A new variables dict (the input is not changed).

    Raises:
      ConfigError: naming the table: wrong shape, NaN / inf, or no such variable in the model.
    """
    scope = scope_path(scope)
    replacements = {}
    for field, vectors, module in (
        ("object_word_vectors", object_word_vectors, "object_embedding"),
        ("predicate_word_vectors", predicate_word_vectors, "predicate_embedding"),
    ):
        if vectors is None:
            continue
        path = ("params", *scope, module, "embedding")
        replacements[path] = word_vector_table(variables, path, field, vectors, "PE-Net")
    if frequency_bias is not None:
        path = ("frequency", *scope, "log_bias")
        replacements[path] = frequency_table(variables, path, frequency_bias)
    return replace_leaves(variables, replacements)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Dense layers with ReLU between them and none after the last (the official ``MLP``).

    Attributes:
      features: output size of each layer.
    """

    features: Sequence[int]

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        hidden = inputs
        for index, size in enumerate(self.features):
            hidden = nn.Dense(size, name=f"layer{index}")(hidden)
            if index < len(self.features) - 1:
                hidden = nn.relu(hidden)
        return hidden


class ResidualBlock(nn.Module):
    """``LayerNorm(Dropout(ReLU(Linear(x))) + x)`` ("for the model convergence" in the code).

    Attributes:
      dropout_rate: dropout probability.
    """

    dropout_rate: float

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        update = nn.relu(nn.Dense(inputs.shape[-1], name="linear")(inputs))
        update = nn.Dropout(self.dropout_rate, deterministic=not train)(update)
        return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, name="norm")(update + inputs)


class VisualToSemantic(nn.Module):
    """``h``: visual features into the semantic space, Linear(2H), ReLU, Dropout, Linear(H).

    Attributes:
      hidden_dim: H.
      dropout_rate: dropout probability.
    """

    hidden_dim: int
    dropout_rate: float

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        hidden = nn.relu(nn.Dense(2 * self.hidden_dim, name="layer0")(inputs))
        hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        return nn.Dense(self.hidden_dim, name="layer1")(hidden)


class EntityFusion(nn.Module):
    """Subject (or object) representation ``s = W_s t_s + σ(g_s([W_s t_s, h(x_s)])) ⊙ h(x_s)``.

    Attributes:
      hidden_dim: H.
      dropout_rate: dropout probability of the residual block.
    """

    hidden_dim: int
    dropout_rate: float

    @nn.compact
    def __call__(
        self, word_embedding: jax.Array, visual_semantic: jax.Array, *, train: bool
    ) -> jax.Array:
        """Fuses the class word embedding with the visual cue.

        Args:
          word_embedding: f32[..., E] ``t_s``, the embedding of the entity's class.
          visual_semantic: f32[..., H] ``h(x_s)``.
          train: dropout on.

        Returns:
          f32[..., H] the entity representation after its residual block.
        """
        word_semantic = MLP((self.hidden_dim // 2, self.hidden_dim), name="word_mlp")(
            word_embedding
        )
        gate = nn.sigmoid(
            nn.Dense(self.hidden_dim, name="gate")(
                jnp.concatenate([word_semantic, visual_semantic], axis=-1)
            )
        )
        entity = word_semantic + gate * visual_semantic
        return ResidualBlock(self.dropout_rate, name="residual")(entity, train=train)


class ObjectClassifier(nn.Module):
    """SGCls object classifier over ``[object feature, box embedding]`` (``refine_obj_labels``).

    Attributes:
      num_labels: K + 1 (column 0 = background).
      hidden_dim: size of the hidden layer (official 512).
      box_embedding_dim: size of the box embedding (official 128).
    """

    num_labels: int
    hidden_dim: int
    box_embedding_dim: int

    @nn.compact
    def __call__(self, object_features: jax.Array, box_encoding: jax.Array) -> jax.Array:
        """Scores every object.

        Args:
          object_features: f32[B, N, D_obj].
          box_encoding: f32[B, N, 9] (:func:`sgg_jax.boxes.encode_boxes`).

        Returns:
          f32[B, N, K + 1] logits.
        """
        box_embedding = nn.Dense(32, name="box_layer0")(box_encoding)
        box_embedding = nn.relu(nn.Dense(self.box_embedding_dim, name="box_layer1")(box_embedding))
        hidden = nn.Dense(self.hidden_dim, name="hidden")(
            jnp.concatenate([object_features, box_embedding], axis=-1)
        )
        return nn.Dense(self.num_labels, name="logits")(hidden)


# Word embeddings without word vectors: N(0, 1) like ``nn.Embedding`` and the official fallback.
WORD_EMBEDDING_INIT = nn.initializers.normal(stddev=1.0)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class PENet(nn.Module):
    """PE-Net relation head on a feature source; called as ``model(batch, train=...)``.

    Attributes:
      config: sizes and options.
    """

    config: PENetConfig

    @nn.compact
    def __call__(
        self, batch: SceneGraphBatch, train: bool = False
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Scores every pair of the batch against every predicate prototype.

        Args:
          batch: B images, N objects, P pairs (``pairs`` index objects of the same image).
          train: dropout on (needs ``rngs={"dropout": key}``).

        Returns:
          ``(outputs, aux)``. ``outputs``: ``relation_logits`` f32[B, P, C] (column 0 =
          background), ``object_labels`` i32[B, N] (0 for padded objects), ``object_scores``
          f32[B, N] (0 for padded objects), and in SGCls / SGDet ``object_logits`` f32[B, N, K+1];
          in SGDet N and P are those of the detections and ``outputs`` also holds ``boxes``,
          ``object_mask``, ``pairs``, ``pair_mask``, ``detection_labels``, ``detection_scores``
          (:func:`sgg_jax.relation.features.relation_model_features`); with the ``roi`` feature
          source (every task) ``image_feature`` f32[B, C], the backbone's pooled top map.
          ``aux``: ``relation_embedding`` f32[B, P, H] (``r`` before the projection head),
          ``relation_projection`` f32[B, P, 2H], ``prototype_embedding`` f32[C, H],
          ``prototype_projection`` f32[C, 2H], ``logit_scale`` f32[] (the log of 1/τ),
          ``object_features`` f32[B, N, D_obj] (the feature source's per-object features, 0 for
          padded objects) and ``unbiased_relation_logits`` f32[B, P, C] (the logits before the
          inference-only frequency bias: what training sees, e.g. the Scorer's input); in SGDet
          ``targets``, the batch over the detections the losses read.
        """
        config = self.config
        hidden_dim = config.hidden_dim
        # In SGDet the batch becomes the batch over the detections (boxes, pairs, targets).
        object_features, union_features, batch, sgdet_outputs = relation_model_features(
            config, batch, train=train
        )
        object_mask = jnp.asarray(batch.object_mask, bool)
        pairs = jnp.asarray(batch.pairs, jnp.int32)

        outputs: dict[str, jax.Array] = dict(sgdet_outputs)
        if config.task in ("sgcls", "sgdet"):
            image_size = jnp.asarray(batch.image_size, jnp.float32)[:, None, :]
            box_encoding = box_ops.encode_boxes(jnp.asarray(batch.boxes, jnp.float32), image_size)
            object_logits = ObjectClassifier(
                num_labels=config.num_classes + 1,
                hidden_dim=config.object_classifier_dim,
                box_embedding_dim=config.box_embedding_dim,
                name="object_classifier",
            )(object_features, box_encoding)
            predicted = 1 + jnp.argmax(object_logits[..., 1:], axis=-1).astype(jnp.int32)
            probabilities = jax.nn.softmax(object_logits, axis=-1)
            predicted_scores = jnp.take_along_axis(probabilities, predicted[..., None], axis=-1)
            object_labels = jnp.where(object_mask, predicted, 0)
            object_scores = jnp.where(object_mask, predicted_scores[..., 0], 0.0)
            outputs["object_logits"] = object_logits
        else:
            object_labels = jnp.where(object_mask, jnp.asarray(batch.labels, jnp.int32), 0)
            object_scores = object_mask.astype(jnp.float32)

        # Entities: x_s, x_o from one projection of the object feature; h shared by all inputs.
        visual = nn.Dense(2 * hidden_dim, name="entity_projection")(object_features)
        subject_visual, object_visual = jnp.split(visual, 2, axis=-1)
        vis2sem = VisualToSemantic(hidden_dim, config.dropout_rate, name="vis2sem")
        object_embedding = nn.Embed(
            config.num_classes + 1,
            config.embed_dim,
            embedding_init=WORD_EMBEDDING_INIT,
            name="object_embedding",
        )
        class_embedding = object_embedding(object_labels)  # t_s / t_o per object
        subjects = EntityFusion(hidden_dim, config.dropout_rate, name="subject_fusion")(
            class_embedding, vis2sem(subject_visual, train=train), train=train
        )
        objects = EntityFusion(hidden_dim, config.dropout_rate, name="object_fusion")(
            class_embedding, vis2sem(object_visual, train=train), train=train
        )
        subject_per_pair = gather_objects(subjects, pairs[..., 0])
        object_per_pair = gather_objects(objects, pairs[..., 1])

        # Relation: r = F(s, o) − σ(g_p([F, h(x_u)])) ⊙ h(x_u), F(s, o) = ReLU(s + o) − (s − o)².
        fusion = nn.relu(subject_per_pair + object_per_pair) - jnp.square(
            subject_per_pair - object_per_pair
        )
        union_semantic = vis2sem(
            MLP((hidden_dim, hidden_dim), name="union_downsample")(union_features), train=train
        )
        predicate_gate = nn.sigmoid(
            nn.Dense(hidden_dim, name="predicate_gate")(
                jnp.concatenate([fusion, union_semantic], axis=-1)
            )
        )
        relation = fusion - predicate_gate * union_semantic
        relation = ResidualBlock(config.dropout_rate, name="relation_residual")(
            relation, train=train
        )

        # Prototypes: c = W_p t_p for every predicate, background included.
        predicate_embedding = nn.Embed(
            config.num_relation_classes,
            config.embed_dim,
            embedding_init=WORD_EMBEDDING_INIT,
            name="predicate_embedding",
        )(jnp.arange(config.num_relation_classes))
        prototypes = MLP((hidden_dim // 2, hidden_dim), name="predicate_word_mlp")(
            predicate_embedding
        )

        projection_head = MLP((hidden_dim, 2 * hidden_dim), name="projection_head")
        relation_projection = projection_head(
            nn.Dropout(config.dropout_rate, deterministic=not train)(nn.relu(relation))
        )
        prototype_projection = projection_head(
            nn.Dropout(config.dropout_rate, deterministic=not train)(nn.relu(prototypes))
        )

        # logits = <r/‖r‖, c/‖c‖> / τ with 1/τ = exp(logit_scale).
        logit_scale = self.param(
            "logit_scale", nn.initializers.constant(config.logit_scale_init), (), jnp.float32
        )
        relation_logits = jnp.einsum(
            "bph,ch->bpc", l2_normalize(relation_projection), l2_normalize(prototype_projection)
        ) * jnp.exp(logit_scale)
        unbiased_relation_logits = relation_logits
        if config.frequency_bias:
            num_labels = config.num_classes + 1
            log_bias = self.variable(
                "frequency",
                "log_bias",
                jnp.zeros,
                (num_labels * num_labels, config.num_relation_classes),
                jnp.float32,
            ).value
            if not train:  # official PE-Net: the bias is used at inference only
                cells = gather_objects(object_labels, pairs[..., 0]) * num_labels
                cells = cells + gather_objects(object_labels, pairs[..., 1])
                relation_logits = relation_logits + log_bias[cells]

        outputs.update(
            relation_logits=relation_logits,
            object_labels=object_labels,
            object_scores=object_scores,
        )
        aux = {
            "relation_embedding": relation,
            "relation_projection": relation_projection,
            "prototype_embedding": prototypes,
            "prototype_projection": prototype_projection,
            "logit_scale": logit_scale,
            "object_features": jnp.where(object_mask[..., None], object_features, 0.0),
            "unbiased_relation_logits": unbiased_relation_logits,
        }
        if config.task == "sgdet":
            aux["targets"] = batch
        return outputs, aux
