"""RA-SGG (retrieval-augmented scene graph generation) on a PE-Net base model: the relation memory
bank (:mod:`~sgg_jax.projects.ra_sgg.memory_bank`), the paper's and the official code's augmentation
rules (:mod:`~sgg_jax.projects.ra_sgg.augment`, with the official tail sets of
:mod:`~sgg_jax.projects.ra_sgg.tail_sets`) and the phase-2 training batch transform
(:mod:`~sgg_jax.projects.ra_sgg.ra_sgg`). Its multi-prototype loss is PE-Net's loss on soft targets
and lives with it in :mod:`sgg_jax.relation.losses`. Entry point: ``experiments/ra_sgg.py``.
"""
