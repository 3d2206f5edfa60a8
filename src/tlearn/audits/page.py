"""`audit.html` and `select.html`: self-contained pages (inline CSS, thumbnails as data URIs, no script).

Written from the JSON payloads alone (audit.json, select.json), with the report's templates and thumbnails,
so the pages look like the run report and open offline. Names come from user folders: the templates are
autoescaped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tlearn import __version__
from tlearn.audits.findings import SPLIT_ORDER
from tlearn.report.page import render_page
from tlearn.report.thumbnails import thumbnail
from tlearn.util import atomic

SHOWN_ISSUES = 60  # thumbnails per gallery; the rest is in audit.json and review.csv
SHOWN_GROUPS = 30
SHOWN_OUTLIERS = 30
SHOWN_GROUP_MEMBERS = 4


def write_audit_page(path: Path, payload: dict[str, Any], review: list[dict[str, str]], data_root: Path) -> Path:
    """Render audit.html for an audit payload; thumbnails are read from `data_root`.

    Example:
        >>> write_audit_page(Path("audit/audit.html"), payload, rows, Path("data"))  # doctest: +SKIP
    """

    def pictured(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "thumbnail": thumbnail(data_root / row["path"])}

    groups = [
        {**group, "members": _shown_members(group, data_root)} for group in payload["near_duplicates"][:SHOWN_GROUPS]
    ]
    actions = {action: sum(row["action"] == action for row in review) for action in ("keep", "relabel", "drop")}
    page = render_page(
        "audit.html",
        audit=payload,
        title=Path(payload.get("data", "")).name or "data",
        issues=[pictured(row) for row in payload["label_issues"][:SHOWN_ISSUES]],
        groups=groups,
        outliers=[pictured(row) for row in payload["outliers"][:SHOWN_OUTLIERS]],
        review_count=len(review),
        actions=actions,
        version=__version__,
        generated=time.strftime("%Y-%m-%d %H:%M"),
    )
    atomic.write_text(path, page)
    return path


def _shown_members(group: dict[str, Any], data_root: Path) -> list[dict[str, Any]]:
    """The members a group shows: those labelled against the group's consensus first, then the earliest split."""
    members = sorted(
        zip(group["paths"], group["labels"], group["splits"], strict=True),
        key=lambda member: (member[1] == group["consensus"], SPLIT_ORDER.get(member[2], len(SPLIT_ORDER))),
    )
    return [
        {"path": path, "label": label, "split": split, "thumbnail": thumbnail(data_root / path)}
        for path, label, split in members[:SHOWN_GROUP_MEMBERS]
    ]


def write_select_page(path: Path, payload: dict[str, Any]) -> Path:
    """Render select.html for a selection payload (select.json).

    Example:
        >>> write_select_page(Path("selection/select.html"), selection.payload)  # doctest: +SKIP
    """
    page = render_page(
        "select.html",
        selection=payload,
        title=Path(payload.get("data", "")).name or "data",
        version=__version__,
        generated=time.strftime("%Y-%m-%d %H:%M"),
    )
    atomic.write_text(path, page)
    return path
