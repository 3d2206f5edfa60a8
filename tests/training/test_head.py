"""The linear head: separates separable data, and its folded form matches scikit-learn exactly."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from tlearn.training.head import fit_linear_head
from tlearn.util.numeric import softmax


def _blobs(n_per_class: int, classes: int, dim: int = 20, seed: int = 0):
    """Gaussian blobs around fixed centres (the seed only changes the noise), features on mixed scales."""
    fixed = np.random.default_rng(1234)
    centres, scales = fixed.normal(0, 3, (classes, dim)), fixed.uniform(0.1, 10, dim)
    rng = np.random.default_rng(seed)
    x = np.concatenate([centres[c] + rng.normal(0, 1, (n_per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return (x * scales).astype(np.float32), y


def test_separable_multiclass():
    x, y = _blobs(30, 4)
    vx, vy = _blobs(10, 4, seed=1)
    fit = fit_linear_head(x, y, vx, vy, 4)
    assert fit.head.weight.shape == (4, 20) and fit.head.bias.shape == (4,)
    assert (fit.head.probabilities(vx).argmax(1) == vy).mean() > 0.9
    assert len(fit.candidates) == 9 and fit.c in [row["c"] for row in fit.candidates]


def test_binary_head_reproduces_sklearn_probabilities():
    x, y = _blobs(40, 2)
    fit = fit_linear_head(x, y, x, y, 2, c_grid=(0.1,))
    mean, scale = x.mean(0), x.std(0)
    reference = LogisticRegression(C=0.1, max_iter=2000).fit((x - mean) / scale, y)
    expected = reference.predict_proba((x - mean) / scale)
    np.testing.assert_allclose(fit.head.probabilities(x), expected, atol=1e-4)


def test_balanced_weighting_helps_the_minority():
    x, y = _blobs(60, 2, seed=3)
    keep = np.r_[np.arange(60), np.arange(60, 66)]  # 60 vs 6
    plain = fit_linear_head(x[keep], y[keep], x, y, 2, c_grid=(0.001,))
    balanced = fit_linear_head(x[keep], y[keep], x, y, 2, c_grid=(0.001,), balanced=True)
    minority = y == 1
    assert balanced.head.probabilities(x[minority])[:, 1].mean() > plain.head.probabilities(x[minority])[:, 1].mean()


def test_softmax_rows_sum_to_one():
    probabilities = softmax(np.array([[1000.0, 0.0], [-3.0, 2.0]]))
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert probabilities[0, 0] == 1.0
