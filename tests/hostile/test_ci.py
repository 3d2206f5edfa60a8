"""CI runs the tests with CI=1, so the browser tests fail instead of skipping when Chromium is missing."""

from __future__ import annotations

from helpers import PROJECT


def test_ci_exports_ci_before_running_the_tests():
    lines = [line.strip() for line in (PROJECT / ".ci" / "run").read_text().splitlines()]
    exported = next(i for i, line in enumerate(lines) if line in ("export CI=1", "export CI=true"))
    tested = next(i for i, line in enumerate(lines) if "pytest" in line and not line.startswith("#"))
    assert exported < tested
