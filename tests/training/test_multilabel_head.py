"""The multi-label linear heads: one yes/no answer per class, thresholds at each class's best F1."""

from __future__ import annotations

import numpy as np

from tlearn.training.multilabel_head import choose_thresholds, fit_multilabel_head, select_c_multilabel


def _data(seed: int = 0, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose first three dimensions say which of three labels an image has (any combination)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.5, 0.3, 0.1]).astype(np.float32)
    x = rng.normal(size=(n, 40)).astype(np.float32)
    x[:, :3] += 5.0 * targets
    return x, targets


def test_heads_learn_any_combination_of_labels() -> None:
    x, targets = _data()
    test_x, test_targets = _data(seed=1)
    selection = select_c_multilabel(x, targets, seed=0)
    head = fit_multilabel_head(x, targets, selection.c)
    probabilities = head.probabilities(test_x)
    assert head.multilabel and probabilities.shape == (240, 3)
    assert not np.allclose(probabilities.sum(axis=1), 1.0)  # sigmoids, not a softmax
    decided = probabilities >= np.asarray(choose_thresholds(selection.out_of_fold, targets))
    assert (decided == (test_targets > 0)).all(axis=1).mean() > 0.85
    assert ((decided.sum(axis=1) >= 2) & ((test_targets.sum(axis=1)) >= 2)).any()  # several labels at once


def test_out_of_fold_answers_come_from_heads_that_never_saw_the_image() -> None:
    x, targets = _data(n=60)
    noise = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)  # nothing to learn
    selection = select_c_multilabel(noise, targets, seed=0)
    fitted = fit_multilabel_head(noise, targets, 10.0).probabilities(noise)
    out_of_fold_error = np.abs(selection.out_of_fold - targets).mean()
    assert np.abs(fitted - targets).mean() < 0.2 < out_of_fold_error  # memorised in-sample, not out of fold


def test_a_class_present_on_every_image_is_answered_without_a_fit() -> None:
    x, targets = _data(n=50)
    targets[:, 1] = 1.0
    head = fit_multilabel_head(x, targets, 1.0)
    assert (head.probabilities(x)[:, 1] > 0.99).all()


def test_thresholds_sit_at_the_best_f1_between_scores() -> None:
    probabilities = np.array([[0.9], [0.35], [0.3], [0.1]])
    targets = np.array([[1.0], [1.0], [0.0], [0.0]])
    (threshold,) = choose_thresholds(probabilities, targets)
    assert 0.3 < threshold < 0.35  # both positives in, the negative at 0.3 out
    assert choose_thresholds(probabilities, np.zeros_like(targets)) == [0.5]
