"""Choosing between the linear head and fine-tuning on the same validation images, for both tasks."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL, Task
from tlearn.training.selection import choose

TASKS = [pytest.param(SINGLE_LABEL, id="single-label"), pytest.param(MULTI_LABEL, id="multi-label")]


def _answers(task: Task, right: list[bool], confidence: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that answer each image right or wrong with `confidence`, and the targets: class 0 of two,
    or the one label every image carries (right: its probability reaches 0.5)."""
    if task is SINGLE_LABEL:
        labels = np.zeros(len(right), dtype=int)
        probabilities = np.array([[confidence, 1 - confidence] if ok else [1 - confidence, confidence] for ok in right])
        return probabilities, labels
    targets = np.ones((len(right), 1), dtype=np.float32)
    return np.array([[confidence] if ok else [1 - confidence] for ok in right]), targets


@pytest.mark.parametrize("task", TASKS)
def test_fine_tuning_is_kept_only_when_it_answers_more_right(task: Task) -> None:
    linear, targets = _answers(task, [True] * 8 + [False] * 12)
    tuned, _ = _answers(task, [True] * 19 + [False])
    choice = choose(task, linear, tuned, targets)
    assert choice.chosen == "finetune" and choice.only_finetune_right == 11 and choice.only_linear_right == 0
    assert choice.p_value < 0.01 and "more than chance" in choice.reason
    assert choose(task, tuned, linear, targets).chosen == "linear"


@pytest.mark.parametrize("task", TASKS)
def test_a_tie_on_right_answers_goes_to_the_lower_loss_and_says_it_is_chance(task: Task) -> None:
    linear, targets = _answers(task, [True] * 9 + [False], confidence=0.7)
    tuned, _ = _answers(task, [True] * 9 + [False], confidence=0.95)
    assert choose(task, linear, tuned, targets).chosen == "finetune"
    slightly, _ = _answers(task, [True] * 9 + [False], confidence=0.71)
    assert choose(task, linear, slightly, targets).chosen == "linear"  # a tie needs a clearly lower loss
    confident_linear, targets = _answers(task, [True] * 10, confidence=0.99)
    choice = choose(task, confident_linear, _answers(task, [True] * 10, confidence=0.95)[0], targets)
    assert choice.chosen == "linear" and "within chance" in choice.reason and choice.p_value == 1.0


@pytest.mark.parametrize("task", TASKS)
def test_fine_tuning_that_never_beat_its_start_is_not_kept(task: Task) -> None:
    linear, targets = _answers(task, [True] * 8 + [False] * 2)
    tuned, _ = _answers(task, [True] * 10)
    choice = choose(task, linear, tuned, targets, improved=False)
    assert choice.chosen == "linear" and "never did better" in choice.reason


def test_each_candidate_answers_label_sets_at_its_own_thresholds() -> None:
    targets = np.array([[1.0], [0.0]])
    probabilities = np.array([[0.4], [0.2]])  # right at a threshold of 0.3, half right at 0.5
    choice = choose(MULTI_LABEL, probabilities, probabilities, targets, ([0.5], [0.3]))
    assert (choice.linear_accuracy, choice.finetune_accuracy) == (0.5, 1.0)
    choice = choose(MULTI_LABEL, probabilities, probabilities, targets, ([0.3], [0.5]))
    assert (choice.linear_accuracy, choice.finetune_accuracy) == (1.0, 0.5)
