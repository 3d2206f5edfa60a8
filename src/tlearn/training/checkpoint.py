"""Fine-tuning checkpoints: everything needed to continue a run exactly where it stopped (imports torch).

A stage's checkpoint folder (`RUN/checkpoints/<stage>/`) holds the model and best-so-far weights as
safetensors, the optimizer, scheduler, grad-scaler and RNG states plus the history in `state.pt`, which is
read back with `weights_only=True` (plain containers of tensors and numbers — nothing that could run code),
and the epoch in `progress.json` for people.
The directory is replaced atomically, so a crash at any moment leaves the previous complete checkpoint or the
new one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tlearn.errors import RunDirError
from tlearn.util.atomic import replace_directory


@dataclass
class TrainingState:
    """Plain data of a fine-tuning run between epochs."""

    epoch: int  # last completed epoch (0: only the starting model)
    planned_epochs: int  # the plan, possibly shortened by the time budget after the first epoch
    history: list[dict[str, Any]]
    best_score: tuple[float, float]  # (val accuracy, -val loss)
    best_epoch: int
    stale_epochs: int
    images_seen: int
    train_seconds: float


def save_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainingState,
) -> Path:
    """Write the checkpoint folder atomically; returns its path."""
    with replace_directory(folder) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, staging / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in best_state.items()}, staging / "best.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "state": {**state.__dict__, "best_score": list(state.best_score)},
            },
            staging / "state.pt",
        )
        (staging / "progress.json").write_text(json.dumps({"epoch": state.epoch, "best_epoch": state.best_epoch}))
    return folder


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back; apply `optimizer`/`scheduler`/`scaler` to fresh objects, then `restore_rng()`."""

    model_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    state: TrainingState

    def restore_rng(self) -> None:
        """Put Python's, NumPy's and torch's random generators back where they were."""
        version, internal, gauss = self.rng["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, position, has_gauss, cached = self.rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(self.rng["torch"])
        if torch.cuda.is_available() and self.rng["cuda"]:
            torch.cuda.set_rng_state_all(self.rng["cuda"])


def has_checkpoint(folder: Path) -> bool:
    """Whether a complete checkpoint exists in `folder` (it only appears once fully written)."""
    return (folder / "state.pt").is_file()


def load_checkpoint(folder: Path) -> LoadedCheckpoint:
    """Read the last checkpoint without unpickling objects.

    Raises:
        RunDirError: no checkpoint, or it cannot be read.
    """
    if not has_checkpoint(folder):
        raise RunDirError(f"{folder}: no checkpoint to resume from")
    try:
        payload = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        model_state = load_file(folder / "model.safetensors")
        best_state = load_file(folder / "best.safetensors")
    except Exception as error:
        raise RunDirError(f"{folder}: checkpoint unreadable ({type(error).__name__}); start the run again") from None
    values = dict(payload["state"])
    values["best_score"] = tuple(values["best_score"])
    return LoadedCheckpoint(
        model_state,
        best_state,
        payload["optimizer"],
        payload["scheduler"],
        payload["scaler"],
        payload["rng"],
        TrainingState(**values),
    )


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
