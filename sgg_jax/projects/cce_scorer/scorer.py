"""The Scorer: a relation-level score that ranks the pairs of one image.

Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to Contrast and Score",
ACCV 2020 (Sec. 3.4, implementation in Sec. 4.3). Scene graph parsing is factorised into
classification (which predicate, trained with CCE, :func:`sgg_jax.projects.cce_scorer.losses.cce`) and ranking (is this
pair annotated at all): the Scorer sees every candidate pair of an image and outputs a logit ``s``
whose sigmoid is trained with :func:`sgg_jax.projects.cce_scorer.losses.scorer_bce` towards ``q = 1`` for annotated
pairs and 0 for background (official code: ``stevehuanghe/scene_graph`` ``train_rels.py:217-223``,
``-use_rank`` with ``-rloss bce``). At test time the paper ranks relations by ``σ(s)``
(:func:`sgg_jax.projects.cce_scorer.model.rank_predicate_scores`, ``"scorer"``). The official Scorer
module (``lib/ranker.py``) is not in the published repository, so the architecture below follows
the paper's text only.

Architecture, per image with R candidate pairs:

* ``x_r = ReLU(Dense_H(f_r)) + ReLU(Dense_H(p_r))``: the relation feature ``f_r`` and the predicate
  distribution ``p_r`` (softmax over P + 1 classes, background included) each embedded to H = 512,
  then added;
* ``e_r = [x_r, g]``: the global image feature ``g`` concatenated to every pair;
* self-attention over the R pairs of the image: ``q, k, v = Dense_A(e)`` (A = 256),
  ``a_r = Σ_j softmax_j(q_r · k_j / √A) v_j`` with the key mask = pair mask;
* ``s_r = Dense_1([e_r, ReLU(a_r)])``.

Choices where the paper leaves room (documented so they can be changed in one place):

* Residual path: the attended context is concatenated to the pair's own embedding ``e_r`` rather
  than added (``e_r`` is H + G wide, the context A wide, so adding would need an extra projection),
  and passes a ReLU so the head is not linear in ``v``.
* ``use_attention=False`` (the paper's "w/o SA" row) keeps every layer and replaces the attention
  weights by the identity: ``a_r = v_r``, so each score depends on its own pair only.
* Padded pairs: their inputs are zeroed on entry (so even NaN padding cannot leak), they get exactly
  zero attention weight as keys (:func:`masked_softmax`), and their scores are meaningless (the
  losses mask them). An image without a single real pair has all attention weights 0 and a finite
  context of 0.
* Whether the inputs carry gradient back into the base model is the caller's choice
  (``jax.lax.stop_gradient`` before the call detaches them;
  :class:`sgg_jax.projects.cce_scorer.model.CCEScorerModel` ``detach_scorer_inputs``).

With pixels (``roi`` feature source) ``g`` is the detector backbone's globally pooled top map
(:func:`sgg_jax.relation.features.pooled_image_feature`); when the images have no pixels,
:func:`global_image_feature` gives ``g`` as the masked mean of the object features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.errors import check_bool, check_int
from sgg_jax.masked import masked_mean


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """Sizes of the Scorer; invalid values raise :class:`ConfigError` naming the field.

    Attributes:
      hidden_dim: H, width of the relation and predicate embeddings (paper 512).
      attention_dim: A, width of the queries, keys and values (paper 256).
      use_attention: self-attention over the pairs of an image; False = point-wise ("w/o SA").
    """

    hidden_dim: int = 512
    attention_dim: int = 256
    use_attention: bool = True

    def __post_init__(self):
        for field in ("hidden_dim", "attention_dim"):
            object.__setattr__(self, field, check_int(field, getattr(self, field), minimum=1))
        object.__setattr__(self, "use_attention", check_bool("use_attention", self.use_attention))

    def replace(self, **changes: Any) -> ScorerConfig:
        return dataclasses.replace(self, **changes)


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis that gives masked entries exactly 0 weight.

    A row whose entries are all masked gets all-zero weights (not NaN); the gradient is finite too
    (masked scores never enter an ``exp``).

    Args:
      scores: f32[..., K].
      mask: bool[..., K] broadcastable to ``scores``: the entries that may receive weight.

    Returns:
      f32[..., K] rows summing to 1 where any entry is unmasked, to 0 otherwise.
    """
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), scores.shape)
    finite_min = jnp.finfo(scores.dtype).min
    row_max = jnp.max(jnp.where(mask, scores, finite_min), axis=-1, keepdims=True)
    shifted = jnp.where(mask, scores - jax.lax.stop_gradient(row_max), 0.0)
    exponentials = jnp.where(mask, jnp.exp(shifted), 0.0)
    total = jnp.sum(exponentials, axis=-1, keepdims=True)
    return exponentials / jnp.where(total > 0, total, 1.0)


def global_image_feature(object_features: jax.Array, object_mask: jax.Array) -> jax.Array:
    """The image feature ``g`` without pixels: the mean of the real objects' features.

    Args:
      object_features: f32[B, N, D].
      object_mask: bool[B, N] real objects.

    Returns:
      f32[B, D] (0 for an image without objects).
    """
    return masked_mean(object_features, jnp.asarray(object_mask, bool)[..., None], axis=-2)


class Scorer(nn.Module):
    """Relation score logits of every pair of an image (module docstring).

    Attributes:
      config: a :class:`ScorerConfig`.
    """

    config: ScorerConfig

    @nn.compact
    def __call__(
        self,
        relation_features: jax.Array,
        predicate_distribution: jax.Array,
        image_features: jax.Array,
        pair_mask: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scores the pairs.

        Args:
          relation_features: f32[B, R, F] per-pair features ``f``.
          predicate_distribution: f32[B, R, P+1] softmax probabilities ``p`` (column 0 =
            background).
          image_features: f32[B, G] global image feature ``g``.
          pair_mask: bool[B, R] real pairs.

        Returns:
          ``(score_logits f32[B, R], aux)``; ``σ(score_logits)`` is the score. ``aux`` holds
          ``attention_weights`` f32[B, R, R] (query pair, key pair) when ``use_attention``.
        """
        config = self.config
        pair_mask = jnp.asarray(pair_mask, bool)
        valid = pair_mask[..., None]
        relation_features = jnp.where(valid, jnp.asarray(relation_features, jnp.float32), 0.0)
        predicate_distribution = jnp.where(
            valid, jnp.asarray(predicate_distribution, jnp.float32), 0.0
        )
        image_features = jnp.asarray(image_features, jnp.float32)

        relation = nn.relu(nn.Dense(config.hidden_dim, name="relation_embed")(relation_features))
        predicate = nn.relu(
            nn.Dense(config.hidden_dim, name="predicate_embed")(predicate_distribution)
        )
        image = jnp.broadcast_to(
            image_features[:, None, :], (*pair_mask.shape, image_features.shape[-1])
        )
        pair_embedding = jnp.concatenate([relation + predicate, image], axis=-1)  # e_r

        values = nn.Dense(config.attention_dim, name="value")(pair_embedding)
        aux: dict[str, jax.Array] = {}
        if config.use_attention:
            queries = nn.Dense(config.attention_dim, name="query")(pair_embedding)
            keys = nn.Dense(config.attention_dim, name="key")(pair_embedding)
            scores = jnp.einsum("brd,bsd->brs", queries, keys) / math.sqrt(config.attention_dim)
            weights = masked_softmax(scores, pair_mask[:, None, :])
            context = jnp.einsum("brs,bsd->brd", weights, values)
            aux["attention_weights"] = weights
        else:
            context = values  # identity attention: each pair sees itself only
        head_input = jnp.concatenate([pair_embedding, nn.relu(context)], axis=-1)
        score_logits = nn.Dense(1, name="score")(head_input)[..., 0]
        return score_logits, aux
