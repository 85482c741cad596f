"""A base relation model (MotifNet or PE-Net) with the Scorer of "Learning to Contrast and Score".

Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to Contrast and Score",
ACCV 2020 (Sec. 3.4). The paper factorises scene graph parsing into *classification* (which
predicate; the base model's relation classifier, trained with CE / CCE, :mod:`sgg_jax.projects.cce_scorer.losses`) and
*ranking* (is this pair annotated at all; the :class:`~sgg_jax.projects.cce_scorer.scorer.Scorer`, trained with
a binary cross-entropy). :class:`CCEScorerModel` runs a base model and, when configured, the
Scorer on top of it, with the base model's call signature and output keys, so the train loop, the
experiment scorers and :func:`sgg_jax.evaluation.collect.batch_predictions` work unchanged::

    model.apply(variables, batch, train=...) -> (outputs, aux)
    outputs: the base model's (relation_logits, object_labels, object_scores[, object_logits])
             + "scorer_logits" f32[B, P] when the Scorer is on (σ(scorer_logits) is the score)
    aux:     the base model's + "scorer_attention_weights" f32[B, P, P] (self-attention Scorer)

Scorer inputs (per image of the batch):

* relation features ``f`` = the base model's ``aux["relation_embedding"]`` (MotifNet: ``r_ij``, the
  classifier's input; PE-Net: ``r`` after its residual block);
* predicate distribution ``p`` = softmax of the base model's training-time relation logits:
  ``aux["unbiased_relation_logits"]`` when the base model has one (PE-Net adds its frequency bias at
  inference only, so ``outputs["relation_logits"]`` would differ between training and test and the
  Scorer would be tested on inputs it never saw), else ``outputs["relation_logits"]`` (MotifNet adds
  its trainable bias in both);
* global image feature ``g``: from pixels (``roi`` feature source) the base model's
  ``outputs["image_feature"]``, the detector backbone's top map averaged over the image
  (:func:`sgg_jax.relation.features.pooled_image_feature`), the CNN image feature of the paper;
  without pixels (``geometry`` / ``precomputed``) the masked mean of the object features
  (:func:`~sgg_jax.projects.cce_scorer.scorer.global_image_feature` of ``aux["object_features"]``).

In SGDet the pairs are the detections' pairs the base model makes (``aux["targets"]``, the batch
over the detections, :func:`sgg_jax.relation.losses.targets_of`): the Scorer scores and ranks
those pairs, with that batch's pair and object masks.

Gradient: with ``detach_scorer_inputs=True`` (default) all three inputs pass
``jax.lax.stop_gradient``: the Scorer's BCE trains the Scorer only and the base model is trained by
its own losses (+ CCE) exactly as without the Scorer. The paper's decomposition motivates this
(classification and ranking are separate problems; a BCE on "annotated or not" pushed into the
shared features would compete with the classifier's own background class), and it makes the
ablation clean: a "+Scorer" row differs from its "CE" row only through the ranking (training is
the same up to the shared gradient clipping).

``detach_scorer_inputs=False`` is the *jointly trained* Scorer: the BCE's gradient also flows
through ``f``, ``p`` and ``g`` into the base model. This is the plain reading of the official code
(``stevehuanghe/scene_graph`` ``train_rels.py:254-257``: every loss, the ranker's ``rel_rank``
included, is summed and back-propagated through the whole relation model in one
``loss.backward()``); whether its ranker (``lib/ranker.py``, named in the repository's README but
never published: ``.gitignore:17`` ignores ``lib/``) detaches its inputs cannot be checked.

Ranking (:func:`rank_predicate_scores`): the evaluator ranks a pair by
``max_{c>=1} scores[c] · object_score[s] · object_score[o]`` (graph constrained) and each
``(pair, c)`` entry by ``scores[c] · object_score[s] · object_score[o]`` (no graph constraint). The
three ``RANKINGS`` only change ``scores``:

* ``"predicate"``: ``scores = p`` (the predicate distribution; the Scorer is ignored);
* ``"scorer_x_predicate"``: ``scores = p · σ(s)`` (every column);
* ``"scorer"``: ``scores_c = p_c · σ(s) / max_{c'>=1} p_c'`` for the foreground columns ``c >= 1``:
  the pair's best foreground predicate gets ``σ(s)`` (up to float rounding), so pairs are ranked by
  the Scorer alone while each pair keeps its predicate order (and ratios). The background column
  becomes ``p_0 · σ(s)`` (finite and ignored by every metric); rows no longer sum to 1.

The paper ranks test triplets by the Scorer's score alone (``"scorer"``, the headline of the
experiment's Scorer rows; ``"scorer_x_predicate"`` is reported as an extra row). The official code
cannot confirm either: ``eval_rels.py:85-106`` hands the relation model's ``pred_scores`` to the
evaluator unchanged, and the model that folds the ranks into them (``lib/rel_model_linknet2.py``,
``eval_rels.py:21``) is not published.

Object scores (SGCls) still multiply in through the evaluator under every ranking.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.errors import ConfigError
from sgg_jax.projects.cce_scorer.scorer import Scorer, ScorerConfig, global_image_feature
from sgg_jax.relation.losses import targets_of
from sgg_jax.structures import SceneGraphBatch

RANKINGS = ("predicate", "scorer_x_predicate", "scorer")


class CCEScorerModel(nn.Module):
    """A base relation model with an optional Scorer (module docstring).

    Attributes:
      base: the relation model (``PENet`` or ``MotifNet``), called as ``base(batch, train=...)``;
        its parameters live under ``params["base"]``.
      scorer_config: a :class:`ScorerConfig`, or None for the base model alone (its outputs
        unchanged; parameters still under ``params["base"]``).
      detach_scorer_inputs: stop the Scorer's gradient at its inputs; False = the jointly
        trained Scorer (module docstring).
    """

    base: nn.Module
    scorer_config: ScorerConfig | None = None
    detach_scorer_inputs: bool = True

    @nn.compact
    def __call__(
        self, batch: SceneGraphBatch, train: bool = False
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Runs the base model and, when configured, the Scorer.

        Args:
          batch: B images, N objects, P pairs.
          train: training mode (passed to the base model; the Scorer has no dropout).

        Returns:
          ``(outputs, aux)``: the base model's, plus ``outputs["scorer_logits"]`` f32[B, P] and
          ``aux["scorer_attention_weights"]`` f32[B, P, P] (self-attention only) with the Scorer.
        """
        outputs, aux = self.base(batch, train=train)
        if self.scorer_config is None:
            return outputs, aux
        for key in ("relation_embedding", "object_features"):
            if key not in aux:
                raise ConfigError(
                    "base", f"the base model's aux has no {key!r}; the Scorer needs it"
                )
        pairs = targets_of(aux, batch)  # SGDet: the batch over the detections
        logits = aux.get("unbiased_relation_logits", outputs["relation_logits"])
        relation_features = aux["relation_embedding"]
        predicate_distribution = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
        image_features = outputs.get("image_feature")
        if image_features is None:
            image_features = global_image_feature(aux["object_features"], pairs.object_mask)
        if self.detach_scorer_inputs:
            relation_features, predicate_distribution, image_features = jax.lax.stop_gradient(
                (relation_features, predicate_distribution, image_features)
            )
        score_logits, scorer_aux = Scorer(self.scorer_config, name="scorer")(
            relation_features, predicate_distribution, image_features, pairs.pair_mask
        )
        outputs = {**outputs, "scorer_logits": score_logits}
        aux = {**aux, **{f"scorer_{name}": value for name, value in scorer_aux.items()}}
        return outputs, aux


def check_ranking(ranking: str) -> str:
    """Returns ``ranking`` or raises :class:`ConfigError` naming ``ranking``."""
    if ranking not in RANKINGS:
        raise ConfigError("ranking", f"must be one of {RANKINGS}, got {ranking!r}")
    return ranking


def rank_predicate_scores(
    predicate_scores: jax.Array, scorer_logits: jax.Array | None, ranking: str
) -> jax.Array:
    """The predicate scores the evaluator ranks, under one of ``RANKINGS`` (module docstring).

    Args:
      predicate_scores: f32[..., C] the predicate distribution ``p`` per pair (column 0 =
        background).
      scorer_logits: f32[...] the Scorer's logits ``s`` per pair; may be None only for
        ``"predicate"``.
      ranking: ``"predicate"`` (``p``), ``"scorer_x_predicate"`` (``p · σ(s)``) or ``"scorer"``
        (foreground ``p_c · σ(s) / max_{c'>=1} p_c'``, background ``p_0 · σ(s)``).

    Returns:
      f32[..., C].

    Raises:
      ConfigError: an unknown ranking, or a Scorer ranking without ``scorer_logits``.
    """
    check_ranking(ranking)
    predicate_scores = jnp.asarray(predicate_scores, jnp.float32)
    if ranking == "predicate":
        return predicate_scores
    if scorer_logits is None:
        raise ConfigError("ranking", f"{ranking!r} needs a model with the Scorer")
    score = jax.nn.sigmoid(jnp.asarray(scorer_logits, jnp.float32))[..., None]  # σ(s)
    if ranking == "scorer_x_predicate":
        return predicate_scores * score
    foreground = predicate_scores[..., 1:]
    best_foreground = jnp.max(foreground, axis=-1, keepdims=True)
    tiny = jnp.finfo(jnp.float32).tiny
    rescaled = foreground * (score / jnp.maximum(best_foreground, tiny))
    return jnp.concatenate([predicate_scores[..., :1] * score, rescaled], axis=-1)
