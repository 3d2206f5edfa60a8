"""The review list: `review.csv` written by the audit, edited by a person, applied by training.

Each row is one image: `path` (relative to DATA), `given` (its folder's label), `suggested` (the label the
audit would give it), `action` (keep, relabel or drop) and `reason` (why it is listed; ignored when applied).
The audit prefills the action it would take; a person changes what they disagree with.

`apply_review` changes labels and drops images in tlearn's view of the data only: no image file is moved,
renamed or deleted. A row that cannot be applied (unknown path, stale label, unknown class, bad action) is
skipped with a one-line message naming its line; the review fails as a whole only when the file cannot be
read, or when it would leave a class without training images.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlearn.audits.findings import SPLIT_ORDER
from tlearn.data.discovery import DataSource, LabelledImage
from tlearn.errors import DataError
from tlearn.evaluation.tasks import LABEL_SET_SEPARATOR, task_for
from tlearn.util import atomic

REVIEW_COLUMNS = ["path", "given", "suggested", "action", "reason"]
REQUIRED_COLUMNS = ("path", "given", "suggested", "action")
ACTIONS = ("keep", "relabel", "drop")
LISTED_IN_REASON = 3  # other members of a near-duplicate group named in a reason


def review_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """The rows of review.csv for an audit payload (audit.json), one per listed image, prefilled.

    * likely label error: relabel to the suggestion when the heads give it at least
      `settings.relabel_confidence` and the image is not an outlier, else drop;
    * near-duplicates with different labels: relabel the members that disagree with the group's consensus (the
      label the heads favour over the whole group);
    * near-duplicates across splits: drop the copies in later splits (val, test), which would inflate the score;
    * outliers: drop when the heads do not even predict the given label, else keep (listed for a look).

    An image listed for several reasons gets the first action in that order, and every reason.

    Example:
        >>> review_rows({"settings": {"relabel_confidence": 0.9}, "label_issues": [], "near_duplicates": [],
        ...              "outliers": []})
        []
    """
    rows: dict[str, dict[str, str]] = {}

    def add(path: str, given: str, suggested: str, action: str, reason: str) -> None:
        if path in rows:
            rows[path]["reason"] += f"; {reason}"
        else:
            rows[path] = {"path": path, "given": given, "suggested": suggested, "action": action, "reason": reason}

    confident = payload["settings"]["relabel_confidence"]
    far = {outlier["path"] for outlier in payload["outliers"]}
    for issue in payload["label_issues"]:
        # Far from every class, a confident suggestion is still a guess: such an image is dropped, not relabelled.
        # An empty suggestion (no label at all: the heads doubt each label the image has) is not a relabel.
        relabel = issue["p_suggested"] >= confident and issue["path"] not in far and issue["suggested"]
        action = "relabel" if relabel else "drop"
        reason = (
            f"likely label error: p({issue['given']})={issue['p_given']:.2f}, "
            f"p({issue['suggested']})={issue['p_suggested']:.2f}"
        )
        add(issue["path"], issue["given"], issue["suggested"], action, reason)
    for group in payload["near_duplicates"]:
        members = list(zip(group["paths"], group["labels"], group["splits"], strict=True))
        if group["conflicting_labels"]:
            agreeing = [f"{path} ({label})" for path, label, _ in members if label == group["consensus"]]
            for path, label, _ in members:
                if label != group["consensus"]:
                    reason = f"near-duplicate of {_listed(agreeing)}, labelled {group['consensus']}"
                    add(path, label, group["consensus"], "relabel", reason)
        if group["cross_split"]:
            first_split = min(
                (split for _, _, split in members), key=lambda split: SPLIT_ORDER.get(split, len(SPLIT_ORDER))
            )
            kept = next(path for path, _, split in members if split == first_split)
            for path, label, split in members:
                if split != first_split:
                    add(path, label, label, "drop", f"near-duplicate of {kept} in {first_split} (leaks into {split})")
    for outlier in payload["outliers"]:
        action = "drop" if outlier["predicted"] != outlier["given"] else "keep"
        reason = f"outlier: far from every class (distance {outlier['score']:.2f}, nearest {outlier['nearest_class']})"
        add(outlier["path"], outlier["given"], outlier["predicted"], action, reason)
    return list(rows.values())


def _listed(items: list[str], shown: int = LISTED_IN_REASON) -> str:
    """'a, b, c and 4 more': a reason stays one readable cell however large the group."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def write_review(path: Path, rows: list[dict[str, str]]) -> None:
    """Write review.csv atomically (header only when nothing needs review)."""
    atomic.write_csv(path, rows, REVIEW_COLUMNS)


def apply_review(source: DataSource, review_csv: str | Path) -> tuple[DataSource, dict[str, Any]]:
    """The data source with the review applied (relabelled, dropped) and a summary of what changed.

    Args:
        source: the discovered data (`tlearn.data.discovery.discover`).
        review_csv: a review list (`path,given,suggested,action`), as `tlearn audit` writes it.

    Returns:
        The new source (files untouched) and `{"file", "relabelled", "dropped", "kept", "errors"}`, where
        `errors` holds one line per row that was skipped, naming its line number.

    Raises:
        DataError: the file is missing or not a review list, or the review leaves a class without training images.

    Example:
        >>> source, summary = apply_review(discover("data/"), "audit/review.csv")  # doctest: +SKIP
        >>> summary["relabelled"], summary["dropped"], summary["errors"][:1]  # doctest: +SKIP
        (4, 2, ['audit/review.csv line 7: ants/x.jpg is not an image under data/; row skipped'])
    """
    review_csv = Path(review_csv)
    try:
        with open(review_csv, newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{review_csv}: cannot read the review list ({error}); expected tlearn audit's CSV") from None
    header = [name.strip().lower() for name in lines[0]] if lines else []
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise DataError(
            f"{review_csv}: missing column(s) {', '.join(missing)}; expected a header path,given,suggested,action"
        )
    column = {name: header.index(name) for name in REQUIRED_COLUMNS}
    by_path = {image.relpath: position for position, image in enumerate(source.images)}
    task = task_for("auto", has_label_sets=source.has_label_sets)  # how a cell spells a label (set)
    changes: dict[int, list[str] | None] = {}  # position → new labels, or None to drop
    seen: dict[str, int] = {}
    errors: list[str] = []
    kept = 0
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        row = {name: (cells[index].strip() if index < len(cells) else "") for name, index in column.items()}
        problem = _row_problem(row, source, by_path, seen, task.label_names)
        if problem:
            errors.append(f"{review_csv} line {number}: {problem}; row skipped")
            continue
        seen[row["path"]] = number
        action = row["action"].lower()
        if action == "keep":
            kept += 1
        else:
            changes[by_path[row["path"]]] = task.label_names(row["suggested"]) if action == "relabel" else None
    images: list[LabelledImage] = []
    for position, image in enumerate(source.images):
        if position not in changes:
            images.append(image)
        elif (labels := changes[position]) is not None:
            images.append(dataclasses.replace(image, label=labels[0], extra_labels=tuple(labels[1:])))
    reviewed = dataclasses.replace(source, images=images)
    _require_training_images(reviewed, review_csv)
    summary = {
        "file": str(review_csv),
        "relabelled": sum(
            labels is not None and set(labels) != set(source.images[p].labels) for p, labels in changes.items()
        ),
        "dropped": sum(labels is None for labels in changes.values()),
        "kept": kept,
        "errors": errors,
    }
    return reviewed, summary


def _row_problem(
    row: dict[str, str],
    source: DataSource,
    by_path: dict[str, int],
    seen: dict[str, int],
    label_names: Callable[[str], list[str]],
) -> str | None:
    """Why a review row cannot be applied, or None when it can (`label_names` reads a cell's label set)."""
    action = row["action"].lower()
    if action not in ACTIONS:
        return f"action {row['action']!r} is not one of keep, relabel, drop"
    if row["path"] not in by_path:
        return f"{row['path']} is not an image under {source.root}"
    if row["path"] in seen:
        return f"{row['path']} is already reviewed on line {seen[row['path']]}"
    labels = source.images[by_path[row["path"]]].labels
    if set(label_names(row["given"])) != set(labels):
        label = LABEL_SET_SEPARATOR.join(labels)
        return f"{row['path']} is labelled {label!r}, not {row['given']!r} (the review is out of date)"
    if action == "relabel":
        suggested = label_names(row["suggested"])
        unknown = [name for name in suggested if name not in source.classes]
        if unknown:
            return f"suggested label {unknown[0]!r} is not a class ({', '.join(source.classes)})"
        if not suggested:
            return "relabel needs a suggested label"
    return None


def _require_training_images(source: DataSource, review_csv: Path) -> None:
    if not source.images:
        raise DataError(f"{review_csv}: the review drops every image; set some rows back to keep")
    for name in source.classes:
        if not any(name in image.labels and image.split == "train" for image in source.images):
            raise DataError(
                f"{review_csv}: the review leaves class {name!r} without training images; "
                "set some of its rows back to keep"
            )
