"""Faster R-CNN pretraining on the synthetic pixel data, the first stage of SGDet: the experiment
(:mod:`~sgg_jax.projects.detector.experiment`: :class:`DetectorExperimentConfig`, data, build,
training through the shared trainer, box mAP next to two chance baselines, drawings, reports). The
model itself is :mod:`sgg_jax.detection.detector`. Entry point: ``experiments/detector.py``.
"""
