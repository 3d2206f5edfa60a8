"""The Typer app every command module registers on, and the options several commands share."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tlearn import __version__

app = typer.Typer(
    name="tlearn",
    help="Transfer learning for image classification: train, evaluate, predict from a folder of labelled images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Engine(str, Enum):
    torch = "torch"
    onnx = "onnx"


DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
WorkersOption = Annotated[int | None, typer.Option("--workers", min=0, help="Image decoding processes.")]
ModelArgument = Annotated[Path, typer.Argument(help="Model directory (or run directory holding model/) or .onnx file.")]
EngineOption = Annotated[Engine | None, typer.Option("--engine", help="torch or onnx (default: by file type).")]


def _version(value: bool) -> None:
    if value:
        print(f"tlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Global options (handled in `tlearn.cli.main`)."""
