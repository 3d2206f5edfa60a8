"""Fine-tuning: start from the linear head, unfreeze the backbone gradually from the top (imports torch).

Recipe (ULMFiT / Keras transfer-learning guide / timm fine-tuning practice):

* warm start: the classifier layer begins as the linear head fitted on cached embeddings, so the first
  gradients do not wreck the pretrained features;
* gradual unfreezing over timm's coarse layer groups (stem, stages, head), one more group every
  `unfreeze_every` epochs, starting with the head and the top stage;
* discriminative learning rates: each group below the top gets `layer_decay` times its upper neighbour's;
* AdamW (no decay on biases and norms), linear warm-up then cosine decay, label smoothing, augmentation;
* batch-norm statistics stay frozen (layers in eval mode) — batches of small data sets are too few and too
  small to re-estimate them;
* early stopping on validation, keeping the best state (the linear warm start counts as epoch 0, so
  fine-tuning can never end worse on validation than the linear model).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlearn.augment import train_transform
from tlearn.classifier import Classifier
from tlearn.config import TrainConfig
from tlearn.devices import autocast_dtype, resolve_device
from tlearn.head import cross_entropy
from tlearn.images import load_rgb
from tlearn.loader import default_workers
from tlearn.model_files import ModelConfig
from tlearn.progress import Progress
from tlearn.rundir import history_row


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


class _TrainImages(Dataset):
    """Augmented training images; decoded in DataLoader workers."""

    def __init__(self, files: LabelledFiles, transform, max_pixels: int) -> None:
        self.files, self.transform, self.max_pixels = files, transform, max_pixels

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        picture = load_rgb(self.files.paths[index], max_pixels=self.max_pixels)
        return self.transform(picture), int(self.files.labels[index])


def finetune(
    *,
    config: TrainConfig,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    splits: dict[str, LabelledFiles],
    class_weights: np.ndarray | None,
    progress: Progress,
) -> FinetuneOutcome:
    """Fine-tune the model described by `model_config`, starting from `initial_state`.

    Args:
        config: the run's configuration (epochs, learning rates, augmentation, device, seed...).
        model_config: architecture, classes and preprocessing of the model being trained.
        initial_state: backbone weights with the fitted linear head in the classifier slot.
        splits: "train", "val" and optionally "test" files with labels.
        class_weights: per-class loss weights for imbalanced data, or None.
        progress: status lines and bars.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = timm.create_model(model_config.arch, pretrained=False, num_classes=len(model_config.classes))
    model.load_state_dict({name: torch.from_numpy(np.array(value)) for name, value in initial_state.items()})
    evaluator = Classifier(model, model_config, device)  # shares `model`; evaluates with eval preprocessing
    groups = _layer_groups(model)
    optimizer = _optimizer(groups, config)
    loader = _train_loader(splits["train"], model_config, config, device)
    total_steps = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(total_steps, warmup_steps=round(config.warmup_epochs * len(loader)))
    )
    weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    precision = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)

    val_loss, val_accuracy, _ = _evaluate(evaluator, splits["val"], config, progress)
    history = [history_row(0, "linear head", None, None, val_loss, val_accuracy, 0.0, 0.0)]
    best = (val_accuracy, -val_loss)
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    progress.info(f"fine-tuning {len(groups)} layer groups for up to {config.epochs} epochs "
                  f"(start: val accuracy {val_accuracy:.3f}, loss {val_loss:.3f})")
    stale, images_seen, train_seconds = 0, 0, 0.0
    for epoch in range(1, config.epochs + 1):
        unfrozen = min(len(groups), 1 + math.ceil(epoch / config.unfreeze_every))
        _set_trainable(model, groups, unfrozen)
        started = time.perf_counter()
        train_loss, train_accuracy, seen = train_one_epoch(
            model, loader, optimizer, scheduler, loss_fn, device, precision, scaler, progress, epoch
        )
        seconds = time.perf_counter() - started
        images_seen, train_seconds = images_seen + seen, train_seconds + seconds
        val_loss, val_accuracy, _ = _evaluate(evaluator, splits["val"], config, progress)
        history.append(history_row(epoch, f"unfreeze {unfrozen}/{len(groups)}", train_loss, train_accuracy,
                                    val_loss, val_accuracy, optimizer.param_groups[-1]["lr"],
                                    time.perf_counter() - started))
        progress.info(f"epoch {epoch}/{config.epochs}: train loss {train_loss:.3f} acc {train_accuracy:.3f} | "
                      f"val loss {val_loss:.3f} acc {val_accuracy:.3f} | {seen / seconds:.1f} img/s")
        if (val_accuracy, -val_loss) > best:
            best, best_epoch, best_state, stale = (val_accuracy, -val_loss), epoch, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                progress.info(f"early stop: no validation improvement for {config.patience} epochs")
                break

    model.load_state_dict(best_state)
    probabilities = {
        split: _evaluate(evaluator, files, config, progress)[2] for split, files in splits.items() if split != "train"
    }
    return FinetuneOutcome(
        state={name: value.detach().cpu().numpy() for name, value in model.state_dict().items()},
        history=history,
        best_epoch=best_epoch,
        probabilities=probabilities,
        images_per_second=images_seen / train_seconds if train_seconds else 0.0,
    )


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    precision: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    epoch: int,
) -> tuple[float, float, int]:
    """One pass over the training data; returns mean loss, accuracy and the number of images seen."""
    total_loss, correct, seen = 0.0, 0, 0
    with progress.bar(total=len(loader.dataset), desc=f"epoch {epoch}") as bar:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
                logits = model(images)
                loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update(len(labels))
    return total_loss / max(seen, 1), correct / max(seen, 1), seen


def _evaluate(
    evaluator: Classifier, files: LabelledFiles, config: TrainConfig, progress: Progress
) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and probabilities on a split, with the evaluation preprocessing."""
    evaluator.model.eval()
    probabilities, failures = evaluator.predict_files_probabilities(
        files.paths, batch_size=config.batch_size, workers=config.workers, progress=progress
    )
    if failures:
        position, reason = next(iter(failures.items()))
        raise RuntimeError(f"{files.paths[position]}: became unreadable during training ({reason})")
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
                param_groups.append({"params": params, "lr": config.lr * scale,
                                     "weight_decay": config.weight_decay if decay else 0.0})
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


def _train_loader(files: LabelledFiles, model_config: ModelConfig, config: TrainConfig, device: torch.device):
    workers = config.workers if config.workers is not None else default_workers(accelerator=device.type == "cuda")
    dataset = _TrainImages(files, train_transform(model_config.preprocessing_spec(), augment=config.augment),
                           config.max_image_pixels)
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(
        dataset,
        batch_size=min(config.batch_size, len(dataset)),
        shuffle=True,
        drop_last=len(dataset) > config.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=generator,
    )

