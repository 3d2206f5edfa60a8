"""`tlearn train`: its options are generated from `TrainConfig`'s fields, so help text, defaults and choices
live in one place (the config) and every field can be set from the command line."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic.fields import FieldInfo

from tlearn.cli.app import app
from tlearn.config import TrainConfig, parse_split
from tlearn.evaluation.tasks import headline
from tlearn.runs.layout import RunFolder

# The help's panels, in the order a user meets the options; every TrainConfig field but `data` is in one
# (a test checks it), and the command's own options (`COMMAND_OPTIONS`) name theirs.
PANELS: dict[str, tuple[str, ...]] = {
    "Data": ("split", "follow_links", "review", "label_sep", "task", "crop", "max_image_pixels"),
    "Backbone and choices": ("backbone", "weights", "mode", "final_fit", "time_budget", "cv_folds"),
    "Answers": ("calibrate", "reject", "target_accuracy", "target_coverage"),
    "Fine-tuning": (
        "epochs",
        "batch_size",
        "lr",
        "layer_decay",
        "unfreeze_every",
        "unfreeze_depth",
        "bn",
        "head_init",
        "train_size",
        "weight_decay",
        "label_smoothing",
        "warmup_epochs",
        "patience",
        "augment",
        "balance",
        "seed",
    ),
    "Compute": ("device", "embedding_engine", "precision", "compile", "workers"),
    "Run folder and tracking": ("mlflow",),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}
RUN_FOLDER, COMPUTE = "Run folder and tracking", "Compute"

# Options of the command itself, not of the configuration.
COMMAND_OPTIONS: dict[str, tuple[Any, Any]] = {
    "out": (
        Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="Run directory (default runs/<data>-<mode>-<time>).", rich_help_panel=RUN_FOLDER
            ),
        ],
        None,
    ),
    "config": (
        Annotated[
            Path | None,
            typer.Option("--config", help="YAML/JSON settings; flags override them.", rich_help_panel=RUN_FOLDER),
        ],
        None,
    ),
    "overwrite": (
        Annotated[
            bool,
            typer.Option(
                help="Replace a previous run in --out (once the new run has succeeded).", rich_help_panel=RUN_FOLDER
            ),
        ],
        False,
    ),
    "resume": (
        Annotated[
            bool,
            typer.Option(help="Continue the interrupted run in --out (same settings).", rich_help_panel=RUN_FOLDER),
        ],
        False,
    ),
    "nproc": (
        Annotated[
            int,
            typer.Option(
                min=1, help="Processes (e.g. GPUs) to train with; launches torchrun.", rich_help_panel=COMPUTE
            ),
        ],
        1,
    ),
    "quiet": (
        Annotated[
            bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.", rich_help_panel=RUN_FOLDER)
        ],
        False,
    ),
}


def config_option(name: str, field: FieldInfo) -> Any:
    """The Typer annotation of one TrainConfig field: `--name`, its type or choices, its help and default."""
    flag = "--" + name.replace("_", "-")
    described = "default:" in (field.description or "")
    help_text = (
        field.description if described else f"{field.description or ''} [default: {_shown_default(field.default)}]"
    )
    annotation = field.annotation
    inner = _without_none(annotation)
    panel = PANEL_OF.get(name)
    if name == "data":
        return Annotated[Path | None, typer.Argument(help=field.description, show_default=False)]
    if typing.get_origin(inner) is typing.Literal:
        choices = Enum(f"{name}_choices", {str(choice): str(choice) for choice in typing.get_args(inner)}, type=str)
        return Annotated[choices | None, typer.Option(flag, help=help_text, rich_help_panel=panel)]
    if inner is bool:
        return Annotated[bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, rich_help_panel=panel)]
    if (field.json_schema_extra or {}).get("cli_type") == "str":
        return Annotated[str | None, typer.Option(flag, help=help_text, rich_help_panel=panel)]
    if inner in (int, float, str, Path):
        return Annotated[inner | None, typer.Option(flag, help=help_text, rich_help_panel=panel)]
    # Tuples (the split) and anything else are given as text and parsed by the config.
    return Annotated[str | None, typer.Option(flag, help=help_text, rich_help_panel=panel)]


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _shown_default(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{part:g}" for part in value)
    return "none" if value is None else str(value)


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


def _panel_rank(name: str) -> int:
    """Where a field's option goes in the help: `data` first, then the panels in `PANELS` order (Typer shows a
    panel where its first option appears)."""
    return -1 if name == "data" else list(PANELS).index(PANEL_OF[name])


def _signature() -> inspect.Signature:
    """`_train`'s parameters: the data argument, every other TrainConfig field, then the command's options."""
    fields = TrainConfig.model_fields
    parameters = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=config_option(name, field), default=None)
        for name, field in sorted(fields.items(), key=lambda item: _panel_rank(item[0]))
    ]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, (annotation, default) in COMMAND_OPTIONS.items()
    ]
    return inspect.Signature(parameters)


_train.__signature__ = _signature()
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
