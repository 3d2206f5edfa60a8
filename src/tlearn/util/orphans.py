"""Worker processes that end with the process that started them.

A `kill -9` of tlearn (or an out-of-memory kill) gives its decoding workers no chance to be told: they were
seen still running ten minutes later, holding the cache database open. On Linux a process can ask the kernel to
send it SIGKILL when its parent ends (`prctl(PR_SET_PDEATHSIG)`); `die_with_parent` is the pools' initializer
that asks. Elsewhere it does nothing (the workers then end when they next find their pipe closed).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Initializer of a worker pool: SIGKILL this worker when `parent` (the pid that started the pool) ends.

    Example:
        >>> from concurrent.futures import ProcessPoolExecutor
        >>> pool = ProcessPoolExecutor(2, initializer=die_with_parent, initargs=(os.getpid(),))  # doctest: +SKIP
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this C library: the pipe still ends the worker later
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)
