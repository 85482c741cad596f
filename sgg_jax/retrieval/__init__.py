"""The generic nearest-neighbour :class:`~sgg_jax.retrieval.index.Index` (inner product of L2-normalised
vectors): an exact backend (jnp, chunked), a ScaNN backend with reproducible builds, and the merge
of per-shard top-k results. It knows nothing of scene graphs; RA-SGG's memory bank
(:mod:`sgg_jax.projects.ra_sgg`) and the embedding metrics (:mod:`sgg_jax.evaluation.embedding`)
use it.
"""
