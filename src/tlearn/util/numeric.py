"""Probability helpers shared by the head, the metrics, calibration and the engines (NumPy only)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable.

    Example:
        >>> softmax(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (0 for an empty split).

    Example:
        >>> round(cross_entropy(np.array([[0.5, 0.5]]), np.array([0])), 4)
        0.6931
    """
    if not len(labels):
        return 0.0
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, without overflow warnings for large negative logits.

    Example:
        >>> sigmoid(np.array([0.0])).tolist()
        [0.5]
    """
    return np.exp(-np.logaddexp(0.0, -logits))
