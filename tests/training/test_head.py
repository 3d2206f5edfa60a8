"""The linear head, for both tasks: cross-validated choice of C, out-of-fold answers, folds, the low-rank fit
equal to scikit-learn's, and what differs (class weights for single-label data, thresholds and constant
classes for label sets)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tlearn.evaluation.multilabel import choose_thresholds
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL, Task
from tlearn.training.head import fit_head, select_c
from tlearn.util.numeric import softmax

TASKS = [pytest.param(SINGLE_LABEL, id="single-label"), pytest.param(MULTI_LABEL, id="multi-label")]


def _blobs(n_per_class: int, classes: int, dim: int = 20, seed: int = 0, noise: float = 1.0):
    """Gaussian blobs around fixed centres (the seed only changes the noise), features on mixed scales."""
    fixed = np.random.default_rng(1234)
    centres, scales = fixed.normal(0, 3, (classes, dim)), fixed.uniform(0.1, 10, dim)
    rng = np.random.default_rng(seed)
    x = np.concatenate([centres[c] + rng.normal(0, noise, (n_per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return (x * scales).astype(np.float32), y


def _label_sets(seed: int = 0, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose first three dimensions say which of three labels an image has (any combination)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.5, 0.3, 0.1]).astype(np.float32)
    x = rng.normal(size=(n, 40)).astype(np.float32)
    x[:, :3] += 5.0 * targets
    return x, targets


def _learnable(task: Task, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(embeddings, targets, classes) a head can learn: blobs of one class each, or label sets."""
    if task is SINGLE_LABEL:
        x, y = _blobs(30, 4, seed=seed)
        return x, y, 4
    x, targets = _label_sets(seed)
    return x, targets, 3


@pytest.mark.parametrize("task", TASKS)
def test_the_head_learns_what_separates_the_classes(task: Task) -> None:
    x, targets, classes = _learnable(task)
    test_x, test_targets, _ = _learnable(task, seed=1)
    selection = select_c(x, targets, classes, task=task)
    head = fit_head(x, targets, classes, selection.c, task=task)
    thresholds = task.choose_thresholds(selection.out_of_fold, targets)
    assert head.weight.shape == (classes, x.shape[1]) and head.bias.shape == (classes,)
    assert task.right(head.probabilities(test_x), test_targets, thresholds).mean() > 0.85
    assert len(selection.candidates) == 9 and selection.c in [row["c"] for row in selection.candidates]
    assert selection.out_of_fold.shape == (len(x), classes) and selection.chosen["cv_accuracy"] > 0.85


def test_a_label_set_head_answers_several_labels_at_once() -> None:
    x, targets = _label_sets()
    test_x, test_targets = _label_sets(seed=1)
    selection = select_c(x, targets, 3, task=MULTI_LABEL)
    probabilities = fit_head(x, targets, 3, selection.c, task=MULTI_LABEL).probabilities(test_x)
    assert not np.allclose(probabilities.sum(axis=1), 1.0)  # sigmoids, not a softmax
    decided = probabilities >= np.asarray(choose_thresholds(selection.out_of_fold, targets))
    assert ((decided.sum(axis=1) >= 2) & ((test_targets.sum(axis=1)) >= 2)).any()


@pytest.mark.parametrize("task", TASKS)
def test_the_chosen_c_has_the_lowest_out_of_fold_loss(task: Task) -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 300))
    x[:, :3] += np.eye(3)[labels] * 1.5  # the signal is in three dimensions, the rest is noise
    targets = labels if task is SINGLE_LABEL else np.eye(3, dtype=np.float32)[labels]
    selection = select_c(x, targets, 3, task=task)
    losses = {row["c"]: row["cv_loss"] for row in selection.candidates}
    assert selection.c == min(losses, key=losses.get)
    assert max(losses.values()) - min(losses.values()) > 0.02  # the candidates really differ


def test_c_follows_the_loss_where_another_c_answers_more_images_right() -> None:
    # Seeded so that the C with the most right answers out of fold (0.01) is not the one with the lowest
    # out-of-fold log-loss (0.1): choosing by accuracy would pick the other one.
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 300))
    x[:, :3] += np.eye(3)[labels]
    selection = select_c(x, labels, 3)
    by_accuracy = max(selection.candidates, key=lambda row: row["cv_accuracy"])
    by_loss = min(selection.candidates, key=lambda row: row["cv_loss"])
    assert by_accuracy["c"] != by_loss["c"]  # the data really separates the two rules
    assert selection.c == by_loss["c"]


@pytest.mark.parametrize("task", TASKS)
def test_out_of_fold_answers_come_from_heads_that_never_saw_the_image(task: Task) -> None:
    # Labels that are pure noise: a head scored on its own training images looks perfect at weak
    # regularisation; out of fold it cannot beat chance by much.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 100)).astype(np.float32)
    targets = rng.integers(0, 2, 60) if task is SINGLE_LABEL else (rng.random((60, 2)) < 0.5).astype(np.float32)
    selection = select_c(x, targets, 2, task=task, c_grid=(10.0,))
    fitted = fit_head(x, targets, 2, 10.0, task=task).probabilities(x)
    assert task.right(fitted, targets, None).all()  # memorised in-sample
    assert selection.chosen["cv_accuracy"] < 0.75  # not out of fold


@pytest.mark.parametrize("task", TASKS)
def test_folds_spread_every_class_and_are_seeded(task: Task) -> None:
    labels = np.array([0] * 12 + [1] * 7 + [2] * 5)
    targets = labels if task is SINGLE_LABEL else np.eye(3, dtype=np.float32)[labels]
    folds = task.folds(targets, 5, seed=3)
    for label in (0, 1, 2):
        counts = np.bincount(folds[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert (folds == task.folds(targets, 5, seed=3)).all() and not (folds == task.folds(targets, 5, seed=4)).all()


def test_no_more_folds_than_the_smallest_class_has_images() -> None:
    assert select_c(*_blobs(3, 2), 2).folds == 3


@pytest.mark.parametrize("samples", [40, 400])  # fewer images than dimensions (span fit) and more (direct fit)
@pytest.mark.parametrize("task", TASKS)
def test_head_reproduces_sklearn_probabilities(task: Task, samples: int) -> None:
    x, labels = _blobs(samples // 2, 2, dim=120)
    mean, scale = x.mean(0), x.std(0)
    if task is SINGLE_LABEL:
        reference = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit((x - mean) / scale, labels)
        expected, targets = reference.predict_proba((x - mean) / scale), labels
    else:  # one binary regression per class: here class 1 and its complement, as two yes/no questions
        targets = np.stack([labels == 0, labels == 1], axis=1).astype(np.float32)
        expected = np.stack(
            [
                LogisticRegression(C=0.1, max_iter=5000, tol=1e-8)
                .fit((x - mean) / scale, targets[:, k])
                .predict_proba((x - mean) / scale)[:, 1]
                for k in range(2)
            ],
            axis=1,
        )
    head = fit_head(x, targets, 2, 0.1, task=task)
    np.testing.assert_allclose(head.probabilities(x), expected, atol=2e-3)


def test_balanced_weighting_helps_the_minority() -> None:
    x, y = _blobs(60, 2, seed=3)
    keep = np.r_[np.arange(60), np.arange(60, 66)]  # 60 vs 6
    plain = fit_head(x[keep], y[keep], 2, 0.001)
    balanced = fit_head(x[keep], y[keep], 2, 0.001, balanced=True)
    minority = y == 1
    assert balanced.probabilities(x[minority])[:, 1].mean() > plain.probabilities(x[minority])[:, 1].mean()


def test_the_balanced_loss_reaches_the_cross_validation_too() -> None:
    x, y = _blobs(60, 2, seed=3, noise=6.0)
    keep = np.r_[np.arange(60), np.arange(60, 70)]  # 60 vs 10, overlapping
    plain = select_c(x[keep], y[keep], 2, c_grid=(0.01,))
    balanced = select_c(x[keep], y[keep], 2, c_grid=(0.01,), balanced=True)
    minority = y[keep] == 1
    assert balanced.out_of_fold[minority, 1].mean() > plain.out_of_fold[minority, 1].mean() + 0.05


@pytest.mark.parametrize("task", TASKS)
def test_constant_features_leave_a_finite_float32_head(task: Task) -> None:
    x, targets, classes = _learnable(task)
    x = np.c_[x, np.full(len(x), 3.0, dtype=np.float32)]  # a feature that never changes
    head = fit_head(x, targets, classes, 1.0, task=task)
    assert head.weight.dtype == np.float32 and head.bias.dtype == np.float32
    assert np.isfinite(head.weight).all() and np.isfinite(head.bias).all()
    assert task.right(head.probabilities(x), targets, None).mean() > 0.85


def test_a_class_present_on_every_image_is_answered_without_a_fit() -> None:
    x, targets = _label_sets(n=50)
    targets[:, 1] = 1.0
    head = fit_head(x, targets, 3, 1.0, task=MULTI_LABEL)
    assert (head.probabilities(x)[:, 1] > 0.99).all()


def test_thresholds_sit_at_the_best_f1_between_scores() -> None:
    probabilities = np.array([[0.9], [0.35], [0.3], [0.1]])
    targets = np.array([[1.0], [1.0], [0.0], [0.0]])
    (threshold,) = choose_thresholds(probabilities, targets)
    assert 0.3 < threshold < 0.35  # both positives in, the negative at 0.3 out
    assert choose_thresholds(probabilities, np.zeros_like(targets)) == [0.5]


def test_softmax_rows_sum_to_one() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0], [-3.0, 2.0]]))
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert probabilities[0, 0] == 1.0
