"""What the data check found: class counts, imbalance, skipped files, duplicates and leakage.

Leakage policy: an image in val or test whose bytes are identical to a training image (or a test image
identical to a validation image) says nothing about generalisation, so it is excluded from that evaluation
split and listed in the report. Files never move between splits, so the split stays stable.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.data.discovery import SPLITS, DataSource
from tlearn.util.text import printable

# Above this majority:minority ratio in the training split, the loss is class-weighted (balance="auto").
IMBALANCE_RATIO = 3.0


@dataclass
class LabelledFiles:
    """Image files and their targets (what fine-tuning trains and validates on)."""

    paths: list[Path]
    labels: np.ndarray  # the task's targets: (N,) class indices, or (N, K) label indicators


@dataclass
class CheckedData:
    """The images that survive the check, by position in `source.images`, and the report describing them."""

    source: DataSource
    positions: dict[str, list[int]]  # split → positions of usable, non-leaking images
    report: dict[str, Any]
    content_hashes: list[str | None] = field(default_factory=list)  # per image of `source`

    def fingerprint(self) -> dict[str, Any]:
        """What the run learns from: the classes, and per split a digest of (relative path, content hash) of
        every usable image. A resumed run must see the same, or it would continue on other data."""
        digests = {}
        for split, positions in self.positions.items():
            entries = sorted(f"{self.source.images[p].relpath}\t{self.content_hashes[p]}" for p in positions)
            digests[split] = {"images": len(entries), "sha256": hashlib.sha256("\n".join(entries).encode()).hexdigest()}
        return {"classes": list(self.source.classes), "splits": digests}

    def label_indices(self, split: str) -> list[tuple[int, ...]]:
        """Per image of a split, the indices of every class it carries (its first label first): what the run's
        task turns into targets (`tlearn.evaluation.tasks.Task.targets`)."""
        index = {name: i for i, name in enumerate(self.source.classes)}
        return [tuple(index[name] for name in self.source.images[p].labels) for p in self.positions[split]]

    def relpaths(self, split: str) -> list[str]:
        """Paths (relative to the data folder) of a split's images."""
        return [self.source.images[p].relpath for p in self.positions[split]]

    def counts(self, split: str) -> dict[str, int]:
        """{class: images} of a split, every class listed; an image with several labels counts for each."""
        per_class = Counter(label for p in self.positions[split] for label in self.source.images[p].labels)
        return {name: per_class.get(name, 0) for name in self.source.classes}


def check_data(source: DataSource, content_hashes: list[str | None], failures: dict[int, str]) -> CheckedData:
    """Combine discovery with decoding outcomes into usable positions per split and the data report."""
    skipped = [{"path": source.images[p].relpath, "reason": reason} for p, reason in sorted(failures.items())]
    groups: dict[str, list[int]] = defaultdict(list)
    for position, content_hash in enumerate(content_hashes):
        if content_hash is not None and position not in failures:
            groups[content_hash].append(position)

    excluded: set[int] = set()
    duplicates, leakage, label_conflicts = [], [], []
    for content_hash, members in groups.items():
        if len(members) < 2:
            continue
        images = [source.images[p] for p in members]
        duplicates.append(
            {
                "sha256": content_hash,
                "paths": [image.relpath for image in images],
                "splits": sorted({image.split for image in images}, key=SPLITS.index),
                "labels": sorted({label for image in images for label in image.labels}),
            }
        )
        if len({frozenset(image.labels) for image in images}) > 1:  # copies labelled differently
            label_conflicts.append(duplicates[-1])
        earliest = min(SPLITS.index(image.split) for image in images)
        leaking = [p for p in members if SPLITS.index(source.images[p].split) > earliest]
        if leaking:
            excluded.update(leaking)
            leakage.append(
                {
                    "sha256": content_hash,
                    "kept_in": SPLITS[earliest],
                    "excluded": [source.images[p].relpath for p in leaking],
                }
            )

    positions = {split: [] for split in SPLITS}
    for position, image in enumerate(source.images):
        if position not in failures and position not in excluded and content_hashes[position] is not None:
            positions[image.split].append(position)
    checked = CheckedData(source, positions, {}, list(content_hashes))
    train_counts = checked.counts("train")
    largest, smallest = max(train_counts.values()), min(train_counts.values())
    checked.report = {
        "data": str(source.root),
        "layout": source.layout,
        "classes": source.classes,
        "counts": {split: checked.counts(split) for split in SPLITS if positions[split]},
        "images": {split: len(positions[split]) for split in SPLITS if positions[split]},
        "imbalance": {
            "ratio": round(largest / smallest, 3) if smallest else None,
            "majority": max(train_counts, key=train_counts.get),
            "minority": min(train_counts, key=train_counts.get),
            "imbalanced": smallest == 0 or largest / smallest > IMBALANCE_RATIO,
        },
        "skipped": skipped,
        "ignored": source.ignored,
        "duplicates": duplicates,
        "leakage": leakage,
        "label_conflicts": label_conflicts,
    }
    if source.label_file is not None:
        checked.report["label_file"] = str(source.label_file)
        checked.report["label_file_problems"] = source.problems
    return checked


def left_out_line(label_file: str | Path, problems: list[str]) -> str:
    """The console line for label-file rows left out (every one is listed in data_report.json).

    Example:
        >>> left_out_line("labels.csv", ["line 3: empty label", "line 9: no such file"])
        'left out 2 row(s) of labels.csv: line 3: empty label and 1 more; see data_report.json'
    """
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    first = printable(problems[0])
    return f"left out {len(problems)} row(s) of {printable(str(label_file))}: {first}{more}; see data_report.json"


def found_line(source: DataSource) -> str:
    """The console's first word on the data, before any file is opened: classes and images per split.

    Printed before the embedding starts (minutes on a large folder), so a wrong folder or split shows at once;
    `summary_lines` then repeats it only when the checks changed the counts.
    """
    images = {split: len(source.in_split(split)) for split in SPLITS}
    return _data_line(source.classes, {split: count for split, count in images.items() if count})


def _data_line(classes: list[str], images: dict[str, int]) -> str:
    per_split = ", ".join(f"{split} {count}" for split, count in images.items())
    return f"data: {len(classes)} classes ({', '.join(classes)}); {per_split} images"


def summary_lines(report: dict[str, Any], announced: str | None = None) -> list[str]:
    """Human-readable one-liners for the console; the counts line is left out when it repeats `announced`
    (the `found_line` printed before the checks) and says "usable" when the checks changed it."""
    counts = report["counts"]
    images = report.get("images") or {split: sum(table.values()) for split, table in counts.items()}
    line = _data_line(report["classes"], {split: images[split] for split in counts})
    lines = [] if line == announced else [line if announced is None else line.replace("data:", "usable:", 1)]
    if report["skipped"]:
        first = report["skipped"][0]
        more = f" and {len(report['skipped']) - 1} more" if len(report["skipped"]) > 1 else ""
        lines.append(
            f"skipped {len(report['skipped'])} unusable file(s): {printable(first['path'])} "
            f"({printable(first['reason'])}){more}; "
            "see data_report.json"
        )
    if report["ignored"]:
        lines.append(f"ignored {len(report['ignored'])} non-image file(s), e.g. {printable(report['ignored'][0])}")
    if report.get("label_file_problems"):
        lines.append(left_out_line(report["label_file"], report["label_file_problems"]))
    imbalance = report["imbalance"]
    if imbalance["imbalanced"] and imbalance["ratio"] is None:  # the training step refuses this data next
        lines.append(f"class imbalance: {imbalance['minority']} has no usable training image")
    elif imbalance["imbalanced"]:
        lines.append(
            f"class imbalance: {imbalance['majority']} vs {imbalance['minority']} is {imbalance['ratio']}:1 in train"
        )
    if report["leakage"]:
        excluded = sum(len(group["excluded"]) for group in report["leakage"])
        lines.append(
            f"leakage: {excluded} val/test image(s) are byte-identical to earlier-split images; "
            "excluded from evaluation"
        )
    for split in ("val", "test"):
        missing = [name for name, count in counts.get(split, {}).items() if count == 0]
        if missing:
            lines.append(
                f"warning: {split} has no image of {len(missing)} class(es) ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}): its figures do not measure them (accuracy can look "
                "better than macro F1 says)"
            )
    if report["label_conflicts"]:
        lines.append(f"warning: {len(report['label_conflicts'])} identical image(s) carry different labels")
    return lines
