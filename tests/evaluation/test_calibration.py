"""Expected calibration error, reliability bins and temperature scaling on synthetic probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from tlearn.util.numeric import cross_entropy, softmax


def calibrated_sample(n: int = 4000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from those very probabilities: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(0, 2.0, (n, classes)))
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return probabilities, labels


def test_ece_by_hand():
    # Two bins hit: 0.9 confidence with 1 of 2 right (gap 0.4), 0.6 with 1 of 1 right (gap 0.4).
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.4)
    bins = reliability_bins(probabilities, labels, bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 2, 0]  # bins are (low, high]
    assert expected_calibration_error(np.empty((0, 2)), np.empty(0, dtype=int)) == 0.0


def test_calibrated_probabilities_have_small_ece_and_overconfident_ones_large():
    probabilities, labels = calibrated_sample()
    assert expected_calibration_error(probabilities, labels) < 0.03
    assert expected_calibration_error(apply_temperature(probabilities, 0.4), labels) > 0.1


def test_fit_recovers_the_temperature_and_never_changes_a_prediction():
    probabilities, labels = calibrated_sample()
    overconfident = apply_temperature(probabilities, 0.5)  # logits doubled
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    repaired = apply_temperature(overconfident, temperature)
    assert (repaired.argmax(1) == overconfident.argmax(1)).all()
    assert np.allclose(repaired.sum(1), 1.0)
    assert cross_entropy(repaired, labels) < cross_entropy(overconfident, labels)
    assert expected_calibration_error(repaired, labels) < expected_calibration_error(overconfident, labels) / 3


def test_no_errors_means_nothing_to_calibrate_against():
    probabilities = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert fit_temperature(probabilities, np.array([0, 1])) == 1.0
