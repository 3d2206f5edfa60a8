"""Durations as users type them (`90`, `"90s"`, `"10m"`, `"1.5h"`, `"1h30m"`), read by one rule everywhere:
`--time-budget` of training and `--budget` of `tlearn select` accept the same spellings."""

from __future__ import annotations

import re

_SECONDS = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
# Every part carries its unit: "1h30" could mean 30 seconds or 30 minutes, so it is refused.
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(value: str | float | None) -> float | None:
    """Seconds from a number or a duration text; None stays None.

    Raises:
        ValueError: a text that is not a duration (the message says what is expected).

    Example:
        >>> [parse_duration(value) for value in ("10m", "1h30m", "1.5h", "45", 2)]
        [600.0, 5400.0, 5400.0, 45.0, 2.0]
    """
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    if _SECONDS.match(value):
        return float(value)
    match = _DURATION.match(value)
    if not value.strip() or match is None or not any(match.groups()):
        raise ValueError(f"expected seconds or a duration such as 90s, 10m or 1h30m; got {value!r}")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds
