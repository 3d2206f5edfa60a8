"""metrics.json's schema and values."""

from __future__ import annotations

import numpy as np

from tlearn.evaluation.metrics import classification_metrics


def test_values_and_schema():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.eye(3)[[0, 0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    metrics = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert metrics["accuracy"] == 4 / 6
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["per_class"]["a"] == {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    assert metrics["per_class"]["c"]["f1"] == 0.0
    assert abs(metrics["balanced_accuracy"] - (2 / 3 + 1 + 0) / 3) < 1e-12
    assert metrics["classes"] == ["a", "b", "c"] and metrics["n"] == 6
    assert set(metrics) >= {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "classes",
        "n",
    }


def test_class_absent_from_split():
    metrics = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.4, 0.6]]), ["a", "b"])
    assert metrics["per_class"]["b"]["support"] == 0 and metrics["accuracy"] == 0.5


def test_ece_always_and_top5_accuracy_beyond_five_classes():
    two = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]), ["a", "b"])
    assert abs(two["ece"] - (0.1 + 0.6) / 2) < 1e-12 and "top5_accuracy" not in two
    labels = np.arange(8)
    probabilities = np.roll(np.eye(8), 1, axis=1) * 0.5 + np.eye(8) * 0.3 + 0.2 / 8  # truth always second
    many = classification_metrics(labels, probabilities, [f"c{i}" for i in range(8)])
    assert many["accuracy"] == 0.0 and many["top5_accuracy"] == 1.0
