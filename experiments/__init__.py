"""Experiments: ``python -m experiments.<name> --flagfile=experiments/flags/<config>.flags``."""
