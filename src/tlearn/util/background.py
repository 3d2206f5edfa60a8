"""Importing modules in a background thread while the main thread computes (torch releases the GIL then),
so a slow import (scikit-learn, matplotlib, jinja2) costs almost no wall time."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence


def import_in_background(modules: Sequence[str]) -> threading.Thread:
    """Start importing `modules` in a daemon thread; returns the thread (join it to wait)."""
    thread = threading.Thread(target=lambda: [importlib.import_module(name) for name in modules], daemon=True)
    thread.start()
    return thread
