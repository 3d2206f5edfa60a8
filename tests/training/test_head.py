"""The linear head: cross-validated choice of C, the low-rank fit equal to the full one, and its folded form
matching scikit-learn exactly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tlearn.training.head import _stratified_folds, fit_head, select_c
from tlearn.util.numeric import softmax


def _blobs(n_per_class: int, classes: int, dim: int = 20, seed: int = 0, noise: float = 1.0):
    """Gaussian blobs around fixed centres (the seed only changes the noise), features on mixed scales."""
    fixed = np.random.default_rng(1234)
    centres, scales = fixed.normal(0, 3, (classes, dim)), fixed.uniform(0.1, 10, dim)
    rng = np.random.default_rng(seed)
    x = np.concatenate([centres[c] + rng.normal(0, noise, (n_per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return (x * scales).astype(np.float32), y


def test_separable_multiclass():
    x, y = _blobs(30, 4)
    vx, vy = _blobs(10, 4, seed=1)
    selection = select_c(x, y, 4)
    head = fit_head(x, y, 4, selection.c)
    assert head.weight.shape == (4, 20) and head.bias.shape == (4,)
    assert (head.probabilities(vx).argmax(1) == vy).mean() > 0.9
    assert len(selection.candidates) == 9 and selection.c in [row["c"] for row in selection.candidates]
    assert selection.out_of_fold.shape == (120, 4) and selection.chosen["cv_accuracy"] > 0.9


def test_the_chosen_c_has_the_lowest_out_of_fold_loss():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 300))
    x[:, :3] += np.eye(3)[y] * 1.5  # the signal is in three dimensions, the rest is noise
    selection = select_c(x, y, 3)
    losses = {row["c"]: row["cv_loss"] for row in selection.candidates}
    assert selection.c == min(losses, key=losses.get)
    assert max(losses.values()) - min(losses.values()) > 0.05  # the candidates really differ


def test_out_of_fold_answers_come_from_heads_that_never_saw_the_image():
    # Labels that are pure noise: a head scored on its own training images would look perfect at weak
    # regularisation; out of fold it cannot beat chance by much.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 100)).astype(np.float32), rng.integers(0, 2, 60)
    selection = select_c(x, y, 2, c_grid=(10.0,))
    assert fit_head(x, y, 2, 10.0).probabilities(x).argmax(1).tolist() == y.tolist()
    assert selection.chosen["cv_accuracy"] < 0.75


def test_folds_are_stratified_and_seeded():
    y = np.array([0] * 12 + [1] * 7 + [2] * 5)
    folds = _stratified_folds(y, 5, seed=3)
    for label in (0, 1, 2):
        counts = np.bincount(folds[y == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert (folds == _stratified_folds(y, 5, seed=3)).all() and not (folds == _stratified_folds(y, 5, seed=4)).all()
    assert select_c(*_blobs(3, 2), 2).folds == 3  # no more folds than the smallest class has images


@pytest.mark.parametrize("samples", [40, 400])  # fewer images than dimensions (span fit) and more (direct fit)
def test_head_reproduces_sklearn_probabilities(samples):
    x, y = _blobs(samples // 2, 2, dim=120)
    head = fit_head(x, y, 2, 0.1)
    mean, scale = x.mean(0), x.std(0)
    reference = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit((x - mean) / scale, y)
    np.testing.assert_allclose(head.probabilities(x), reference.predict_proba((x - mean) / scale), atol=2e-3)


def test_balanced_weighting_helps_the_minority():
    x, y = _blobs(60, 2, seed=3)
    keep = np.r_[np.arange(60), np.arange(60, 66)]  # 60 vs 6
    plain = fit_head(x[keep], y[keep], 2, 0.001)
    balanced = fit_head(x[keep], y[keep], 2, 0.001, balanced=True)
    minority = y == 1
    assert balanced.probabilities(x[minority])[:, 1].mean() > plain.probabilities(x[minority])[:, 1].mean()


def test_softmax_rows_sum_to_one():
    probabilities = softmax(np.array([[1000.0, 0.0], [-3.0, 2.0]]))
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert probabilities[0, 0] == 1.0
