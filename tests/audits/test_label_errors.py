"""Confident learning, step by step against the paper's definitions, and on planted label flips."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.audits.label_errors import (
    calibrate_joint,
    confident_joint,
    find_label_issues,
    find_task_label_issues,
    per_class_thresholds,
)
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL


def test_thresholds_are_the_mean_self_confidence_of_each_class():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1, 1])
    assert per_class_thresholds(probabilities, labels) == pytest.approx([0.6, 0.7])  # means, not medians


def test_confident_joint_counts_the_most_probable_class_above_its_threshold_and_skips_the_rest():
    probabilities = np.array(
        [
            [0.80, 0.15, 0.05],  # labelled 0, confidently 0
            [0.10, 0.85, 0.05],  # labelled 0, confidently 1: an off-diagonal count
            [0.40, 0.35, 0.25],  # labelled 1, above no threshold: not counted at all
            [0.05, 0.50, 0.45],  # labelled 2, above the thresholds of 1 and 2: the more probable (1) wins
        ]
    )
    labels = np.array([0, 0, 1, 2])
    thresholds = np.array([0.6, 0.5, 0.4])
    assert confident_joint(probabilities, labels, thresholds).tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 0]]


def test_calibration_rescales_rows_to_class_counts_and_sums_to_one():
    counts = np.array([[3, 1], [0, 2]])
    labels = np.array([0] * 8 + [1] * 2)  # class 0 has 8 images, 4 of them counted
    joint = calibrate_joint(counts, labels)
    assert joint.sum() == pytest.approx(1.0)
    assert joint * 10 == pytest.approx(np.array([[6.0, 2.0], [0.0, 2.0]]))


def test_a_class_without_confident_images_is_assumed_clean():
    joint = calibrate_joint(np.array([[0, 0], [0, 3]]), np.array([0, 0, 1, 1, 1]))
    assert joint == pytest.approx(np.array([[0.4, 0.0], [0.0, 0.6]]))


def planted(n_per_class: int = 60, classes: int = 3, flips: int = 12, seed: int = 0):
    """Out-of-fold-like probabilities: right and confident for most images, ambiguous for a few, and confident
    about the true class of the images whose given label was flipped."""
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(classes), n_per_class)
    logits = rng.normal(0, 0.5, (len(true), classes))
    logits[np.arange(len(true)), true] += 3.0
    ambiguous = rng.choice(len(true), 10, replace=False)
    logits[ambiguous] = rng.normal(0, 0.3, (10, classes))  # hard images: no class stands out
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = true.copy()
    flipped = rng.choice(np.setdiff1d(np.arange(len(true)), ambiguous), flips, replace=False)
    given[flipped] = (true[flipped] + rng.integers(1, classes, flips)) % classes
    return probabilities, given, true, flipped


def test_planted_flips_are_flagged_with_their_true_class_suggested_and_ranked_first():
    probabilities, given, true, flipped = planted()
    issues = find_label_issues(probabilities, given)
    found = set(issues.flagged.tolist()) & set(flipped.tolist())
    # Pruning by noise rate takes round(N Q[i, j]) images per pair of classes, so an ambiguous image can take a
    # flip's place; the published method is not exact, but close.
    assert len(found) >= 10 and len(issues.flagged) <= 13
    assert all(issues.suggested[position] == true[position] for position in flipped)
    assert len(set(issues.ranked()[: len(flipped)].tolist()) & set(flipped.tolist())) >= 11
    scores = issues.self_confidence[issues.flagged]
    assert list(scores) == sorted(scores)  # most suspicious first
    assert abs(issues.estimated_errors - len(flipped)) <= 2


def test_an_image_predicted_as_its_own_label_is_never_flagged():
    # Class 0: 6 confidently right, 2 confidently class 1, 3 unsure but still most probably class 0. Calibrating
    # the confident joint to class 0's 11 images gives a budget of round(21 x 2.75 / 21) = 3 for (0, 1): pruning
    # by margin alone would take one unsure image too, although its most probable class is its label.
    probabilities = np.array([[0.9, 0.1]] * 6 + [[0.05, 0.95]] * 2 + [[0.55, 0.45]] * 3 + [[0.1, 0.9]] * 10)
    labels = np.array([0] * 11 + [1] * 10)
    issues = find_label_issues(probabilities, labels)
    assert sorted(issues.flagged.tolist()) == [6, 7]
    assert issues.estimated_errors == 3


def test_clean_labels_give_no_issues():
    probabilities, _, true, _ = planted(flips=0)
    assert len(find_label_issues(probabilities, true).flagged) == 0


def test_label_sets_are_searched_one_class_at_a_time_and_every_doubted_decision_is_suggested_back():
    probabilities, given, true, flipped = planted()
    other = planted(seed=1)
    # Two independent yes/no classes: class 0 is "true class is 0" of the first draw, class 1 of the second.
    present = np.stack([probabilities[:, 0], other[0][:, 0]], axis=1)
    targets = np.stack([given == 0, other[1] == 0], axis=1).astype(np.float32)
    found = find_task_label_issues(MULTI_LABEL, present, targets)
    for column, (scores, answers) in enumerate(MULTI_LABEL.label_problems(present, targets)):
        alone = find_label_issues(scores, answers)  # the same search, on that class's yes/no problem alone
        assert set(alone.flagged.tolist()) <= set(found.flagged.tolist())
        assert all(found.suggestions[p][column] == alone.suggested[p] for p in alone.flagged)
        assert all(column not in found.suggestions[p] for p in set(range(len(targets))) - set(alone.flagged.tolist()))
    assert list(found.self_confidence[found.flagged]) == sorted(found.self_confidence[found.flagged])
    problems = MULTI_LABEL.label_problems(present, targets)
    assert found.estimated_errors == sum(find_label_issues(*problem).estimated_errors for problem in problems)
    wrong = np.flatnonzero(targets[:, 0] != (true == 0))  # the flips that moved an image in or out of class 0
    assert len(wrong) >= 4 and set(wrong.tolist()) <= set(found.flagged.tolist())
    # A suggestion puts the doubted decisions the other way, and keeps the rest of the set.
    assert MULTI_LABEL.corrected([1, 0], {0: 0}) == [1] and MULTI_LABEL.corrected([1], {0: 1}) == [1, 0]
    # Single-label data is one problem: the very search above.
    single = find_task_label_issues(SINGLE_LABEL, probabilities, given)
    assert single.flagged.tolist() == find_label_issues(probabilities, given).flagged.tolist()
    assert single.suggestions[int(flipped[0])] == {0: int(true[flipped[0]])}
