"""What every relation model shares: feature sources, SGDet candidates and targets, frequency
statistics, the base relation heads PE-Net and MotifNet, and their losses.

* :mod:`sgg_jax.relation.features` — object and union features of a batch (geometry | precomputed |
  roi).
* :mod:`sgg_jax.relation.sgdet` — SGDet relation candidates and targets from a detector's boxes.
* :mod:`sgg_jax.relation.frequency` — Motifs' frequency baseline and trainable frequency bias.
* :mod:`sgg_jax.relation.penet` — PE-Net (Zheng et al., CVPR 2023): ``PENet``, ``PENetConfig``.
* :mod:`sgg_jax.relation.motifs` — MotifNet (Zellers et al., CVPR 2018): ``MotifNet``,
  ``MotifsConfig``.
* :mod:`sgg_jax.relation.losses` — (soft-target) cross-entropy and PE-Net's loss (with its
  multi-prototype variant), :func:`~sgg_jax.relation.losses.make_penet_loss`.

A model is a ``flax.linen`` module applied as
``outputs, aux = model.apply(variables, batch, train=..., rngs={"dropout": key})``;
``outputs`` holds ``relation_logits[B, P, C]``, ``object_labels[B, N]``, ``object_scores[B, N]`` (and
``object_logits[B, N, K+1]`` in SGCls), ``aux`` what losses, evaluators and the memory bank read.
The projects (:mod:`sgg_jax.projects`) build on these heads.
"""
