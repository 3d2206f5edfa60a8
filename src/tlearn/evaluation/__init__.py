"""Measuring a model: classification metrics with confidence intervals, calibration, and evaluating a saved
model on a labelled folder (torch-free)."""
