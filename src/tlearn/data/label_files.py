"""Labels from a file instead of folder names: `tlearn train labels.csv` (or `.json`, `.jsonl`).

A CSV has a header with `path` and `label` columns and optionally `split` (train, val or test; an empty cell
means "split by hash"); a JSON file holds a list of such objects, a JSONL file one object per line. Paths are
relative to the label file's folder (or absolute); Windows separators are accepted. A row naming a file outside
that folder (after `..` and symbolic links) is left out unless `follow_links` is set, as a link leading out of a
data folder is: a label file is data, and data from elsewhere must not make tlearn read, and show in its
report, images from anywhere on the machine. Each image's hash split
comes from that relative path, exactly as for a class folder, so `DATA/<class>/<file>` and a CSV listing
`<class>/<file>,<class>` give the same splits, model and metrics.

Several labels per image (multi-label data) come either in one cell joined by the separator (`a|b`,
`--label-sep` to change it), as a JSON list (`"label": ["a", "b"]`), or as one row per (path, label): rows
of the same path are merged into one image carrying all their labels, in the order first seen.

Nothing in a label file is fatal row by row: a missing file, an empty label, an unknown split, a path given
again with another split, or a (path, label) pair given twice each become one line of `problems`, with the
file's line number (the repeated pair is kept once, the other rows are left out). With `task="multiclass"` an
image with several labels is such a problem too, and is left out. Only a file that cannot be read, lacks the
columns, or leaves fewer than two classes stops the run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

from tlearn.errors import DataError
from tlearn.util.wording import option

LABEL_FILE_SUFFIXES = (".csv", ".json", ".jsonl")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LABEL_SEPARATOR = "|"  # several labels in one cell (multi-label data); `--label-sep` changes it
LabelTask = Literal["auto", "multiclass", "multilabel"]
LABEL_TASKS = ("auto", "multiclass", "multilabel")


@dataclass(frozen=True)
class LabelRow:
    """One usable image: the file, its path relative to the label file's folder, its labels and given split."""

    path: Path
    relpath: str
    labels: tuple[str, ...]  # in the order first seen; one label for single-label data
    split: str | None  # None: assigned by the path hash

    @property
    def label(self) -> str:
        """The first (for single-label data, the only) label."""
        return self.labels[0]


def is_label_file(path: str | Path) -> bool:
    """Whether `path` names a label file (by its suffix) rather than a data folder."""
    return Path(path).suffix.lower() in LABEL_FILE_SUFFIXES and not Path(path).is_dir()


def read_label_file(
    path: Path, *, label_sep: str = LABEL_SEPARATOR, task: LabelTask = "auto", follow_links: bool = False
) -> tuple[list[LabelRow], list[str]]:
    """The usable images of a label file, in the order first listed, and one message per problem row.

    Args:
        path: a `.csv`, `.json` or `.jsonl` label file.
        label_sep: what joins several labels in one cell (`a|b`).
        task: "multiclass" leaves out (and reports) every image with several labels; "auto" and "multilabel"
            keep them.
        follow_links: also read files outside the label file's folder (else each such row is a problem).

    Raises:
        DataError: the file is missing, unreadable, not CSV/JSON, or lacks the `path` / `label` columns.
        ValueError: an empty `label_sep` or an unknown `task` (the configuration checks both first).

    Example:
        >>> rows, problems = read_label_file(Path("photos/labels.csv"))  # doctest: +SKIP
        >>> rows[0].relpath, rows[0].labels, problems[:1]  # doctest: +SKIP
        ('ants/0013035.jpg', ('ants',), ['photos/labels.csv line 7: ants/gone.jpg: no such file; row left out'])
    """
    if not label_sep:
        raise ValueError("label_sep must not be empty")
    if task not in LABEL_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(LABEL_TASKS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    folder = path.resolve().parent
    images: dict[str, _Image] = {}  # relpath -> the image its rows describe, in the order first listed
    problems: list[str] = []
    for where, record in _records(path):
        row, problem = _row(record, folder, label_sep, follow_links)
        if row is None:
            problems.append(f"{path} {where}: {problem}; row left out")
            continue
        image = images.setdefault(row.relpath, _Image(row.path, row.relpath, row.split, where))
        problem = image.add(row, where, one_label=task == "multiclass")
        if problem:
            problems.append(f"{path} {where}: {problem}")
    rows = [
        LabelRow(image.path, image.relpath, tuple(image.labels), image.split)
        for image in images.values()
        if image.left_out is None
    ]
    return rows, problems


@dataclass
class _Image:
    """One image while its rows are merged: its labels so far and where each was given."""

    path: Path
    relpath: str
    split: str | None
    split_where: str  # where its split was given (where it was first listed when none was)
    labels: dict[str, str] = field(default_factory=dict)  # label -> where it was given, in the order first seen
    left_out: str | None = None  # where it was left out (multiclass task, several labels)

    def add(self, row: LabelRow, where: str, *, one_label: bool) -> str | None:
        """Merge one row of this image; the problem it raises (with what became of the row), if any. With
        `one_label` an image given several labels is left out."""
        name = self.relpath
        if self.left_out is not None:
            return f"{name}: already left out at {self.left_out} (several labels); row left out"
        if row.split is not None and self.split is not None and row.split != self.split:
            return f"{name}: split {row.split!r} here but {self.split!r} at {self.split_where}; row left out"
        if self.split is None and row.split is not None:
            self.split, self.split_where = row.split, where
        repeated = []
        for label in row.labels:
            if label in self.labels:
                repeated.append(label)
            else:
                self.labels[label] = where
        if one_label and len(self.labels) > 1:
            self.left_out = where
            return (
                f"{name}: several labels ({', '.join(self.labels)}) but --task multiclass takes one per image; "
                "use --task multilabel, or keep one label; image left out"
            )
        if repeated:
            given = ", ".join(f"{label!r} (first at {self.labels[label]})" for label in dict.fromkeys(repeated))
            return f"{name}: label {given} given again; kept once"
        return None


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for each row of a CSV, JSON or JSONL label file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the label file ({error})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_records(path, text)
    elif suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield f"line {number}", _json_object(path, line, f"line {number}")
    else:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON list of {{'path': ..., 'label': ...}} objects")
        for number, item in enumerate(items, start=1):
            yield f"item {number}", item if isinstance(item, dict) else {}


def _csv_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    # skipinitialspace: `red, "a, b.png"` is a quoted cell after a space, as people write by hand.
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV header ({error})") from None
    columns = {name.strip().lower(): name for name in fieldnames if name}
    missing = [name for name in ("path", "label") if name not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected a header such as path,label[,split]")
    try:
        for record in reader:
            yield f"line {reader.line_num}", {key: record.get(original) for key, original in columns.items()}
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({error})") from None


def _json_object(path: Path, line: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} {where}: not valid JSON ({error.msg})") from None
    return value if isinstance(value, dict) else {}


def _row(
    record: dict[str, Any], folder: Path, label_sep: str, follow_links: bool
) -> tuple[LabelRow | None, str | None]:
    """The row (its labels as given, repeats included), or why it is left out."""
    raw_path, raw_label, raw_split = record.get("path"), record.get("label"), record.get("split")
    if not isinstance(raw_path, str) or not raw_path.strip():
        return None, "no path"
    name, labels = raw_path.strip(), _labels(raw_label, label_sep)
    if not labels:
        return None, f"{name}: no label"
    split = None
    if raw_split not in (None, ""):
        split = SPLIT_NAMES.get(str(raw_split).strip().lower())
        if split is None:
            return None, f"{name}: unknown split {raw_split!r} (expected train, val or test)"
    file, relpath = _resolve(name, folder)
    if not file.is_file():
        return None, f"{name}: no such file"
    if not follow_links and not file.resolve().is_relative_to(folder):
        return None, f"{name}: outside {folder} (the label file's folder; {option('follow_links')} reads it)"
    return LabelRow(file, relpath, tuple(labels), split), None


def _labels(value: Any, label_sep: str) -> list[str]:
    """The labels of one cell: a JSON list as given, else the text split at `label_sep`; blanks dropped."""
    if isinstance(value, list):
        parts = [str(item) for item in value if item is not None]
    elif value is None:
        parts = []
    else:
        parts = str(value).split(label_sep)
    return [part.strip() for part in parts if part.strip()]


def _resolve(raw_path: str, folder: Path) -> tuple[Path, str]:
    """The file a row names and the path its hash split is computed from (relative to the folder when inside)."""
    if "\\" in raw_path and not Path(raw_path).exists():
        raw_path = PureWindowsPath(raw_path).as_posix()
    file = Path(raw_path).expanduser()
    file = Path(os.path.normpath(file if file.is_absolute() else folder / file))  # links kept, as in a folder walk
    try:
        relpath = file.relative_to(folder).as_posix()
    except ValueError:
        relpath = file.as_posix()
    return file, relpath
