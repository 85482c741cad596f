"""Evaluation: scene graph generation metrics (Scene-Graph-Benchmark protocol)."""

from sgg_jax.evaluation.sgg import DEFAULT_KS, MODES, evaluate, frequency_groups

__all__ = ["DEFAULT_KS", "MODES", "evaluate", "frequency_groups"]
