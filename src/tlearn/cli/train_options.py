"""`tlearn train`'s options: one per TrainConfig field (type, choices, help, default) plus the command's own,
grouped into the help's panels in the order a user meets them. `tlearn.cli.train` runs the command."""

from __future__ import annotations

import inspect
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic.fields import FieldInfo

from tlearn.cli.panels import COMPUTE, PANEL_OF, PANELS, RUN_FOLDER
from tlearn.config import TrainConfig

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


def _panel_rank(name: str) -> int:
    """Where a field's option goes in the help: `data` first, then the panels in `PANELS` order (Typer shows a
    panel where its first option appears)."""
    return -1 if name == "data" else list(PANELS).index(PANEL_OF[name])


def train_signature() -> inspect.Signature:
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
