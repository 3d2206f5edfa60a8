"""Fine-tuning the whole network on the training images (imports torch).

The recipe, chosen on the benchmark suite (`benchmarks/bench_suite.py`; see the README for the figures):

* the training images are decoded once and kept in memory (`train_images`); each epoch only re-crops them;
* the layer groups of timm's coarse grouping (stem → stages → head) unfreeze from the top, one more every
  `unfreeze_every` epochs (0: all at once), with a learning rate falling by `layer_decay` per group below the
  top, so the features ImageNet taught the bottom layers move least;
* batch norm: `bn="train"` (the default) normalises with batch statistics and re-estimates the running ones
  (what a new domain needs), `"frozen"` keeps ImageNet's, `"adapt"` re-estimates them once on the training
  images and then keeps them;
* the classifier starts from zero (`head_init="zero"`, the default) or from the linear head fitted on the
  cached embeddings (`"linear"`). A linear head was fitted under ImageNet's batch statistics: with
  `bn="train"` its logits shift at the first step and fine-tuning starts from a wrong model (signs: 77-80%
  against 96-97% from zero on a GPU sweep over seeds), while `"frozen"` batch norm collapsed on mri (71%);
* epochs: 24, raised on very small folders to make at least `MIN_STEPS` optimizer steps (`plan.planned_epochs`),
  patience 8 (on three splits per set, 24 epochs against 12: signs 98.2% against 97.8%, mri 90.7% against 87.7%;
  the 12-epoch runs were still improving at their last epoch, and one mri split stopped at epoch 8 and kept the
  linear head);
  peak learning rate 2e-3 (seeds 0-5 on a GPU, test accuracy: signs 97.2% / mri 89.3% against 95.9% / 86.7% at
  1e-3; 16 epochs at 1e-3: 96.4% / 88.1%);
* AdamW (no decay on biases and norms), linear warm-up then cosine decay per step, label smoothing, an optional
  class-weighted loss;
* with validation images, each epoch is validated and the best state kept (early stopping after `patience`
  epochs without improvement); without them (the final refit on train + val) the last state is kept.

A time budget re-plans the number of epochs once the first epoch has been timed, so the cosine schedule still
ends at zero. Runs are resumable: a checkpoint is written atomically after every epoch and SIGTERM is turned
into the same clean stop as Ctrl-C. Under torchrun the model is wrapped in DistributedDataParallel, each rank
trains on its DistributedSampler share, and validation is sharded and gathered so every rank takes the same
decisions; only rank 0 writes.

The modules: `plan` decides what to do (epochs, patience, unfreezing, schedule, budget) from the configuration;
`setup` builds the network, optimizer, loader and evaluation images (`eval_images`) from the plan; `epochs` runs
the epoch loop; this module starts or resumes a stage and returns its outcome.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlearn.backbones.pruning import PruneOutcome
from tlearn.data.checks import LabelledFiles
from tlearn.errors import TlearnError
from tlearn.runs.model_dir import ModelConfig
from tlearn.training.checkpoint import TrainingState, has_checkpoint, load_checkpoint
from tlearn.training.context import TrainingContext
from tlearn.training.epochs import KeepBest, run_epochs, save_progress, start_state
from tlearn.training.plan import FinetunePlan
from tlearn.training.setup import FinetuneSetup, adapt_batch_norm, build_setup


class Interrupted(TlearnError):
    """Training was stopped by Ctrl-C or SIGTERM; the last completed epoch is checkpointed."""

    exit_code = 130


@dataclass
class FinetuneOutcome:
    """The kept state, per-epoch history and the kept model's probabilities on the evaluated splits."""

    state: dict[str, np.ndarray]
    history: list[dict]
    best_epoch: int
    epochs: int  # epochs run (after any re-planning for the time budget)
    probabilities: dict[str, np.ndarray]  # split → (N, C), for every split given except "train"
    images_per_second: float
    seconds: float
    resumed_after: int | None = None  # the checkpoint's epoch when this stage was resumed
    peak_gpu_memory_mb: float | None = None  # CUDA only
    pruned: PruneOutcome | None = None  # `--prune`: the compute per image the network kept


def finetune(
    context: TrainingContext,
    plan: FinetunePlan,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    splits: dict[str, LabelledFiles],
    class_weights: np.ndarray | None,
    *,
    stage: str = "select",
) -> FinetuneOutcome:
    """Fine-tune the model described by `model_config`, starting from `initial_state` (or the checkpoint).

    Args:
        context: the run's folder, rank, tracker and progress; with `context.resume` training continues from
            this stage's checkpoint when there is one. Its configuration is not read: `plan` holds what it decided.
        plan: epochs, patience, time budget and optimisation settings (`FinetunePlan.from_config`), made for
            the images of `splits["train"]`.
        model_config: architecture, classes and preprocessing of the model being trained.
        initial_state: backbone weights with the fitted linear head in the classifier slot.
        splits: "train" and optionally "val" (validated each epoch; the best state is kept) and "test"
            (predicted with the kept state at the end).
        class_weights: per-class loss weights for imbalanced data, or None.
        stage: names the checkpoint folder ("select": fine-tuning validated on val; "refit": the final
            fit on train + val).

    Raises:
        ValueError: `plan` was made for another number of training images.
        Interrupted: Ctrl-C or SIGTERM arrived; the run can be resumed from its last checkpoint.
    """
    if len(splits["train"].paths) != plan.train_images:
        raise ValueError(f"the plan is for {plan.train_images} training images, got {len(splits['train'].paths)}")
    dist, progress = context.dist, context.progress
    checkpoint_dir = context.run.checkpoints / stage
    started = time.perf_counter()
    torch.manual_seed(plan.seed)
    setup = build_setup(plan, model_config, initial_state, splits, class_weights, dist)
    if setup.pruned is not None:
        progress.info(
            f"{stage}: channels pruned: {setup.pruned.macs_after / setup.pruned.macs_before:.0%} of the compute per "
            f"image is left ({setup.pruned.speedup:.2f}x less)"
        )
    resumed_after = None
    if context.resume and has_checkpoint(checkpoint_dir):
        state, best_weights = _resume(setup, plan, checkpoint_dir)
        resumed_after = state.epoch
        progress.info(
            f"{stage}: resuming after epoch {state.epoch} of {state.planned_epochs} (best so far: epoch "
            f"{state.best_epoch})"
        )
    else:
        if plan.bn == "adapt":
            adapt_batch_norm(setup.model, splits["train"], model_config, plan)
        state = start_state(setup, plan, progress)
        best_weights = copy.deepcopy(setup.model.state_dict())
        save_progress(checkpoint_dir, setup, best_weights, state, dist)
        progress.info(
            f"{stage}: fine-tuning {len(setup.groups)} layer groups for up to {state.planned_epochs} epochs on "
            f"{plan.train_images} images"
        )

    best = KeepBest(best_weights, plan.patience)
    with _stop_on_sigterm():
        try:
            run_epochs(setup, plan, context, state, best, checkpoint_dir)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted after epoch {state.epoch}; continue with the same command plus --resume "
                f"(checkpoint: {checkpoint_dir})"
            ) from None

    setup.model.load_state_dict(best.weights)
    probabilities = {split: images.probabilities(setup.evaluator, dist) for split, images in setup.evaluation.items()}
    return FinetuneOutcome(
        state={name: value.detach().cpu().numpy() for name, value in setup.model.state_dict().items()},
        history=state.history,
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        probabilities=probabilities,
        images_per_second=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        seconds=time.perf_counter() - started,
        resumed_after=resumed_after,
        peak_gpu_memory_mb=_peak_gpu_memory_mb(plan.device),
        pruned=setup.pruned,
    )


def _resume(
    setup: FinetuneSetup, plan: FinetunePlan, checkpoint_dir: Path
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Put the model, optimizer, schedule, scaler and random generators back where the checkpoint left them;
    returns the training state and the best weights so far."""
    checkpoint = load_checkpoint(checkpoint_dir)
    setup.model.load_state_dict(checkpoint.model_state)
    setup.optimizer.load_state_dict(checkpoint.optimizer)
    setup.scheduler.load_state_dict(checkpoint.scheduler)
    setup.scaler.load_state_dict(checkpoint.scaler)
    checkpoint.restore_rng()
    setup.schedule.total_steps = checkpoint.state.planned_epochs * plan.steps_per_epoch  # a budget's re-plan
    return checkpoint.state, checkpoint.best_state


def _peak_gpu_memory_mb(device: torch.device) -> float | None:
    """The most GPU memory this process held (CUDA only)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Let SIGTERM stop training like Ctrl-C (main thread only; signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
