"""Answering "unknown": choosing a reject threshold on validation and measuring what it costs and buys.

A model with a reject rule answers only the images whose score (see `tlearn.engines.answers`) reaches the
threshold. Two figures describe it: coverage (the share of images answered) and selective accuracy (the
accuracy on those). The threshold is chosen on validation images, for a target accuracy of the answers
("answer only when 95% of such answers are right") or a target coverage ("answer 90% of images").
"""

from __future__ import annotations

from typing import Any

import numpy as np

CURVE_POINTS = 50  # points of the accuracy-coverage curve kept in metrics.json
DEFAULT_TARGET_ACCURACY = 0.95


def choose_threshold(
    scores: np.ndarray, correct: np.ndarray, *, target_accuracy: float | None, target_coverage: float | None
) -> tuple[float, dict[str, float]]:
    """The threshold meeting the target on these images, and the target as stored in the model.

    With `target_coverage` c: the score above which a share c of the images lies. With `target_accuracy` a
    (the default, `DEFAULT_TARGET_ACCURACY`): the lowest threshold whose answered images are at least a right
    (answering as many as possible); when no threshold reaches a, the one with the best selective accuracy.

    Example:
        >>> choose_threshold(np.array([0.9, 0.8, 0.3]), np.array([True, True, False]),
        ...                  target_accuracy=0.95, target_coverage=None)[0]
        0.8
    """
    if not len(scores):
        return float("-inf"), {}
    if target_coverage is not None:
        ranked = np.sort(scores)[::-1]
        answered = max(1, int(np.ceil(target_coverage * len(ranked))))
        return float(ranked[answered - 1]), {"coverage": target_coverage}
    target = target_accuracy if target_accuracy is not None else DEFAULT_TARGET_ACCURACY
    order = np.argsort(-scores, kind="stable")
    accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)  # answering the top 1, 2, ... images
    reaching = np.flatnonzero(accuracy >= target)
    answered = int(reaching[-1]) if len(reaching) else int(np.argmax(accuracy))
    return float(scores[order][answered]), {"accuracy": target}


def selective_metrics(scores: np.ndarray, correct: np.ndarray, threshold: float, score: str) -> dict[str, Any]:
    """The `reject` block of a split's metrics: coverage and selective accuracy at `threshold`, the accuracy
    on all images, and the accuracy-coverage curve (answering images in order of decreasing score)."""
    answered = scores >= threshold
    order = np.argsort(-scores, kind="stable")
    accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1) if len(order) else np.zeros(0)
    points = np.unique(np.linspace(0, len(order) - 1, min(CURVE_POINTS, len(order))).round().astype(int))
    return {
        "score": score,
        "threshold": float(threshold),
        "coverage": float(answered.mean()) if len(scores) else 0.0,
        "selective_accuracy": float(correct[answered].mean()) if answered.any() else None,
        "accuracy_all": float(correct.mean()) if len(correct) else 0.0,
        "answered": int(answered.sum()),
        "curve": {
            "coverage": [round(float((point + 1) / len(order)), 4) for point in points],
            "accuracy": [round(float(accuracy[point]), 4) for point in points],
        },
    }
