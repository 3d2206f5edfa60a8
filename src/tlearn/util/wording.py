"""Errors in the words of the interface that was used: `--overwrite` on the command line, `overwrite=True` in
Python.

A refusal that tells the user what to do names an option. The same check serves `tlearn train ... --overwrite`
and `tlearn.train(..., overwrite=True)`, so the message asks `option("overwrite")` and gets the spelling of the
interface in use: the CLI's entry point marks its calls (`cli_spoken`), everything else is the Python API.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_FROM_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("tlearn_from_cli", default=False)


@contextmanager
def cli_spoken() -> Iterator[None]:
    """Within this block, messages name options as the command line spells them."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)


def option(name: str, value: str = "True") -> str:
    """How the user sets option `name`: `--name` on the command line, `name=value` in Python.

    Example:
        >>> option("overwrite"), option("out", "...")
        ('overwrite=True', 'out=...')
        >>> with cli_spoken():
        ...     option("overwrite"), option("out", "...")
        ('--overwrite', '--out')
    """
    if _FROM_CLI.get():
        return "--" + name.replace("_", "-")
    return f"{name}={value}"
