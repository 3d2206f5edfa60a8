"""Choosing between the linear head and fine-tuning on the same validation images."""

from __future__ import annotations

import numpy as np

from tlearn.training.selection import choose


def _answers(right: list[bool], confidence: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros(len(right), dtype=int)
    probabilities = np.array([[confidence, 1 - confidence] if ok else [1 - confidence, confidence] for ok in right])
    return probabilities, labels


def test_fine_tuning_is_kept_only_when_it_answers_more_right():
    linear, labels = _answers([True] * 8 + [False] * 12)
    tuned, _ = _answers([True] * 19 + [False])
    choice = choose(linear, tuned, labels)
    assert choice.chosen == "finetune" and choice.only_finetune_right == 11 and choice.only_linear_right == 0
    assert choice.p_value < 0.01 and "more than chance" in choice.reason
    assert choose(tuned, linear, labels).chosen == "linear"


def test_a_tie_on_right_answers_goes_to_the_lower_loss_and_says_it_is_chance():
    linear, labels = _answers([True] * 9 + [False], confidence=0.7)
    tuned, _ = _answers([True] * 9 + [False], confidence=0.95)
    assert choose(linear, tuned, labels).chosen == "finetune"
    slightly, _ = _answers([True] * 9 + [False], confidence=0.71)
    assert choose(linear, slightly, labels).chosen == "linear"  # a tie needs a clearly lower loss
    confident_linear, labels = _answers([True] * 10, confidence=0.99)
    choice = choose(confident_linear, _answers([True] * 10, confidence=0.95)[0], labels)
    assert choice.chosen == "linear" and "within chance" in choice.reason and choice.p_value == 1.0


def test_fine_tuning_that_never_beat_its_start_is_not_kept():
    linear, labels = _answers([True] * 8 + [False] * 2)
    tuned, _ = _answers([True] * 10)
    choice = choose(linear, tuned, labels, improved=False)
    assert choice.chosen == "linear" and "never did better" in choice.reason
