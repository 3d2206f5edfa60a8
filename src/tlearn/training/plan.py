"""What a fine-tune will do, decided once from the configuration (imports torch for the device).

`FinetunePlan.from_config` reads `TrainConfig` once: how many epochs (raised on very small folders), how
patient early stopping is, which layer groups train in which epoch, the learning-rate schedule, the time budget
and the optimisation settings, with the device, precision and worker count resolved. Fine-tuning reads only
the plan, so a refit that repeats the validated run's epochs says so with `plan.fixed(epochs)` instead of
forging a configuration, and a test can check every decision without a model.

The plan is frozen; what changes while training (the epochs left after the time budget has been measured)
lives in the checkpointed `TrainingState`, updated by `fit_to_budget`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from tlearn.backbones.devices import autocast_dtype, resolve_device
from tlearn.config import DEFAULT_EPOCHS, TrainConfig
from tlearn.data.decoding import default_workers
from tlearn.errors import TlearnError
from tlearn.training.checkpoint import TrainingState
from tlearn.training.distributed import DistributedContext

MIN_STEPS = 60  # optimizer steps a fine-tune takes at least, however few the images (see `planned_epochs`)

# A network trained on random resized crops (area 25-100%, 62% on average) sees objects about 1.26x larger than
# in its training crop's picture, a centre crop (87.5%) only 1.14x: at test time it answers better on pictures
# about 1.1x its crop (Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019). Measured
# with `benchmarks/exp_test_resolution.py` on signs and mri, three splits each: tested at 240 instead of 224,
# +0.9 points of test accuracy on average, 9 runs of 12 better, 2 worse; the whole suite over three splits lost
# nothing (`results/suite-eval240.json`).
EVAL_SCALE = 15 / 14  # 224 → 240


@dataclass(frozen=True)
class FinetunePlan:
    """Everything fine-tuning decides before its first step.

    Example:
        >>> config = TrainConfig(data="photos", device="cpu", workers=0)
        >>> plan = FinetunePlan.from_config(config, DistributedContext(), train_images=40, input_size=224)
        >>> plan.steps_per_epoch, plan.epochs, plan.patience  # 40 images make one batch: 60 epochs, patience 20
        (1, 60, 20)
        >>> plan.train_size, plan.eval_size  # trained on 224-pixel crops, validated and served at 240
        (224, 240)
        >>> [plan.unfrozen_groups(7, epoch) for epoch in (1, 2, 6, 9)]  # one more layer group per epoch
        [2, 3, 7, 7]
        >>> plan.fixed(16).epochs, plan.fixed(16).patience
        (16, 17)

    Attributes:
        epochs: epochs to run (`planned_epochs`); a time budget may shorten them after the first epoch.
        patience: epochs without validation improvement before stopping early.
        budget_seconds: wall time the epochs may take (None: the planned epochs, however long they take).
        train_images: the training images the plan was made for.
        steps_per_epoch: optimizer steps per epoch on each rank.
        rank_batch_size: training images per step on each rank (`batch_size`, or all of a rank's share).
        drop_last: whether each epoch drops a rank's last, incomplete batch.
        batch_size: images per batch as configured (streamed evaluation and batch-norm adaptation use it).
        workers: image decoding processes, resolved once for the device.
        train_size: the side of the square training crops.
        eval_size: the side of the pictures the network is validated, tested and served at (`evaluation_size`).
    """

    epochs: int
    patience: int
    budget_seconds: float | None
    # the data
    train_images: int
    steps_per_epoch: int
    rank_batch_size: int
    drop_last: bool
    batch_size: int
    train_size: int
    eval_size: int
    augment: str
    max_image_pixels: int
    workers: int
    # the network: what trains when, and from where
    unfreeze_every: int
    unfreeze_depth: int | None
    bn: str
    head_init: str
    prune: float | None  # channel-prune the starting network to 1/prune of its compute (None: keep its widths)
    # the optimisation
    lr: float
    layer_decay: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    seed: int
    # the computation
    device: torch.device
    precision: torch.dtype | None
    compile: bool

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        dist: DistributedContext,
        *,
        train_images: int,
        input_size: int,
        budget_seconds: float | None = None,
    ) -> FinetunePlan:
        """The plan for fine-tuning on `train_images` images in this process of the job.

        Args:
            config: the run's settings; only this function reads them.
            dist: this process's place in a torchrun job (its GPU, and its share of the images per epoch).
            train_images: images in the training split the fine-tune learns from.
            input_size: the backbone's input size (the training crop unless `config.train_size` says otherwise).
            budget_seconds: wall time the epochs may take (None: no limit).

        Raises:
            TlearnError: the device or precision asked for is not available here.
        """
        device = resolve_device(config.device)
        if device.type == "cuda" and dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        # Each rank steps through its DistributedSampler share (all the images when alone) in batches of
        # `batch_size`, dropping an incomplete last batch unless the share is smaller than one batch.
        per_rank = math.ceil(train_images / dist.world_size)
        rank_batch_size = max(1, min(config.batch_size, per_rank))
        steps_per_epoch = max(1, per_rank // rank_batch_size)
        epochs = planned_epochs(config, steps_per_epoch)
        workers = config.workers if config.workers is not None else default_workers(accelerator=device.type == "cuda")
        train_size = config.train_size or input_size
        return cls(
            epochs=epochs,
            patience=stretched_patience(config, epochs),
            budget_seconds=budget_seconds,
            train_images=train_images,
            steps_per_epoch=steps_per_epoch,
            rank_batch_size=rank_batch_size,
            drop_last=per_rank > rank_batch_size,
            batch_size=config.batch_size,
            train_size=train_size,
            eval_size=config.eval_size or evaluation_size(train_size, config.augment),
            augment=config.augment,
            max_image_pixels=config.max_image_pixels,
            workers=workers,
            unfreeze_every=config.unfreeze_every,
            unfreeze_depth=config.unfreeze_depth,
            bn=config.bn,
            head_init=config.head_init,
            prune=config.prune,
            lr=config.lr,
            layer_decay=config.layer_decay,
            weight_decay=config.weight_decay,
            warmup_epochs=config.warmup_epochs,
            label_smoothing=config.label_smoothing,
            seed=config.seed,
            device=device,
            precision=_autocast(config.precision, device),
            compile=config.compile,
        )

    def fixed(self, epochs: int) -> FinetunePlan:
        """This plan run for exactly `epochs` epochs: no early stopping, no time budget.

        A refit on train + val repeats the epochs the validated run took; it has no validation to stop on and
        its share of the budget was already set aside when that run was planned.
        """
        return dataclasses.replace(self, epochs=epochs, patience=epochs + 1, budget_seconds=None)

    def unfrozen_groups(self, total: int, epoch: int) -> int:
        """Layer groups (of `total`, counted from the top; the classifier group is one) trained in `epoch`."""
        limit = min(total, self.unfreeze_depth or total)
        if self.unfreeze_every == 0:
            return limit
        return min(limit, 1 + math.ceil(epoch / self.unfreeze_every))

    def schedule(self) -> WarmupCosine:
        """The learning-rate factor per step over the planned epochs, warm-up included."""
        return WarmupCosine(self.epochs * self.steps_per_epoch, round(self.warmup_epochs * self.steps_per_epoch))

    def affordable_epochs(self, epoch_seconds: float, *, planned: int, done: int) -> int:
        """The epochs to run once one has been timed: as many as the budget allows, at most `planned`, at
        least the `done` ones (and one)."""
        if self.budget_seconds is None:
            return planned
        affordable = max(1, int(self.budget_seconds // max(epoch_seconds, 1e-3)))
        return max(done, affordable) if affordable < planned else planned


def planned_epochs(config: TrainConfig, steps_per_epoch: int) -> int:
    """The epochs to plan: `config.epochs` when set, else `DEFAULT_EPOCHS`, raised to make `MIN_STEPS` steps.

    Epochs measure passes over the data, but what a fine-tune needs is optimizer steps: 32 images make one
    batch, and 24 epochs of one batch are 24 steps, too few for a classifier that starts from zero to learn
    (pools, 40 images, answered 3/4 test houses after 12 steps and 4/4 from about 30). Folders of a few
    hundred images already make more than `MIN_STEPS` steps in `DEFAULT_EPOCHS` and keep them.

    Example:
        >>> auto, fixed = TrainConfig(data="photos"), TrainConfig(data="photos", epochs=3)
        >>> planned_epochs(auto, 1), planned_epochs(auto, 8), planned_epochs(fixed, 1)
        (60, 24, 3)
    """
    if config.epochs is not None:
        return config.epochs
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / max(1, steps_per_epoch)))


def stretched_patience(config: TrainConfig, planned: int) -> int:
    """Epochs without improvement before stopping, stretched as far as small data stretched the plan.

    Example:
        >>> stretched_patience(TrainConfig(data="photos", patience=8), 60)
        20
    """
    if config.epochs is not None:
        return config.patience
    return math.ceil(config.patience * max(1.0, planned / DEFAULT_EPOCHS))


class WarmupCosine:
    """Learning-rate factor per step: linear warm-up, then cosine decay to zero at `total_steps`.

    A plain object (not a closure) so LambdaLR keeps its fields in the checkpoint and a re-planned length
    survives a resume; it holds nothing else, for the same reason.

    Example:
        >>> schedule = WarmupCosine(total_steps=10, warmup_steps=2)
        >>> [round(schedule(step), 2) for step in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        done = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def fit_to_budget(
    plan: FinetunePlan, state: TrainingState, schedule: WarmupCosine, *, epoch: int, epoch_seconds: float
) -> str | None:
    """Re-plan once the first epoch has been timed: as many epochs as the budget allows (at most the plan).

    The schedule follows the shorter plan, so the cosine still ends at zero on the last epoch.

    Args:
        plan: the budget and steps per epoch.
        state: its `planned_epochs` is shortened in place.
        schedule: its `total_steps` follows `planned_epochs`.
        epoch: the epoch just finished; only the first one re-plans.
        epoch_seconds: what that epoch took, validation included.

    Returns:
        The line that tells the user about a shorter plan, or None when the plan stands.
    """
    if epoch != 1 or plan.budget_seconds is None:
        return None
    planned = state.planned_epochs
    epochs = plan.affordable_epochs(epoch_seconds, planned=planned, done=epoch)
    if epochs == planned:
        return None
    state.planned_epochs = epochs
    schedule.total_steps = epochs * plan.steps_per_epoch
    return f"time budget {plan.budget_seconds:.0f} s: {epochs} epochs of {epoch_seconds:.0f} s instead of {planned}"


def _autocast(choice: str, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 (or fp16) autocast on GPU, fp32 on CPU; explicit choices are honoured where possible."""
    if choice == "auto":
        return autocast_dtype(device)
    if choice == "fp32":
        return None
    if choice == "fp16" and device.type != "cuda":
        raise TlearnError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on CPU)")
    return torch.bfloat16 if choice == "bf16" else torch.float16


def evaluation_size(train_size: int, augment: str) -> int:
    """The input size a fine-tuned network is validated, tested and served at: its training crop x EVAL_SCALE
    (to a multiple of 8) when it trained on random resized crops, else the crop itself.

    Example:
        >>> evaluation_size(224, "basic"), evaluation_size(260, "trivial"), evaluation_size(224, "none")
        (240, 280, 224)
    """
    if augment == "none":  # random crops at the evaluation scale: objects look as large as at test time
        return train_size
    return 8 * round(train_size * EVAL_SCALE / 8)
