"""Error bars against known values: Wilson intervals, the macro-F1 bootstrap, McNemar's exact test."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.evaluation.intervals import (
    macro_f1_from_confusion,
    macro_f1_interval,
    mcnemar_p_value,
    smallest_detectable_difference,
    wilson_interval,
)
from tlearn.evaluation.metrics import classification_metrics


@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [
        (95, 100, (0.8882, 0.9785)),  # Newcombe (1998), table I style values
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (81, 263, (0.2553, 0.3662)),
    ],
)
def test_wilson_interval_matches_published_values(correct, n, expected):
    low, high = wilson_interval(correct, n)
    assert low == pytest.approx(expected[0], abs=5e-4) and high == pytest.approx(expected[1], abs=5e-4)


def test_wilson_interval_matches_scipy_stats_everywhere():
    from scipy.stats import binomtest

    for n in (1, 2, 7, 36, 153, 1000):
        for correct in sorted({0, 1, n // 3, n // 2, n - 1, n} - {-1}):
            expected = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
            low, high = wilson_interval(correct, n)
            assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12), (correct, n)


def test_macro_f1_of_a_confusion_matrix_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    matrix = np.zeros((4, 4), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    assert macro_f1_from_confusion(matrix) == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_macro_f1_bootstrap_brackets_the_estimate_and_narrows_with_more_images():
    small = np.array([[18, 2], [4, 16]])
    low, high = macro_f1_interval(small)
    assert low < macro_f1_from_confusion(small) < high
    big_low, big_high = macro_f1_interval(small * 25)
    assert big_high - big_low < (high - low) / 3
    assert macro_f1_interval(small) == (low, high)  # seeded: the same interval every time
    assert macro_f1_interval(np.diag([10, 10])) == (1.0, 1.0)


def test_mcnemar_exact_p_values():
    assert mcnemar_p_value(10, 1) == pytest.approx(24 / 2048)
    assert mcnemar_p_value(3, 3) == 1.0 and mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(6, 0) == pytest.approx(2 / 64)


def test_metrics_carry_their_intervals():
    labels = np.array([0] * 50 + [1] * 50)
    probabilities = np.eye(2)[np.r_[np.zeros(45, int), np.ones(5, int), np.ones(50, int)]]
    metrics = classification_metrics(labels, probabilities, ["a", "b"])
    assert metrics["accuracy"] == 0.95
    assert metrics["accuracy_interval"] == pytest.approx(list(wilson_interval(95, 100)), abs=1e-6)
    low, high = metrics["macro_f1_interval"]
    assert low < metrics["macro_f1"] < high
    assert smallest_detectable_difference(100, 0.95) == pytest.approx((0.9785 - 0.8882) / 2, abs=1e-3)
