"""What the relation experiments share: a typed data config, loading, pipelines, one evaluation loop.

:mod:`sgg_jax.experiment.relation` holds :class:`~sgg_jax.experiment.relation.DataConfig` (dataset,
task, budgets, feature source; a bad value is a ``ConfigError`` naming its flag), loading of the
splits and features, the input pipelines, one evaluation loop for any number of scorings of one
model pass (optional object-count buckets) and the predict function behind exports
(:func:`~sgg_jax.experiment.relation.predict_outputs`, the contract of ``sgg_jax.load_exported``).
:mod:`sgg_jax.experiment.predict` runs such an SGDet export on image files (``PredictConfig`` and
``run``: export checks, batches at an exported budget, ``scene_graphs.json`` and drawings).

Layer: above ``train`` and ``evaluation`` (it combines them), below the projects. Each paper's
experiment — its frozen config and ``run(config, workdir)`` — lives in the paper's project:
:mod:`sgg_jax.projects.ra_sgg.experiment` (RA-SGG and its PE-Net phase 1) and
:mod:`sgg_jax.projects.cce_scorer.experiment` (CCE + Scorer); detector pretraining's is
:mod:`sgg_jax.projects.detector.experiment`. The command lines in
``experiments/`` only define absl flags, build those configs and call ``run``.
"""
