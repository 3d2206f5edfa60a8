"""The `tlearn` command line: one module per command group over one Typer app (`app`). Each command parses
options, calls one `tlearn.api` function and prints; errors a user can fix are one line and exit code 2."""

from tlearn.cli.main import main

__all__ = ["main"]
