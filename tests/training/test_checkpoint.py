"""Resumable runs: SIGTERM stops cleanly, SIGKILL mid-epoch loses nothing, resume continues exactly where the
checkpoint left off (same result as an uninterrupted run), and refuses changed settings or data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tlearn
from helpers import PROJECT, TINY_BACKBONE, make_class_folder, tiny_backbone_weights
from tlearn.errors import RunDirError
from tlearn.runs.summary import read_run_summary
from tlearn.training.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from tlearn.training.plan import WarmupCosine
from tlearn.util.atomic import leftover_temporaries

ENV = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}


def _tlearn(*args) -> list[str]:
    return [sys.executable, "-m", "tlearn", "train", *map(str, args)]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(_tlearn(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_epoch(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoints" / "select" / "progress.json").read_text())["epoch"]
    except (OSError, ValueError):
        return None


def _wait_for_epoch(run: Path, epoch: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for the event (a checkpoint of `epoch` on disk), never for a fixed time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (_checkpoint_epoch(run) or 0) >= epoch:
            return
        time.sleep(0.05)
    pytest.fail(f"no checkpoint for epoch {epoch} within {timeout} s")


def test_sigterm_then_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 24, "blue": 24})
    weights = tiny_backbone_weights(tmp_path)
    run, reference = tmp_path / "run", tmp_path / "reference"
    flags = ["--backbone", TINY_BACKBONE, "--weights", weights, "--mode", "finetune", "--final-fit", "train"]
    flags += ["--epochs", "4", "--patience", "10", "--batch-size", "4", "--workers", "0", "--seed", "3", "-q"]

    first = _start(data, "--out", run, *flags)
    _wait_for_epoch(run, 1, first)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "--resume" in err and err.strip().count("\n") == 0

    second = _start(data, "--out", run, "--resume", "-q")
    _wait_for_epoch(run, 2, second)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    killed_at = _checkpoint_epoch(run)
    assert killed_at in (2, 3)

    # Refusals through the CLI, in this very state: a disagreeing setting, then changed data.
    disagreeing = subprocess.run(
        _tlearn(data, "--out", run, "--resume", "--epochs", "5", "-q"), env=ENV, capture_output=True, text=True
    )
    assert disagreeing.returncode == 2 and "epochs=5 disagrees" in disagreeing.stderr
    extra = make_class_folder(data, {"blue": 1}, start=500) / "blue" / "img_500.png"
    changed = subprocess.run(_tlearn(data, "--out", run, "--resume", "-q"), env=ENV, capture_output=True, text=True)
    assert changed.returncode == 2 and "cannot resume" in changed.stderr and "changed" in changed.stderr
    assert changed.stderr.strip().count("\n") == 0
    extra.unlink()

    third = subprocess.run(
        _tlearn(data, "--out", run, "--resume", "--epochs", "4", "-q"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert third.returncode == 0, third.stderr
    summary = read_run_summary(run / "run.json")
    assert summary.finetune.resumed_after_epoch == killed_at  # it says where it went on from
    with open(run / "history.csv") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [0, 1, 2, 3, 4]

    uninterrupted = subprocess.run(
        _tlearn(data, "--out", reference, *flags), env=ENV, capture_output=True, text=True, timeout=600
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed_val = json.loads((run / "metrics.json").read_text())["val"]
    reference_val = json.loads((reference / "metrics.json").read_text())["val"]
    assert resumed_val["loss"] == pytest.approx(reference_val["loss"], abs=1e-5)  # the same training, replayed
    assert resumed_val["confusion_matrix"] == reference_val["confusion_matrix"]
    assert tlearn.load(run).config.mode == "finetune"
    assert not leftover_temporaries(run) and not (run / "checkpoints").exists()


def test_resume_refuses_disagreeing_settings(tiny_data, tmp_path):
    tlearn.train(tiny_data, out=tmp_path / "run", quiet=True)
    with pytest.raises(RunDirError, match="epochs=5 disagrees"):
        tlearn.train(tiny_data, out=tmp_path / "run", resume=True, quiet=True, epochs=5)
    with pytest.raises(RunDirError, match="no run to resume"):
        tlearn.train(tiny_data, out=tmp_path / "empty", resume=True, quiet=True)
    with pytest.raises(RunDirError, match="already complete"):
        tlearn.train(tiny_data, out=tmp_path / "run", resume=True, quiet=True, seed=0)


def test_a_checkpoint_keeps_the_time_budgets_shorter_schedule(tmp_path):
    """The schedule's length lives in the scheduler's state: a resumed run ends its cosine where the re-plan put it."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = WarmupCosine(total_steps=120, warmup_steps=10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    schedule.total_steps = 30  # the time budget re-planned 3 epochs instead of 12
    state = TrainingState(1, 3, [{"epoch": 0}], (0.5, -0.7), 1, 0, 8, 1.5)
    save_checkpoint(
        tmp_path / "select",
        model_state=model.state_dict(),
        best_state=model.state_dict(),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=state,
    )
    loaded = load_checkpoint(tmp_path / "select")
    fresh = WarmupCosine(total_steps=120, warmup_steps=10)  # what a resumed run plans before reading it back
    torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW(model.parameters(), lr=1e-3), fresh).load_state_dict(
        loaded.scheduler
    )
    assert (fresh.total_steps, fresh.warmup_steps) == (30, 10) and loaded.state == state
