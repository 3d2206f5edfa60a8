"""Classification metrics in the schema of `metrics.json` (scikit-learn does the counting)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tlearn.evaluation.calibration import expected_calibration_error
from tlearn.evaluation.intervals import macro_f1_interval, wilson_interval
from tlearn.util.numeric import cross_entropy

TOP_K = 5  # top-k accuracy is reported when there are more classes than this


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Metrics of one evaluated split.

    Args:
        labels: true class indices, (N,).
        probabilities: predicted class probabilities, (N, num_classes).
        classes: class names in index order.

    Returns:
        `accuracy` with `accuracy_interval` (95% Wilson), `balanced_accuracy`, `macro_f1` with
        `macro_f1_interval` (95% bootstrap), `weighted_f1`, `loss` (cross-entropy), `ece` (expected
        calibration error), `top5_accuracy` (only with more than 5 classes), `per_class` ({class: precision,
        recall, f1, support}), `confusion_matrix` (rows: true class, columns: predicted), `classes` and `n`.

    Example:
        >>> classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])["accuracy"]
        1.0
    """
    from sklearn.metrics import (  # deferred: see tlearn.training.head.SKLEARN_MODULES
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    predictions = probabilities.argmax(axis=1)
    indices = list(range(len(classes)))
    with warnings.catch_warnings():
        # Classes absent from a small split make sklearn warn about undefined recall; they count as 0 here.
        warnings.simplefilter("ignore")
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predictions, labels=indices, zero_division=0
        )
        balanced = balanced_accuracy_score(labels, predictions) if len(labels) else 0.0
    matrix = confusion_matrix(labels, predictions, labels=indices) if len(labels) else np.zeros((len(classes),) * 2)
    correct = int(np.trace(matrix))
    top_k = {}
    if len(classes) > TOP_K and len(labels):
        top_k[f"top{TOP_K}_accuracy"] = float(top_k_accuracy_score(labels, probabilities, k=TOP_K, labels=indices))
    return {
        "accuracy": float(accuracy_score(labels, predictions)) if len(labels) else 0.0,
        "accuracy_interval": [round(bound, 6) for bound in wilson_interval(correct, len(labels))],
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(labels, predictions, labels=indices, average="macro", zero_division=0)),
        "macro_f1_interval": [round(bound, 6) for bound in macro_f1_interval(matrix)],
        "weighted_f1": float(f1_score(labels, predictions, labels=indices, average="weighted", zero_division=0)),
        "loss": cross_entropy(probabilities, labels) if len(labels) else 0.0,
        "ece": expected_calibration_error(probabilities, labels),
        **top_k,
        "per_class": {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(classes)
        },
        "confusion_matrix": np.asarray(matrix, dtype=np.int64).tolist(),
        "classes": list(classes),
        "n": len(labels),
    }
