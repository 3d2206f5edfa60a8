"""Honest error bars: how far a measured accuracy or macro F1 could be from the truth, and whether two models
measured on the same images can be told apart.

* Accuracy: the Wilson score interval (well behaved at 0%, 100% and small n, unlike mean ± 1.96 sd). Its closed
  form is written out here rather than taken from scipy.stats (`binomtest(...).proportion_ci(method="wilson")`,
  which the tests check it against): importing scipy.stats costs 0.4 s, a quarter of a warm training run that
  otherwise only reads cached results.
* Macro F1: a percentile bootstrap. F1 depends on the images only through the confusion matrix, so resampling
  the images is drawing the matrix's cells from a multinomial: thousands of resamples cost milliseconds.
* Two models on the same images: McNemar's exact test on the images exactly one of them gets right (scipy's
  exact binomial test on the disagreements).

scipy.stats is imported inside the McNemar test only: it takes about half a second to import.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion of `correct` out of `n` ((0, 1) when n is 0).

    Example:
        >>> [round(bound, 3) for bound in wilson_interval(95, 100)]
        [0.888, 0.978]
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    share, spread = correct / n, z * z / n
    centre = (share + spread / 2) / (1 + spread)
    half_width = z * math.sqrt(share * (1 - share) / n + spread / (4 * n)) / (1 + spread)
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def macro_f1_from_confusion(matrices: np.ndarray) -> np.ndarray:
    """Macro F1 of confusion matrices (..., C, C), rows = true class; classes absent from a matrix count 0.

    Example:
        >>> float(macro_f1_from_confusion(np.array([[2, 0], [1, 1]])))
        0.7333333333333334
    """
    matrices = np.asarray(matrices, dtype=np.float64)
    true_positive = np.diagonal(matrices, axis1=-2, axis2=-1)
    predicted = matrices.sum(axis=-2)
    actual = matrices.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(predicted + actual > 0, 2 * true_positive / (predicted + actual), 0.0)
    return f1.mean(axis=-1)


def macro_f1_interval(
    confusion: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the macro F1 behind a confusion matrix (C, C).

    Example:
        >>> low, high = macro_f1_interval(np.array([[45, 5], [10, 40]]))
        >>> 0.75 < low < 0.85 < high < 0.93
        True
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n = int(confusion.sum())
    if n == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, (confusion / n).ravel(), size=resamples).reshape(resamples, *confusion.shape)
    scores = macro_f1_from_confusion(draws)
    low, high = np.quantile(scores, [0.025, 0.975])
    return float(low), float(high)


def mcnemar_p_value(only_first_right: int, only_second_right: int) -> float:
    """Two-sided exact McNemar test: the probability of a split at least this uneven if both models were
    equally good (1.0 when they disagree nowhere).

    Args:
        only_first_right: images the first model gets right and the second wrong.
        only_second_right: images the second model gets right and the first wrong.

    Example:
        >>> round(mcnemar_p_value(10, 1), 4)
        0.0117
    """
    disagreements = only_first_right + only_second_right
    if disagreements == 0:
        return 1.0
    from scipy.stats import binomtest

    return min(1.0, float(binomtest(min(only_first_right, only_second_right), disagreements, 0.5).pvalue))


def smallest_detectable_difference(n: int, accuracy: float) -> float:
    """Roughly the accuracy difference two models need on `n` images before it is more than noise: the half
    width of the 95% Wilson interval at this accuracy (0.5 for an empty split)."""
    low, high = wilson_interval(round(accuracy * n), n)
    return (high - low) / 2
