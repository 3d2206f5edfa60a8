"""Multi-process training through torchrun (gloo on CPU) matches the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import PROJECT, make_class_folder
from tlearn.training.distributed import DistributedContext, unshard

ENV = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}


def test_shard_and_unshard_round_trip():
    items = list(range(11))
    parts = [DistributedContext(rank=rank, world_size=3).shard(items) for rank in range(3)]
    assert parts[1] == [1, 4, 7, 10] and unshard(parts, len(items)) == items


def test_two_processes_train_one_model_like_one_process(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 20, "blue": 20})
    flags = ["--mode", "finetune", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--seed", "7", "-q"]
    distributed = subprocess.run(
        [sys.executable, "-m", "tlearn", "train", str(data), "--out", str(tmp_path / "ddp"), "--nproc", "2", *flags],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert distributed.returncode == 0, distributed.stderr
    assert distributed.stdout.count("model: ") == 1  # only rank 0 reports
    single = subprocess.run(
        [sys.executable, "-m", "tlearn", "train", str(data), "--out", str(tmp_path / "one"), *flags],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    ddp_run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert ddp_run["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "model").iterdir()) == ["config.json", "model.safetensors"]
    ddp_accuracy = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["val"]["accuracy"]
    single_accuracy = json.loads((tmp_path / "one" / "metrics.json").read_text())["val"]["accuracy"]
    assert abs(ddp_accuracy - single_accuracy) <= 0.15
