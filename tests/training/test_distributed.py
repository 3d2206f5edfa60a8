"""Multi-process training through torchrun (gloo on CPU) trains the model one process would."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from helpers import PROJECT, TINY_BACKBONE, make_class_folder, tiny_backbone_weights
from tlearn.training.distributed import DistributedContext, unshard

ENV = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}


def test_shard_and_unshard_round_trip():
    items = list(range(11))
    parts = [DistributedContext(rank=rank, world_size=3).shard(items) for rank in range(3)]
    assert parts[1] == [1, 4, 7, 10] and unshard(parts, len(items)) == items


def _history(run) -> list[dict[str, str]]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_processes_train_one_model_like_one_process(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 20, "blue": 20})
    weights = tiny_backbone_weights(tmp_path)
    common = ["--backbone", TINY_BACKBONE, "--weights", str(weights), "--mode", "finetune", "--final-fit", "train"]
    common += ["--epochs", "3", "--workers", "0", "--seed", "7", "--lr", "3e-4", "-q"]
    # ImageNet's batch-norm statistics and the linear start: with batch statistics (the default, `--bn train`)
    # each rank normalises over its own 4 images, not the 8 of one process, so the two would drift apart.
    common += ["--bn", "frozen", "--head-init", "linear"]

    def train(out: str, *flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tlearn", "train", str(data), "--out", str(tmp_path / out), *common, *flags]
        return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)

    # Two ranks of 4 images per step make the same global batch of 8 as one process.
    distributed = train("ddp", "--nproc", "2", "--batch-size", "4")
    assert distributed.returncode == 0, distributed.stderr
    assert distributed.stdout.count("model: ") == 1  # only rank 0 reports
    single = train("one", "--batch-size", "8")
    assert single.returncode == 0, single.stderr
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "model").iterdir()) == ["config.json", "model.safetensors"]
    ddp_rows, single_rows = _history(tmp_path / "ddp"), _history(tmp_path / "one")
    # Epoch 0 (the linear head, the same computation on every rank) matches exactly; training afterwards sees
    # the same images per step in another order, so it lands close.
    assert (
        ddp_rows[0]["val_loss"] == single_rows[0]["val_loss"]
        and ddp_rows[0]["val_accuracy"] == single_rows[0]["val_accuracy"]
    )
    assert [row["epoch"] for row in ddp_rows] == [row["epoch"] for row in single_rows] == ["0", "1", "2", "3"]
    assert float(ddp_rows[-1]["val_loss"]) == pytest.approx(float(single_rows[-1]["val_loss"]), abs=0.05)
    ddp_val = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["val"]
    single_val = json.loads((tmp_path / "one" / "metrics.json").read_text())["val"]
    assert ddp_val["n"] == single_val["n"] and abs(ddp_val["accuracy"] - single_val["accuracy"]) <= 1 / ddp_val["n"]
