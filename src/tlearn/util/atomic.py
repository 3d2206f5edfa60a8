"""Writing files so that a crash never leaves half of one behind.

Everything tlearn writes (models, metrics, cache entries) goes to a temporary file in the same folder and is
then renamed over the final name: readers see the old file or the new one, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import os
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
    """Atomically write a UTF-8 text file."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any) -> None:
    """Atomically write indented JSON (keys in insertion order, so files read well)."""
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
    """Atomically write rows as CSV with the given column order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


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
        for child in staging.iterdir():
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
