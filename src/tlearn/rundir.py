"""The run directory: what a training run writes, and the rule that two runs never share one by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

from tlearn.errors import RunDirError

# Everything a run may write; `--overwrite` removes exactly these and leaves anything else alone.
RUN_OUTPUTS = (
    "model",
    "metrics.json",
    "history.csv",
    "data_report.json",
    "splits.json",
    "predictions.csv",
    "config.yaml",
    "run.json",
    "report.html",
    "figures",
    "checkpoints",
    "tb",
)

HISTORY_COLUMNS = [
    "epoch",
    "stage",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_second",
]


def history_row(
    epoch: int,
    stage: str,
    train_loss: float | None,
    train_accuracy: float | None,
    val_loss: float,
    val_accuracy: float,
    lr: float | None,
    seconds: float,
    images_per_second: float | None = None,
) -> dict:
    """One row of `history.csv` (None leaves a cell empty, e.g. no learning rate for the closed-form head)."""
    return {
        "epoch": epoch,
        "stage": stage,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "lr": lr,
        "seconds": round(seconds, 3),
        "images_per_second": None if images_per_second is None else round(images_per_second, 2),
    }


def prepare_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory, refusing one that already holds files unless `overwrite` or `resume`.

    With `overwrite`, only a previous run's outputs (RUN_OUTPUTS) are removed — never other files, in case
    `--out` points somewhere unexpected. With `resume`, the directory must hold a run's `config.yaml`.

    Raises:
        RunDirError: the directory is not empty and neither flag is given, or it is a file, or there is
            nothing to resume.
    """
    run_dir = Path(path).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is not a directory")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"{run_dir}: no run to resume (config.yaml not found)")
        return run_dir
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{run_dir}: already holds files (a previous run?); pass --overwrite to replace its outputs "
                "or choose another --out"
            )
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
