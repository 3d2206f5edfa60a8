"""`tlearn train`: its options are generated from `TrainConfig`'s fields, so help text, defaults and choices
live in one place (the config) and every field can be set from the command line."""

from __future__ import annotations

import subprocess
import sys
from enum import Enum
from typing import Any

import typer

from tlearn.cli.app import app
from tlearn.cli.train_options import COMMAND_OPTIONS, train_signature
from tlearn.config import parse_split
from tlearn.evaluation.tasks import headline
from tlearn.runs.layout import RunFolder


def _train(**values: Any) -> None:
    """Train a classifier on a folder of labelled images, evaluate it, and save it under --out."""
    command = {name: values.pop(name) for name in COMMAND_OPTIONS}
    if command["nproc"] > 1:
        _relaunch_with_torchrun(command["nproc"])
    from tlearn.api import train as train_run

    values = {name: value.value if isinstance(value, Enum) else value for name, value in values.items()}
    if values.get("split") is not None:
        values["split"] = parse_split(values["split"])
    run = train_run(
        values.pop("data"),
        out=command["out"],
        config=command["config"],
        overwrite=command["overwrite"],
        resume=command["resume"],
        quiet=command["quiet"],
        **values,
    )
    if run.rank != 0:  # under torchrun, rank 0 reports
        return
    for split_name, metrics in run.metrics.items():
        print(f"{split_name}: {headline(metrics)}")
    print(f"model: {run.model_path}")
    files = RunFolder(run.path)
    print(f"metrics: {files.metrics}  ({run.summary.seconds or 0:.1f} s)")
    print(f"report: {files.report}")


_train.__signature__ = train_signature()
_train.__annotations__ = {
    parameter.name: parameter.annotation for parameter in _train.__signature__.parameters.values()
}
app.command("train")(_train)


def _relaunch_with_torchrun(nproc: int) -> None:
    """`tlearn train --nproc N ...` is `torchrun --standalone --nproc_per_node N -m tlearn train ...`."""
    from tlearn.training.distributed import torchrun_command

    args = sys.argv[1:]
    for position, arg in enumerate(args):
        if arg == "--nproc":
            del args[position : position + 2]
            break
        if arg.startswith("--nproc="):
            del args[position]
            break
    raise typer.Exit(subprocess.run(torchrun_command(nproc, args)).returncode)
