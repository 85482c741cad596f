"""Relation experiments as a library: typed configs and ``run`` functions behind the command lines.

``experiments/ra_sgg.py`` and ``experiments/cce_scorer.py`` only define absl flags, turn them into
the frozen configs of this package and call its ``run``; every check of a value, the data loading,
the training phases, the evaluation and the reports live here, so they can be called (and tested)
in-process without absl's global flags.

* :mod:`sgg_jax.experiment.relation` — what every relation experiment shares: :class:`DataConfig`
  (dataset, task, budgets, feature source), loading, the input pipelines, one evaluation loop for
  any number of scorings of a model pass, and the predict function behind exports.
* :mod:`sgg_jax.experiment.ra_sgg` — RA-SGG (Yoon et al., AAAI 2025) and its PE-Net phase 1.
* :mod:`sgg_jax.experiment.cce_scorer` — CCE loss + Scorer (Huang et al., ACCV 2020) ablations.

Why a package of its own, named ``experiment``: a module here is one experiment (a config and its
``run``), not a building block — the models, losses, retrieval and training loop it combines stay in
their own packages and know nothing of it. Each module imports only :mod:`sgg_jax` itself (never
``experiments`` or absl), so a paper's module can later move next to that paper's code as a whole.
"""
