"""Fine-tuning: start from the linear head, unfreeze the backbone gradually from the top (imports torch).

Recipe (ULMFiT / Keras transfer-learning guide / timm fine-tuning practice):

* warm start: the classifier layer begins as the linear head fitted on cached embeddings, so the first
  gradients do not wreck the pretrained features;
* gradual unfreezing over timm's coarse layer groups (stem, stages, head), one more group every
  `unfreeze_every` epochs, starting with the head and the top stage, down to `unfreeze_depth` groups;
* discriminative learning rates: each group below the top gets `layer_decay` times its upper neighbour's;
* AdamW (no decay on biases and norms), linear warm-up then cosine decay, label smoothing, augmentation;
* batch-norm statistics stay frozen (layers in eval mode) — batches of small data sets are too few and too
  small to re-estimate them;
* early stopping on validation, keeping the best state (the linear warm start counts as epoch 0, so
  fine-tuning can never end worse on validation than the linear model).

Runs are resumable: a checkpoint is written atomically after every epoch (`tlearn.training.checkpoint`), and SIGTERM is
turned into the same clean stop as Ctrl-C. Under torchrun the model is wrapped in DistributedDataParallel,
each rank sees its DistributedSampler share, and validation is sharded and gathered so every rank takes the
same early-stopping decisions; only rank 0 writes.
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
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tlearn.backbones.devices import autocast_dtype, resolve_device
from tlearn.config import TrainConfig
from tlearn.data.decoding import default_workers
from tlearn.data.images import load_rgb
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import TlearnError
from tlearn.runs.layout import HistoryRow
from tlearn.runs.model_dir import ModelConfig
from tlearn.training.augment import train_transform
from tlearn.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from tlearn.training.context import TrainingContext
from tlearn.training.distributed import DistributedContext, unshard
from tlearn.util.numeric import cross_entropy
from tlearn.util.progress import Progress


class Interrupted(TlearnError):
    """Training was stopped by Ctrl-C or SIGTERM; the last completed epoch is checkpointed."""

    exit_code = 130


@dataclass
class LabelledFiles:
    """Image files and their class indices."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int


@dataclass
class FinetuneOutcome:
    """The best state found, per-epoch history and the best model's validation/test probabilities."""

    state: dict[str, np.ndarray]
    history: list[dict]
    best_epoch: int
    probabilities: dict[str, np.ndarray]  # split → (N, C)
    images_per_second: float
    peak_gpu_memory_mb: float | None = None  # CUDA only


class _TrainImages(Dataset):
    """Augmented training images; decoded in DataLoader workers."""

    def __init__(self, files: LabelledFiles, transform, max_pixels: int) -> None:
        self.files, self.transform, self.max_pixels = files, transform, max_pixels

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        picture = load_rgb(self.files.paths[index], max_pixels=self.max_pixels)
        return self.transform(picture), int(self.files.labels[index])


@dataclass
class _Setup:
    """Everything the epoch loop works with."""

    model: nn.Module
    evaluator: Classifier
    groups: list[list[tuple[str, nn.Parameter]]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: DataLoader
    loss_fn: nn.Module
    device: torch.device
    precision: torch.dtype | None


def finetune(
    context: TrainingContext,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    splits: dict[str, LabelledFiles],
    class_weights: np.ndarray | None,
) -> FinetuneOutcome:
    """Fine-tune the model described by `model_config`, starting from `initial_state` (or the checkpoint).

    Args:
        context: the run's configuration (epochs, learning rates, augmentation, device, seed...), its folder
            (checkpoints go to `RUN/checkpoints/last`; with `context.resume` training continues from there),
            its rank, tracker and progress output.
        model_config: architecture, classes and preprocessing of the model being trained.
        initial_state: backbone weights with the fitted linear head in the classifier slot.
        splits: "train", "val" and optionally "test" files with labels.
        class_weights: per-class loss weights for imbalanced data, or None.

    Raises:
        Interrupted: Ctrl-C or SIGTERM arrived; the run can be resumed from its last checkpoint.
    """
    config, run_dir, dist, progress = context.config, context.run.root, context.dist, context.progress
    torch.manual_seed(config.seed)
    setup = _setup(config, model_config, initial_state, splits["train"], class_weights, dist)
    if context.resume:
        checkpoint = load_checkpoint(run_dir)
        setup.model.load_state_dict(checkpoint.model_state)
        setup.optimizer.load_state_dict(checkpoint.optimizer)
        setup.scheduler.load_state_dict(checkpoint.scheduler)
        setup.scaler.load_state_dict(checkpoint.scaler)
        checkpoint.restore_rng()
        state, best_state = checkpoint.state, checkpoint.best_state
        progress.info(f"resuming after epoch {state.epoch} of {config.epochs} (best so far: epoch {state.best_epoch})")
    else:
        val_loss, val_accuracy, _ = _evaluate(setup.evaluator, splits["val"], config, dist, progress)
        state = TrainingState(
            epoch=0,
            history=[HistoryRow(0, "linear head", val_loss, val_accuracy).to_dict()],
            best_score=(val_accuracy, -val_loss),
            best_epoch=0,
            stale_epochs=0,
            images_seen=0,
            train_seconds=0.0,
        )
        best_state = copy.deepcopy(setup.model.state_dict())
        _checkpoint(run_dir, setup, best_state, state, dist)
        progress.info(
            f"fine-tuning {len(setup.groups)} layer groups for up to {config.epochs} epochs "
            f"(start: val accuracy {val_accuracy:.3f}, loss {val_loss:.3f})"
        )

    with _stop_on_sigterm():
        try:
            best_state = _epochs(setup, context, splits, state, best_state)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted after epoch {state.epoch}; continue with the same command plus --resume "
                f"(checkpoint: {context.run.last_checkpoint})"
            ) from None

    setup.model.load_state_dict(best_state)
    probabilities = {
        split: _evaluate(setup.evaluator, files, config, dist, progress)[2]
        for split, files in splits.items()
        if split != "train"
    }
    return FinetuneOutcome(
        state={name: value.detach().cpu().numpy() for name, value in setup.model.state_dict().items()},
        history=state.history,
        best_epoch=state.best_epoch,
        probabilities=probabilities,
        images_per_second=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        peak_gpu_memory_mb=torch.cuda.max_memory_allocated(setup.device) / 2**20
        if setup.device.type == "cuda"
        else None,
    )


def _epochs(
    setup: _Setup,
    context: TrainingContext,
    splits: dict[str, LabelledFiles],
    state: TrainingState,
    best_state: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Train epoch after epoch from `state.epoch + 1`, updating `state` in place; returns the best state."""
    config, run_dir, dist, tracker, progress = (
        context.config,
        context.run.root,
        context.dist,
        context.tracker,
        context.progress,
    )
    groups = setup.groups
    trainer, trainer_unfrozen = setup.model, 0
    while state.epoch < config.epochs and state.stale_epochs < config.patience:
        epoch = state.epoch + 1
        unfrozen = min(len(groups), config.unfreeze_depth or len(groups), 1 + math.ceil(epoch / config.unfreeze_every))
        _set_trainable(setup.model, groups, unfrozen)
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
        val_loss, val_accuracy, _ = _evaluate(setup.evaluator, splits["val"], config, dist, progress)
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
        ).to_dict()
        state.history.append(row)
        state.epoch, state.images_seen, state.train_seconds = (
            epoch,
            state.images_seen + seen,
            state.train_seconds + seconds,
        )
        tracker.log_metrics(
            {
                "train/loss": row["train_loss"],
                "train/accuracy": row["train_accuracy"],
                "val/loss": val_loss,
                "val/accuracy": val_accuracy,
                "lr": row["lr"],
                "train/images_per_second": images_per_second,
            },
            step=epoch,
        )
        progress.info(
            f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.3f} acc "
            f"{row['train_accuracy']:.3f} | val loss {val_loss:.3f} acc {val_accuracy:.3f} | "
            f"{images_per_second:.1f} img/s"
        )
        if (val_accuracy, -val_loss) > state.best_score:
            state.best_score, state.best_epoch, state.stale_epochs = (val_accuracy, -val_loss), epoch, 0
            best_state = copy.deepcopy(setup.model.state_dict())
        else:
            state.stale_epochs += 1
            if state.stale_epochs >= config.patience:
                progress.info(f"early stop: no validation improvement for {config.patience} epochs")
        _checkpoint(run_dir, setup, best_state, state, dist)
    return best_state


def train_one_epoch(trainer: nn.Module, setup: _Setup, progress: Progress, epoch: int) -> tuple[float, int, int]:
    """One pass over this rank's training data; returns the summed loss, correct answers and images seen."""
    total_loss, correct, seen = 0.0, 0, 0
    device, precision = setup.device, setup.precision
    with progress.bar(total=len(setup.loader.sampler), desc=f"epoch {epoch}") as bar:
        for images, labels in setup.loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
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
            correct += int((logits.detach().argmax(1) == labels).sum())
            seen += len(labels)
            bar.update(len(labels))
    return total_loss, correct, seen


def _setup(
    config: TrainConfig,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    train_files: LabelledFiles,
    class_weights: np.ndarray | None,
    dist: DistributedContext,
) -> _Setup:
    device = resolve_device(config.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    model = timm.create_model(model_config.arch, pretrained=False, num_classes=len(model_config.classes))
    model.load_state_dict({name: torch.from_numpy(np.array(value)) for name, value in initial_state.items()})
    evaluator = Classifier(model, model_config, device)  # shares `model`; evaluates with eval preprocessing
    groups = _layer_groups(model)
    optimizer = _optimizer(groups, config)
    loader = _train_loader(train_files, model_config, config, device, dist)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config.epochs * len(loader), warmup_steps=round(config.warmup_epochs * len(loader)))
    )
    precision = _precision(config.precision, device)
    weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None
    return _Setup(
        model,
        evaluator,
        groups,
        optimizer,
        scheduler,
        torch.amp.GradScaler(device.type, enabled=precision == torch.float16),
        loader,
        nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing),
        device,
        precision,
    )


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
    run_dir: Path, setup: _Setup, best_state: dict[str, torch.Tensor], state: TrainingState, dist: DistributedContext
) -> None:
    if dist.is_main:
        save_checkpoint(
            run_dir,
            model_state=setup.model.state_dict(),
            best_state=best_state,
            optimizer=setup.optimizer,
            scheduler=setup.scheduler,
            scaler=setup.scaler,
            state=state,
        )
    dist.barrier()


def _evaluate(
    evaluator: Classifier, files: LabelledFiles, config: TrainConfig, dist: DistributedContext, progress: Progress
) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and probabilities on a split (sharded over ranks, gathered on all of them)."""
    evaluator.model.eval()
    paths = dist.shard(files.paths)
    probabilities, failures = evaluator.predict_files_probabilities(
        paths, batch_size=config.batch_size, workers=config.workers, progress=progress
    )
    if failures:
        position, reason = next(iter(failures.items()))
        raise TlearnError(f"{paths[position]}: became unreadable during training ({reason})")
    if dist.enabled:
        probabilities = np.stack(unshard([list(part) for part in dist.gather(probabilities)], len(files.paths)))
    accuracy = float((probabilities.argmax(1) == files.labels).mean())
    return cross_entropy(probabilities, files.labels), accuracy, probabilities


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


def _set_trainable(model: nn.Module, groups: list[list[tuple[str, nn.Parameter]]], unfrozen: int) -> None:
    """Train the top `unfrozen` groups; batch-norm layers stay in eval mode (frozen statistics)."""
    for depth, group in enumerate(groups):
        for _, param in group:
            param.requires_grad_(depth >= len(groups) - unfrozen)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _warmup_cosine(total_steps: int, *, warmup_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _train_loader(
    files: LabelledFiles,
    model_config: ModelConfig,
    config: TrainConfig,
    device: torch.device,
    dist: DistributedContext,
) -> DataLoader:
    workers = config.workers if config.workers is not None else default_workers(accelerator=device.type == "cuda")
    dataset = _TrainImages(
        files, train_transform(model_config.preprocessing_spec(), augment=config.augment), config.max_image_pixels
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
        num_workers=workers,
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
