"""Resumable runs: SIGTERM stops cleanly, SIGKILL mid-epoch loses nothing, resume continues the history."""

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

import tlearn
from helpers import PROJECT, make_class_folder
from tlearn.errors import RunDirError
from tlearn.util.atomic import leftover_temporaries

ENV = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tlearn", "train", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_epoch(run: Path, epoch: int, process: subprocess.Popen, timeout: float = 240) -> None:
    progress = run / "checkpoints" / "last" / "progress.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if json.loads(progress.read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    pytest.fail(f"no checkpoint for epoch {epoch} within {timeout} s")


def test_sigterm_then_sigkill_mid_epoch_then_resume(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 30, "blue": 30})
    run = tmp_path / "run"
    flags = ["--mode", "finetune", "--epochs", "4", "--patience", "10", "--batch-size", "4", "--workers", "0"]

    first = _start(data, "--out", run, *flags, "-q")
    _wait_for_epoch(run, 1, first)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "--resume" in err and err.strip().count("\n") == 0

    second = _start(data, "--out", run, "--resume", "-q")
    _wait_for_epoch(run, 2, second)
    time.sleep(1.0)  # well inside epoch 3
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)

    third = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlearn",
            "train",
            str(data),
            "--out",
            str(run),
            "--resume",
            "--epochs",
            "4",
            "-q",
        ],  # a setting given again must agree, and does
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert third.returncode == 0, third.stderr
    with open(run / "history.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1, 2, 3, 4]
    classifier = tlearn.load(run)
    assert classifier.config.mode == "finetune"
    assert not leftover_temporaries(run) and not (run / "checkpoints").exists()


def test_resume_refuses_disagreeing_settings(tiny_data, tmp_path):
    tlearn.train(tiny_data, out=tmp_path / "run", quiet=True)
    with pytest.raises(RunDirError, match="epochs=5 disagrees"):
        tlearn.train(tiny_data, out=tmp_path / "run", resume=True, quiet=True, epochs=5)
    with pytest.raises(RunDirError, match="no run to resume"):
        tlearn.train(tiny_data, out=tmp_path / "empty", resume=True, quiet=True)
    with pytest.raises(RunDirError, match="already complete"):
        tlearn.train(tiny_data, out=tmp_path / "run", resume=True, quiet=True, seed=0)
