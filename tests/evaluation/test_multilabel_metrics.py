"""Multi-label metrics: mAP, decisions at the thresholds, subset accuracy, Hamming loss."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.evaluation.multilabel import multilabel_metrics, worst_label_sets

CLASSES = ["pool", "garage", "tree"]
TARGETS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=np.float32)


def test_perfect_answers() -> None:
    metrics = multilabel_metrics(TARGETS, TARGETS * 0.8 + 0.1, [0.5] * 3, CLASSES)
    assert metrics["mAP"] == 1.0 and metrics["subset_accuracy"] == 1.0 and metrics["hamming_loss"] == 0.0
    assert metrics["label_cardinality"] == 1.5 == metrics["predicted_cardinality"]
    assert metrics["task"] == "multilabel" and metrics["n"] == 4


def test_decisions_follow_each_class_threshold() -> None:
    probabilities = np.array([[0.6, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.9], [0.1, 0.3, 0.8]])
    strict = multilabel_metrics(TARGETS, probabilities, [0.5, 0.5, 0.5], CLASSES)
    tuned = multilabel_metrics(TARGETS, probabilities, [0.5, 0.25, 0.5], CLASSES)
    assert strict["per_class"]["garage"]["recall"] == 0.0 and tuned["per_class"]["garage"]["recall"] == 1.0
    assert strict["subset_accuracy"] == 0.5 and tuned["subset_accuracy"] == 1.0
    assert strict["hamming_loss"] == pytest.approx(2 / 12)
    assert strict["mAP"] == tuned["mAP"] == 1.0  # ranking quality does not depend on thresholds
    assert tuned["per_class"]["garage"]["threshold"] == 0.25


def test_class_without_positives_is_left_out_of_map() -> None:
    targets = TARGETS.copy()
    targets[:, 2] = 0
    metrics = multilabel_metrics(targets, np.full(targets.shape, 0.5), [0.5] * 3, CLASSES)
    assert metrics["per_class"]["tree"]["ap"] is None
    assert metrics["mAP"] == pytest.approx(np.mean([0.5, 0.5]))


def test_worst_label_sets_rank_confident_mistakes_first() -> None:
    probabilities = np.array([[0.9, 0.1, 0.1], [0.9, 0.45, 0.1], [0.1, 0.1, 0.9], [0.1, 0.99, 0.01]])
    worst = worst_label_sets(TARGETS, probabilities, [0.5] * 3, count=5)
    assert [row for row, _ in worst] == [3, 1]  # tree missed at 0.01, then garage missed at 0.45
