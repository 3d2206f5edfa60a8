"""What a fine-tune plans before its first step: enough optimizer steps on small folders, the user's number when
given, patience stretched with the plan, a refit's fixed schedule, the unfreezing order, the time budget's
re-plan (with the learning-rate schedule following it), and the best weights kept or the run stopped early."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tlearn.config import DEFAULT_EPOCHS, TrainConfig
from tlearn.data.decoding import default_workers
from tlearn.training.checkpoint import TrainingState
from tlearn.training.distributed import DistributedContext
from tlearn.training.epochs import EpochResult, KeepBest, TrainTotals
from tlearn.training.plan import MIN_STEPS, FinetunePlan, fit_to_budget, planned_epochs, stretched_patience
from tlearn.training.setup import train_loader

ALONE = DistributedContext()


def _plan(train_images: int = 40, *, budget_seconds: float | None = None, **settings) -> FinetunePlan:
    config = TrainConfig(data="photos", device="cpu", **{"workers": 0, **settings})
    return FinetunePlan.from_config(
        config, ALONE, train_images=train_images, input_size=224, budget_seconds=budget_seconds
    )


def _state(planned_epochs: int, *, epoch: int = 1) -> TrainingState:
    return TrainingState(epoch, planned_epochs, [], (-math.inf, -math.inf), 0, 0, 0, 0.0)


@pytest.mark.parametrize(
    "steps_per_epoch, expected", [(1, MIN_STEPS), (2, 30), (3, DEFAULT_EPOCHS), (40, DEFAULT_EPOCHS)]
)
def test_unset_epochs_make_at_least_min_steps(steps_per_epoch, expected):
    plan = planned_epochs(TrainConfig(data="photos"), steps_per_epoch)
    assert plan == expected and plan * steps_per_epoch >= MIN_STEPS


def test_epochs_the_user_sets_are_kept_however_small_the_folder():
    assert planned_epochs(TrainConfig(data="photos", epochs=3), 1) == 3


def test_patience_stretches_with_the_plan_only_when_epochs_are_unset():
    auto, fixed = TrainConfig(data="photos"), TrainConfig(data="photos", epochs=60)
    assert stretched_patience(auto, DEFAULT_EPOCHS) == 8 and stretched_patience(auto, 60) == 20
    assert stretched_patience(fixed, 60) == 8


@pytest.mark.parametrize(
    "images, batch_size, steps, epochs, patience",
    [(40, 32, 1, 60, 20), (128, 32, 4, 24, 8), (320, 32, 10, 24, 8), (20, 32, 1, 60, 20), (150, 8, 18, 24, 8)],
)
def test_a_plan_from_the_config_raises_epochs_and_patience_for_small_folders(
    images, batch_size, steps, epochs, patience
):
    plan = _plan(images, batch_size=batch_size)
    assert (plan.steps_per_epoch, plan.epochs, plan.patience) == (steps, epochs, patience)
    assert plan.epochs * plan.steps_per_epoch >= MIN_STEPS
    assert plan.schedule().total_steps == epochs * steps  # the cosine ends on the plan's last step


def test_epochs_the_user_sets_keep_their_patience():
    plan = _plan(40, epochs=5, patience=2)
    assert (plan.epochs, plan.patience) == (5, 2)


@pytest.mark.parametrize("images, world_size, batch_size", [(40, 1, 32), (20, 1, 8), (7, 2, 32), (41, 2, 8), (9, 3, 4)])
def test_the_plans_steps_per_epoch_are_the_loaders(images, world_size, batch_size):
    """The plan counts steps without building a loader; the loader it configures must make exactly those."""
    config = TrainConfig(data="photos", device="cpu", workers=0, batch_size=batch_size)
    for rank in range(world_size):
        dist = DistributedContext(rank=rank, world_size=world_size)
        plan = FinetunePlan.from_config(config, dist, train_images=images, input_size=224)
        assert len(train_loader(list(range(images)), plan, dist)) == plan.steps_per_epoch


def test_workers_are_resolved_once_for_the_device():
    assert _plan(workers=3).workers == 3
    assert _plan(workers=None).workers == default_workers(accelerator=False)


def test_a_refit_runs_a_fixed_schedule_without_early_stopping_or_budget():
    validated = _plan(40, budget_seconds=30.0)  # 60 epochs planned, patience 20
    refit = validated.fixed(7)
    assert (refit.epochs, refit.budget_seconds) == (7, None)
    assert refit.patience > refit.epochs  # even seven epochs in a row without improvement cannot stop it
    assert refit.schedule().total_steps == 7 * refit.steps_per_epoch
    assert fit_to_budget(refit, _state(7), refit.schedule(), epoch=1, epoch_seconds=100.0) is None
    assert refit.lr == validated.lr and refit.workers == validated.workers  # the rest of the plan is kept


@pytest.mark.parametrize(
    "every, depth, expected",
    [(1, None, [2, 3, 4, 5, 5]), (2, None, [2, 2, 3, 3, 4]), (0, None, [5] * 5), (1, 3, [2, 3, 3, 3, 3])],
)
def test_layer_groups_unfreeze_from_the_top_on_schedule(every, depth, expected):
    plan = _plan(unfreeze_every=every, unfreeze_depth=depth)
    assert [plan.unfrozen_groups(5, epoch) for epoch in range(1, 6)] == expected


def test_the_time_budget_shortens_the_plan_and_the_schedule_follows():
    plan = _plan(320, budget_seconds=35.0)  # 10 steps per epoch, 24 epochs planned
    state, schedule = _state(plan.epochs), plan.schedule()
    told = fit_to_budget(plan, state, schedule, epoch=1, epoch_seconds=10.0)
    assert state.planned_epochs == 3 and schedule.total_steps == 3 * plan.steps_per_epoch
    assert told == "time budget 35 s: 3 epochs of 10 s instead of 24"
    assert schedule(schedule.total_steps - 1) > 0 and schedule(schedule.total_steps) == 0.0  # ends at zero


def test_the_budget_only_re_plans_after_the_first_epoch_and_never_lengthens():
    plan = _plan(320, budget_seconds=35.0)
    for epoch, seconds in [(2, 10.0), (1, 1.0)]:  # a later epoch; a budget larger than the plan needs
        state, schedule = _state(plan.epochs, epoch=epoch), plan.schedule()
        assert fit_to_budget(plan, state, schedule, epoch=epoch, epoch_seconds=seconds) is None
        assert state.planned_epochs == plan.epochs and schedule.total_steps == plan.epochs * plan.steps_per_epoch
    state = _state(plan.epochs)
    fit_to_budget(plan, state, plan.schedule(), epoch=1, epoch_seconds=1000.0)
    assert state.planned_epochs == 1  # at least the epoch already run
    unbudgeted = _plan(320)
    assert fit_to_budget(unbudgeted, _state(12), unbudgeted.schedule(), epoch=1, epoch_seconds=1000.0) is None


def _epoch(epoch: int, val: tuple[float, float] | None) -> EpochResult:
    return EpochResult(epoch, "unfreeze 2/5", TrainTotals(1.0, 1, 2), 1.0, 1.0, 1e-3, val)


def test_the_best_validated_weights_are_kept_and_patience_stops_the_run():
    model, state = nn.Linear(2, 1), _state(10, epoch=0)
    best = KeepBest({}, patience=2)
    for epoch, (loss, accuracy) in enumerate([(0.9, 0.5), (0.5, 0.8), (0.4, 0.8), (0.6, 0.7), (0.3, 0.75)], 1):
        with torch.no_grad():
            model.bias.fill_(epoch)
        best.update(state, _epoch(epoch, (loss, accuracy)), model)
        assert not best.exhausted(state) or epoch == 5
    # epoch 3 ties epoch 2's accuracy with a lower loss; epochs 4 and 5 bring no better (accuracy, -loss)
    assert (state.best_epoch, state.best_score, state.stale_epochs) == (3, (0.8, -0.4), 2) and best.exhausted(state)
    assert best.weights["bias"].item() == 3.0  # the kept weights are epoch 3's, not the last ones


def test_without_validation_the_last_weights_are_kept():
    model, state = nn.Linear(2, 1), _state(3, epoch=0)
    best = KeepBest({}, patience=1)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.bias.fill_(epoch)
        best.update(state, _epoch(epoch, None), model)
    assert (state.best_epoch, state.stale_epochs, best.weights["bias"].item()) == (3, 0, 3.0)
    assert not best.exhausted(state)
