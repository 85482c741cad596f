"""Readers of the real dataset formats, synthetic scene graphs, and the static-shape input pipeline."""
