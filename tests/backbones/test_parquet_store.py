"""The parquet embedding store: bit-exact, checked on read, never fatal, safe for writers on several machines at once,
and chosen for the embedding step by `TLEARN_EMBEDDING_STORE`."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import colour_image, run_cli
from tlearn.backbones import cache as cache_module
from tlearn.backbones import parquet_store
from tlearn.backbones.cache import EmbeddingCache, warn_once
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.parquet_store import STORE_ENV, ParquetEmbeddingStore, compact, open_embedding_store
from tlearn.data.preprocess import EvalPreprocess
from tlearn.util.progress import Progress

H1, H2, H3, H4 = "ab" * 32, "cd" * 32, "ef" * 32, "01" * 32


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def _filled(root: Path, vectors: dict[str, np.ndarray], namespace: str = "ns") -> ParquetEmbeddingStore:
    store = ParquetEmbeddingStore(root, namespace, {"backbone": {"arch": "x"}})
    for content_hash, vector in vectors.items():
        store.put(content_hash, vector)
    store.close()
    return store


def test_round_trip_is_bit_identical_and_keys_missing_are_not_returned(tmp_path):
    # Values a float conversion or a text round trip would change: -0.0, a subnormal, NaN payloads, infinities.
    bits = np.array([0x80000000, 0x00000001, 0x7FC00001, 0xFFA00000, 0x7F800000, 0x3F800001], dtype=np.uint32)
    vectors = {H1: bits.view(np.float32), H2: np.arange(6, dtype=np.float32) / 7}
    _filled(tmp_path, vectors)
    (part,) = _parts(tmp_path / "ns")
    assert re.fullmatch(rf"part-.+-{os.getpid()}-[0-9a-f]{{16}}\.parquet", part.name)
    metadata = pq.read_schema(part).metadata
    assert json.loads(metadata[b"tlearn.description"]) == {"backbone": {"arch": "x"}}
    assert metadata[b"tlearn.namespace"] == b"ns" and metadata[b"tlearn.dim"] == b"6"
    again = ParquetEmbeddingStore(tmp_path, "ns", {})
    found = dict(again.get_many([H1, H3, H2, H1]))
    assert sorted(found) == [H1, H2]  # H3 was never stored; H1 asked twice, given once
    for content_hash, vector in vectors.items():
        assert found[content_hash].dtype == np.float32
        assert found[content_hash].view(np.uint32).tolist() == vector.view(np.uint32).tolist()
    assert list(dict(again.get_many([H2, H4]))) == [H2] and list(again.get_many([H3, H4])) == []
    assert again.dim == 6 and again.corrupt_entries == 0 and again.get(H4) is None


def _rewrite(part: Path, change) -> None:
    """Rewrite a part with pyarrow, as a careless tool or a bit flip might, keeping its metadata."""
    table = pq.read_table(part)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), part)


def test_a_row_failing_its_checksum_is_skipped_and_the_others_served(tmp_path):
    vectors = {h: np.full(4, n, dtype=np.float32) for n, h in enumerate([H1, H2, H3])}
    _filled(tmp_path, vectors)
    (part,) = _parts(tmp_path / "ns")

    def wrong_vector_for_h2(table: pa.Table) -> pa.Table:
        matrix = np.stack(table.column("vector").to_pylist()).astype(np.float32)
        matrix[table.column("key").to_pylist().index(bytes.fromhex(H2)), 0] = 99.0  # crc32 left as it was
        column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=pa.float32()), 4)
        return table.set_column(1, "vector", column)

    _rewrite(part, wrong_vector_for_h2)
    messages = []
    store = ParquetEmbeddingStore(tmp_path, "ns", {}, warn=messages.append)
    found = dict(store.get_many([H1, H2, H3]))
    assert sorted(found) == [H1, H3] and store.corrupt_entries == 1 and messages == []
    np.testing.assert_array_equal(found[H3], vectors[H3])
    store.put(H2, vectors[H2])  # recomputed, written to a file of its own; the damaged row stays
    store.close()
    again = ParquetEmbeddingStore(tmp_path, "ns", {})
    np.testing.assert_array_equal(dict(again.get_many([H2]))[H2], vectors[H2])
    assert len(_parts(tmp_path / "ns")) == 2


def test_vectors_of_another_length_are_not_served(tmp_path):
    _filled(tmp_path, {H1: np.ones(4, dtype=np.float32)})
    store = ParquetEmbeddingStore(tmp_path, "ns", {}, dim=8)
    assert list(store.get_many([H1])) == [] and store.corrupt_entries == 1


def test_foreign_and_garbage_files_are_skipped_with_a_warning_and_left_in_place(tmp_path):
    _filled(tmp_path, {H1: np.ones(4, dtype=np.float32)})
    _filled(tmp_path, {H2: np.ones(4, dtype=np.float32)}, namespace="other")
    folder = tmp_path / "ns"
    garbage = folder / "part-garbage.parquet"
    garbage.write_bytes(b"PAR1 but not really" * 50)
    foreign = folder / "part-copied-from-other.parquet"
    shutil.copy(_parts(tmp_path / "other")[0], foreign)
    plain = folder / "part-plain.parquet"
    pq.write_table(pa.table({"key": [b"x"], "vector": [1.0]}), plain)
    messages = []
    store = ParquetEmbeddingStore(tmp_path, "ns", {}, warn=messages.append)
    assert sorted(dict(store.get_many([H1, H2]))) == [H1]  # H2 lives in the other namespace only
    assert len(messages) == 3, messages
    for path, reason in [(garbage, "not readable as parquet"), (foreign, "of namespace other"), (plain, "tlearn")]:
        assert any(str(path) in message and reason in message for message in messages), (path, messages)
    assert list(store.get_many([H1, H2])) and len(messages) == 3  # each file is warned about once
    assert garbage.exists() and foreign.exists() and plain.exists()


def _writer(root: str, first: int, count: int, start) -> None:
    """One writer process: `count` rows from key `first` on, a flush every 50, as a rank or a machine would."""
    start.wait(timeout=60)  # both writers begin together
    store = ParquetEmbeddingStore(Path(root), "shared", {"writer": first})
    for n in range(first, first + count):
        store.put(f"{n:064x}", np.full(64, n, dtype=np.float32))
        if n % 50 == 0:
            store.flush()
    store.close()


def test_two_writer_processes_at_once_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_writer, args=(str(tmp_path), first, 600, start)) for first in (0, 400)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    parts = _parts(tmp_path / "shared")
    assert len(parts) == 26 and len({part.name for part in parts}) == 26  # 13 flushes each, one file per flush
    assert not [path for path in (tmp_path / "shared").iterdir() if path.name.endswith(".tmp")]
    store = ParquetEmbeddingStore(tmp_path, "shared", {})
    pairs = list(store.get_many(f"{n:064x}" for n in range(1000)))  # 400..599 written by both: each given once
    found = dict(pairs)
    assert len(pairs) == len(found) == 1000 and store.corrupt_entries == 0
    assert all(float(vector[0]) == int(key, 16) for key, vector in found.items())


def test_readers_never_see_a_file_being_written(tmp_path, monkeypatch):
    _filled(tmp_path, {H1: np.ones(4, dtype=np.float32)})
    folder = tmp_path / "ns"
    (folder / ".part-killed-writer.parquet.tmp").write_bytes(_parts(folder)[0].read_bytes()[:100])  # torn
    seen_mid_write = []
    real_fsync = os.fsync

    def read_while_writing(descriptor: int) -> None:  # the new file is complete but not renamed yet
        messages = []
        reader = ParquetEmbeddingStore(tmp_path, "ns", {}, warn=messages.append)
        seen_mid_write.append((sorted(dict(reader.get_many([H1, H2]))), messages))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", read_while_writing)
    _filled(tmp_path, {H2: np.ones(4, dtype=np.float32)})
    monkeypatch.undo()
    assert seen_mid_write == [([H1], [])]
    messages = []
    after = ParquetEmbeddingStore(tmp_path, "ns", {}, warn=messages.append)
    assert sorted(dict(after.get_many([H1, H2]))) == [H1, H2] and messages == []
    assert (folder / ".part-killed-writer.parquet.tmp").exists()


def test_a_read_only_store_serves_its_rows_warns_once_and_writes_nothing(tmp_path, monkeypatch):
    _filled(tmp_path, {H1: np.ones(4, dtype=np.float32)})
    before = sorted((tmp_path / "ns").iterdir())

    def read_only_mount(path):  # the tests run as root, which ignores permission bits
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(parquet_store, "_create", read_only_mount)
    messages = []
    store = ParquetEmbeddingStore(tmp_path, "ns", {}, warn=warn_once(messages.append))
    np.testing.assert_array_equal(store.get(H1), np.ones(4))
    for content_hash in (H2, H3):
        store.put(content_hash, np.ones(4, dtype=np.float32))
    store.close()
    assert not store.writable and store.get(H2) is None
    assert len(messages) == 1 and "not writable" in messages[0] and "Read-only file system" in messages[0]
    assert sorted((tmp_path / "ns").iterdir()) == before


def test_a_full_disk_stops_storing_not_the_run_and_leaves_no_partial_file(tmp_path, monkeypatch):
    real = pq.write_table

    def disk_full_halfway(table, where, **options):
        where.write(b"PAR1" + b"\0" * 1000)  # some bytes reach the temporary file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full_halfway)
    messages = []
    store = ParquetEmbeddingStore(tmp_path, "ns", {}, warn=warn_once(messages.append))
    store.put(H1, np.ones(4, dtype=np.float32))
    store.flush()
    store.put(H2, np.ones(4, dtype=np.float32))
    store.close()
    assert not store.writable and len(messages) == 1 and "No space left" in messages[0]
    assert list((tmp_path / "ns").iterdir()) == []  # the temporary file is removed
    monkeypatch.setattr(pq, "write_table", real)
    assert ParquetEmbeddingStore(tmp_path, "ns", {}).get(H1) is None


def test_a_store_that_cannot_be_used_never_stops_the_caller(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store folder should be")
    messages = []
    store = ParquetEmbeddingStore(blocker, "ns", {}, warn=messages.append)
    store.put(H1, np.ones(4, dtype=np.float32))
    store.close()
    assert store.get(H1) is None and not store.writable and len(messages) == 1


def test_without_pyarrow_the_local_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    real = parquet_store.importlib.util.find_spec
    monkeypatch.setattr(
        parquet_store.importlib.util, "find_spec", lambda name, *rest: None if name == "pyarrow" else real(name, *rest)
    )
    messages = []
    store = open_embedding_store(tmp_path / "cache", "ns", {}, dim=None, warn=messages.append)
    assert isinstance(store, EmbeddingCache) and "needs pyarrow" in messages[0]


def test_compact_merges_parts_and_removes_only_those(tmp_path, capsys, monkeypatch):
    vectors = {f"{n:064x}": np.full(4, n, dtype=np.float32) for n in range(30)}
    for start in range(0, 30, 10):  # three parts, the last one also holding a copy of key 0
        _filled(tmp_path, {**dict(list(vectors.items())[start : start + 10]), f"{0:064x}": vectors[f"{0:064x}"]})
    _filled(tmp_path, {H1: np.ones(8, dtype=np.float32)})  # another length: not merged with the others
    garbage = tmp_path / "ns" / "part-garbage.parquet"
    garbage.write_bytes(b"garbage")
    parts = _parts(tmp_path / "ns")
    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    code, out, _ = run_cli(capsys, "cache", "compact")
    assert code == 0 and "ns: 3 files merged" in out and "30 embeddings" in out and "part-garbage" in out
    left = _parts(tmp_path / "ns")
    assert garbage in left and len(left) == 3 and len(set(left) - set(parts)) == 1  # merged + other length + garbage
    store = ParquetEmbeddingStore(tmp_path, "ns", {}, dim=4, warn=lambda message: None)
    found = dict(store.get_many(vectors))
    assert sorted(found) == sorted(vectors) and all(np.array_equal(found[h], v) for h, v in vectors.items())
    assert compact(tmp_path, warn=lambda message: None)[0].merged_files == 0  # nothing left to merge


def test_compact_removes_the_temporary_files_of_killed_writers_on_this_machine_only(tmp_path, capsys, monkeypatch):
    """A writer killed between creating its temporary file and renaming it leaves `.part-...parquet.tmp`: compact
    removes those of this host whose process is gone, and nothing else."""
    import subprocess
    import sys

    _filled(tmp_path, {H1: np.ones(4, dtype=np.float32)})
    folder = tmp_path / "ns"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = parquet_store._host()
    dead = folder / f".part-{host}-{finished.pid}-{'a' * 16}.parquet.tmp"
    alive = folder / f".part-{host}-{os.getpid()}-{'b' * 16}.parquet.tmp"  # a writer still running
    elsewhere = folder / f".part-{host}x-{finished.pid}-{'c' * 16}.parquet.tmp"  # another machine's writer
    foreign = [folder / ".part-notes.tmp", folder / f"part-{host}-{finished.pid}-{'d' * 16}.parquet.tmp"]
    for path in (dead, alive, elsewhere, *foreign):
        path.write_bytes(b"half a file")
    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    code, out, _ = run_cli(capsys, "cache", "compact")
    assert code == 0 and "ns: 1 temporary file(s) of stopped writers removed" in out
    assert not dead.exists() and all(path.exists() for path in (alive, elsewhere, *foreign))
    assert len(_parts(folder)) == 1  # the store's file untouched


def test_cache_info_describes_the_store_from_its_files_footers(tmp_path, capsys, monkeypatch):
    store = ParquetEmbeddingStore(tmp_path / "store", "ns", {"backbone": {"arch": "x"}})
    store.put(H1, np.ones(4, dtype=np.float32))
    store.put(H2, np.ones(4, dtype=np.float32))
    store.close()
    _filled(tmp_path / "store", {H3: np.ones(4, dtype=np.float32)})  # a second file of the same namespace
    (tmp_path / "store" / "ns" / "part-garbage.parquet").write_bytes(b"garbage")
    _filled(tmp_path / "store", {H4: np.ones(4, dtype=np.float32)}, namespace="other")
    (other,) = _parts(tmp_path / "store" / "other")
    shutil.copy(other, tmp_path / "store" / "ns" / other.name)  # another namespace's file, in the wrong folder
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    code, out, _ = run_cli(capsys, "cache", "info")
    assert code == 0 and f"embedding store: {tmp_path / 'store'}" in out
    assert "embeddings ns: 3 rows in 2 files" in out and "(x, ?); 2 other file(s) skipped" in out
    assert "embeddings other: 1 rows in 1 files" in out
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "nowhere"))
    code, _, err = run_cli(capsys, "cache", "info")
    assert code != 0 and "nowhere: no such folder" in err and "Traceback" not in err


# The embedding step through FeatureExtractor, with timm's tiny test network.


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    for n in range(count):
        colour_image(((n * 37) % 255, 80, 160), size=40, seed=n).save(folder / f"img_{n:03d}.png")
    return sorted(folder.iterdir())


def _embed(ref, cache: Path, paths: list[Path], workers: int = 0):
    extractor = FeatureExtractor(ref, cache, device="cpu", workers=workers, engine="torch", batch_size=4)
    return extractor.embed_files(paths, progress=Progress(quiet=True))


def test_the_environment_variable_moves_embeddings_to_the_parquet_store(tiny_ref, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)  # files written by the test are seconds old
    paths = _images(tmp_path / "data", 6)
    monkeypatch.delenv(STORE_ENV, raising=False)
    local = _embed(tiny_ref, tmp_path / "local-cache", paths)
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    cold = _embed(tiny_ref, tmp_path / "cache-a", paths)
    assert cold.computed == 6 and not list((tmp_path / "cache-a").glob("embeddings/*.sqlite"))
    (namespace,) = (tmp_path / "store").iterdir()
    assert len(_parts(namespace)) == 1 and namespace.name == next((tmp_path / "local-cache").glob("embeddings/*")).stem
    assert cold.embeddings.tobytes() == local.embeddings.tobytes()  # the same computation, whichever store
    # Another machine: its own empty TLEARN_CACHE_DIR, the shared store. Workers hash each file and skip decoding
    # it (the store knows the content), then every embedding is read back.
    decoded = []
    real = EvalPreprocess.from_file
    monkeypatch.setattr(EvalPreprocess, "from_file", lambda self, source: decoded.append(1) or real(self, source))
    warm = _embed(tiny_ref, tmp_path / "cache-b", paths)
    assert warm.computed == 0 and warm.cache_hits == 6 and decoded == [] and warm.engine == ""
    assert warm.embeddings.tobytes() == cold.embeddings.tobytes() and len(_parts(namespace)) == 1
    in_workers = _embed(tiny_ref, tmp_path / "cache-c", paths, workers=1)  # the probe, pickled to a worker
    assert in_workers.computed == 0 and in_workers.cache_hits == 6
    assert in_workers.embeddings.tobytes() == cold.embeddings.tobytes()
