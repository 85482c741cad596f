"""Readers of the real dataset formats (VG150, GQA-200, raw Visual Genome json, captions, word
vectors, TFDS), synthetic scene graphs and their rendered pixels, image files
(:mod:`~sgg_jax.data.image_io`) and batch images (:mod:`~sgg_jax.data.images`), the feature store,
and the static-shape grain input pipeline. Depends on the core only.
"""
