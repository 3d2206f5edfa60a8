"""The objects a fine-tune works with, built from its plan: the network and its layer groups, the optimizer and
learning-rate schedule, the training loader and the evaluation images (imports torch).

The layer groups are timm's coarse grouping (stem → stages → head); they unfreeze from the top, and each
group's learning rate falls by `layer_decay` per group below the top, so the features ImageNet taught the
bottom layers move least. AdamW does not decay biases and norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import timm
import torch
from timm.models import group_parameters
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tlearn.backbones.pruning import PruneOutcome, prune_channels
from tlearn.data.checks import LabelledFiles
from tlearn.data.decoding import BatchDecoder
from tlearn.engines.torch_engine import Classifier
from tlearn.evaluation.tasks import Task
from tlearn.runs.model_dir import ModelConfig
from tlearn.training.distributed import DistributedContext
from tlearn.training.eval_images import EvalImages
from tlearn.training.plan import FinetunePlan, WarmupCosine
from tlearn.training.train_images import STORE_SCALE, StoredFit, TrainImages, train_transform

LayerGroups = list[list[tuple[str, nn.Parameter]]]  # bottom group first: (name, parameter) pairs


@dataclass
class FinetuneSetup:
    """Everything the epochs work with."""

    model: nn.Module
    evaluator: Classifier  # shares `model`; evaluates with the evaluation preprocessing
    groups: LayerGroups
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: DataLoader
    loss_fn: nn.Module
    evaluation: dict[str, EvalImages]  # every split but "train"
    task: Task
    pruned: PruneOutcome | None = None  # how much compute channel pruning left (None: not pruned)


def build_setup(
    plan: FinetunePlan,
    model_config: ModelConfig,
    initial_state: dict[str, np.ndarray],
    splits: dict[str, LabelledFiles],
    class_weights: np.ndarray | None,
    dist: DistributedContext,
) -> FinetuneSetup:
    """The network loaded with `initial_state` (its classifier zeroed with `head_init="zero"`) and what trains
    and evaluates it; the training and evaluation images are decoded here, once."""
    device = plan.device
    model = timm.create_model(model_config.arch, pretrained=False, num_classes=len(model_config.classes))
    state = {name: torch.from_numpy(np.array(value)) for name, value in initial_state.items()}
    if plan.head_init == "zero":
        for key in model_config.classifier_keys:
            state[key] = torch.zeros_like(state[key])
    model.load_state_dict(state)
    # pruned from the starting weights, the same way every time: a resumed stage finds the checkpoint's widths
    pruned = prune_channels(model, plan.prune, plan.train_size) if plan.prune else None
    evaluator = Classifier(model, model_config, device)
    groups = layer_groups(model)
    optimizer = build_optimizer(groups, plan)
    loader = train_loader(train_images(splits["train"], model_config, plan), plan, dist)
    schedule = plan.schedule()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    weights = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None
    evaluation = {
        split: EvalImages(files, evaluator, workers=plan.workers, batch_size=plan.batch_size)
        for split, files in splits.items()
        if split != "train"
    }
    return FinetuneSetup(
        model,
        evaluator,
        groups,
        optimizer,
        schedule,
        scheduler,
        torch.amp.GradScaler(device.type, enabled=plan.precision == torch.float16),
        loader,
        model_config.task_type.torch_loss(nn, weights, plan.label_smoothing),
        evaluation,
        model_config.task_type,
        pruned,
    )


def layer_groups(model: nn.Module) -> LayerGroups:
    """timm's coarse parameter groups (stem → stages → head), bottom first."""
    parameters = dict(model.named_parameters())
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    return [[(name, parameters[name]) for name in names] for _, names in sorted(grouped.items())]


def build_optimizer(groups: LayerGroups, plan: FinetunePlan) -> torch.optim.AdamW:
    """AdamW with a learning rate per layer group (decaying downwards) and no decay on 1-D parameters."""
    param_groups = []
    for depth, group in enumerate(groups):
        scale = plan.layer_decay ** (len(groups) - 1 - depth)
        for decay in (True, False):
            params = [param for _, param in group if (param.ndim > 1) == decay]
            if params:
                param_groups.append(
                    {"params": params, "lr": plan.lr * scale, "weight_decay": plan.weight_decay if decay else 0.0}
                )
    return torch.optim.AdamW(param_groups, lr=plan.lr)


def set_trainable(model: nn.Module, groups: LayerGroups, unfrozen: int, *, bn: str) -> None:
    """Train the top `unfrozen` groups; batch norm uses batch statistics only with bn="train"."""
    for depth, group in enumerate(groups):
        for _, param in group:
            param.requires_grad_(depth >= len(groups) - unfrozen)
    model.train()
    if bn != "train":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def wrap_for_training(model: nn.Module, plan: FinetunePlan, dist: DistributedContext) -> nn.Module:
    """DDP wrapper (to rebuild when the set of trainable parameters changes) and optional torch.compile."""
    trainer = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device = plan.device
        trainer = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(trainer) if plan.compile else trainer


def adapt_batch_norm(model: nn.Module, files: LabelledFiles, model_config: ModelConfig, plan: FinetunePlan) -> None:
    """Re-estimate every batch norm's running statistics on the training images (AdaBN), no gradients."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [module.momentum for module in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over every batch
    preprocessing = model_config.preprocessing_spec()
    mean = torch.tensor(preprocessing.mean, device=plan.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=plan.device).view(1, 3, 1, 1)
    model.train()
    with (
        torch.no_grad(),
        BatchDecoder(files.paths, preprocessing, batch_size=plan.batch_size, workers=plan.workers) as batches,
    ):
        for batch in batches:
            if len(batch.positions):
                pixels = torch.from_numpy(batch.pixels).to(plan.device).permute(0, 3, 1, 2).float().div_(255.0)
                model(((pixels - mean) / std).contiguous(memory_format=torch.channels_last))
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum


def train_images(files: LabelledFiles, model_config: ModelConfig, plan: FinetunePlan) -> TrainImages:
    """The training images decoded once (by `plan.workers` processes), augmented per the plan each epoch."""
    preprocessing = model_config.preprocessing_spec()
    size = plan.train_size
    return TrainImages(
        files.paths,
        files.labels,
        train_transform(preprocessing, size=size, augment=plan.augment),
        shorter_side=math.ceil(size * STORE_SCALE),
        workers=plan.workers,
        max_pixels=plan.max_image_pixels,
        fit=StoredFit.of(preprocessing),
    )


def train_loader(dataset: Dataset, plan: FinetunePlan, dist: DistributedContext) -> DataLoader:
    """Batches of this rank's share of `dataset`, `plan.steps_per_epoch` of them per epoch.

    Example:
        >>> from tlearn.config import TrainConfig
        >>> config, alone = TrainConfig(data="photos", device="cpu", workers=0, batch_size=8), DistributedContext()
        >>> plan = FinetunePlan.from_config(config, alone, train_images=20, input_size=224)
        >>> len(train_loader(list(range(20)), plan, alone)), plan.steps_per_epoch  # the last 4 images dropped
        (2, 2)
    """
    # The images are already decoded; a loader worker only crops and flips. On a CPU that is cheaper in this
    # process than in a worker competing with the model for the same cores (and forked again every epoch):
    # 2.2x faster on pools' 32 images, 8% on signs' 254 (2 cores).
    loaders = plan.workers if plan.device.type == "cuda" else 0
    sampler = (
        DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=plan.seed)
        if dist.enabled
        else None
    )
    return DataLoader(
        dataset,
        batch_size=plan.rank_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=plan.drop_last,
        num_workers=loaders,
        pin_memory=plan.device.type == "cuda",
        generator=torch.Generator(),
    )


def reseed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Shuffling and augmentation depend only on (seed, epoch), so a resumed run replays the same epochs."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 1000 + epoch)
