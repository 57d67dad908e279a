"""Judging a model: metrics, thresholds, ``spectro evaluate``, plots, the HTML report and baselines."""
