"""How many epochs a fine-tune plans: enough optimizer steps on small folders, the user's number when given."""

from __future__ import annotations

import pytest

from tlearn.config import DEFAULT_EPOCHS, TrainConfig
from tlearn.training.finetune import MIN_STEPS, _patience, planned_epochs


@pytest.mark.parametrize("steps_per_epoch, expected", [(1, MIN_STEPS), (4, 15), (5, DEFAULT_EPOCHS), (40, 12)])
def test_unset_epochs_make_at_least_min_steps(steps_per_epoch, expected):
    plan = planned_epochs(TrainConfig(data="photos"), steps_per_epoch)
    assert plan == expected and plan * steps_per_epoch >= MIN_STEPS


def test_epochs_the_user_sets_are_kept_however_small_the_folder():
    assert planned_epochs(TrainConfig(data="photos", epochs=3), 1) == 3


def test_patience_stretches_with_the_plan_only_when_epochs_are_unset():
    auto, fixed = TrainConfig(data="photos", patience=4), TrainConfig(data="photos", epochs=60, patience=4)
    assert _patience(auto, DEFAULT_EPOCHS) == 4 and _patience(auto, 60) == 20 and _patience(fixed, 60) == 4
