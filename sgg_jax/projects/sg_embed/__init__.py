"""Scene-graph embeddings trained with relative similarity supervision (Maheshwari et al.): graphs
padded to static node / edge budgets (:mod:`~sgg_jax.projects.sg_embed.graph_batch`), the
triple-convolution GCN (:mod:`~sgg_jax.projects.sg_embed.sg_gcn`), caption similarities
(:mod:`~sgg_jax.projects.sg_embed.similarity`), synthetic captions
(:mod:`~sgg_jax.projects.sg_embed.synthetic_captions`), triplet samplers
(:mod:`~sgg_jax.projects.sg_embed.triplet_samplers`) and the Ranking / Triplet / InfoNCE losses
(:mod:`~sgg_jax.projects.sg_embed.losses`). Its trainer is :mod:`sgg_jax.projects.sg_embed.train`; the
experiment (``SGEmbedExperimentConfig`` and ``run(config, workdir)``: data, the objectives x samplers
grid, evaluation, tables and plot) is :mod:`sgg_jax.projects.sg_embed.experiment`; entry point:
``experiments/sg_embed.py``.
"""
