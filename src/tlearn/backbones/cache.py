"""The on-disk cache: image embeddings, a file index, decoding verdicts and converted backbones.

Running a backbone over an image is the expensive step (tens of milliseconds on a CPU). Its result only
depends on the file's bytes, the backbone's weights and the preprocessing, so it is stored under exactly
that key and a second run — or a run on a grown folder — computes only what is new. A file index (like git's)
remembers each file's content hash under its path and stat (size, mtime, ctime, inode, device), so a warm
run reads no image at all; a file whose stat changed is read and hashed again.

Layout under the cache root (`TLEARN_CACHE_DIR`, default the user's cache folder):

    embeddings/<namespace>.sqlite                 every embedding of one backbone + preprocessing
    files.sqlite                                  the file index and decoding verdicts ("not an image: ...")
    results.sqlite                                results computed from embeddings (head fits, metrics, figures)
    tables/<key>/labels.csv                       DataFrames and Hugging Face datasets as label files (+ images)
    backbones/<backbone key>/{weights.safetensors,info.json}   weights in timm's layout, for torch-free reuse
    onnx/<backbone key>-<preprocessing>.{onnx,json}            the verified embedding graph for onnxruntime

Why SQLite (the standard library's `sqlite3`) rather than appendable shard files: a million images must not
be a million files, and a store of packed rows needs atomic appends, an index for lookups that does not have
to be loaded into memory, safe concurrent writers (several runs, torchrun ranks) and crash recovery — all of
which SQLite has, tested for decades, where shards would need a custom record format, torn-tail recovery
and compaction. The rollback journal is used, not WAL: WAL needs shared memory, which rules out network
file systems and read-only media; writes are batched (`FLUSH_ROWS`), so the journal's cost is small
(20,000 embeddings of 1,280 floats: 2.1 s to write, 0.3 s to read back, measured here). Several processes may
write at once: SQLite serialises their short transactions (busy timeout `BUSY_TIMEOUT_S`). Cross-machine
sharing needs a file system with working POSIX locks (local disks, NFSv4); on other shared file systems (NFSv3,
S3-fuse) set `TLEARN_EMBEDDING_STORE` to keep embeddings in `tlearn.backbones.parquet_store` instead: one immutable
parquet file per writer's flush, no locks, a namespace read as one dataset.

Nothing here is ever fatal. Every embedding row carries its dtype, length and CRC-32 and is checked on read: a
damaged or foreign row is discarded (deleted when the cache is writable, skipped when it is not) and
recomputed. A cache that cannot be written (read-only, full, permissions) is used read-only and a cache that
cannot be read at all is bypassed: the run warns once and computes without caching. A database file that is
not SQLite any more is moved aside and started afresh.

Caches of tlearn ≤ 0.1 (one `.safetensors` file per embedding under `embeddings/<namespace>/`) are not read:
their namespaces predate decoder version 2 and would not match anyway; their embeddings are recomputed, and
`tlearn cache clear` removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
import platformdirs

from tlearn.data.shards import ShardError, stat_path

CACHE_ENV = "TLEARN_CACHE_DIR"
FILES_DB = "files.sqlite"
RESULTS_DB = "results.sqlite"  # tlearn.backbones.result_cache: head searches, metrics, figures of earlier runs
EMBEDDINGS_DIR = "embeddings"
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction
FLUSH_ROWS = 256  # rows written per transaction: large enough that the journal's fsyncs cost little
FLUSH_SECONDS = 5.0  # ... or this old, so a crash loses little work
RACY_SECONDS = 2.0  # coarsest file-system timestamp granularity we expect (FAT); see `FileIndex.record`
VECTOR_DTYPE = "<f4"
_READ_CHUNK = 500  # keys per `IN (...)` query (SQLite allows 999 parameters on older builds)
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_DAMAGED = (_SQLITE_CORRUPT, _SQLITE_NOTADB)

Warn = Callable[[str], None]


class CacheWarning(UserWarning):
    """The cache cannot be used as asked (read-only, full, damaged); the run goes on without it."""


def cache_root() -> Path:
    """`$TLEARN_CACHE_DIR`, or the platform's user cache folder (e.g. `~/.cache/tlearn`)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path(platformdirs.user_cache_dir("tlearn"))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: the identity of an image's content, whatever its name."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def warn_once(sink: Warn | None = None) -> Warn:
    """A warning function that passes on its first message only (to `sink`, else `warnings.warn`).

    One run shares it between its stores, so a read-only cache says so once, not once per store or file.

    Example:
        >>> warn = warn_once(print)
        >>> warn("cache read-only"); warn("cache read-only again")
        cache read-only
    """
    said: list[str] = []

    def warn(message: str) -> None:
        if said:
            return
        said.append(message)
        if sink is None:
            warnings.warn(message, CacheWarning, stacklevel=3)
        else:
            sink(message)

    return warn


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """Open a database in autocommit mode (transactions are explicit); read-only opens never create files."""
    if read_only:
        uri = f"file:{quote(str(path))}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)


def _error_code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class SqliteStore:
    """One SQLite database, opened on first use, with buffered writes.

    States: "rw" (normal), "ro" (writes failed or impossible: reads only, warned once), "off" (unreadable:
    everything is a miss, warned once). Never raises for I/O or database trouble.
    """

    def __init__(self, path: Path, schema: str, warn: Warn, *, page_size: int = 4096) -> None:
        self.path = path
        self._schema = schema
        self._warn = warn
        self._page_size = page_size
        self._connection: sqlite3.Connection | None = None
        self.state: str | None = None  # None until opened
        self._queued: dict[str, list[tuple[Any, ...]]] = {}
        self._queued_rows = 0
        self._last_flush = time.monotonic()

    @property
    def writable(self) -> bool:
        self._open()
        return self.state == "rw"

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query (after writing what is queued); no rows when the database cannot be read."""
        self._open()
        if self.state == "off":
            return []
        self.flush()
        self._open()  # the flush may have found the database damaged and started afresh
        if self.state == "off":
            return []
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            self._fail(error, reading=True)
            return []

    def queue(self, sql: str, row: tuple[Any, ...]) -> None:
        """Write `row` with `sql` in the next batched transaction (dropped when the cache is read-only)."""
        self._open()
        if self.state != "rw":
            return
        self._queued.setdefault(sql, []).append(row)
        self._queued_rows += 1
        if self._queued_rows >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows in one transaction; a failure makes the store read-only (warned once)."""
        self._last_flush = time.monotonic()
        if not self._queued or self.state != "rw":
            return
        queued, self._queued, self._queued_rows = self._queued, {}, 0
        try:
            self._connection.execute("BEGIN IMMEDIATE")
            for sql, rows in queued.items():
                self._connection.executemany(sql, rows)
            self._connection.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            self._fail(error, reading=False)

    def close(self) -> None:
        """Write what is queued and close the connection (a later use opens it again)."""
        self.flush()
        if self._connection is not None:
            self._connection.close()
        self._connection, self.state = None, None

    def _open(self) -> None:
        if self.state is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = self._initialised(_connect(self.path, read_only=False))
        except sqlite3.DatabaseError as error:
            if _error_code(error) in _DAMAGED and self._move_aside():
                self._warn(f"cache database {self.path} was damaged: moved aside and started afresh")
                self._open()
                return
            self._open_read_only(str(error))
            return
        except OSError as error:
            self._open_read_only(error.strerror or str(error))
            return
        self._connection = connection
        refused = self._write_refused(connection)
        if refused is not None and _error_code(refused) in _DAMAGED:
            if not self._start_afresh(refused):  # closed, and cannot be moved aside: not used at all
                self.state = "off"
                self._warn(f"cache database {self.path} is damaged ({refused}): computing without it")
            return
        self.state = "rw" if refused is None else "ro"
        if refused is not None:
            self._warn(f"cache {self.path.parent} is not writable ({refused}): read-only, new results not cached")

    @staticmethod
    def _write_refused(connection: sqlite3.Connection) -> sqlite3.Error | None:
        """Why this connection cannot write (read-only file or mount, damage), found by a write rolled back."""
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write-check', '')")
            return None
        except sqlite3.Error as error:
            return error
        finally:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")

    def _start_afresh(self, error: sqlite3.Error) -> bool:
        """A database found damaged after it opened (a page, not the header): close it, move it aside and open
        an empty one on next use. Without this, every later run met the same damage: it recomputed everything,
        or called the cache "not writable" and never cached again. False when it cannot be moved."""
        with contextlib.suppress(sqlite3.Error):
            self._connection.close()
        self._connection, self.state = None, None
        if not self._move_aside():
            return False
        self._warn(f"cache database {self.path} was damaged ({error}): moved aside and started afresh")
        self._queued, self._queued_rows = {}, 0
        return True

    def _open_read_only(self, reason: str) -> None:
        try:
            connection = _connect(self.path, read_only=True)
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._connection, self.state = connection, "ro"
            self._warn(f"cache {self.path.parent} is not writable ({reason}): read-only, new results not cached")
        except (sqlite3.Error, OSError):
            self.state = "off"
            self._warn(f"cache {self.path.parent} cannot be used ({reason}): computing without caching")

    def _initialised(self, connection: sqlite3.Connection) -> sqlite3.Connection:
        try:
            connection.execute(f"PRAGMA page_size={int(self._page_size)}")  # only takes effect on a new file
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(self._schema)
        except BaseException:
            connection.close()
            raise
        return connection

    def _move_aside(self) -> bool:
        try:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}"))
            Path(f"{self.path}-journal").unlink(missing_ok=True)
            return True
        except OSError:
            return False

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction open: nothing to undo
            self._connection.execute("ROLLBACK")

    def _fail(self, error: sqlite3.Error, *, reading: bool) -> None:
        if _error_code(error) in _DAMAGED and self._start_afresh(error):
            return
        if _error_code(error) in _DAMAGED:
            self.state = "off"
            self._warn(f"cache database {self.path} is damaged ({error}): computing without it")
        elif reading:
            self._warn(f"cache {self.path} could not be read ({error}): computing what it would hold")
        else:
            self.state = "ro"
            self._warn(f"cache {self.path.parent} cannot be written ({error}): new results are not cached")


class EmbeddingStore(Protocol):
    """Where the embedding step keeps embeddings: `EmbeddingCache` (SQLite, the default) or the parquet store
    (`tlearn.backbones.parquet_store.ParquetEmbeddingStore`, for clusters). Both key them by content hash, check
    each row on read and never raise for I/O trouble."""

    description: dict[str, Any]
    corrupt_entries: int  # rows found damaged or foreign (and recomputed) during this session

    @property
    def dim(self) -> int | None: ...

    @property
    def writable(self) -> bool: ...

    def get_many(self, content_hashes: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]: ...

    def put(self, content_hash: str, embedding: np.ndarray) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def known_contents(self, files_db: str, decoder_key: str) -> Callable[[str], bool]:
        """A picklable probe for decoding workers: whether a content is stored here or has a decoding verdict."""
        ...


_EMBEDDINGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    hash BLOB PRIMARY KEY, dtype TEXT NOT NULL, dim INTEGER NOT NULL, crc32 INTEGER NOT NULL, vector BLOB NOT NULL
);
"""
_PUT_EMBEDDING = "INSERT OR REPLACE INTO embeddings (hash, dtype, dim, crc32, vector) VALUES (?, ?, ?, ?, ?)"
_DELETE_EMBEDDING = "DELETE FROM embeddings WHERE hash = ? AND crc32 = ?"


def row_crc32(data: bytes) -> int:
    """The CRC32 stored beside a vector's bytes (every embedding store checks a row against it on reading)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def content_key(content_hash: str) -> bytes:
    """A content hash (hex SHA-256) as the 32-byte key every store files it under."""
    return bytes.fromhex(content_hash)


class EmbeddingCache:
    """Embeddings of one backbone + preprocessing (a namespace), keyed by image content hash.

    Args:
        root: the cache root.
        namespace: identity of backbone + preprocessing (one database file each).
        description: what the namespace is, for `tlearn cache info`.
        dim: the embedding length, when known: stored vectors of another length are discarded.
        warn: where the one warning about an unusable cache goes (default: `warnings.warn`).

    Example:
        >>> cache = EmbeddingCache(cache_root(), "a1b2c3", {"backbone": "tf_efficientnet_lite0"})  # doctest: +SKIP
        >>> cache.put(sha, embedding); cache.get(sha)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path,
        namespace: str,
        description: dict[str, Any],
        *,
        dim: int | None = None,
        warn: Warn | None = None,
    ) -> None:
        self.path = root / EMBEDDINGS_DIR / f"{namespace}.sqlite"
        self.description = dict(description)
        self._store = SqliteStore(self.path, _EMBEDDINGS_SCHEMA, warn or warn_once(), page_size=16384)
        self._dim = dim
        self._described = False
        self.corrupt_entries = 0  # rows found damaged or foreign (and recomputed) during this session

    @property
    def dim(self) -> int | None:
        """The embedding length: as given, else as recorded by the first writer, else unknown (None)."""
        if self._dim is None:
            rows = self._store.read("SELECT value FROM meta WHERE key = 'dim'")
            self._dim = int(rows[0][0]) if rows else None
        return self._dim

    @property
    def writable(self) -> bool:
        """Whether new embeddings are stored (False for a read-only, full or unusable cache)."""
        return self._store.writable

    def get(self, content_hash: str) -> np.ndarray | None:
        """The cached embedding, or None when absent, damaged or of the wrong length or dtype."""
        return next((vector for _, vector in self.get_many([content_hash])), None)

    def get_many(self, content_hashes: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(hash, embedding) for each given hash that holds a sound entry, read a chunk at a time."""
        keys = [content_key(content_hash) for content_hash in dict.fromkeys(content_hashes)]
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start : start + _READ_CHUNK]
            rows = self._store.read(
                f"SELECT hash, dtype, dim, crc32, vector FROM embeddings WHERE hash IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, dtype, dim, crc32, vector in rows:
                embedding = self._checked(dtype, dim, crc32, vector)
                if embedding is None:
                    self._discard(key, crc32)
                else:
                    yield key.hex(), embedding

    def put(self, content_hash: str, embedding: np.ndarray) -> None:
        """Store one embedding (1-D float array); written in batches, so call `flush` or `close` at the end."""
        vector = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        if not self._described:
            self._describe(len(vector))
        data = vector.astype(VECTOR_DTYPE, copy=False).tobytes()
        self._store.queue(_PUT_EMBEDDING, (content_key(content_hash), VECTOR_DTYPE, len(vector), row_crc32(data), data))

    def flush(self) -> None:
        """Write the embeddings put so far."""
        self._store.flush()

    def close(self) -> None:
        """Write the embeddings put so far and close the database."""
        self._store.close()

    def known_contents(self, files_db: str, decoder_key: str) -> KnownContents:
        """A picklable probe for decoding workers: this namespace's embeddings, or a verdict in `files_db`."""
        return KnownContents(str(self.path), files_db, decoder_key)

    def _describe(self, dim: int) -> None:
        self._described = True
        if self.dim is None:
            self._dim = dim
        self._store.queue("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", ("dim", str(dim)))
        self._store.queue(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", ("description", json.dumps(self.description))
        )

    def _checked(self, dtype: str, dim: int, crc32: int, vector: bytes) -> np.ndarray | None:
        expected = self.dim
        if dtype != VECTOR_DTYPE or (expected is not None and dim != expected):
            return None
        if len(vector) != dim * np.dtype(VECTOR_DTYPE).itemsize or row_crc32(vector) != crc32:
            return None
        return np.frombuffer(vector, dtype=VECTOR_DTYPE).astype(np.float32, copy=True)

    def _discard(self, key: bytes, crc32: int) -> None:
        """Count a bad row; delete it when the cache is writable (a read-only cache is left untouched)."""
        self.corrupt_entries += 1
        self._store.queue(_DELETE_EMBEDDING, (key, crc32))


_FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, device INTEGER NOT NULL, inode INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    decoder TEXT NOT NULL, hash BLOB NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (decoder, hash)
);
"""


class RejectCache:
    """Why a file content could not be decoded, so later runs report it without decoding it again.

    Only lasting verdicts belong here (not an image, truncated, too large): the caller never stores a
    transient failure such as running out of memory.
    """

    def __init__(self, root: Path, decoder_key: str, *, warn: Warn | None = None) -> None:
        self.decoder_key = decoder_key
        self.path = root / FILES_DB
        self._store = SqliteStore(self.path, _FILES_SCHEMA, warn or warn_once())

    def get(self, content_hash: str) -> str | None:
        """The stored reason, or None."""
        rows = self._store.read(
            "SELECT reason FROM rejects WHERE decoder = ? AND hash = ?", (self.decoder_key, content_key(content_hash))
        )
        return str(rows[0][0]) if rows else None

    def get_many(self, content_hashes: Iterable[str]) -> dict[str, str]:
        """{hash: reason} for the given hashes that have a stored verdict."""
        keys = [content_key(content_hash) for content_hash in dict.fromkeys(content_hashes)]
        found: dict[str, str] = {}
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start : start + _READ_CHUNK]
            rows = self._store.read(
                f"SELECT hash, reason FROM rejects WHERE decoder = ? AND hash IN ({','.join('?' * len(chunk))})",
                (self.decoder_key, *chunk),
            )
            found.update((key.hex(), str(reason)) for key, reason in rows)
        return found

    def put(self, content_hash: str, reason: str) -> None:
        """Record a lasting decoding failure for this content."""
        self._store.queue(
            "INSERT OR REPLACE INTO rejects (decoder, hash, reason) VALUES (?, ?, ?)",
            (self.decoder_key, content_key(content_hash), reason),
        )

    def close(self) -> None:
        """Write what is queued and close the database."""
        self._store.close()


@dataclass(frozen=True)
class FileState:
    """A file's identity for the index: its path and what `stat` says about it when the run looked."""

    path_key: bytes  # absolute path as bytes (file names need not be valid UTF-8)
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    seen_ns: int  # when the stat was taken (wall clock), for the racy-timestamp rule

    @property
    def signature(self) -> tuple[int, int, int, int, int]:
        return (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns)


class FileIndex:
    """(path, device, inode, size, mtime_ns, ctime_ns) → content hash, so unchanged files are never re-read.

    Like git's index: a file whose stat matches its entry is trusted to hold the recorded content; any change
    (a rewrite, a copy over it with `cp -p`, which keeps mtime but not ctime, a replacement by rename, which
    changes the inode) sends it back to be read and hashed. Entries are verified lazily: whenever a file is
    decoded, the bytes decoded are hashed again and the entry rewritten.

    Example:
        >>> index = FileIndex(cache_root())  # doctest: +SKIP
        >>> states, errors = index.stat(paths); hashes = index.lookup(states)  # doctest: +SKIP
    """

    def __init__(self, root: Path, *, warn: Warn | None = None) -> None:
        self._store = SqliteStore(root / FILES_DB, _FILES_SCHEMA, warn or warn_once())

    @staticmethod
    def stat(paths: Sequence[str | Path]) -> tuple[list[FileState | None], dict[int, str]]:
        """The state of each file, and a reason for each position that cannot be stat'ed.

        A member of a tar shard (`shards/train-000.tar/0001.jpg`) has the shard's device, inode and times with
        the member's size (`tlearn.data.shards.stat_path`): any rewrite of the shard sends its members back to
        be hashed, and no member of an unchanged shard is read again.
        """
        states: list[FileState | None] = []
        errors: dict[int, str] = {}
        for position, path in enumerate(paths):
            try:
                absolute = os.path.abspath(path)
                info = stat_path(absolute)
                states.append(
                    FileState(
                        os.fsencode(absolute),
                        info.st_dev,
                        info.st_ino,
                        info.st_size,
                        info.st_mtime_ns,
                        info.st_ctime_ns,
                        time.time_ns(),
                    )
                )
            except OSError as error:
                states.append(None)
                errors[position] = f"cannot read file ({error.strerror or error})"
            except ShardError as error:
                states.append(None)
                errors[position] = str(error)
        return states, errors

    def lookup(self, states: Sequence[FileState | None]) -> list[str | None]:
        """The recorded content hash of each file whose stat is unchanged; None for the others."""
        wanted = {state.path_key: state for state in states if state is not None}
        recorded: dict[bytes, tuple[tuple[int, ...], bytes]] = {}
        keys = list(wanted)
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start : start + _READ_CHUNK]
            rows = self._store.read(
                "SELECT path, device, inode, size, mtime_ns, ctime_ns, hash FROM files "
                f"WHERE path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            recorded.update((row[0], (tuple(row[1:6]), row[6])) for row in rows)
        hashes: list[str | None] = []
        for state in states:
            entry = recorded.get(state.path_key) if state is not None else None
            hashes.append(entry[1].hex() if entry is not None and entry[0] == state.signature else None)
        return hashes

    def record(self, state: FileState, content_hash: str) -> bool:
        """Remember that the file in `state` held `content_hash`; returns whether it was recorded.

        A file modified within `RACY_SECONDS` before it was stat'ed is not recorded: a second change within
        the same timestamp tick would leave its stat unchanged (git's "racy" entries). It is hashed again on
        the next run instead.
        """
        racy_after = state.seen_ns - int(RACY_SECONDS * 1e9)
        if state.mtime_ns >= racy_after or state.ctime_ns >= racy_after:
            return False
        self._store.queue(
            "INSERT OR REPLACE INTO files (path, device, inode, size, mtime_ns, ctime_ns, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (state.path_key, *state.signature, content_key(content_hash)),
        )
        return True

    def close(self) -> None:
        """Write what is queued and close the database."""
        self._store.close()


# Read-only connections of a probe, per process (a connection must never cross a fork).
_probe_connections: dict[tuple[int, str], sqlite3.Connection] = {}


@dataclass(frozen=True)
class KnownContents:
    """A picklable "is this content already settled?" question for decoding workers.

    True when the namespace holds an embedding for the hash or the file index holds a decoding verdict for
    it, so a worker that has just hashed a renamed or copied file can skip decoding it. A wrong "no" only
    costs a decode; a "yes" for a damaged entry is caught by the caller, who decodes the file again.
    """

    embeddings_db: str
    files_db: str
    decoder_key: str

    def __call__(self, content_hash: str) -> bool:
        key = content_key(content_hash)
        embeddings = _probe_connection(self.embeddings_db)
        if embeddings is not None and _probe(embeddings, "SELECT 1 FROM embeddings WHERE hash = ?", (key,)):
            return True
        files = _probe_connection(self.files_db)
        sql = "SELECT 1 FROM rejects WHERE decoder = ? AND hash = ?"
        return files is not None and _probe(files, sql, (self.decoder_key, key))


def _probe_connection(path: str) -> sqlite3.Connection | None:
    """A read-only connection to `path` for this process; None while the database does not exist yet."""
    slot = (os.getpid(), path)
    if slot not in _probe_connections and os.path.exists(path):
        with contextlib.suppress(sqlite3.Error):
            _probe_connections[slot] = _connect(Path(path), read_only=True)
    return _probe_connections.get(slot)


def _probe(connection: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> bool:
    try:
        return connection.execute(sql, parameters).fetchone() is not None
    except sqlite3.Error:
        return False


@dataclass(frozen=True)
class CacheSummary:
    """What `tlearn cache info` shows."""

    root: Path
    total_bytes: int
    embeddings: dict[str, dict[str, Any]]  # namespace → {"entries", "bytes", "description"}
    backbones: list[str]
    rejects: int
    indexed_files: int = 0
    onnx: list[str] = field(default_factory=list)  # exported embedding graphs (file stems)
    legacy_entries: int = 0  # one-file-per-embedding entries of tlearn ≤ 0.1 (never read; `clear` removes them)
    results: int = 0  # computed results kept for warm runs (`tlearn.backbones.result_cache`)


def summarize(root: Path) -> CacheSummary:
    """Count entries and bytes under the cache root, without writing anything (missing root → empty summary)."""
    embeddings: dict[str, dict[str, Any]] = {}
    folder = root / EMBEDDINGS_DIR
    for path in sorted(folder.glob("*.sqlite")) if folder.is_dir() else []:
        count = _count(path, "SELECT count(*) FROM embeddings")
        described = _read_only_rows(path, "SELECT value FROM meta WHERE key = 'description'")
        try:
            description = json.loads(described[0][0]) if described else {}
        except ValueError:
            description = {}
        embeddings[path.stem] = {"entries": count, "bytes": path.stat().st_size, "description": description}
    legacy = len(list(folder.glob("*/*/*.safetensors"))) if folder.is_dir() else 0
    backbones_dir = root / "backbones"
    backbones = sorted(path.name for path in backbones_dir.iterdir()) if backbones_dir.is_dir() else []
    onnx_dir = root / "onnx"
    onnx = sorted(path.stem for path in onnx_dir.glob("*.onnx")) if onnx_dir.is_dir() else []
    files_db = root / FILES_DB
    total = sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) if root.is_dir() else 0
    return CacheSummary(
        root,
        total,
        embeddings,
        backbones,
        _count(files_db, "SELECT count(*) FROM rejects"),
        _count(files_db, "SELECT count(*) FROM files"),
        onnx,
        legacy,
        _count(root / RESULTS_DB, "SELECT count(*) FROM results"),
    )


def clear(root: Path) -> int:
    """Delete everything tlearn cached under `root`; returns the bytes freed."""
    freed = summarize(root).total_bytes
    # selections: `tlearn select`; tables: DataFrames and datasets written as label files (`tlearn.data.tables`)
    for name in (EMBEDDINGS_DIR, "rejects", "backbones", "onnx", "selections", "tables"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in (FILES_DB, RESULTS_DB):
        for path in root.glob(f"{name}*"):
            path.unlink(missing_ok=True)
    return freed


def _read_only_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    if not path.is_file():
        return []
    try:
        connection = _connect(path, read_only=True)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return []


def _count(path: Path, sql: str) -> int:
    rows = _read_only_rows(path, sql)
    return int(rows[0][0]) if rows else 0
