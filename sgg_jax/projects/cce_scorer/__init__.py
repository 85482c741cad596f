"""CCE + Scorer (Huang et al., "Addressing Class Imbalance in Scene Graph Parsing by Learning to
Contrast and Score", ACCV 2020): the triplet Scorer (:mod:`~sgg_jax.projects.cce_scorer.scorer`), a
MotifNet or PE-Net base model with the Scorer on top and the test-time rankings
(:mod:`~sgg_jax.projects.cce_scorer.model`), and the contrasting cross-entropy, focal and Scorer
BCE losses with the loss builder of one ablation row (:mod:`~sgg_jax.projects.cce_scorer.losses`).
Entry point: ``experiments/cce_scorer.py``.
"""
