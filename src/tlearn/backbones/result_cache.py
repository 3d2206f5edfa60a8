"""Results computed from cached embeddings, kept so a run on unchanged data reads them instead of computing them:
the head's C searches and fits, the backbone comparison's cross-validations, the report's figures.

A warm `tlearn train` on a folder whose images did not change read every embedding from the cache and then
spent seconds recomputing what it computed last time: on hymenoptera (245 images) 2.9 s of its 4.2 s went to
cross-validating linear heads (3 backbones x 3 draws of the folds, the run's own C search, the audit's), most
of it importing scikit-learn, and 0.9 s to drawing the report's figures with matplotlib. Those computations are
deterministic functions of their inputs, so each result is stored under a digest of exactly those inputs:
the arrays' bytes, dtypes and shapes, the settings, and the source of the code that computes them (`code_digest`),
so an edit to tlearn or another library version never serves an old answer.

Stored in one SQLite database beside the embeddings (`results.sqlite` under the cache root, the same
`SqliteStore` with its read-only and damaged-database handling): arrays as safetensors bytes (never pickle), the
rest as JSON, each row with a CRC-32 checked on read. The store keeps the `MAX_ROWS` most recently used results.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.backbones.cache import RESULTS_DB, SqliteStore, Warn, warn_once

# Their versions are part of every key (tlearn's own too: an install without .py sources still tells releases apart).
LIBRARIES = ("tlearn", "numpy", "scipy", "scikit-learn", "matplotlib", "jinja2")
MAX_ROWS = 4000  # results kept (most recently used first): ~50 runs' worth; a row is a few KB to a few hundred
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    key BLOB PRIMARY KEY, kind TEXT NOT NULL, crc32 INTEGER NOT NULL, fields TEXT NOT NULL, arrays BLOB NOT NULL,
    used REAL NOT NULL
);
"""
_PUT = "INSERT OR REPLACE INTO results (key, kind, crc32, fields, arrays, used) VALUES (?, ?, ?, ?, ?, ?)"
_TOUCH = "UPDATE results SET used = ? WHERE key = ?"
_PRUNE = "DELETE FROM results WHERE key NOT IN (SELECT key FROM results ORDER BY used DESC LIMIT ?)"


@dataclass(frozen=True)
class StoredResult:
    """One result: JSON fields and named arrays."""

    fields: dict[str, Any]
    arrays: dict[str, np.ndarray]


class ResultCache:
    """Results keyed by `input_digest`; every failure of the store is a miss, never an error.

    Example:
        >>> results = ResultCache(cache_root())  # doctest: +SKIP
        >>> results.remember("metrics", lambda: classification_metrics(y, p, classes), y, p, classes)  # doctest: +SKIP
    """

    def __init__(self, root: Path, *, warn: Warn | None = None) -> None:
        self.path = root / RESULTS_DB
        self._store = SqliteStore(self.path, _SCHEMA, warn or warn_once())
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> StoredResult | None:
        """The stored result, or None when absent, damaged or unreadable (the caller's `put` replaces it)."""
        rows = self._store.read("SELECT crc32, fields, arrays FROM results WHERE key = ?", (bytes.fromhex(key),))
        if not rows:
            self.misses += 1
            return None
        crc32, fields, arrays = rows[0]
        result = _decoded(crc32, fields, arrays)
        if result is None:
            self.misses += 1
            return None
        self._store.queue(_TOUCH, (time.time(), bytes.fromhex(key)))
        self.hits += 1
        return result

    def put(self, key: str, kind: str, fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Store a result (written at `close`, or with the store's next batch)."""
        from safetensors.numpy import save

        encoded_fields = json.dumps(dict(fields), allow_nan=True)  # key order kept: files written from it read alike
        encoded_arrays = save({name: np.ascontiguousarray(value) for name, value in arrays.items()})
        crc32 = _crc32(encoded_fields.encode(), encoded_arrays)
        self._store.queue(_PUT, (bytes.fromhex(key), kind, crc32, encoded_fields, encoded_arrays, time.time()))

    def remember(self, kind: str, compute: Callable[[], Any], *inputs: Any) -> Any:
        """`compute()`'s result (JSON-like, or PNG and other bytes) for these inputs: read back when an identical
        computation was kept, else computed and kept. `inputs` must be everything the result depends on."""
        key = input_digest(kind, code_digest(), *inputs)
        stored = self.get(key)
        if stored is not None and stored.fields.get("bytes"):
            return stored.arrays["bytes"].tobytes()
        if stored is not None:
            return stored.fields["value"]
        value = compute()
        if isinstance(value, bytes):
            self.put(key, kind, {"bytes": True}, {"bytes": np.frombuffer(value, dtype=np.uint8)})
        else:
            self.put(key, kind, {"value": value}, {})
        return value

    def close(self) -> None:
        """Write what is queued, forget the least recently used results beyond `MAX_ROWS`, and close."""
        if self._store.state == "rw" and self.misses:
            self._store.queue(_PRUNE, (MAX_ROWS,))
        self._store.close()


def remembered(results: ResultCache | None, kind: str, compute: Callable[[], Any], *inputs: Any) -> Any:
    """`results.remember(...)`, or plainly `compute()` when there is no result cache (a caller without one)."""
    return compute() if results is None else results.remember(kind, compute, *inputs)


def input_digest(kind: str, *parts: Any) -> str:
    """Hex SHA-256 of a computation's name and inputs: arrays by dtype, shape and bytes; dataclasses, mappings
    and sequences by their items; numbers and strings by their repr (so 1 and 1.0 differ, as they may for the
    computation).

    Example:
        >>> input_digest("fit", np.zeros(2), {"c": 1.0}) == input_digest("fit", np.zeros(2), {"c": 1.0})
        True
        >>> input_digest("fit", np.zeros(2)) == input_digest("fit", np.zeros(2, dtype=np.float32))
        False
    """
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """Digest of tlearn's own source (every module: 24 ms, once per process) and of the versions of the libraries
    that compute results: a result computed by other code is another result. Digesting the whole package rather
    than the modules a result passes through cannot miss a module; an edit anywhere only costs one recomputation.
    """
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} missing".encode())
    return digest.hexdigest()


def _feed(digest: Any, part: Any) -> None:
    if isinstance(part, np.ndarray):
        array = np.ascontiguousarray(part)
        digest.update(f"<array {array.dtype.str} {array.shape}>".encode())
        digest.update(array.reshape(-1).view(np.uint8))  # the bytes in place: a memmap of gigabytes is not copied
    elif hasattr(part, "__dataclass_fields__"):
        digest.update(f"<{type(part).__name__}>".encode())
        for name in part.__dataclass_fields__:
            _feed(digest, name)
            _feed(digest, getattr(part, name))
    elif isinstance(part, Mapping):
        digest.update(f"<map {len(part)}>".encode())
        for name in sorted(part, key=str):
            _feed(digest, str(name))
            _feed(digest, part[name])
    elif isinstance(part, (list, tuple)):
        digest.update(f"<seq {len(part)}>".encode())
        for item in part:
            _feed(digest, item)
    elif part is None or isinstance(part, (str, bool, int, float, np.generic)):
        digest.update(f"<{type(part).__name__} {part!r}>".encode())
    else:
        raise TypeError(f"cannot digest a {type(part).__name__}")


def _crc32(*chunks: bytes) -> int:
    value = 0
    for chunk in chunks:
        value = zlib.crc32(chunk, value)
    return value & 0xFFFFFFFF


def _decoded(crc32: int, fields: str, arrays: bytes) -> StoredResult | None:
    from safetensors.numpy import load

    if not isinstance(fields, str) or not isinstance(arrays, bytes) or _crc32(fields.encode(), arrays) != crc32:
        return None
    try:
        return StoredResult(json.loads(fields), dict(load(arrays)))
    except Exception:  # safetensors' own error type included: a row that does not decode is a miss
        return None
