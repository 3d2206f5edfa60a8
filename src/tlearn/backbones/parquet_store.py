"""A shareable embedding store for clusters: immutable parquet files, one per writer's flush, read as one dataset.

The local cache keeps embeddings in one SQLite database per namespace (`tlearn.backbones.cache`), which relies on
POSIX locks that network file systems (NFS, S3-fuse, some Lustre mounts) do not always honour. This store needs
no locks: every writer (a run, a torchrun rank, a machine) writes its own files and never touches anyone else's.
Set `TLEARN_EMBEDDING_STORE=DIR` to use it; the file index, results and backbones stay under `TLEARN_CACHE_DIR`.

Layout, keyed like the SQLite cache by the SHA-256 of each image's bytes:

    DIR/<namespace>/part-<host>-<pid>-<random>.parquet     columns key (32 bytes), vector (float32 x dim), crc32

A flush writes its rows to `.part-....parquet.tmp` in the same folder, fsyncs it and renames it into place, so a
reader lists only complete files and two writers never share a file. Each file carries the namespace, its
description and the embedding length in its key-value metadata. A reader lists the namespace's `*.parquet`,
reads each file's key column once, then only the row groups that hold wanted keys. A row whose CRC-32 or length
does not match is skipped and recomputed; a file that is not parquet, unreadable or of another namespace is
skipped with a warning and never deleted (another machine may still be writing beside it). Nothing here fails a
run: an unwritable store is used read-only, an unreadable one is a miss. `compact` merges a namespace's small
files into one (written and renamed first, then only the merged files are removed).

Example:
    >>> store = ParquetEmbeddingStore(Path("/shared/emb"), "a1b2c3", {"backbone": {}})  # doctest: +SKIP
    >>> store.put(sha, embedding); store.flush(); dict(store.get_many([sha]))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.backbones.cache import (
    VECTOR_DTYPE,
    EmbeddingCache,
    EmbeddingStore,
    KnownContents,
    Warn,
    content_key,
    row_crc32,
    warn_once,
)
from tlearn.errors import TlearnError

STORE_ENV = "TLEARN_EMBEDDING_STORE"
FLUSH_ROWS = 4096  # rows per file: few files for a big folder (245 for a million images), little lost to a crash
FLUSH_SECONDS = 60.0  # ... or this old, so a slow run still leaves its work behind
ROW_GROUP_ROWS = 1024  # the unit a reader reads: one row group per wanted key at most
COMPACT_BELOW_ROWS = 262_144  # `compact` merges files smaller than this
FORMAT = "1"
_META_FORMAT, _META_NAMESPACE = b"tlearn.format", b"tlearn.namespace"
_META_DESCRIPTION, _META_DIM = b"tlearn.description", b"tlearn.dim"
_COLUMNS = ["key", "vector", "crc32"]
_KEY_BYTES = 32


def store_dir_from_env() -> Path | None:
    """`$TLEARN_EMBEDDING_STORE` as a path, or None when it is unset (the local SQLite cache is used)."""
    configured = os.environ.get(STORE_ENV, "").strip()
    return Path(configured).expanduser() if configured else None


def open_embedding_store(
    cache_root: Path, namespace: str, description: dict[str, Any], *, dim: int | None, warn: Warn
) -> EmbeddingStore:
    """The store embeddings go to: the parquet store in `$TLEARN_EMBEDDING_STORE`, else the local SQLite cache."""
    store_dir = store_dir_from_env()
    if store_dir is not None and importlib.util.find_spec("pyarrow") is None:
        warn(f'{STORE_ENV} needs pyarrow (pip install "tlearn[store]"): embeddings go to the local cache instead')
        store_dir = None
    if store_dir is None:
        return EmbeddingCache(cache_root, namespace, description, dim=dim, warn=warn)
    return ParquetEmbeddingStore(store_dir, namespace, description, dim=dim, warn=warn)


def part_name() -> str:
    """A file name no other writer will pick: host, process and 64 random bits."""
    return f"part-{_host()}-{os.getpid()}-{secrets.token_hex(8)}.parquet"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname())[:64] or "host"


def _remove_abandoned_temporaries(folder: Path) -> int:
    """Remove the temporary files (`.part-HOST-PID-....parquet.tmp`) of writers on this machine that no longer
    run: a writer killed between creating its file and renaming it leaves one behind. Only files of that exact
    form, of this host, whose process is gone; another host's are left alone (their processes cannot be asked).
    """
    pattern = re.compile(rf"\.part-{re.escape(_host())}-(\d+)-[0-9a-f]{{16}}\.parquet\.tmp")
    removed = 0
    for path in folder.iterdir():
        matched = pattern.fullmatch(path.name)
        if matched is None or not path.is_file() or path.is_symlink() or _running(int(matched.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number no process has): never take it for a dead writer
    return True


@dataclass
class _Part:
    """One complete file of a namespace, with its keys read (rows numbered from 0 across its row groups)."""

    path: Path
    keys: Any  # pyarrow FixedSizeBinaryArray, (rows,)
    group_starts: np.ndarray  # first row of each row group, (groups,)
    dim: int
    metadata: dict[bytes, bytes] = field(repr=False)


def _reason(error: BaseException) -> str:
    """An exception as one short line for a warning (pyarrow's messages can span a whole schema)."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


class _Unusable(Exception):
    """A file in a namespace folder that is not one of ours (the message says why)."""


def _part_files(folder: Path) -> list[Path]:
    """The namespace's complete files (temporary `.tmp` names of writers in progress never match)."""
    return sorted(path for path in folder.glob("*.parquet") if not path.name.startswith("."))


def _read_part(path: Path, namespace: str) -> _Part:
    """Open a file's footer and key column; `_Unusable` when it is not a file of this namespace."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as handle:
            schema = handle.schema_arrow
            metadata = dict(schema.metadata or {})
            if metadata.get(_META_FORMAT) != FORMAT.encode():
                raise _Unusable("not a tlearn embedding file (no tlearn.format 1 in its metadata)")
            if metadata.get(_META_NAMESPACE) != namespace.encode():
                found = metadata.get(_META_NAMESPACE, b"?").decode(errors="replace")
                raise _Unusable(f"of namespace {found}, not {namespace}")
            vector = schema.field("vector").type if "vector" in schema.names else None
            if (
                schema.names[:3] != _COLUMNS
                or schema.field("key").type != pa.binary(_KEY_BYTES)
                or not pa.types.is_fixed_size_list(vector)
                or vector.value_type != pa.float32()
                or schema.field("crc32").type != pa.uint32()
            ):
                columns = ", ".join(f"{column.name}: {column.type}" for column in schema)
                raise _Unusable(f"unexpected columns ({columns})")
            keys = handle.read(columns=["key"]).column("key").combine_chunks()
            sizes = [handle.metadata.row_group(group).num_rows for group in range(handle.num_row_groups)]
    except (OSError, pa.ArrowException) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise _Unusable(f"not readable as parquet ({_reason(error)})") from error
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)
    return _Part(path, keys, starts, vector.list_size, metadata)


def _sound_rows(part: _Part, rows: np.ndarray, dim: int | None) -> Iterator[tuple[list[tuple[bytes, np.ndarray]], int]]:
    """Per row group holding some of `rows`: the (key, vector) of those rows that pass their checks (CRC-32,
    length), and how many failed them. Reads only those row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if dim is not None and part.dim != dim:
        yield [], len(rows)
        return
    groups = np.searchsorted(part.group_starts, rows, side="right") - 1
    with pq.ParquetFile(part.path) as handle:
        for group in np.unique(groups):
            local = (rows[groups == group] - part.group_starts[group]).astype(np.int64)
            table = handle.read_row_group(int(group), columns=_COLUMNS).take(_arrow(local, pa.int64()))
            keys, crcs = table.column("key").to_pylist(), table.column("crc32").to_pylist()
            vectors = table.column("vector").combine_chunks()
            if vectors.null_count or vectors.values.null_count:  # never written by tlearn: not trusted at all
                yield [], len(local)
                continue
            matrix = _numpy(vectors.flatten(), VECTOR_DTYPE).reshape(len(local), part.dim)  # (n, dim)
            found = [
                (key, vector.astype(np.float32, copy=True))
                for key, crc, vector in zip(keys, crcs, matrix, strict=True)
                if key is not None and crc == row_crc32(vector.tobytes())
            ]
            yield found, len(local) - len(found)


def _numpy(array, dtype: str | type) -> np.ndarray:
    """A null-free primitive Arrow array as NumPy, read from its data buffer (pyarrow's own `to_numpy` imports
    pandas: 0.2 s of a warm run)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _arrow(values: np.ndarray | bytes, arrow_type):  # -> pyarrow.Array
    """NumPy values (or packed fixed-size binary) as an Arrow array without a copy, and without pandas."""
    import pyarrow as pa

    if isinstance(values, bytes):
        return pa.Array.from_buffers(arrow_type, len(values) // arrow_type.byte_width, [None, pa.py_buffer(values)])
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


class ParquetEmbeddingStore:
    """Embeddings of one backbone + preprocessing (a namespace) in a folder of parquet files any machine may share.

    Same interface as `EmbeddingCache` (the `EmbeddingStore` protocol). Written rows are held until `flush`
    (or `FLUSH_ROWS` rows, or `FLUSH_SECONDS`), then written as one new file.

    Args:
        root: the store folder (`$TLEARN_EMBEDDING_STORE`); namespaces are its subfolders.
        namespace: identity of backbone + preprocessing.
        description: what the namespace is, kept in each file's metadata.
        dim: the embedding length, when known: stored vectors of another length are skipped.
        warn: where the one warning about an unusable store or file goes (default: `warnings.warn`).
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
        self.root = Path(root)
        self.namespace = namespace
        self.path = self.root / namespace  # the namespace's folder
        self.description = dict(description)
        self.corrupt_entries = 0  # rows found damaged or foreign (and recomputed) during this session
        self._dim = dim
        self._warn = warn or warn_once()
        self._state: str | None = None  # None until a write is attempted, then "rw" or "ro"
        self._parts: dict[Path, _Part] = {}
        self._skipped: set[Path] = set()  # files warned about once and left alone
        self._queued: list[tuple[bytes, np.ndarray]] = []
        self._last_flush = time.monotonic()

    @property
    def dim(self) -> int | None:
        """The embedding length: as given, else as the first readable file records it, else unknown (None)."""
        if self._dim is None:
            parts = self._refresh()
            self._dim = parts[0].dim if parts else None
        return self._dim

    @property
    def writable(self) -> bool:
        """Whether new embeddings are stored (False for a read-only or unusable store folder)."""
        if self._state is None:
            self._state = "rw" if self._probe_write() else "ro"
        return self._state == "rw"

    def get(self, content_hash: str) -> np.ndarray | None:
        """The stored embedding, or None when absent or damaged."""
        return next((vector for _, vector in self.get_many([content_hash])), None)

    def get_many(self, content_hashes: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(hash, embedding) for each given hash with a sound row in any file; each hash at most once."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = {content_key(content_hash) for content_hash in content_hashes}
        for _ in range(2):  # twice only if a file vanished (merged by `compact`) while it was read
            parts = self._refresh()
            if not wanted or not parts:
                return
            all_keys = pa.concat_arrays([part.keys for part in parts])
            wanted_keys = _arrow(b"".join(wanted), pa.binary(_KEY_BYTES))
            hits = _numpy(pc.indices_nonzero(pc.is_in(all_keys, value_set=wanted_keys)), np.uint64).astype(np.int64)
            part_starts = np.cumsum([0] + [len(part.keys) for part in parts])
            owners = np.searchsorted(part_starts, hits, side="right") - 1
            vanished = False
            for index in np.unique(owners):
                part = parts[index]
                try:
                    groups = list(_sound_rows(part, hits[owners == index] - part_starts[index], self.dim))
                except FileNotFoundError:
                    self._parts.pop(part.path, None)
                    vanished = True
                    continue
                except (OSError, ValueError, pa.ArrowException) as error:
                    self._skip(part.path, f"not readable ({_reason(error)})")
                    continue
                for rows, damaged in groups:
                    self.corrupt_entries += damaged
                    for key, vector in rows:
                        if key in wanted:
                            wanted.discard(key)
                            yield key.hex(), vector
            if not vanished:
                return

    def put(self, content_hash: str, embedding: np.ndarray) -> None:
        """Store one embedding (1-D float array); written in batches, so call `flush` or `close` at the end."""
        vector = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        if self._dim is None:
            self._dim = len(vector)
        if not self.writable:
            return
        if self._queued and len(self._queued[0][1]) != len(vector):
            self.flush()  # a file holds one length
        if not self._queued:
            self._last_flush = time.monotonic()  # the age that counts is the oldest queued row's
        self._queued.append((content_key(content_hash), vector.astype(VECTOR_DTYPE, copy=True)))
        if len(self._queued) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the embeddings put so far as one new file; a failure makes the store read-only (warned once)."""
        import pyarrow as pa

        self._last_flush = time.monotonic()
        if not self._queued or self._state != "rw":
            return
        queued, self._queued = self._queued, []
        try:
            _write_atomically(self.path, _table(queued, self._metadata(len(queued[0][1]))))
        except (OSError, pa.ArrowException) as error:
            self._state = "ro"
            reason = _reason(error)
            self._warn(f"embedding store {self.path} cannot be written ({reason}): new embeddings are not stored")

    def close(self) -> None:
        """Write the embeddings put so far and forget the files' keys (a later use reads them again)."""
        self.flush()
        self._parts.clear()

    def known_contents(self, files_db: str, decoder_key: str) -> ParquetContents:
        """A picklable probe for decoding workers: True for contents with a file in this store, or a verdict."""
        return ParquetContents(str(self.path), self.namespace, KnownContents("", files_db, decoder_key))

    def _refresh(self) -> list[_Part]:
        """The namespace's usable files, reading the keys of those not seen yet (bad ones warned about once)."""
        try:
            listed = _part_files(self.path) if self.path.is_dir() else []
        except OSError as error:
            self._warn(f"embedding store {self.path} cannot be read ({error.strerror or error}): computing without it")
            return []
        for path in listed:
            if path in self._parts or path in self._skipped:
                continue
            try:
                self._parts[path] = _read_part(path, self.namespace)
            except FileNotFoundError:
                continue  # merged and removed by `compact` since the listing
            except _Unusable as reason:
                self._skip(path, str(reason))
        present = set(listed)
        return [part for path, part in self._parts.items() if path in present]

    def _skip(self, path: Path, reason: str) -> None:
        self._skipped.add(path)
        self._parts.pop(path, None)
        self._warn(f"embedding store: skipped {path}: {reason} (left in place)")

    def _probe_write(self) -> bool:
        """Whether a file can be created in the namespace folder (a read-only mount or folder says no, warned)."""
        probe = self.path / f".probe-{part_name()}.tmp"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with _create(probe):
                pass
            probe.unlink()
            return True
        except OSError as error:
            with contextlib.suppress(OSError):
                probe.unlink()
            reason = error.strerror or str(error)
            self._warn(f"embedding store {self.path} is not writable ({reason}): read-only, new embeddings not stored")
            return False

    def _metadata(self, dim: int) -> dict[bytes, bytes]:
        return {
            _META_FORMAT: FORMAT.encode(),
            _META_NAMESPACE: self.namespace.encode(),
            _META_DESCRIPTION: json.dumps(self.description).encode(),
            _META_DIM: str(dim).encode(),
        }


def _create(path: Path):  # -> a binary file object; a separate function so tests can refuse writes
    """A new file, opened for writing; fails when the name exists (names are unique, so it never should)."""
    return open(path, "xb")


def _table(rows: list[tuple[bytes, np.ndarray]], metadata: dict[bytes, bytes]):  # -> pyarrow.Table
    """Rows as a table: key, the float32 vector, the CRC-32 of the vector's little-endian bytes."""
    import pyarrow as pa

    matrix = np.stack([vector for _, vector in rows]).astype(VECTOR_DTYPE, copy=False)  # (n, dim)
    crcs = np.array([row_crc32(vector.tobytes()) for vector in matrix], dtype=np.uint32)
    vectors = pa.FixedSizeListArray.from_arrays(_arrow(matrix.reshape(-1), pa.float32()), matrix.shape[1])
    keys = _arrow(b"".join(key for key, _ in rows), pa.binary(_KEY_BYTES))
    table = pa.Table.from_arrays([keys, vectors, _arrow(crcs, pa.uint32())], names=_COLUMNS)
    return table.replace_schema_metadata(metadata)


def _write_atomically(folder: Path, table) -> Path:
    """Write `table` as a new part: a temporary name, fsync, then rename, so readers only ever see whole files."""
    import pyarrow.parquet as pq

    final = folder / part_name()
    temporary = folder / f".{final.name}.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _create(temporary) as handle:
            pq.write_table(table, handle, row_group_size=ROW_GROUP_ROWS, use_dictionary=False, write_statistics=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return final


# Keys of a namespace as one decoding worker saw them: (pid, folder) → (probe token, keys).
_probe_keys: dict[tuple[int, str], tuple[str, frozenset[bytes]]] = {}


@dataclass(frozen=True)
class ParquetContents:
    """`KnownContents` for the parquet store: the namespace's keys (read once per worker and run) or a verdict.

    A wrong "no" only costs a decode, so files the store cannot read are simply left out, without a warning.
    """

    folder: str
    namespace: str
    verdicts: KnownContents  # decoding verdicts of the local file index (its embeddings_db is empty: unused)
    token: str = field(default_factory=lambda: secrets.token_hex(8))  # one per run: a later run reads keys again

    def __call__(self, content_hash: str) -> bool:
        return content_key(content_hash) in self._keys() or self.verdicts(content_hash)

    def _keys(self) -> frozenset[bytes]:
        slot = (os.getpid(), self.folder)
        cached = _probe_keys.get(slot)
        if cached is None or cached[0] != self.token:
            keys: set[bytes] = set()
            with contextlib.suppress(OSError):
                for path in _part_files(Path(self.folder)):
                    with contextlib.suppress(_Unusable, OSError):
                        keys.update(_read_part(path, self.namespace).keys.to_pylist())
            cached = _probe_keys[slot] = (self.token, frozenset(keys))
        return cached[1]


@dataclass
class StoredNamespace:
    """One namespace of the store as `tlearn cache info` shows it (read from the files' footers only)."""

    namespace: str
    files: int
    rows: int  # rows in its files (a content embedded on two machines before a compaction counts twice)
    bytes: int
    description: dict[str, Any]  # what the namespace is (backbone, preprocessing), from its first file
    skipped: int  # files in its folder that are not readable tlearn embedding files of it


def _require_store_folder(root: Path) -> None:
    """Raise a one-line `TlearnError` unless pyarrow is installed and `root` is a folder."""
    if importlib.util.find_spec("pyarrow") is None:
        raise TlearnError('the parquet embedding store needs pyarrow: pip install "tlearn[store]"')
    if not Path(root).is_dir():
        raise TlearnError(f"{root}: no such folder (expected the folder {STORE_ENV} points to)")


def summarize_store(root: Path) -> list[StoredNamespace]:
    """What the store at `root` holds, per namespace folder, without reading any vector.

    Raises:
        TlearnError: `root` is not a folder, or pyarrow is not installed.
    """
    _require_store_folder(root)
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = []
    for folder in sorted(path for path in Path(root).iterdir() if path.is_dir()):
        summary = StoredNamespace(folder.name, 0, 0, 0, {}, 0)
        for path in _part_files(folder):
            try:
                footer = pq.read_metadata(path)
                metadata = footer.metadata or {}
                if (
                    metadata.get(_META_FORMAT) != FORMAT.encode()
                    or metadata.get(_META_NAMESPACE) != folder.name.encode()
                ):
                    raise ValueError("not a file of this namespace")
                summary.description = summary.description or json.loads(metadata.get(_META_DESCRIPTION, b"{}"))
                summary.files, summary.rows = summary.files + 1, summary.rows + footer.num_rows
                summary.bytes += path.stat().st_size
            except (OSError, ValueError, pa.ArrowException):
                summary.skipped += 1
        found.append(summary)
    return found


@dataclass(frozen=True)
class Compaction:
    """What `compact` did in one namespace."""

    namespace: str
    merged_files: int
    rows: int  # sound, distinct rows in the merged file
    bytes_before: int
    bytes_after: int
    path: Path | None  # the merged file (None when nothing was merged)
    abandoned_removed: int = 0  # temporary files of stopped writers on this machine, removed


def compact(root: Path, *, below_rows: int = COMPACT_BELOW_ROWS, warn: Warn | None = None) -> list[Compaction]:
    """Merge each namespace's files of fewer than `below_rows` rows into one, safely beside running writers.

    The merged file is written and renamed into place before the files it merged are removed, and only those;
    files written meanwhile, foreign files and files of another length are left alone. Damaged rows and copies
    of a key are dropped. Temporary files of writers on this machine that were killed mid-write are removed.

    Raises:
        TlearnError: `root` is not a folder, or pyarrow is not installed.
    """
    _require_store_folder(root)
    warn = warn or warn_once()
    folders = sorted(path for path in Path(root).iterdir() if path.is_dir())
    return [
        replace(_compact_namespace(folder, below_rows, warn), abandoned_removed=_remove_abandoned_temporaries(folder))
        for folder in folders
    ]


def _compact_namespace(folder: Path, below_rows: int, warn: Warn) -> Compaction:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts: list[_Part] = []
    for path in _part_files(folder):
        try:
            part = _read_part(path, folder.name)
        except FileNotFoundError:
            continue
        except _Unusable as reason:
            warn(f"embedding store: skipped {path}: {reason} (left in place)")
            continue
        if len(part.keys) < below_rows:
            parts.append(part)
    if parts:  # one length per file: merge those of the most common length (others are foreign, left alone)
        lengths = [part.dim for part in parts]
        parts = [part for part in parts if part.dim == max(lengths, key=lengths.count)]
    if len(parts) < 2:
        return Compaction(folder.name, 0, 0, 0, 0, None)
    merged: list[_Part] = []
    seen: set[bytes] = set()
    rows = 0
    final = folder / part_name()
    temporary = folder / f".{final.name}.tmp"
    try:
        with _create(temporary) as handle:
            schema = _table([(b"\0" * _KEY_BYTES, np.zeros(parts[0].dim, np.float32))], parts[0].metadata).schema
            with pq.ParquetWriter(handle, schema, use_dictionary=False, write_statistics=False) as writer:
                for part in parts:
                    try:
                        for sound, _ in _sound_rows(part, np.arange(len(part.keys)), part.dim):  # a row group each
                            fresh = [(key, vector) for key, vector in sound if key not in seen]
                            seen.update(key for key, _ in fresh)
                            if fresh:
                                writer.write_table(_table(fresh, parts[0].metadata))
                            rows += len(fresh)
                    except FileNotFoundError:
                        continue  # merged by another compaction meanwhile
                    except (OSError, ValueError, pa.ArrowException) as error:
                        warn(f"embedding store: skipped {part.path}: not readable ({_reason(error)}) (left in place)")
                        continue  # its rows read before the damage are kept; the file is not removed
                    merged.append(part)
            handle.flush()
            os.fsync(handle.fileno())
        if not merged:  # every file vanished or failed meanwhile: nothing to replace
            temporary.unlink()
            return Compaction(folder.name, 0, 0, 0, 0, None)
        os.rename(temporary, final)
    except (OSError, ValueError, pa.ArrowException) as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        warn(f"embedding store: could not compact {folder} ({_reason(error)}); nothing was removed")
        return Compaction(folder.name, 0, 0, 0, 0, None)
    before = 0
    for part in merged:
        with contextlib.suppress(OSError):
            before += part.path.stat().st_size
            part.path.unlink()
    return Compaction(folder.name, len(merged), rows, before, final.stat().st_size, final)
