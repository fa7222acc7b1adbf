"""Turning user values into MLflow names and values: names, hyperparameters, metric axes, media.

No Lightning, no network.
"""
