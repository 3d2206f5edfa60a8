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
* epochs: 12, raised on very small folders to make at least `MIN_STEPS` optimizer steps (`planned_epochs`);
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
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tlearn.backbones.devices import autocast_dtype, resolve_device
from tlearn.config import DEFAULT_EPOCHS, TrainConfig
from tlearn.data.checks import LabelledFiles
from tlearn.data.decoding import BatchDecoder, default_workers
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import TlearnError
from tlearn.evaluation.tasks import Task
from tlearn.runs.layout import HistoryRow
from tlearn.runs.model_dir import ModelConfig
from tlearn.training.checkpoint import TrainingState, has_checkpoint, load_checkpoint, save_checkpoint
from tlearn.training.context import TrainingContext
from tlearn.training.distributed import DistributedContext, unshard
from tlearn.training.train_images import STORE_SCALE, TrainImages, train_transform

EVAL_BATCH = 64
MIN_STEPS = 60  # optimizer steps a fine-tune takes at least, however few the images (see `planned_epochs`)
MAX_HELD_EVAL_IMAGES = 4000  # evaluation images kept decoded in memory; beyond, they stream from their files


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


@dataclass
class _Setup:
    """Everything the epoch loop works with."""

    model: nn.Module
    evaluator: Classifier
    groups: list[list[tuple[str, nn.Parameter]]]
    optimizer: torch.optim.Optimizer
    schedule: _WarmupCosine
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: DataLoader
    loss_fn: nn.Module
    device: torch.device
    precision: torch.dtype | None
    evaluation: dict[str, _EvalImages]
    task: Task


def finetune(
    context: TrainingContext,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    splits: dict[str, LabelledFiles],
    class_weights: np.ndarray | None,
    *,
    stage: str = "select",
    budget_seconds: float | None = None,
) -> FinetuneOutcome:
    """Fine-tune the model described by `model_config`, starting from `initial_state` (or the checkpoint).

    Args:
        context: the run's configuration, folder, rank, tracker and progress; with `context.resume` training
            continues from this stage's checkpoint when there is one.
        model_config: architecture, classes and preprocessing of the model being trained.
        initial_state: backbone weights with the fitted linear head in the classifier slot.
        splits: "train" and optionally "val" (validated each epoch; the best state is kept) and "test"
            (predicted with the kept state at the end).
        class_weights: per-class loss weights for imbalanced data, or None.
        stage: names the checkpoint folder ("select": fine-tuning validated on val; "refit": the final
            fit on train + val).
        budget_seconds: wall time the epochs may take; the number of epochs is re-planned to fit after the
            first one (None: the planned epochs, however long they take).

    Raises:
        Interrupted: Ctrl-C or SIGTERM arrived; the run can be resumed from its last checkpoint.
    """
    config, dist, progress = context.config, context.dist, context.progress
    checkpoint_dir = context.run.checkpoints / stage
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    setup = _setup(config, model_config, initial_state, splits, class_weights, dist)
    resumed_after = None
    if context.resume and has_checkpoint(checkpoint_dir):
        checkpoint = load_checkpoint(checkpoint_dir)
        setup.model.load_state_dict(checkpoint.model_state)
        setup.optimizer.load_state_dict(checkpoint.optimizer)
        setup.scheduler.load_state_dict(checkpoint.scheduler)
        setup.scaler.load_state_dict(checkpoint.scaler)
        checkpoint.restore_rng()
        state, best_state = checkpoint.state, checkpoint.best_state
        resumed_after = state.epoch
        setup.schedule.total_steps = state.planned_epochs * len(setup.loader)
        progress.info(
            f"{stage}: resuming after epoch {state.epoch} of {state.planned_epochs} (best so far: epoch "
            f"{state.best_epoch})"
        )
    else:
        if config.bn == "adapt":
            _adapt_batch_norm(setup.model, splits["train"], model_config, config, setup.device)
        state = _initial_state(setup, config, splits, progress)
        best_state = copy.deepcopy(setup.model.state_dict())
        _checkpoint(checkpoint_dir, setup, best_state, state, dist)
        progress.info(
            f"{stage}: fine-tuning {len(setup.groups)} layer groups for up to {state.planned_epochs} epochs on "
            f"{len(splits['train'].paths)} images"
        )

    with _stop_on_sigterm():
        try:
            best_state = _epochs(setup, context, splits, state, best_state, checkpoint_dir, budget_seconds)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted after epoch {state.epoch}; continue with the same command plus --resume "
                f"(checkpoint: {checkpoint_dir})"
            ) from None

    setup.model.load_state_dict(best_state)
    probabilities = {
        split: setup.evaluation[split].probabilities(setup.evaluator, dist) for split in splits if split != "train"
    }
    return FinetuneOutcome(
        state={name: value.detach().cpu().numpy() for name, value in setup.model.state_dict().items()},
        history=state.history,
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        probabilities=probabilities,
        images_per_second=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        seconds=time.perf_counter() - started,
        resumed_after=resumed_after,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated(setup.device) / 2**20
        if setup.device.type == "cuda"
        else None,
    )


def planned_epochs(config: TrainConfig, steps_per_epoch: int) -> int:
    """The epochs to plan: `config.epochs` when set, else `DEFAULT_EPOCHS`, raised to make `MIN_STEPS` steps.

    Epochs measure passes over the data, but what a fine-tune needs is optimizer steps: 32 images make one
    batch, and 12 epochs of one batch are 12 steps, too few for a classifier that starts from zero to learn
    (pools, 40 images, answered 3/4 test houses after 12 steps and 4/4 from about 30). Folders of a few
    hundred images already make more than `MIN_STEPS` steps in `DEFAULT_EPOCHS` and keep them.

    Example:
        >>> auto, fixed = TrainConfig(data="photos"), TrainConfig(data="photos", epochs=3)
        >>> planned_epochs(auto, 1), planned_epochs(auto, 8), planned_epochs(fixed, 1)
        (60, 12, 3)
    """
    if config.epochs is not None:
        return config.epochs
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / max(1, steps_per_epoch)))


def _initial_state(setup: _Setup, config: TrainConfig, splits: dict[str, LabelledFiles], progress) -> TrainingState:
    """Epoch 0: the starting model, validated when there are validation images."""
    row = HistoryRow(0, "start")
    best_score = (-math.inf, -math.inf)
    if "val" in splits:
        probabilities = setup.evaluation["val"].probabilities(setup.evaluator, None)
        val_loss, val_accuracy = _scores(setup.task, probabilities, splits["val"].labels)
        row = HistoryRow(0, "start", val_loss, val_accuracy)
        best_score = (val_accuracy, -val_loss)
        progress.info(f"start: val accuracy {val_accuracy:.3f}, loss {val_loss:.3f}")
    return TrainingState(
        epoch=0,
        planned_epochs=planned_epochs(config, len(setup.loader)),
        history=[row.to_dict()],
        best_score=best_score,
        best_epoch=0,
        stale_epochs=0,
        images_seen=0,
        train_seconds=0.0,
    )


def _epochs(
    setup: _Setup,
    context: TrainingContext,
    splits: dict[str, LabelledFiles],
    state: TrainingState,
    best_state: dict[str, torch.Tensor],
    checkpoint_dir: Path,
    budget_seconds: float | None,
) -> dict[str, torch.Tensor]:
    """Train epoch after epoch from `state.epoch + 1`, updating `state` in place; returns the kept state."""
    config, dist, tracker, progress = context.config, context.dist, context.tracker, context.progress
    groups, validated = setup.groups, "val" in splits
    trainer, trainer_unfrozen = setup.model, 0
    patience = _patience(config, state.planned_epochs)
    while state.epoch < state.planned_epochs and state.stale_epochs < patience:
        epoch = state.epoch + 1
        unfrozen = _unfrozen_groups(len(groups), epoch, config)
        _set_trainable(setup.model, groups, unfrozen, bn=config.bn)
        if unfrozen != trainer_unfrozen:  # DDP registers the trainable parameters when it wraps
            trainer, trainer_unfrozen = (
                _wrap_for_training(setup.model, setup.device, dist, compile_model=config.compile),
                unfrozen,
            )
        _reseed_epoch(setup.loader, config.seed, epoch)
        started = time.perf_counter()
        loss_sum, correct, seen = train_one_epoch(trainer, setup, progress, epoch)
        loss_sum, correct, seen = (sum(values) for values in zip(*dist.gather((loss_sum, correct, seen)), strict=True))
        seconds = time.perf_counter() - started
        val_loss = val_accuracy = None
        if validated:
            val_loss, val_accuracy = _scores(
                setup.task, setup.evaluation["val"].probabilities(setup.evaluator, dist), splits["val"].labels
            )
        images_per_second = seen / seconds if seconds else 0.0
        row = HistoryRow(
            epoch,
            f"unfreeze {unfrozen}/{len(groups)}",
            val_loss,
            val_accuracy,
            seconds=time.perf_counter() - started,
            train_loss=loss_sum / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            lr=setup.optimizer.param_groups[-1]["lr"],
            images_per_second=images_per_second,
        )
        state.history.append(row.to_dict())
        state.epoch, state.images_seen, state.train_seconds = (
            epoch,
            state.images_seen + seen,
            state.train_seconds + seconds,
        )
        if epoch == 1 and budget_seconds is not None:
            _replan(setup, state, budget_seconds, time.perf_counter() - started, config, progress)
        tracker.log_metrics(
            {
                "train/loss": row.train_loss,
                "train/accuracy": row.train_accuracy,
                **({"val/loss": val_loss, "val/accuracy": val_accuracy} if validated else {}),
                "lr": row.lr,
                "train/images_per_second": images_per_second,
            },
            step=epoch,
        )
        shown = f" | val loss {val_loss:.3f} acc {val_accuracy:.3f}" if validated else ""
        progress.info(
            f"epoch {epoch}/{state.planned_epochs}: train loss {row.train_loss:.3f} acc "
            f"{row.train_accuracy:.3f}{shown} | {images_per_second:.1f} img/s"
        )
        if not validated or (val_accuracy, -val_loss) > state.best_score:
            state.best_score = (val_accuracy, -val_loss) if validated else state.best_score
            state.best_epoch, state.stale_epochs = epoch, 0
            best_state = copy.deepcopy(setup.model.state_dict())
        else:
            state.stale_epochs += 1
            if state.stale_epochs >= patience:
                progress.info(f"early stop: no validation improvement for {patience} epochs")
        _checkpoint(checkpoint_dir, setup, best_state, state, dist)
    return best_state


def _replan(
    setup: _Setup, state: TrainingState, budget_seconds: float, epoch_seconds: float, config: TrainConfig, progress
) -> None:
    """After the first epoch: as many epochs as the budget allows (at most the plan); the schedule follows."""
    affordable, planned = max(1, int(budget_seconds // max(epoch_seconds, 1e-3))), state.planned_epochs
    if affordable < planned:
        state.planned_epochs = max(state.epoch, affordable)
        setup.schedule.total_steps = state.planned_epochs * len(setup.loader)
        progress.info(
            f"time budget {budget_seconds:.0f} s: {state.planned_epochs} epochs of {epoch_seconds:.0f} s "
            f"instead of {planned}"
        )


def train_one_epoch(trainer: nn.Module, setup: _Setup, progress, epoch: int) -> tuple[float, int, int]:
    """One pass over this rank's training data; returns the summed loss, correct answers and images seen."""
    total_loss, correct, seen = 0.0, 0, 0
    device, precision = setup.device, setup.precision
    mean, std = setup.evaluator.normalisation
    with progress.bar(total=len(setup.loader.sampler), desc=f"epoch {epoch}") as bar:
        for pixels, labels in setup.loader:  # (B, 3, H, W) uint8
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
    return total_loss, correct, seen


def _setup(
    config: TrainConfig,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    splits: dict[str, LabelledFiles],
    class_weights: np.ndarray | None,
    dist: DistributedContext,
) -> _Setup:
    device = resolve_device(config.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    model = timm.create_model(model_config.arch, pretrained=False, num_classes=len(model_config.classes))
    state = {name: torch.from_numpy(np.array(value)) for name, value in initial_state.items()}
    if config.head_init == "zero":
        for key in model_config.classifier_keys:
            state[key] = torch.zeros_like(state[key])
    model.load_state_dict(state)
    evaluator = Classifier(model, model_config, device)  # shares `model`; evaluates with eval preprocessing
    groups = _layer_groups(model)
    optimizer = _optimizer(groups, config)
    loader = _train_loader(splits["train"], model_config, config, device, dist)
    schedule = _WarmupCosine(
        planned_epochs(config, len(loader)) * len(loader), round(config.warmup_epochs * len(loader))
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    precision = _precision(config.precision, device)
    weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None
    workers = config.workers if config.workers is not None else default_workers(accelerator=device.type == "cuda")
    evaluation = {
        split: _EvalImages(files, evaluator, workers=workers, batch_size=config.batch_size)
        for split, files in splits.items()
        if split != "train"
    }
    return _Setup(
        model,
        evaluator,
        groups,
        optimizer,
        schedule,
        scheduler,
        torch.amp.GradScaler(device.type, enabled=precision == torch.float16),
        loader,
        model_config.task_type.torch_loss(nn, weights, config.label_smoothing),
        device,
        precision,
        evaluation,
        model_config.task_type,
    )


class _EvalImages:
    """Evaluation images preprocessed once (kept in memory up to MAX_HELD_EVAL_IMAGES), scored every epoch."""

    def __init__(self, files: LabelledFiles, evaluator: Classifier, *, workers: int, batch_size: int) -> None:
        self.files, self.workers, self.batch_size = files, workers, batch_size
        self.pixels: np.ndarray | None = None
        if len(files.paths) <= MAX_HELD_EVAL_IMAGES:
            with BatchDecoder(files.paths, evaluator.preprocessing, batch_size=EVAL_BATCH, workers=workers) as batches:
                decoded = list(batches)
            for batch in decoded:
                if batch.failures:
                    position, reason = batch.failures[0]
                    raise TlearnError(f"{files.paths[position]}: became unreadable during training ({reason})")
            height, width = evaluator.preprocessing.input_size
            self.pixels = (
                np.concatenate([batch.pixels for batch in decoded])
                if decoded
                else np.empty((0, height, width, 3), np.uint8)
            )

    def probabilities(self, evaluator: Classifier, dist: DistributedContext | None) -> np.ndarray:
        """(N, C) probabilities of the current model (sharded over ranks and gathered when `dist` is given)."""
        evaluator.model.eval()
        positions = list(range(len(self.files.paths)))
        if dist is not None and dist.enabled:
            positions = dist.shard(positions)
        if self.pixels is not None:
            chunks = [self.pixels[positions[i : i + EVAL_BATCH]] for i in range(0, len(positions), EVAL_BATCH)]
            rows = [evaluator.probabilities(chunk) for chunk in chunks]
            probabilities = np.concatenate(rows) if rows else np.empty((0, len(evaluator.classes)), np.float32)
        else:
            paths = [self.files.paths[position] for position in positions]
            probabilities, failures = evaluator.predict_files_probabilities(
                paths, batch_size=self.batch_size, workers=self.workers, progress=None
            )
            if failures:
                position, reason = next(iter(failures.items()))
                raise TlearnError(f"{paths[position]}: became unreadable during training ({reason})")
        if dist is not None and dist.enabled:
            probabilities = np.stack(
                unshard([list(part) for part in dist.gather(probabilities)], len(self.files.paths))
            )
        return probabilities


def _scores(task: Task, probabilities: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(loss, score) on validation: the task's log-loss and its threshold-free validation score (accuracy, or
    mAP for label sets, whose thresholds are chosen after training)."""
    return task.loss(probabilities, targets), task.validation_score(probabilities, targets)


def _adapt_batch_norm(
    model: nn.Module, files: LabelledFiles, model_config: ModelConfig, config: TrainConfig, device: torch.device
) -> None:
    """Re-estimate every batch norm's running statistics on the training images (AdaBN), no gradients."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over every batch
    preprocessing = model_config.preprocessing_spec()
    mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)
    model.train()
    workers = config.workers if config.workers is not None else default_workers(accelerator=device.type == "cuda")
    with (
        torch.no_grad(),
        BatchDecoder(files.paths, preprocessing, batch_size=config.batch_size, workers=workers) as batches,
    ):
        for batch in batches:
            if len(batch.positions):
                pixels = torch.from_numpy(batch.pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)
                model(((pixels - mean) / std).contiguous(memory_format=torch.channels_last))
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum


def _patience(config: TrainConfig, planned: int) -> int:
    """Epochs without improvement before stopping, stretched as far as small data stretched the plan."""
    if config.epochs is not None:
        return config.patience
    return math.ceil(config.patience * max(1.0, planned / DEFAULT_EPOCHS))


def _unfrozen_groups(total: int, epoch: int, config: TrainConfig) -> int:
    """Layer groups trained in `epoch` (from the top; the classifier group is one)."""
    limit = min(total, config.unfreeze_depth or total)
    if config.unfreeze_every == 0:
        return limit
    return min(limit, 1 + math.ceil(epoch / config.unfreeze_every))


def _precision(choice: str, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 (or fp16) autocast on GPU, fp32 on CPU; explicit choices are honoured where possible."""
    if choice == "auto":
        return autocast_dtype(device)
    if choice == "fp32":
        return None
    if choice == "fp16" and device.type != "cuda":
        raise TlearnError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return torch.bfloat16 if choice == "bf16" else torch.float16


def _wrap_for_training(model: nn.Module, device: torch.device, dist: DistributedContext, *, compile_model: bool):
    """DDP wrapper (rebuilt when the set of trainable parameters changes) and optional torch.compile."""
    trainer = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(trainer) if compile_model else trainer


def _checkpoint(
    folder: Path, setup: _Setup, best_state: dict[str, torch.Tensor], state: TrainingState, dist: DistributedContext
) -> None:
    if dist.is_main:
        save_checkpoint(
            folder,
            model_state=setup.model.state_dict(),
            best_state=best_state,
            optimizer=setup.optimizer,
            scheduler=setup.scheduler,
            scaler=setup.scaler,
            state=state,
        )
    dist.barrier()


def _layer_groups(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """timm's coarse parameter groups (stem → stages → head), bottom first."""
    parameters = dict(model.named_parameters())
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    return [[(name, parameters[name]) for name in names] for _, names in sorted(grouped.items())]


def _optimizer(groups: list[list[tuple[str, nn.Parameter]]], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with a learning rate per layer group (decaying downwards) and no decay on 1-D parameters."""
    param_groups = []
    for depth, group in enumerate(groups):
        scale = config.layer_decay ** (len(groups) - 1 - depth)
        for decay in (True, False):
            params = [param for _, param in group if (param.ndim > 1) == decay]
            if params:
                param_groups.append(
                    {"params": params, "lr": config.lr * scale, "weight_decay": config.weight_decay if decay else 0.0}
                )
    return torch.optim.AdamW(param_groups, lr=config.lr)


def _set_trainable(model: nn.Module, groups: list[list[tuple[str, nn.Parameter]]], unfrozen: int, *, bn: str) -> None:
    """Train the top `unfrozen` groups; batch norm uses batch statistics only with bn="train"."""
    for depth, group in enumerate(groups):
        for _, param in group:
            param.requires_grad_(depth >= len(groups) - unfrozen)
    model.train()
    if bn != "train":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class _WarmupCosine:
    """Learning-rate factor per step: linear warm-up, then cosine decay to zero at `total_steps`.

    A plain object (not a closure) so LambdaLR keeps its fields in the checkpoint and a re-planned length
    survives a resume.
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        done = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def _train_loader(
    files: LabelledFiles,
    model_config: ModelConfig,
    config: TrainConfig,
    device: torch.device,
    dist: DistributedContext,
) -> DataLoader:
    decoders = config.workers if config.workers is not None else default_workers(accelerator=device.type == "cuda")
    # The images are decoded once (by `decoders` processes); then a loader worker only crops and flips. On a
    # CPU that is cheaper in this process than in a worker competing with the model for the same cores (and
    # forked again every epoch): 2.2x faster on pools' 32 images, 8% on signs' 254 (2 cores).
    loaders = decoders if device.type == "cuda" else 0
    preprocessing = model_config.preprocessing_spec()
    size = config.train_size or preprocessing.input_size[0]
    dataset = TrainImages(
        files.paths,
        files.labels,
        train_transform(preprocessing, size=size, augment=config.augment),
        shorter_side=math.ceil(size * STORE_SCALE),
        workers=decoders,
        max_pixels=config.max_image_pixels,
    )
    per_rank = math.ceil(len(dataset) / dist.world_size)
    batch_size = min(config.batch_size, per_rank)
    sampler = (
        DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.seed)
        if dist.enabled
        else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=per_rank > batch_size,
        num_workers=loaders,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )


def _reseed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Shuffling and augmentation depend only on (seed, epoch), so a resumed run replays the same epochs."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 1000 + epoch)


@contextlib.contextmanager
def _stop_on_sigterm():
    """Let SIGTERM stop training like Ctrl-C (main thread only; signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
