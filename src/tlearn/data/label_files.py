"""Labels from a file instead of folder names: `tlearn train labels.csv` (or `.json`, `.jsonl`).

A CSV has a header with `path` and `label` columns and optionally `split` (train, val or test; an empty cell
means "split by hash"); a JSON file holds a list of such objects, a JSONL file one object per line. Paths are
relative to the label file's folder (or absolute); Windows separators are accepted. Each image's hash split
comes from that relative path, exactly as for a class folder, so `DATA/<class>/<file>` and a CSV listing
`<class>/<file>,<class>` give the same splits, model and metrics.

Nothing in a label file is fatal row by row: a missing file, an empty label, an unknown split, a path listed
twice with different labels, or several labels for one image (multi-label training is not available yet)
each become one line of `problems`, with the file's line number, and the row is left out. Only a file that
cannot be read, lacks the columns, or leaves fewer than two classes stops the run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

from tlearn.errors import DataError

LABEL_FILE_SUFFIXES = (".csv", ".json", ".jsonl")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LABEL_SEPARATOR = "|"  # several labels in one cell (multi-label; reported, not trained on yet)


@dataclass(frozen=True)
class LabelRow:
    """One usable row: the image, its path relative to the label file's folder, its label and given split."""

    path: Path
    relpath: str
    label: str
    split: str | None  # None: assigned by the path hash


def is_label_file(path: str | Path) -> bool:
    """Whether `path` names a label file (by its suffix) rather than a data folder."""
    return Path(path).suffix.lower() in LABEL_FILE_SUFFIXES and not Path(path).is_dir()


def read_label_file(path: Path) -> tuple[list[LabelRow], list[str]]:
    """The usable rows of a label file, in file order, and one message per row left out.

    Raises:
        DataError: the file is missing, unreadable, not CSV/JSON, or lacks the `path` / `label` columns.

    Example:
        >>> rows, problems = read_label_file(Path("photos/labels.csv"))  # doctest: +SKIP
        >>> rows[0].relpath, rows[0].label, problems[:1]  # doctest: +SKIP
        ('ants/0013035.jpg', 'ants', ['photos/labels.csv line 7: ants/gone.jpg: no such file; row left out'])
    """
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    folder = path.resolve().parent
    rows: list[LabelRow] = []
    problems: list[str] = []
    seen: dict[str, tuple[str, str]] = {}  # relpath -> (label, where it was first listed)
    for where, record in _records(path):
        row, problem = _row(record, folder)
        if row is not None and row.relpath in seen:
            first_label, first_where = seen[row.relpath]
            same = "the same label" if first_label == row.label else f"label {first_label!r}, not {row.label!r}"
            problem, row = f"{row.relpath} is already listed at {first_where} with {same}", None
        if problem:
            problems.append(f"{path} {where}: {problem}; row left out")
            continue
        assert row is not None
        seen[row.relpath] = (row.label, where)
        rows.append(row)
    return rows, problems


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
    reader = csv.DictReader(text.splitlines())
    columns = {name.strip().lower(): name for name in reader.fieldnames or [] if name}
    missing = [name for name in ("path", "label") if name not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected a header such as path,label[,split]")
    for record in reader:
        line = reader.line_num
        yield f"line {line}", {key: record.get(original) for key, original in columns.items()}


def _json_object(path: Path, line: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} {where}: not valid JSON ({error.msg})") from None
    return value if isinstance(value, dict) else {}


def _row(record: dict[str, Any], folder: Path) -> tuple[LabelRow | None, str | None]:
    """The row, or why it is left out."""
    raw_path, raw_label, raw_split = record.get("path"), record.get("label"), record.get("split")
    if not isinstance(raw_path, str) or not raw_path.strip():
        return None, "no path"
    name, labels = raw_path.strip(), _labels(raw_label)
    if not labels:
        return None, f"{name}: no label"
    if len(labels) > 1:
        return None, f"{name}: several labels ({', '.join(labels)}); multi-label training is not available yet"
    split = None
    if raw_split not in (None, ""):
        split = SPLIT_NAMES.get(str(raw_split).strip().lower())
        if split is None:
            return None, f"{name}: unknown split {raw_split!r} (expected train, val or test)"
    file, relpath = _resolve(name, folder)
    if not file.is_file():
        return None, f"{name}: no such file"
    return LabelRow(file, relpath, labels[0], split), None


def _labels(value: Any) -> list[str]:
    if isinstance(value, list):
        parts = [str(item) for item in value]
    elif value is None:
        parts = []
    else:
        parts = str(value).split(LABEL_SEPARATOR)
    return list(dict.fromkeys(part.strip() for part in parts if part.strip()))


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
