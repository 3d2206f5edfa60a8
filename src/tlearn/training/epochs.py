"""Fine-tuning's epochs: the loop and the small steps it composes (imports torch).

Each epoch unfreezes the layer groups the plan trains in it (re-wrapping DDP when that set changes), trains one
pass over the data, validates, re-plans once for the time budget after the first epoch, records the epoch
(history row, tracker scalars, console line, with how busy the hardware was: `tlearn.util.hardware`), keeps
the best weights or counts an epoch without improvement, and checkpoints. Every decision that survives a restart
lives in the checkpointed `TrainingState`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from tlearn.runs.layout import HistoryRow
from tlearn.training.checkpoint import TrainingState, save_checkpoint
from tlearn.training.context import TrainingContext
from tlearn.training.distributed import DistributedContext
from tlearn.training.plan import FinetunePlan, fit_to_budget
from tlearn.training.setup import FinetuneSetup, reseed_epoch, set_trainable, wrap_for_training
from tlearn.util.hardware import HardwareMonitor, HardwareWindow
from tlearn.util.progress import Progress

Scores = tuple[float, float]  # (loss, validation score) on the validation images


class TrainTotals(NamedTuple):
    """One epoch's training figures, summed over its batches (and over the ranks once gathered)."""

    loss_sum: float  # per-image loss times images
    correct: int  # the task's right answers (labels, for label sets)
    images: int


@dataclass(frozen=True)
class EpochResult:
    """What one epoch measured, summed over every rank."""

    epoch: int
    stage: str  # the layer groups it trained: "unfreeze 3/7"
    totals: TrainTotals
    train_seconds: float
    seconds: float  # training and validation
    lr: float  # the top group's learning rate after the epoch's last step
    val: Scores | None  # None without validation images
    hardware: HardwareWindow = field(default_factory=HardwareWindow)  # how busy this process's hardware was
    loader_wait_share: float | None = None  # of the training time spent waiting for the next batch (this rank)

    @property
    def images_per_second(self) -> float:
        return self.totals.images / self.train_seconds if self.train_seconds else 0.0

    def row(self) -> HistoryRow:
        """The epoch's row of `history.csv`."""
        images = max(self.totals.images, 1)
        val_loss, val_accuracy = self.val if self.val is not None else (None, None)
        return HistoryRow(
            self.epoch,
            self.stage,
            val_loss,
            val_accuracy,
            seconds=self.seconds,
            train_loss=self.totals.loss_sum / images,
            train_accuracy=self.totals.correct / images,
            lr=self.lr,
            images_per_second=self.images_per_second,
            cpu_percent=self.hardware.cpu_percent,
            rss_mb=self.hardware.rss_mb,
            gpu_percent=self.hardware.gpu_percent,
            gpu_memory_mb=self.hardware.gpu_memory_mb,
        )


def run_epochs(
    setup: FinetuneSetup,
    plan: FinetunePlan,
    context: TrainingContext,
    state: TrainingState,
    best: KeepBest,
    checkpoint_dir: Path,
) -> None:
    """Train epoch after epoch from `state.epoch + 1` until the planned epochs are done or patience runs out,
    updating `state` and `best` in place and checkpointing after every epoch."""
    dist, progress = context.dist, context.progress
    trainable = _Trainable(setup, plan, dist)
    gpu_index = (plan.device.index or 0) if plan.device.type == "cuda" else None
    with HardwareMonitor(gpu_index=gpu_index) as monitor:
        hinted: set[str] = set()
        while state.epoch < state.planned_epochs and not best.exhausted(state):
            epoch = state.epoch + 1
            trainer = trainable.for_epoch(epoch)
            started = time.perf_counter()
            reseed_epoch(setup.loader, plan.seed, epoch)
            totals, waited = train_one_epoch(trainer, setup, plan, progress, epoch)
            totals = _summed(totals, dist)
            train_seconds = time.perf_counter() - started
            val = validate(setup, dist)
            lr = setup.optimizer.param_groups[-1]["lr"]
            hardware, seconds = monitor.take(), time.perf_counter() - started
            waiting = waited / train_seconds if train_seconds else None
            result = EpochResult(epoch, trainable.stage, totals, train_seconds, seconds, lr, val, hardware, waiting)
            replanned = fit_to_budget(plan, state, setup.schedule, epoch=epoch, epoch_seconds=result.seconds)
            if replanned:
                progress.info(replanned)
            record(result, state, context)
            for hint in monitor.hints(hardware, loader_wait_share=waiting, workers=plan.workers):
                if hint.split(":")[0] not in hinted:  # each kind of hint once per run
                    hinted.add(hint.split(":")[0])
                    progress.info(hint)
            best.update(state, result, setup.model)
            if best.exhausted(state):
                progress.info(f"early stop: no validation improvement for {best.patience} epochs")
            save_progress(checkpoint_dir, setup, best.weights, state, dist)


def train_one_epoch(
    trainer: nn.Module, setup: FinetuneSetup, plan: FinetunePlan, progress: Progress, epoch: int
) -> tuple[TrainTotals, float]:
    """One pass over this rank's training data, stepping the optimizer and learning rate per batch; returns the
    totals and the seconds spent waiting for batches (the loader's share of the epoch)."""
    total_loss, correct, seen, waited = 0.0, 0, 0, 0.0
    device, precision = plan.device, plan.precision
    mean, std = setup.evaluator.normalisation
    with progress.bar(total=len(setup.loader.sampler), desc=f"epoch {epoch}") as bar:
        asked = time.perf_counter()
        for pixels, labels in setup.loader:  # (B, 3, H, W) uint8
            waited += time.perf_counter() - asked
            images = pixels.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
            images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
                logits = trainer(images)
                loss = setup.loss_fn(logits.float(), labels)
            setup.optimizer.zero_grad(set_to_none=True)
            setup.scaler.scale(loss).backward()
            setup.scaler.step(setup.optimizer)
            setup.scaler.update()
            setup.scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += setup.task.torch_right(logits.detach(), labels)
            seen += len(labels)
            bar.update(len(labels))
            asked = time.perf_counter()  # `float(loss)` above waited for the device: the rest is the loader's
    return TrainTotals(total_loss, correct, seen), waited


def validate(setup: FinetuneSetup, dist: DistributedContext | None) -> Scores | None:
    """(loss, score) of the current model on the validation images (None without them); sharded over the
    ranks and gathered when `dist` is given, computed whole on every rank when it is None."""
    val = setup.evaluation.get("val")
    return val.scores(setup.evaluator, setup.task, dist) if val is not None else None


def start_state(setup: FinetuneSetup, plan: FinetunePlan, progress: Progress) -> TrainingState:
    """Epoch 0: the starting model, validated when there are validation images (whole, on every rank)."""
    val = validate(setup, None)
    if val is not None:
        progress.info(f"start: val accuracy {val[1]:.3f}, loss {val[0]:.3f}")
    return TrainingState(
        epoch=0,
        planned_epochs=plan.epochs,
        history=[HistoryRow(0, "start", *(val or (None, None))).to_dict()],
        best_score=_ranked(val) if val is not None else (-math.inf, -math.inf),
        best_epoch=0,
        stale_epochs=0,
        images_seen=0,
        train_seconds=0.0,
    )


def record(result: EpochResult, state: TrainingState, context: TrainingContext) -> None:
    """Count the epoch in `state` and write it down: its history row, its tracker scalars, its console line."""
    row = result.row()
    state.history.append(row.to_dict())
    state.epoch = result.epoch
    state.images_seen += result.totals.images
    state.train_seconds += result.train_seconds
    validated = {"val/loss": row.val_loss, "val/accuracy": row.val_accuracy} if result.val is not None else {}
    context.tracker.log_metrics(
        {
            "train/loss": row.train_loss,
            "train/accuracy": row.train_accuracy,
            **validated,
            "lr": row.lr,
            "train/images_per_second": result.images_per_second,
            **result.hardware.scalars(),
        },
        step=result.epoch,
    )
    shown = f" | val loss {row.val_loss:.3f} acc {row.val_accuracy:.3f}" if result.val is not None else ""
    hardware = f" | {result.hardware.line()}" if result.hardware.line() else ""
    context.progress.info(
        f"epoch {result.epoch}/{state.planned_epochs}: train loss {row.train_loss:.3f} acc "
        f"{row.train_accuracy:.3f}{shown} | {result.images_per_second:.1f} img/s{hardware}"
    )


class KeepBest:
    """The weights fine-tuning returns, and when to stop waiting for better ones.

    With validation images, the weights of the epoch with the best validation score (the lower loss breaking
    ties) are kept, and `patience` epochs without improvement stop the run; without them (a refit), every
    epoch improves and the last weights are kept. The counters live in the checkpointed `TrainingState`, so a
    resumed run goes on counting where it stopped.
    """

    def __init__(self, weights: dict[str, torch.Tensor], patience: int) -> None:
        self.weights, self.patience = weights, patience

    def update(self, state: TrainingState, result: EpochResult, model: nn.Module) -> None:
        """Keep `model`'s weights when `result` is the best epoch so far, else count an epoch without gain."""
        if result.val is None or _ranked(result.val) > state.best_score:
            if result.val is not None:
                state.best_score = _ranked(result.val)
            state.best_epoch, state.stale_epochs = result.epoch, 0
            self.weights = copy.deepcopy(model.state_dict())
        else:
            state.stale_epochs += 1

    def exhausted(self, state: TrainingState) -> bool:
        """Whether `patience` epochs in a row brought no improvement."""
        return state.stale_epochs >= self.patience


def save_progress(
    folder: Path,
    setup: FinetuneSetup,
    best_weights: dict[str, torch.Tensor],
    state: TrainingState,
    dist: DistributedContext,
) -> None:
    """Checkpoint the run (rank 0 writes); every rank waits until it is on disk."""
    if dist.is_main:
        save_checkpoint(
            folder,
            model_state=setup.model.state_dict(),
            best_state=best_weights,
            optimizer=setup.optimizer,
            scheduler=setup.scheduler,
            scaler=setup.scaler,
            state=state,
        )
    dist.barrier()


class _Trainable:
    """The model as an epoch trains it: the plan's top layer groups unfrozen, and the DDP wrapper rebuilt when
    that set changes (DDP registers the trainable parameters when it wraps)."""

    def __init__(self, setup: FinetuneSetup, plan: FinetunePlan, dist: DistributedContext) -> None:
        self.setup, self.plan, self.dist = setup, plan, dist
        self.trainer, self.unfrozen = setup.model, 0

    @property
    def stage(self) -> str:
        return f"unfreeze {self.unfrozen}/{len(self.setup.groups)}"

    def for_epoch(self, epoch: int) -> nn.Module:
        """Set the trainable groups for `epoch`; returns the module to train (DDP-wrapped under torchrun)."""
        groups = self.setup.groups
        unfrozen = self.plan.unfrozen_groups(len(groups), epoch)
        set_trainable(self.setup.model, groups, unfrozen, bn=self.plan.bn)
        if unfrozen != self.unfrozen:
            self.trainer, self.unfrozen = wrap_for_training(self.setup.model, self.plan, self.dist), unfrozen
        return self.trainer


def _summed(totals: TrainTotals, dist: DistributedContext) -> TrainTotals:
    """Every rank's totals added up, on every rank."""
    return TrainTotals(*(sum(values) for values in zip(*dist.gather(tuple(totals)), strict=True)))


def _ranked(val: Scores) -> tuple[float, float]:
    """Validation results in the order that makes an epoch better: the score, then the lower loss."""
    loss, score = val
    return (score, -loss)
