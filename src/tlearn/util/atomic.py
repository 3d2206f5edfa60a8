"""Writing files so that a crash never leaves half of one behind.

Everything tlearn writes (models, metrics, cache entries) goes to a temporary file in the same folder and is
then renamed over the final name: readers see the old file or the new one, never a torn one.

Text is written as UTF-8 whatever it holds: a file name that is not valid UTF-8 (`caf\\xe9.jpg`, which Python
reads as the lone surrogate `\\udce9`) is written as the escape `\\udce9`, which is exactly JSON's escape for
it, so JSON files read back to the same name. CSV files are meant to be opened in spreadsheets, which run a
cell that starts with `=`, `+`, `-` or `@` as a formula (CSV injection): such text cells are written with a
leading `'`, and `read_csv` takes it off again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tlearn-tmp-"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets the usual umask-based modes.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Atomically replace `path` with `data`. `durable` fsyncs first (skip it for cheap, re-creatable files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        os.chmod(temp_name, _FILE_MODE)
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            if durable:
                temp_file.flush()
                os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a UTF-8 text file.

    Lone surrogates (from file names that are not UTF-8) become `\\udcXX` escapes instead of failing the write:
    the only characters UTF-8 cannot encode, so nothing else changes.
    """
    write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def write_json(path: str | Path, payload: Any) -> None:
    """Atomically write indented JSON (keys in insertion order, so files read well)."""
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


# Spreadsheets treat a cell starting with one of these as a formula (tab and CR too, per OWASP); the quote
# itself is included so that `restore_cell` can always take the added quote off again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
_SURROGATE_ESCAPE = re.compile(r"\\udc([89a-f][0-9a-f])")


def neutralise_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with = + - @ (or ') gets a leading '.

    Numbers are left alone (a negative number is data, not a formula).

    Example:
        >>> neutralise_cell("=1+1"), neutralise_cell("-cmd"), neutralise_cell(-0.5), neutralise_cell("ants")
        ("'=1+1", "'-cmd", -0.5, 'ants')
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def restore_cell(text: str) -> str:
    """Inverse of `neutralise_cell` (and of the `\\udcXX` escape of non-UTF-8 file names) for a cell read back.

    Example:
        >>> restore_cell("'=1+1"), restore_cell("ants")
        ('=1+1', 'ants')
    """
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        text = text[1:]
    if "\\udc" in text:
        text = _SURROGATE_ESCAPE.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), text)
    return text


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
    """Atomically write rows as CSV with the given column order; text cells are neutralised (`neutralise_cell`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([neutralise_cell(column) for column in columns])
    writer.writerows([neutralise_cell(row.get(column, "")) for column in columns] for row in rows)
    write_text(path, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file written by `write_csv`, with every cell as it was before writing (as text).

    Example:
        >>> read_csv("runs/ants/predictions.csv")[0]["path"]  # doctest: +SKIP
        'ants/0013035.jpg'
    """
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [restore_cell(cell) for cell in next(reader, [])]
        return [dict(zip(header, (restore_cell(cell) for cell in row), strict=False)) for row in reader]


@contextmanager
def replace_directory(final: str | Path):
    """Build a directory under a temporary name, then swap it in place of `final` in one rename.

    Yields the temporary directory to fill. If the block raises, the temporary directory is removed and
    `final` is untouched.

    Example:
        >>> with replace_directory("run/model") as staging:  # doctest: +SKIP
        ...     (staging / "config.json").write_text("{}")
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=final.parent))
    os.chmod(staging, _DIR_MODE)
    try:
        yield staging
        for child in staging.rglob("*"):  # a package format's files sit in sub-folders
            if child.is_file():
                with open(child, "rb") as written:
                    os.fsync(written.fileno())
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=final.parent))
            retired.rmdir()
            os.replace(final, retired)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def leftover_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files or folders an interrupted write left under `folder` (for cleaning and for tests)."""
    return sorted(Path(folder).rglob(f"{TEMP_PREFIX}*"))
