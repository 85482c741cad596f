"""One folder per paper or model family, each holding its model, losses and project-specific data
pieces on top of the shared layers (core, :mod:`sgg_jax.data`, :mod:`sgg_jax.detection`,
:mod:`sgg_jax.relation`, :mod:`sgg_jax.retrieval`, :mod:`sgg_jax.train`,
:mod:`sgg_jax.evaluation`). A project never imports another project: what two projects share moves
down into a shared layer. The entry points are ``experiments/<name>.py``.
"""
