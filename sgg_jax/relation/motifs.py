"""MotifNet: object and edge context from bidirectional LSTMs over objects ordered left to right.

Zellers et al., "Neural Motifs: Scene Graph Parsing with Global Context", CVPR 2018 (Sec. 4,
"MotifNet"), as implemented by Scene-Graph-Benchmark (``KaihuaTang/Scene-Graph-Benchmark.pytorch``,
``model_motifs.py`` ``LSTMContext`` and ``roi_relation_predictors.py`` ``MotifPredictor``). A second
base relation model beside :mod:`sgg_jax.relation.penet`, called and read the same way.

Model (per image; objects in left-to-right order of their box centre x):

* object context — ``C = Linear(BiLSTM([f_i, W_1 l_i, b_i]))``: ``f_i`` the object feature,
  ``W_1 l_i`` the label embedding (PredCls: the ground-truth class; SGCls: a class distribution
  times the embedding table), ``b_i`` the box embedding ``ReLU(Linear(Linear(box encoding)))``
  (9 -> 32 -> 128);
* object classification (SGCls) — ``logits_i = Linear([f_i, W_1 l_i, b_i, c_i])``;
* edge context — ``D = Linear(BiLSTM([W_2 ô_i, f_i, c_i]))`` with ``ô_i`` the class used for edges;
* relation — ``h = Linear(d_i)`` split into a subject head ``h_s`` and an object head ``h_o``;
  ``r_ij = Linear([h_s,i, h_o,j]) ⊙ u_ij`` with ``u_ij`` the union feature of the pair (projected
  to the pooling size when it has another size); ``logits_ij = Linear(r_ij) + log_bias[ô_i, ô_j]``,
  the frequency bias (:mod:`sgg_jax.relation.frequency`, ``log(fg / Σ fg + 1e-3)`` of the training
  split) as a trainable table indexed by (subject class, object class), added in training and at
  inference as ``MotifPredictor`` does with ``PREDICT_USE_BIAS``.

Output contract (the same keys as :class:`sgg_jax.relation.penet.PENet`, so that the relation CE of
:mod:`sgg_jax.relation.losses` (``cross_entropy(outputs["relation_logits"], batch.pair_labels,
batch.pair_mask)``, plus the object CE on ``outputs["object_logits"]`` in SGCls), the experiment
scorers (``softmax(relation_logits)``, ``object_labels``, ``object_scores``) and
:func:`sgg_jax.evaluation.collect.batch_predictions` work unchanged)::

    model.apply(variables, batch, train=...) -> (outputs, aux)
    outputs["relation_logits"]  f32[B, P, C]    column 0 = background, frequency bias included
    outputs["object_labels"]    i32[B, N]       GT (PredCls) or 1 + argmax(logits[1:]); 0 if padded
    outputs["object_scores"]    f32[B, N]       1 (PredCls) or softmax prob of that label; 0 padded
    outputs["object_logits"]    f32[B, N, K+1]  SGCls only (the loss keys its object CE on it)
    outputs["image_feature"]    f32[B, C]       ``roi`` source: the backbone's pooled top map
    aux["relation_embedding"]   f32[B, P, pooling_dim]  ``r_ij``, the input of the classifier
    aux["object_context"]       f32[B, N, H]    ``C`` in the original object order
    aux["edge_context"]         f32[B, N, H]    ``D`` in the original object order
    aux["object_prior_logits"]  f32[B, N, K+1]  SGCls only, the distribution ``l_i`` comes from
    aux["object_features"]      f32[B, N, D_obj] the feature source's ``f_i`` (0 for padded objects)

PE-Net's prototype keys (``relation_projection``, ``prototype_projection``) do not exist here:
:func:`sgg_jax.relation.losses.make_penet_loss` adds PE-Net's prototype terms and cannot train MotifNet; a
MotifNet loss is the relation CE plus, in SGCls, the object CE (SGB's ``RelationLossComputation``).

Static shapes and padding: the left-to-right permutation sorts real objects first (padding after
all real ones, stable for ties), each LSTM gets ``seq_lengths = Σ object_mask`` so that neither
direction reads a padded step before a real one, LSTM inputs and outputs of padded objects are set
to zero, and the results are scattered back to the original object order. A real object's or
pair's outputs therefore never depend on padded objects, padded pairs, or the batch's budgets.

Details taken from Scene-Graph-Benchmark where the paper is silent:

* sizes (``MotifsConfig.official``): hidden 512 (``CONTEXT_HIDDEN_DIM``), pooling 4096
  (``CONTEXT_POOLING_DIM``), embedding 200 (GloVe 200d), one BiLSTM layer each for object and edge
  context; both LSTMs output ``2H`` that a Linear maps back to ``H`` (``lin_obj_h``, ``lin_edge_h``);
  two embedding tables ``W_1`` (object context) and ``W_2`` (edge context) with the same initial
  vectors; ``[h_s, h_o]`` is concatenated before the pooling Linear (``post_cat``).
* initialisation: the head Linear (``post_emb``) is N(0, (10 / √H)²), the pooling, union and
  relation Linears (``post_cat``, ``up_dim``, ``rel_compress``) Xavier-normal, biases zero.
* SGCls: the edge context and the frequency bias use the ground-truth classes in training (SGB's
  decoder commits to the ground truth, teacher forcing) and the predicted classes at inference.
* dropout (p = 0.2, ``CONTEXT_DROPOUT_RATE``) only between stacked LSTM layers (PyTorch's
  ``nn.LSTM(dropout=...)``); with the official single layer there is none.

Where this module departs from Scene-Graph-Benchmark, and why:

* Order: SGB's 'leftright' mode sorts by ``c_x / (max c_x + 1)`` *descending* (right to left)
  with an unstable sort; here ascending with a stable sort (ties keep the input order), as the
  paper describes. The two directions of a BiLSTM see the same sequences either way; only which
  weights read which direction differs.
* SGCls object classifier: SGB decodes labels with a highway LSTM (``DecoderRNN``) that feeds
  each step the previous label; here one Linear on the same per-object input (``[f, W_1 l, b,
  c]``), so classification is parallel. GT boxes need no per-class NMS.
* SGCls label embedding: SGB embeds the detector's (box head's) detached class distribution;
  GT-box feature sources have none, so a Linear ``object_prior`` on the object feature gives it
  (``softmax(prior) @ W_1``), trained end to end through the context (no CE of its own: the loss
  contract has one object CE; ``aux["object_prior_logits"]`` is there for a loss that wants one).
* The box embedding drops SGB's BatchNorm (batch statistics would mix padded objects into real
  ones; as PE-Net here) and uses :func:`sgg_jax.boxes.encode_boxes` (continuous widths, SGB adds
  one pixel).
* LSTM cells are Flax's ``OptimizedLSTMCell`` with Flax's initialisers (LeCun-normal input,
  orthogonal recurrent kernels, zero biases), not PyTorch's uniform(±1/√H); other Dense layers not
  listed above use Flax's defaults.
* ``use_union_features=False`` (SGB ``PREDICT_USE_VISION=False``) drops ``⊙ u_ij``; it is also
  the fallback when a feature source returns no union features (both sources of
  :mod:`sgg_jax.relation.features` return them).
* ``pair_fusion="product"`` is a variant of the original code's fusion, which maps the edge
  context to ``2 x pooling_dim`` and multiplies the two halves; here ``h_s ⊙ h_o`` (size H) is
  projected to the pooling size, as ``concat`` does with ``[h_s, h_o]``.
* ``frequency_bias=False`` builds the model without the bias (SGB always builds it for MotifNet).
  With ``True`` the model holds the parameter ``frequency_bias`` with
  :class:`~sgg_jax.relation.frequency.FrequencyBias`'s layout ([(K+1)², C], row ``s·(K+1)+o``);
  its initial value, the log table ``FrequencyBaseline.log_bias``, is put in by
  :func:`with_tables` (configs carry no arrays).
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
from sgg_jax.errors import check_bool, check_choice
from sgg_jax.nn import (
    frequency_table,
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
PAIR_FUSIONS = ("concat", "product")
BOX_HIDDEN_DIM = 32  # SGB's pos_embed: Linear(9, 32), (BatchNorm), Linear(32, 128), ReLU

_INT_FIELDS = (
    "num_classes",
    "num_predicates",
    "embed_dim",
    "hidden_dim",
    "pooling_dim",
    "object_feature_dim",
    "union_feature_dim",
    "feature_hidden_dim",
    "box_embedding_dim",
    "num_object_layers",
    "num_edge_layers",
)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MotifsConfig:
    """Sizes and options of MotifNet; invalid values raise :class:`ConfigError` naming the field.

    Only what shapes the model: word vectors and the frequency table are initial values of
    parameters, put there by :func:`with_tables`. Configs compare and hash by value.

    Attributes:
      num_classes: K, object classes without background.
      num_predicates: predicates without background; C = num_predicates + 1 relation classes.
      task: ``"predcls"`` (ground-truth labels), ``"sgcls"`` (labels from the object classifier)
        or ``"sgdet"`` (the detector's boxes, labels from the object classifier; needs ``"roi"``).
      feature_source: ``"geometry"``, ``"precomputed"`` or ``"roi"`` (pixels through
        ``detector``; see :mod:`sgg_jax.relation.features`).
      embed_dim: E, size of the label embeddings (SGB: GloVe 200d).
      hidden_dim: H, size of the object and edge context (SGB ``CONTEXT_HIDDEN_DIM`` 512); each
        LSTM direction has H units.
      pooling_dim: size of the pair representation multiplied with the union feature (SGB
        ``CONTEXT_POOLING_DIM`` 4096).
      object_feature_dim: D_obj of the geometry feature source (precomputed features keep theirs).
      union_feature_dim: D_union of the feature source; projected to ``pooling_dim`` when they
        differ (SGB ``up_dim``).
      feature_hidden_dim: first-layer size of the feature source's MLPs.
      box_embedding_dim: size of the box embedding (SGB 128).
      num_object_layers: BiLSTM layers of the object context (SGB ``CONTEXT_OBJ_LAYER`` 1).
      num_edge_layers: BiLSTM layers of the edge context (SGB ``CONTEXT_REL_LAYER`` 1).
      dropout_rate: dropout between stacked LSTM layers (SGB ``CONTEXT_DROPOUT_RATE`` 0.2).
      pair_fusion: ``"concat"`` (SGB: Linear over ``[h_s, h_o]``) or ``"product"`` (the original
        neural-motifs: Linear over ``h_s ⊙ h_o``).
      use_union_features: multiply the pair representation by the union feature (SGB
        ``PREDICT_USE_VISION``).
      frequency_bias: the model holds the trainable parameter ``frequency_bias`` f32[(K+1)², C],
        ``log`` predicate frequencies per (subject class, object class) of the training split
        (``FrequencyBaseline.log_bias`` flattened, like
        :class:`sgg_jax.relation.frequency.FrequencyBias`; its initial value comes from
        :func:`with_tables`, zeros without it), added to the relation logits in training and at
        inference.
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
    embed_dim: int = 200
    hidden_dim: int = 512
    pooling_dim: int = 4096
    object_feature_dim: int = 4096
    union_feature_dim: int = 4096
    feature_hidden_dim: int = 4096
    box_embedding_dim: int = 128
    num_object_layers: int = 1
    num_edge_layers: int = 1
    dropout_rate: float = 0.2
    pair_fusion: str = "concat"
    use_union_features: bool = True
    frequency_bias: bool = False
    detector: Any = None
    freeze_detector: bool = True
    union_features: str | None = None
    sgdet: Any = None

    def __post_init__(self):
        check_relation_config(self, _INT_FIELDS, TASKS)
        check_choice("pair_fusion", self.pair_fusion, PAIR_FUSIONS)
        use_union = check_bool("use_union_features", self.use_union_features)
        object.__setattr__(self, "use_union_features", use_union)

    @property
    def num_relation_classes(self) -> int:
        """C = num_predicates + 1 (column 0 = background)."""
        return self.num_predicates + 1

    def replace(self, **changes: Any) -> MotifsConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def official(cls, num_classes: int, num_predicates: int, **overrides: Any) -> MotifsConfig:
        """Scene-Graph-Benchmark's sizes: H = 512, pooling 4096, E = 200, one BiLSTM layer each.

        Args:
          num_classes: K.
          num_predicates: number of predicates without background.
          **overrides: any other field (``task``, ``feature_source``, ``frequency_bias``, ...).
        """
        return cls(num_classes=num_classes, num_predicates=num_predicates, **overrides)

    @classmethod
    def small(cls, num_classes: int, num_predicates: int, **overrides: Any) -> MotifsConfig:
        """A CPU-sized MotifNet: H = 64, pooling 128, E = 64 (pass ``embed_dim`` for word vectors).

        About 0.43M parameters (PredCls; 0.51M SGCls) for 200 classes and 100 predicates, plus
        the 201² x 101 frequency table when given. One Adam step on 8 images x 40 objects x 256
        pairs took 0.1-0.26 s on a busy 2-core CPU (jit, geometry features).

        Args:
          num_classes: K.
          num_predicates: number of predicates without background.
          **overrides: any field, e.g. ``task="sgcls"`` or ``frequency_bias=True``.
        """
        fields = {
            "embed_dim": 64,
            "hidden_dim": 64,
            "pooling_dim": 128,
            "object_feature_dim": 128,
            "union_feature_dim": 128,
            "feature_hidden_dim": 128,
            "box_embedding_dim": 32,
            **overrides,
        }
        return cls(num_classes=num_classes, num_predicates=num_predicates, **fields)


def with_tables(
    variables: Mapping[str, Any],
    *,
    object_word_vectors: Any = None,
    frequency_bias: Any = None,
    scope: str | Sequence[str] = (),
) -> dict[str, Any]:
    """MotifNet's variables with word vectors and the frequency table as initial parameters.

    ``object_word_vectors`` replaces both label embedding tables (``object_embedding`` and
    ``edge_embedding``), ``frequency_bias`` the trainable ``frequency_bias`` parameter; every other
    variable is unchanged. Pass it, with the tables bound, as ``init_variables`` of
    :func:`sgg_jax.train.loop.train`.

    Args:
      variables: the model's variables, e.g. freshly initialised ``{"params": ...}``.
      object_word_vectors: optional float[K+1, E] (row 0 background).
      frequency_bias: optional float[K+1, K+1, C] ``FrequencyBaseline.log_bias``; the model must
        be built with ``frequency_bias=True``.
      scope: where the MotifNet's variables sit inside each collection, e.g. ``"base"`` for
        :class:`~sgg_jax.projects.cce_scorer.model.CCEScorerModel`.

    Returns:
      A new variables dict (the input is not changed).

    Raises:
      ConfigError: naming the table: wrong shape, NaN / inf, or no such variable in the model.
    """
    scope = scope_path(scope)
    replacements = {}
    if object_word_vectors is not None:
        for module in ("object_embedding", "edge_embedding"):
            path = ("params", *scope, module, "embedding")
            replacements[path] = word_vector_table(
                variables, path, "object_word_vectors", object_word_vectors, "MotifNet"
            )
    if frequency_bias is not None:
        path = ("params", *scope, "frequency_bias")
        replacements[path] = frequency_table(variables, path, frequency_bias)
    return replace_leaves(variables, replacements)


# ----------------------------------------------------------------------------------------------
# Object order
# ----------------------------------------------------------------------------------------------


def left_to_right_order(boxes: jax.Array, object_mask: jax.Array) -> jax.Array:
    """The permutation putting the objects of every image in left-to-right order.

    Real objects are sorted by box centre x, ascending; padded objects follow all real ones; the
    sort is stable, so ties (and the padded objects) keep their input order.

    Args:
      boxes: f32[B, N, 4] xyxy (padded rows may hold anything finite or not).
      object_mask: bool[B, N] real objects.

    Returns:
      i32[B, N] ``order`` with ``order[b, k]`` the input index of the k-th object of image b;
      ``values[b, order[b]]`` sorts per-object values, ``jnp.argsort(order)`` undoes it.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    object_mask = jnp.asarray(object_mask, bool)
    centre_x = jnp.where(object_mask, 0.5 * (boxes[..., 0] + boxes[..., 2]), 0.0)
    # lexsort: the last key is the primary one (real before padded), then centre x; stable.
    return jnp.lexsort((centre_x, ~object_mask), axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class BiLSTM(nn.Module):
    """Stacked bidirectional LSTM over padded sequences (``torch.nn.LSTM(bidirectional=True)``).

    Each layer runs a forward and a reverse ``nn.RNN(nn.OptimizedLSTMCell)`` with
    ``seq_lengths``: the reverse direction starts at the last real step of each sequence, so the
    steps after ``seq_lengths`` never change the outputs before it. Dropout between layers.

    Attributes:
      hidden_dim: units per direction.
      num_layers: stacked bidirectional layers.
      dropout_rate: dropout on the input of every layer after the first.
    """

    hidden_dim: int
    num_layers: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, inputs: jax.Array, seq_lengths: jax.Array, *, train: bool) -> jax.Array:
        """Runs the layers.

        Args:
          inputs: f32[B, T, D], real steps first.
          seq_lengths: i32[B] real steps per sequence.
          train: dropout on (needs ``rngs={"dropout": key}`` when layers > 1 and rate > 0).

        Returns:
          f32[B, T, 2H] ``[forward, reverse]`` outputs; steps at or after ``seq_lengths`` are
          zero.
        """
        valid = jnp.arange(inputs.shape[1])[None, :] < seq_lengths[:, None]
        hidden = jnp.where(valid[..., None], inputs, 0.0)
        for layer in range(self.num_layers):
            if layer > 0:
                hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
            # The cells hold the parameters; Flax names them in this module's scope.
            hidden = nn.Bidirectional(
                nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim, name=f"layer{layer}_forward")),
                nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim, name=f"layer{layer}_reverse")),
            )(hidden, seq_lengths=seq_lengths)
            hidden = jnp.where(valid[..., None], hidden, 0.0)
        return hidden


class ContextEncoder(nn.Module):
    """BiLSTM over objects in left-to-right order, then Linear(2H -> H), back in input order.

    Attributes:
      hidden_dim: H.
      num_layers: BiLSTM layers.
      dropout_rate: dropout between layers.
    """

    hidden_dim: int
    num_layers: int
    dropout_rate: float

    @nn.compact
    def __call__(
        self, inputs: jax.Array, order: jax.Array, object_mask: jax.Array, *, train: bool
    ) -> jax.Array:
        """Encodes every object in the context of the other objects of its image.

        Args:
          inputs: f32[B, N, D] per-object inputs in the input order.
          order: i32[B, N] :func:`left_to_right_order`.
          object_mask: bool[B, N].
          train: dropout on.

        Returns:
          f32[B, N, H] in the input order; zeros for padded objects.
        """
        seq_lengths = jnp.sum(object_mask, axis=-1).astype(jnp.int32)
        encoded = BiLSTM(self.hidden_dim, self.num_layers, self.dropout_rate, name="rnn")(
            gather_objects(inputs, order), seq_lengths, train=train
        )
        encoded = nn.Dense(self.hidden_dim, name="projection")(encoded)  # lin_obj_h / lin_edge_h
        restored = gather_objects(encoded, jnp.argsort(order, axis=-1))
        return jnp.where(object_mask[..., None], restored, 0.0)


# Label embeddings without word vectors: N(0, 1) like ``nn.Embedding``.
WORD_EMBEDDING_INIT = nn.initializers.normal(stddev=1.0)
XAVIER_NORMAL = nn.initializers.xavier_normal()  # SGB layer_init(..., xavier=True)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class MotifNet(nn.Module):
    """MotifNet relation head on a feature source; called as ``model(batch, train=...)``.

    Attributes:
      config: sizes and options.
    """

    config: MotifsConfig

    @nn.compact
    def __call__(
        self, batch: SceneGraphBatch, train: bool = False
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Scores every pair of the batch.

        Args:
          batch: B images, N objects, P pairs (``pairs`` index objects of the same image).
          train: training mode: dropout on (between stacked LSTM layers) and, in SGCls, the
            ground-truth classes feed the edge context and the frequency bias.

        Returns:
          ``(outputs, aux)`` as listed in the module docstring.
        """
        config = self.config
        num_labels = config.num_classes + 1
        hidden_dim = config.hidden_dim
        # In SGDet the batch becomes the batch over the detections (boxes, pairs, targets).
        object_features, union_features, batch, sgdet_outputs = relation_model_features(
            config, batch, train=train
        )
        object_mask = jnp.asarray(batch.object_mask, bool)
        pairs = jnp.asarray(batch.pairs, jnp.int32)
        truth = jnp.where(object_mask, jnp.asarray(batch.labels, jnp.int32), 0)
        boxes = jnp.where(object_mask[..., None], jnp.asarray(batch.boxes, jnp.float32), 0.0)
        object_features = jnp.where(object_mask[..., None], object_features, 0.0)
        order = left_to_right_order(boxes, object_mask)

        # Object context: BiLSTM over [f_i, W_1 l_i, b_i].
        object_embedding = nn.Embed(
            num_labels,
            config.embed_dim,
            embedding_init=WORD_EMBEDDING_INIT,
            name="object_embedding",
        )
        outputs: dict[str, jax.Array] = dict(sgdet_outputs)
        aux: dict[str, jax.Array] = {}
        if config.task in ("sgcls", "sgdet"):
            prior_logits = nn.Dense(num_labels, name="object_prior")(object_features)
            label_embedding = jax.nn.softmax(prior_logits, axis=-1) @ object_embedding.embedding
            aux["object_prior_logits"] = prior_logits
        else:
            label_embedding = object_embedding(truth)
        image_size = jnp.asarray(batch.image_size, jnp.float32)[:, None, :]
        box_embedding = nn.Dense(BOX_HIDDEN_DIM, name="box_layer0")(
            box_ops.encode_boxes(boxes, image_size)
        )
        box_embedding = nn.relu(
            nn.Dense(config.box_embedding_dim, name="box_layer1")(box_embedding)
        )
        object_inputs = jnp.concatenate([object_features, label_embedding, box_embedding], axis=-1)
        object_inputs = jnp.where(object_mask[..., None], object_inputs, 0.0)
        object_context = ContextEncoder(
            hidden_dim, config.num_object_layers, config.dropout_rate, name="object_context"
        )(object_inputs, order, object_mask, train=train)

        # Object classes: ground truth (PredCls) or the classifier on the context (SGCls, SGDet).
        if config.task in ("sgcls", "sgdet"):
            object_logits = nn.Dense(num_labels, name="object_classifier")(
                jnp.concatenate([object_inputs, object_context], axis=-1)
            )
            predicted = 1 + jnp.argmax(object_logits[..., 1:], axis=-1).astype(jnp.int32)
            probabilities = jax.nn.softmax(object_logits, axis=-1)
            predicted_scores = jnp.take_along_axis(probabilities, predicted[..., None], axis=-1)
            object_labels = jnp.where(object_mask, predicted, 0)
            object_scores = jnp.where(object_mask, predicted_scores[..., 0], 0.0)
            edge_labels = truth if train else object_labels  # SGB: teacher forcing in training
            outputs["object_logits"] = object_logits
        else:
            object_labels = truth
            object_scores = object_mask.astype(jnp.float32)
            edge_labels = truth

        # Edge context: BiLSTM over [W_2 ô_i, f_i, c_i].
        edge_embedding = nn.Embed(
            num_labels,
            config.embed_dim,
            embedding_init=WORD_EMBEDDING_INIT,
            name="edge_embedding",
        )(edge_labels)
        edge_inputs = jnp.concatenate([edge_embedding, object_features, object_context], axis=-1)
        edge_context = ContextEncoder(
            hidden_dim, config.num_edge_layers, config.dropout_rate, name="edge_context"
        )(edge_inputs, order, object_mask, train=train)

        # Pairs: subject / object heads, fusion to the pooling size, ⊙ union feature.
        heads = nn.Dense(
            2 * hidden_dim,
            kernel_init=nn.initializers.normal(stddev=10.0 / math.sqrt(hidden_dim)),
            name="head_projection",
        )(edge_context)
        subject_heads, object_heads = jnp.split(heads, 2, axis=-1)
        subject_per_pair = gather_objects(subject_heads, pairs[..., 0])
        object_per_pair = gather_objects(object_heads, pairs[..., 1])
        if config.pair_fusion == "concat":
            fused = jnp.concatenate([subject_per_pair, object_per_pair], axis=-1)
        else:
            fused = subject_per_pair * object_per_pair
        relation = nn.Dense(config.pooling_dim, kernel_init=XAVIER_NORMAL, name="pair_projection")(
            fused
        )
        if config.use_union_features and union_features is not None:
            if union_features.shape[-1] != config.pooling_dim:
                union_features = nn.Dense(
                    config.pooling_dim, kernel_init=XAVIER_NORMAL, name="union_projection"
                )(union_features)
            relation = relation * union_features
        relation_logits = nn.Dense(
            config.num_relation_classes, kernel_init=XAVIER_NORMAL, name="relation_classifier"
        )(relation)

        if config.frequency_bias:
            # log(fg / Σ fg + ε) per (subject class, object class), trainable (SGB FrequencyBias);
            # the initial table comes from with_tables.
            log_bias = self.param(
                "frequency_bias",
                nn.initializers.zeros,
                (num_labels * num_labels, config.num_relation_classes),
                jnp.float32,
            )
            cells = gather_objects(edge_labels, pairs[..., 0]) * num_labels
            cells = cells + gather_objects(edge_labels, pairs[..., 1])
            relation_logits = relation_logits + log_bias[cells]

        outputs.update(
            relation_logits=relation_logits,
            object_labels=object_labels,
            object_scores=object_scores,
        )
        aux.update(
            relation_embedding=relation,
            object_context=object_context,
            edge_context=edge_context,
            object_features=object_features,
        )
        if config.task == "sgdet":
            aux["targets"] = batch
        return outputs, aux
