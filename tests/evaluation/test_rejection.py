"""Choosing the reject threshold on validation; coverage and selective accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.evaluation.rejection import choose_threshold, selective_metrics

SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
CORRECT = np.array([True, True, True, False, True, False])


def test_target_accuracy_answers_as_many_as_keep_it() -> None:
    threshold, target = choose_threshold(SCORES, CORRECT, target_accuracy=0.8, target_coverage=None)
    assert threshold == 0.5 and target == {"accuracy": 0.8}  # top 5: 4/5 right
    assert choose_threshold(SCORES, CORRECT, target_accuracy=1.0, target_coverage=None)[0] == 0.7


def test_unreachable_accuracy_falls_back_to_the_best_selective_accuracy() -> None:
    wrong_first = np.array([False, True, True])
    threshold, _ = choose_threshold(np.array([0.9, 0.5, 0.4]), wrong_first, target_accuracy=0.99, target_coverage=None)
    assert threshold == 0.4  # 2/3 beats 0/1 and 1/2


def test_target_coverage() -> None:
    threshold, target = choose_threshold(SCORES, CORRECT, target_accuracy=None, target_coverage=0.5)
    assert threshold == 0.7 and target == {"coverage": 0.5}
    assert (threshold <= SCORES).mean() == 0.5


def test_selective_metrics_and_curve() -> None:
    metrics = selective_metrics(SCORES, CORRECT, 0.7, "knn")
    assert metrics["coverage"] == 0.5 and metrics["selective_accuracy"] == 1.0
    assert metrics["accuracy_all"] == pytest.approx(4 / 6) and metrics["answered"] == 3
    assert metrics["curve"]["coverage"][-1] == 1.0 and metrics["curve"]["accuracy"][-1] == pytest.approx(
        4 / 6, abs=1e-3
    )
    assert selective_metrics(SCORES, CORRECT, 2.0, "knn")["selective_accuracy"] is None
