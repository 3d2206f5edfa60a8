"""Progress bars and status lines, the same in a terminal and a notebook, silenced by `quiet`.

One `Progress` is created per command (from the `quiet` setting) and passed down explicitly, so library
code never prints on its own initiative and the CLI's `--quiet` silences everything but the results.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm.auto import tqdm


class Progress:
    """Status lines and progress bars for one command.

    Example:
        >>> progress = Progress(quiet=True)
        >>> with progress.bar(total=3, desc="work") as bar:
        ...     bar.update(3)
    """

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream

    def info(self, message: str) -> None:
        """One status line (to stderr, so stdout stays machine-readable)."""
        if not self.quiet:
            print(message, file=self.stream or sys.stderr, flush=True)

    @contextmanager
    def bar(self, *, total: int, desc: str, unit: str = "img") -> Iterator[Any]:
        """A progress bar (tqdm.auto: a widget in Jupyter, text in a terminal); a no-op when quiet."""
        handle = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=self.quiet,
            file=self.stream or sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )
        try:
            yield handle
        finally:
            handle.close()
