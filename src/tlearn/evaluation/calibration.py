"""Do predicted probabilities mean what they say? Expected calibration error, reliability bins, temperature scaling.

A model is calibrated when, among the images it answers with confidence 0.8, about 80% are right. The
expected calibration error (ECE) is the gap between confidence and accuracy, averaged over confidence bins
weighted by how many images fall in each. Temperature scaling (Guo et al., 2017) divides the logits by one
number fitted on the validation split: it changes no prediction, only how sure the model claims to be.

Everything here works on probabilities, not logits: `log(p)` differs from the logits by a constant per row,
which the softmax ignores, so `softmax(log(p) / T)` is exactly the temperature-scaled model. NumPy and SciPy
only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlearn.util.numeric import cross_entropy, softmax

DEFAULT_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
_SMALLEST_PROBABILITY = 1e-30  # log(0) guard: a float32 softmax underflows for classes far below the top one


@dataclass
class ReliabilityBins:
    """Confidence against accuracy in equal-width confidence bins (empty bins hold NaN)."""

    edges: np.ndarray  # (bins + 1,) from 0 to 1
    confidence: np.ndarray  # (bins,) mean top-1 probability of the images in the bin
    accuracy: np.ndarray  # (bins,) fraction of those images answered right
    counts: np.ndarray  # (bins,) images in the bin

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (share of images) * |accuracy - confidence|."""
        filled = self.counts > 0
        if not filled.any():
            return 0.0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / self.counts.sum())


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Bin the images by top-1 probability and measure each bin's accuracy.

    Args:
        probabilities: predicted class probabilities, (N, num_classes).
        labels: true class indices, (N,).
        bins: number of equal-width bins over [0, 1].

    Example:
        >>> reliability_bins(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]), bins=2).accuracy.tolist()
        [nan, 0.5]
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (low, high]; a confidence of exactly 0 cannot occur for a top-1 probability.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, mean_confidence, accuracy, counts)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = DEFAULT_BINS) -> float:
    """ECE in [0, 1] with equal-width confidence bins (0 for an empty split).

    Example:
        >>> expected_calibration_error(np.array([[0.8, 0.2]] * 5), np.array([0, 0, 0, 0, 1]))
        0.0
    """
    if not len(labels):
        return 0.0
    return reliability_bins(probabilities, labels, bins=bins).ece


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities the same model gives with its logits divided by `temperature` (argmax unchanged).

    Example:
        >>> apply_temperature(np.array([[0.8, 0.2]]), 2.0).round(3).tolist()
        [[0.667, 0.333]]
    """
    log_probabilities = np.log(np.clip(probabilities.astype(np.float64), _SMALLEST_PROBABILITY, None))
    return softmax(log_probabilities / temperature)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the cross-entropy of the (validation) labels.

    When every prediction is already right, the cross-entropy keeps falling as the model is made more
    confident, without limit: there is nothing to calibrate against, so the temperature stays 1.

    Args:
        probabilities: predicted probabilities on the split to fit on, (N, num_classes).
        labels: its true class indices, (N,).

    Returns:
        The temperature, within `TEMPERATURE_RANGE`.

    Example:
        >>> overconfident = apply_temperature(np.array([[0.7, 0.3]] * 7 + [[0.3, 0.7]] * 3), 0.25)
        >>> round(fit_temperature(overconfident, np.zeros(10, dtype=int)), 2)
        4.0
    """
    from scipy.optimize import minimize_scalar  # deferred: only runs that calibrate need it

    if not len(labels) or (probabilities.argmax(axis=1) == labels).all():
        return 1.0

    def loss(log_temperature: float) -> float:
        return cross_entropy(apply_temperature(probabilities, float(np.exp(log_temperature))), labels)

    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))
