"""Evaluation: scene graph generation metrics (Scene-Graph-Benchmark protocol), detection mAP,
embedding metrics, predictions I/O, result reports and seed statistics, the evaluation command
line (``python -m sgg_jax.evaluation``) and drawings of scene graphs (:mod:`~sgg_jax.evaluation.viz`).
"""

from sgg_jax.evaluation.sgg import DEFAULT_KS, MODES, evaluate, frequency_groups

__all__ = ["DEFAULT_KS", "MODES", "evaluate", "frequency_groups"]
