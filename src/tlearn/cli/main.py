"""The `tlearn` entry point: the app with every command group, and errors turned into exit codes."""

from __future__ import annotations

import errno
import gc
import os
import sys

import typer

from tlearn.cli import audit, deploy, evaluate, hub, predict, tools, train  # noqa: F401 - each registers its commands
from tlearn.cli.app import app
from tlearn.errors import TlearnError
from tlearn.util.text import printable
from tlearn.util.wording import cli_spoken

# `tlearn --help` lists the commands in the order a user meets them (Typer lists them as registered).
COMMAND_ORDER = (
    "demo",
    "train",
    "evaluate",
    "predict",
    "export",
    "serve",
    "push",
    "compare",
    "audit",
    "select",
    "backbones",
)


def _command_rank(info: typer.models.CommandInfo) -> int:
    name = info.name or info.callback.__name__
    return COMMAND_ORDER.index(name) if name in COMMAND_ORDER else len(COMMAND_ORDER)


app.registered_commands.sort(key=_command_rank)
_FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk or an exhausted quota: the user's to fix, not a tlearn bug


def main(argv: list[str] | None = None) -> None:
    """Entry point of `tlearn` and `python -m tlearn`: runs the CLI and turns errors into exit codes.

    Typer handles usage errors itself (message and exit code 2); this adds one-line `TlearnError`s (exit 2)
    and one-line internal errors (exit 1), with tracebacks only under `--debug` or TLEARN_DEBUG=1.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TLEARN_DEBUG") == "1"
    # Rich formatting for help only: it groups the options into panels, but it also draws a usage error as a
    # three-line box, and errors are one line here.
    app.rich_markup_mode = "rich" if not args or "--help" in args else None
    try:
        with cli_spoken():  # refusals name options as the command line spells them
            typer.main.get_command(app).main(args=args, prog_name="tlearn", standalone_mode=True)
    except SystemExit:
        # The work is done and written; skip the interpreter's final garbage collection of the torch/timm
        # object graph, which otherwise adds about a second to every command's exit.
        gc.freeze()
        raise
    except TlearnError as error:
        if debug:
            raise
        print(f"error: {printable(str(error))}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        if debug:
            raise
        print(f"error: {_unforeseen(error)}", file=sys.stderr)
        sys.exit(1)


def _unforeseen(error: Exception) -> str:
    """The line for an error that is not a `TlearnError`: a full disk is the user's to fix and said so plainly;
    anything else is an internal error (the traceback under --debug).

    Example:
        >>> _unforeseen(OSError(errno.ENOSPC, "No space left on device", "runs/a/model.safetensors"))
        'No space left on device while writing runs/a/model.safetensors; free some space or write elsewhere'
    """
    if isinstance(error, OSError) and error.errno in _FULL:
        where = f" while writing {printable(str(error.filename))}" if error.filename else ""
        return f"{os.strerror(error.errno)}{where}; free some space or write elsewhere"
    return f"internal error ({type(error).__name__}: {printable(str(error))}); rerun with --debug for the traceback"
