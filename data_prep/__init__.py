"""TFDS builders (array_record files) and CLIs that turn raw VG150 / GQA-200 files into datasets.

* ``python -m data_prep.gqa200`` — GQA-200 split files (SHA-GCL layout) -> ``<out>/gqa200/<version>``.
* ``python -m data_prep.vg150`` — VG150 h5 + dicts + image_data (Scene-Graph-Benchmark layout) ->
  ``<out>/vg150/<version>``.

Each record is one validated scene graph; the vocabulary is stored in the dataset metadata.
:func:`sgg_jax.data.tfds_source.open_source` reads the result without TensorFlow.
"""
