"""Multi-process training through torchrun (gloo on CPU) trains the model one process would."""

from __future__ import annotations

import csv
import json
import os
import socket
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


@pytest.fixture(scope="module")
def ddp_setup(tmp_path_factory):
    """The data, the flags both sides share, and the run of one process they are compared with."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_class_folder(root / "data", {"red": 20, "blue": 20})
    weights = tiny_backbone_weights(root)
    common = ["--backbone", TINY_BACKBONE, "--weights", str(weights), "--mode", "finetune", "--final-fit", "train"]
    common += ["--epochs", "3", "--workers", "0", "--seed", "7", "--lr", "3e-4", "-q"]
    # ImageNet's batch-norm statistics and the linear start: with batch statistics (the default, `--bn train`)
    # each rank normalises over its own 4 images, not the 8 of one process, so the two would drift apart.
    common += ["--bn", "frozen", "--head-init", "linear"]
    train = [sys.executable, "-m", "tlearn", "train", str(data)]
    single = subprocess.run(
        [*train, "--out", str(root / "one"), *common, "--batch-size", "8"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert single.returncode == 0, single.stderr
    return root, train, common


def _same_model_as_one_process(root, run: str) -> None:
    assert json.loads((root / run / "run.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (root / run / "model").iterdir()) == ["config.json", "model.safetensors"]
    ddp_rows, single_rows = _history(root / run), _history(root / "one")
    # Epoch 0 (the linear head, the same computation on every rank) matches exactly; training afterwards sees
    # the same images per step in another order, so it lands close.
    assert (
        ddp_rows[0]["val_loss"] == single_rows[0]["val_loss"]
        and ddp_rows[0]["val_accuracy"] == single_rows[0]["val_accuracy"]
    )
    assert [row["epoch"] for row in ddp_rows] == [row["epoch"] for row in single_rows] == ["0", "1", "2", "3"]
    assert float(ddp_rows[-1]["val_loss"]) == pytest.approx(float(single_rows[-1]["val_loss"]), abs=0.05)
    ddp_val = json.loads((root / run / "metrics.json").read_text())["val"]
    single_val = json.loads((root / "one" / "metrics.json").read_text())["val"]
    assert ddp_val["n"] == single_val["n"] and abs(ddp_val["accuracy"] - single_val["accuracy"]) <= 1 / ddp_val["n"]


def test_two_processes_train_one_model_like_one_process(ddp_setup):
    root, train, common = ddp_setup
    # Two ranks of 4 images per step make the same global batch of 8 as one process.
    distributed = subprocess.run(
        [*train, "--out", str(root / "ddp"), *common, "--nproc", "2", "--batch-size", "4"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert distributed.returncode == 0, distributed.stderr
    assert distributed.stdout.count("model: ") == 1  # only rank 0 reports
    _same_model_as_one_process(root, "ddp")


def test_two_nodes_on_localhost_train_one_model_like_one_process(ddp_setup):
    """Two torchrun launchers, as on two machines (`--nnodes 2`, node ranks 0 and 1), meeting at a rendezvous
    on 127.0.0.1: the multi-node launch the README documents, with one process per node."""
    root, train, common = ddp_setup
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "tlearn",
                "train",
                *train[4:],
                "--out",
                str(root / "nodes"),
                *common,
                "--batch-size",
                "4",
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=900) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], [err[-2000:] for _, err in outputs]
    assert outputs[0][0].count("model: ") == 1 and "model: " not in outputs[1][0]  # only global rank 0 reports
    _same_model_as_one_process(root, "nodes")
