"""The `tlearn` entry point: the app with every command group, and errors turned into exit codes."""

from __future__ import annotations

import gc
import os
import sys

import typer

from tlearn.cli import audit, deploy, evaluate, predict, tools, train  # noqa: F401 - each registers its commands
from tlearn.cli.app import app
from tlearn.errors import TlearnError
from tlearn.util.text import printable


def main(argv: list[str] | None = None) -> None:
    """Entry point of `tlearn` and `python -m tlearn`: runs the CLI and turns errors into exit codes.

    Typer handles usage errors itself (message and exit code 2); this adds one-line `TlearnError`s (exit 2)
    and one-line internal errors (exit 1), with tracebacks only under `--debug` or TLEARN_DEBUG=1.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TLEARN_DEBUG") == "1"
    try:
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
        print(
            f"error: internal error ({type(error).__name__}: {printable(str(error))}); rerun with --debug for the "
            "traceback",
            file=sys.stderr,
        )
        sys.exit(1)
