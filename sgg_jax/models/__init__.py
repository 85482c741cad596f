"""Relation models and their feature sources.

* :mod:`sgg_jax.models.features` — object and union features of a batch (geometry | precomputed).
* :mod:`sgg_jax.models.penet` — PE-Net (Zheng et al., CVPR 2023): ``PENet``, ``PENetConfig``.
* :mod:`sgg_jax.models.frequency` — Motifs' frequency baseline and trainable frequency bias.
* :mod:`sgg_jax.models.cce_scorer` — a base model (MotifNet / PE-Net) + the Scorer of Huang et al.
  (ACCV 2020), and the test-time rankings ``predicate | scorer_x_predicate | scorer``.

A model is a ``flax.linen`` module applied as
``outputs, aux = model.apply(variables, batch, train=..., rngs={"dropout": key})``;
``outputs`` holds ``relation_logits[B, P, C]``, ``object_labels[B, N]``, ``object_scores[B, N]`` (and
``object_logits[B, N, K+1]`` in SGCls), ``aux`` what losses, evaluators and the memory bank read.

Configs are frozen dataclasses of scalars, strings, tuples and nested configs (hashable, usable as
static arguments of jitted functions). Large tables are initial values of variables: each model
family's ``with_tables(variables, object_word_vectors=..., frequency_bias=..., ...)`` puts word
vectors and frequency tables into freshly initialised variables (pass it as ``init_variables`` of
:func:`sgg_jax.train.loop.train`).
"""
