"""Execution of inflang plans on PyTorch: data, models, training, estimators, ground truth, metrics."""
