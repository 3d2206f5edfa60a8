"""The embedding cache: packed, checked on read, never fatal, shareable by concurrent writers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from helpers import PROJECT
from tlearn.backbones import cache as cache_module
from tlearn.backbones.cache import (
    CacheSummary,
    CacheWarning,
    EmbeddingCache,
    FileIndex,
    FileState,
    KnownContents,
    RejectCache,
    cache_root,
    clear,
    file_sha256,
    summarize,
    warn_once,
)

H1, H2, H3 = "ab" * 32, "cd" * 32, "ef" * 32


def _rows(cache: EmbeddingCache) -> int:
    with sqlite3.connect(cache.path) as connection:
        return connection.execute("SELECT count(*) FROM embeddings").fetchone()[0]


def _tamper(cache: EmbeddingCache, sql: str, *parameters) -> None:
    with sqlite3.connect(cache.path) as connection:
        connection.execute(sql, parameters)


def test_round_trip_across_instances(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {"backbone": {"arch": "x"}})
    vector = np.arange(8, dtype=np.float32)
    assert cache.get(H1) is None
    cache.put(H1, vector)
    cache.put(H2, vector * 2)
    cache.close()
    again = EmbeddingCache(tmp_path, "ns", {})
    np.testing.assert_array_equal(again.get(H1), vector)
    assert {h: v.tolist() for h, v in again.get_many([H1, H2, H3])} == {H1: vector.tolist(), H2: (vector * 2).tolist()}
    assert again.dim == 8 and not again.corrupt_entries
    assert list((tmp_path / "embeddings").iterdir()) == [tmp_path / "embeddings" / "ns.sqlite"]  # one file


def test_damaged_and_foreign_rows_are_discarded_and_deleted(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    for key in (H1, H2, H3):
        cache.put(key, np.ones(16, dtype=np.float32))
    cache.close()
    _tamper(
        cache, "UPDATE embeddings SET vector = ? WHERE hash = ?", np.zeros(16, np.float32).tobytes(), bytes.fromhex(H1)
    )
    _tamper(cache, "UPDATE embeddings SET dtype = '<f8' WHERE hash = ?", bytes.fromhex(H2))  # foreign dtype
    short = np.ones(8, np.float32).tobytes()  # wrong length, with a valid checksum
    _tamper(
        cache,
        "UPDATE embeddings SET vector = ?, dim = 8, crc32 = ? WHERE hash = ?",
        short,
        zlib.crc32(short),
        bytes.fromhex(H3),
    )
    reopened = EmbeddingCache(tmp_path, "ns", {}, dim=16)
    assert reopened.get(H1) is None and reopened.get(H2) is None and reopened.get(H3) is None
    assert reopened.corrupt_entries == 3
    reopened.close()
    assert _rows(reopened) == 0  # deleted, to be recomputed


def test_wrong_length_is_discarded_even_without_a_given_dimension(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    cache.put(H1, np.ones(16, dtype=np.float32))  # the first writer records the namespace's length
    cache.close()
    short = np.ones(8, np.float32).tobytes()
    _tamper(cache, "INSERT INTO embeddings VALUES (?, '<f4', 8, ?, ?)", bytes.fromhex(H2), zlib.crc32(short), short)
    reopened = EmbeddingCache(tmp_path, "ns", {})
    assert reopened.get(H2) is None and reopened.get(H1) is not None


def _two_rows_the_second_damaged(tmp_path):
    """A closed cache of H1 and H2 whose H2 row fails its checksum."""
    cache = EmbeddingCache(tmp_path, "ns", {})
    cache.put(H1, np.ones(4, dtype=np.float32))
    cache.put(H2, np.ones(4, dtype=np.float32))
    cache.close()
    _tamper(cache, "UPDATE embeddings SET crc32 = 1 WHERE hash = ?", bytes.fromhex(H2))
    return cache


def _read_without_writing(tmp_path, messages):
    """Open that cache where it cannot be written: H1 is served, H2 skipped as damaged, H3 not stored."""
    read_only = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    np.testing.assert_array_equal(read_only.get(H1), np.ones(4))
    assert read_only.get(H2) is None and read_only.corrupt_entries == 1
    read_only.put(H3, np.ones(4, dtype=np.float32))
    read_only.close()
    assert not read_only.writable


def _read_only(monkeypatch):
    """Open every database read-only, as on a read-only mount (the tests run as root, which ignores modes)."""
    real = cache_module._connect
    monkeypatch.setattr(cache_module, "_connect", lambda path, read_only: real(path, read_only=True))


def test_read_only_cache_serves_hits_skips_damage_without_deleting_and_warns_once(tmp_path, monkeypatch):
    cache = _two_rows_the_second_damaged(tmp_path)
    _read_only(monkeypatch)
    messages = []
    _read_without_writing(tmp_path, messages)
    assert len(messages) == 1 and "not writable" in messages[0]
    monkeypatch.undo()
    assert _rows(cache) == 2  # the damaged row is still there; nothing was added


def test_full_disk_stops_caching_not_the_run(tmp_path, monkeypatch):
    real = cache_module._connect

    def small_disk(path, read_only):
        connection = real(path, read_only=read_only)
        connection.execute("PRAGMA max_page_count = 8")  # SQLITE_FULL once the file would grow past 8 pages
        return connection

    monkeypatch.setattr(cache_module, "_connect", small_disk)
    messages = []
    cache = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    for n in range(300):
        cache.put(f"{n:064x}", np.ones(1280, dtype=np.float32))
    assert not cache.writable
    cache.close()
    assert len(messages) == 1 and "cannot be written" in messages[0] and "full" in messages[0]
    assert cache.get(f"{0:064x}") is None


def test_unusable_root_and_garbage_database(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(CacheWarning, match="cannot be used"):
        cache = EmbeddingCache(blocker / "cache", "ns", {})
        cache.put(H1, np.ones(4, dtype=np.float32))
        assert cache.get(H1) is None
    garbage = tmp_path / "root" / "embeddings" / "ns.sqlite"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"\x00garbage" * 100)
    messages = []
    cache = EmbeddingCache(tmp_path / "root", "ns", {}, warn=warn_once(messages.append))
    cache.put(H1, np.ones(4, dtype=np.float32))
    np.testing.assert_array_equal(cache.get(H1), np.ones(4))
    assert "moved aside" in messages[0]
    assert len(list(garbage.parent.glob("ns.sqlite.damaged-*"))) == 1


def test_rejects_probe_summary_and_clear(tmp_path):
    rejects = RejectCache(tmp_path, "v2")
    rejects.put("dd" * 32, "truncated or corrupt image")
    assert rejects.get("dd" * 32) == "truncated or corrupt image" and rejects.get("ee" * 32) is None
    assert RejectCache(tmp_path, "v3").get("dd" * 32) is None  # verdicts belong to a decoder version
    rejects.close()
    embeddings = EmbeddingCache(tmp_path, "ns", {"backbone": {"arch": "x"}})
    embeddings.put("ff" * 32, np.zeros(4, dtype=np.float32))
    embeddings.close()
    probe = KnownContents(str(embeddings.path), str(rejects.path), "v2")
    assert probe("ff" * 32) and probe("dd" * 32) and not probe("aa" * 32)
    legacy = tmp_path / "embeddings" / "old-namespace" / "ab" / f"{'ab' * 32}.safetensors"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x" * 100)
    from tlearn.backbones.result_cache import ResultCache

    with contextlib.closing(ResultCache(tmp_path)) as results:
        results.remember("kind", lambda: [1], 1)
    (tmp_path / "tables" / "key").mkdir(parents=True)
    (tmp_path / "tables" / "key" / "labels.csv").write_text("path,label\n")
    summary = summarize(tmp_path)
    assert summary.embeddings["ns"]["entries"] == 1 and summary.rejects == 1 and summary.legacy_entries == 1
    assert summary.embeddings["ns"]["description"] == {"backbone": {"arch": "x"}} and summary.results == 1
    assert clear(tmp_path) > 0
    assert summarize(tmp_path).total_bytes == 0 and not legacy.exists()


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from tlearn.backbones.cache import EmbeddingCache
    root, first, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    cache = EmbeddingCache(root, "shared", {"writer": first})
    for n in range(first, first + count):
        cache.put(f"{n:064x}", np.full(64, n, dtype=np.float32))
        if n % 50 == 0:
            cache.flush()
    cache.close()
    """
)


def test_concurrent_writers_share_one_namespace(tmp_path):
    """Two processes (two runs, or two torchrun ranks) filling the same namespace at once lose nothing."""
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(first), "600"], cwd=PROJECT)
        for first in (0, 400)  # overlapping: 400..599 written by both
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    cache = EmbeddingCache(tmp_path, "shared", {})
    found = dict(cache.get_many(f"{n:064x}" for n in range(1000)))
    assert len(found) == 1000 and cache.corrupt_entries == 0
    assert all(float(vector[0]) == int(key, 16) for key, vector in found.items())


def test_a_killed_writer_leaves_a_sound_cache(tmp_path):
    script = WRITER.replace("cache.close()", "import os; os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path), "0", "1000"], cwd=PROJECT)
    assert killed.returncode == -9
    cache = EmbeddingCache(tmp_path, "shared", {})
    found = dict(cache.get_many(f"{n:064x}" for n in range(1000)))
    assert 0 < len(found) < 1000 and cache.corrupt_entries == 0  # what was committed, intact
    cache.put(f"{5000:064x}", np.ones(64, dtype=np.float32))
    cache.close()
    assert EmbeddingCache(tmp_path, "shared", {}).get(f"{5000:064x}") is not None
    assert json.loads(json.dumps(summarize(tmp_path).embeddings["shared"]["entries"])) == len(found) + 1
    assert not list(tmp_path.rglob("*-journal"))
    assert os.environ.get("TLEARN_CACHE_DIR") != str(tmp_path)


@pytest.mark.parametrize("first_use", ["read", "write"])
@pytest.mark.parametrize("spared", ["meta", "nothing"])
def test_a_database_damaged_inside_is_moved_aside_and_rebuilt_not_used_damaged_forever(tmp_path, first_use, spared):
    """Pages damaged behind an intact header: the database opens, and the damage shows when a query meets it
    (the embeddings' pages: the first read or write; the `meta` table's too: the write check on opening). It is
    moved aside once, with a message that says "damaged", and the next run caches again."""
    cache = EmbeddingCache(tmp_path, "ns", {})
    rng = np.random.default_rng(0)
    for index in range(400):
        cache.put(f"{index:064x}", rng.random(1280, dtype=np.float32))
    cache.close()
    with sqlite3.connect(cache.path) as connection:  # the pages of the small `meta` table stay whole
        rows = connection.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'meta'")
        meta = {page for (page,) in rows} if spared == "meta" else set()
        (size,) = connection.execute("PRAGMA page_size").fetchone()
    damaged = bytearray(cache.path.read_bytes())
    for page in range(2, len(damaged) // size + 1):  # every page of the embeddings (page 1 holds the schema)
        if page not in meta:
            damaged[(page - 1) * size : (page - 1) * size + 64] = b"\xff" * 64
    cache.path.write_bytes(bytes(damaged))

    messages = []
    cache = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    if first_use == "read":
        assert cache.get(f"{5:064x}") is None
    else:
        cache.put(f"{5:064x}", np.ones(1280, dtype=np.float32))
        cache.flush()
    assert len(messages) == 1 and "was damaged" in messages[0] and "moved aside and started afresh" in messages[0]
    assert messages[0].startswith(f"cache database {cache.path} was damaged (database disk image is malformed)")
    assert len(list(cache.path.parent.glob("ns.sqlite.damaged-*"))) == 1
    cache.put(H1, np.ones(1280, dtype=np.float32))
    cache.close()

    later = []
    again = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(later.append))
    np.testing.assert_array_equal(again.get(H1), np.ones(1280))  # the next run finds what this one cached
    assert later == [] and again.writable


# ---- promises found unguarded by mutation testing (issue 23) -------------------------------------------------


def test_the_cache_root_is_the_configured_folder_with_home_expanded_else_the_users_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TLEARN_CACHE_DIR", "~/shared-cache")
    assert cache_root() == tmp_path / "shared-cache"
    monkeypatch.delenv("TLEARN_CACHE_DIR")
    assert cache_root() == Path(platformdirs.user_cache_dir("tlearn"))


def test_a_files_identity_is_the_sha256_of_its_bytes_whatever_its_name(tmp_path):
    (tmp_path / "ant.jpg").write_bytes(b"the same pixels")
    (tmp_path / "copy of ant.png").write_bytes(b"the same pixels")
    expected = hashlib.sha256(b"the same pixels").hexdigest()
    assert file_sha256(tmp_path / "ant.jpg") == file_sha256(str(tmp_path / "copy of ant.png")) == expected


def test_an_embedding_of_any_shape_and_float_type_comes_back_flat_float32_and_writable(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    cache.put(H1, np.arange(8, dtype=np.float64).reshape(1, 8))  # a batch of one, as a model returns it
    cache.close()
    again = EmbeddingCache(tmp_path, "ns", {})
    vector = again.get(H1)
    assert vector.shape == (8,) and vector.dtype == np.float32 and again.dim == 8 and not again.corrupt_entries
    vector /= 2  # callers normalise in place: the cache hands out its own writable copy
    np.testing.assert_array_equal(again.get(H1), np.arange(8, dtype=np.float32))


def test_a_row_whose_vector_does_not_match_its_recorded_length_is_discarded(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    cache.put(H1, np.ones(16, dtype=np.float32))
    cache.close()
    short = np.ones(8, np.float32).tobytes()  # the dim column still says 16; the checksum is valid
    _tamper(
        cache, "UPDATE embeddings SET vector = ?, crc32 = ? WHERE hash = ?", short, zlib.crc32(short), bytes.fromhex(H1)
    )
    reopened = EmbeddingCache(tmp_path, "ns", {})
    assert reopened.get(H1) is None and reopened.corrupt_entries == 1


def test_decoding_verdicts_are_found_in_bulk_for_their_decoder_only(tmp_path):
    rejects = RejectCache(tmp_path, "v2")
    refused = [f"{n:064x}" for n in range(0, 1200, 2)]  # 600 verdicts: more than one read of 500 keys
    for content_hash in refused:
        rejects.put(content_hash, f"not an image: {content_hash[-3:]}")
    rejects.close()
    asked = [f"{n:064x}" for n in range(1200)] + refused[:3]  # every content, some twice
    expected = {content_hash: f"not an image: {content_hash[-3:]}" for content_hash in refused}
    assert RejectCache(tmp_path, "v2").get_many(asked) == expected
    assert RejectCache(tmp_path, "v3").get_many(asked) == {}


def test_the_file_index_answers_for_any_number_of_files(tmp_path):
    seen = 1_700_000_000_000_000_000
    old = seen - 3_600_000_000_000
    states = [FileState(f"/data/{n}.jpg".encode(), 1, n, 100, old, old, seen) for n in range(1100)]
    index = FileIndex(tmp_path)
    for state in states[::2]:
        assert index.record(state, f"{state.inode:064x}")
    index.close()
    hashes = FileIndex(tmp_path).lookup([*states, None])
    assert hashes == [f"{n:064x}" if n % 2 == 0 else None for n in range(1100)] + [None]


def test_a_file_that_cannot_be_stated_is_reported_with_the_systems_reason(tmp_path):
    states, errors = FileIndex.stat([tmp_path / "gone.jpg"])
    assert states == [None] and errors == {0: "cannot read file (No such file or directory)"}


def test_every_store_of_a_run_warns_about_an_unusable_cache_once_or_by_a_cache_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    messages = []
    warn = warn_once(messages.append)
    stores = [EmbeddingCache(blocker, "ns", {}, warn=warn), RejectCache(blocker, "v2", warn=warn)]
    stores.append(FileIndex(blocker, warn=warn))
    assert [store.get(H1) for store in stores[:2]] == [None, None] and stores[2].lookup([None]) == [None]
    assert messages == [f"cache {blocker / 'embeddings'} cannot be used (Not a directory): computing without caching"]
    for make in (
        lambda: RejectCache(blocker, "v2").get(H1),
        lambda: FileIndex(blocker).lookup(FileIndex.stat([blocker])[0]),
    ):
        with pytest.warns(CacheWarning, match="cannot be used"):
            make()


def _no_write_access(monkeypatch):
    """Opening a database for writing fails as without write permission (the tests run as root, which ignores
    modes); read-only opens still work."""
    real = cache_module._connect

    def connect(path, read_only):
        if not read_only:
            raise sqlite3.OperationalError("unable to open database file")
        return real(path, read_only=True)

    monkeypatch.setattr(cache_module, "_connect", connect)


def test_a_cache_that_cannot_be_opened_for_writing_is_read_and_left_untouched(tmp_path, monkeypatch):
    cache = _two_rows_the_second_damaged(tmp_path)
    before = cache.path.read_bytes()
    _no_write_access(monkeypatch)
    messages = []
    _read_without_writing(tmp_path, messages)
    assert messages == [
        f"cache {tmp_path / 'embeddings'} is not writable (unable to open database file): read-only, "
        "new results not cached"
    ]
    assert cache.path.read_bytes() == before


def test_a_damaged_database_that_cannot_be_moved_aside_is_bypassed_with_one_message(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "ns", {})
    for index in range(400):
        cache.put(f"{index:064x}", np.full(1280, index, dtype=np.float32))
    cache.close()
    with sqlite3.connect(cache.path) as connection:  # the `meta` table stays whole: the damage shows on reading
        meta = {page for (page,) in connection.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'meta'")}
        (size,) = connection.execute("PRAGMA page_size").fetchone()
    damaged = bytearray(cache.path.read_bytes())
    for page in set(range(2, len(damaged) // size + 1)) - meta:
        damaged[(page - 1) * size : (page - 1) * size + 64] = b"\xff" * 64
    cache.path.write_bytes(bytes(damaged))

    def refuse(source, target):  # a folder this user may not write in, or a file held open elsewhere (Windows)
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(cache_module.os, "replace", refuse)
    messages = []
    cache = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    cache.put(H1, np.ones(1280, dtype=np.float32))  # queued: the damage shows when it is written, before a read
    assert cache.get(f"{5:064x}") is None and cache.get(H1) is None
    cache.put(H2, np.ones(1280, dtype=np.float32))
    assert not cache.writable
    cache.close()
    assert messages == [
        f"cache database {cache.path} is damaged (database disk image is malformed): computing without it"
    ]
    assert cache.path.read_bytes() == bytes(damaged)  # left as it was: nothing moved, nothing written


def test_a_database_of_another_layout_is_read_as_misses_with_the_reason(tmp_path):
    path = tmp_path / "embeddings" / "ns.sqlite"
    path.parent.mkdir()
    with contextlib.closing(sqlite3.connect(path)) as connection:  # e.g. written by a later tlearn
        connection.execute("CREATE TABLE embeddings (hash BLOB PRIMARY KEY, payload BLOB)")
    messages = []
    cache = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    assert cache.get(H1) is None
    assert messages == [f"cache {path} could not be read (no such column: dtype): computing what it would hold"]


def test_a_run_that_could_not_write_does_not_lock_other_runs_out(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT_S", 0.05)
    cache = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(lambda message: None))
    cache.put(H1, np.ones(4, dtype=np.float32))
    with contextlib.closing(sqlite3.connect(cache.path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM embeddings").fetchall()  # a reader in the middle of its transaction
        cache.flush()  # the commit cannot wait for it: this run goes on read-only
        reader.execute("COMMIT")
    assert not cache.writable
    messages = []
    other = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))  # another run, while it goes on
    other.put(H2, np.ones(4, dtype=np.float32))
    other.close()
    cache.close()
    assert messages == [] and EmbeddingCache(tmp_path, "ns", {}).get(H2) is not None


def test_a_probe_answers_no_when_a_database_is_missing_damaged_or_cannot_be_opened(tmp_path):
    embeddings = EmbeddingCache(tmp_path, "ns", {})
    embeddings.put("ff" * 32, np.zeros(4, dtype=np.float32))
    embeddings.close()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00garbage" * 100)
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    missing = str(tmp_path / "missing.sqlite")
    assert not KnownContents(missing, missing, "v2")("ff" * 32)
    assert not KnownContents(str(garbage), str(garbage), "v2")("aa" * 32)
    assert not KnownContents(str(folder), str(folder), "v2")("aa" * 32)
    assert KnownContents(str(garbage), str(folder), "v2")("aa" * 32) is False
    assert KnownContents(str(embeddings.path), missing, "v2")("ff" * 32)


def test_cache_info_counts_every_kind_of_entry_and_clear_removes_them_all(tmp_path):
    root = tmp_path / "cache"
    empty = CacheSummary(root, 0, {}, [], 0, 0, [], 0, 0)
    assert summarize(root) == empty
    root.mkdir()
    assert summarize(root) == empty
    embeddings = EmbeddingCache(root, "ns", {"backbone": "x"})
    embeddings.put(H1, np.ones(4, dtype=np.float32))
    embeddings.close()
    opened_only = EmbeddingCache(root, "opened-only", {})
    assert opened_only.writable  # opened, no description recorded yet
    opened_only.close()
    described_badly = EmbeddingCache(root, "bad-description", {})
    described_badly.put(H1, np.ones(4, dtype=np.float32))
    described_badly.close()
    _tamper(described_badly, "UPDATE meta SET value = '{not json' WHERE key = 'description'")
    index = FileIndex(root)
    old = 1_700_000_000_000_000_000
    for n in range(3):
        index.record(FileState(f"/data/{n}.jpg".encode(), 1, n, 100, old, old, old + 3_600_000_000_000), H1)
    index.close()
    for name in ("backbones/timm-b/info.json", "backbones/timm-a/info.json", "onnx/b-eval.onnx", "onnx/a-eval.onnx"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    (root / "onnx" / "a-eval.json").write_text("{}")
    for name in ("rejects/old.txt", "selections/run/picked.json", "tables/key/labels.csv"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    (root / "files.sqlite-journal").write_bytes(b"")  # left by a crashed writer
    (root / "mine.txt").write_text("not tlearn's")

    summary = summarize(root)
    assert summary.root == root and summary.backbones == ["timm-a", "timm-b"] and summary.onnx == ["a-eval", "b-eval"]
    assert summary.indexed_files == 3 and summary.rejects == 0 and summary.results == 0
    assert summary.legacy_entries == 0
    assert summary.embeddings == {
        name: {"entries": entries, "bytes": (root / "embeddings" / f"{name}.sqlite").stat().st_size, "description": d}
        for name, entries, d in (("ns", 1, {"backbone": "x"}), ("opened-only", 0, {}), ("bad-description", 1, {}))
    }
    assert clear(root) == summary.total_bytes
    assert sorted(path.name for path in root.iterdir()) == ["mine.txt"]


def test_a_cache_root_that_does_not_exist_yet_is_created_folders_and_all(tmp_path):
    root = tmp_path / "not" / "yet"
    cache = EmbeddingCache(root, "ns", {})
    cache.put(H1, np.ones(4, dtype=np.float32))
    assert cache.writable
    cache.close()
    old = 1_700_000_000_000_000_000
    state = FileState(b"/data/a.jpg", 1, 2, 100, old, old, old + 3_600_000_000_000)
    index = FileIndex(tmp_path / "also" / "new")
    assert index.record(state, H1)
    index.close()
    assert EmbeddingCache(root, "ns", {}).get(H1) is not None
    assert FileIndex(tmp_path / "also" / "new").lookup([state]) == [H1]


def test_stored_vectors_of_another_length_than_the_backbones_are_discarded_even_if_recorded_first(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})  # a writer that did not know the length recorded 8
    cache.put(H1, np.ones(8, dtype=np.float32))
    cache.close()
    backbone = EmbeddingCache(tmp_path, "ns", {}, dim=16)
    assert backbone.dim == 16 and backbone.get(H1) is None and backbone.corrupt_entries == 1


def test_a_bulk_read_yields_each_sound_content_once_and_counts_each_damaged_one_once(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    for key in (H1, H2, H3):
        cache.put(key, np.ones(4, dtype=np.float32))
    cache.close()
    _tamper(cache, "UPDATE embeddings SET crc32 = 1 WHERE hash = ?", bytes.fromhex(H3))
    reopened = EmbeddingCache(tmp_path, "ns", {})
    assert sorted(key for key, _ in reopened.get_many([H1, H2, H3, H1])) == sorted([H1, H2])
    assert reopened.corrupt_entries == 1


def test_while_another_run_writes_this_one_reads_without_waiting_and_a_cache_opened_then_is_read_only(
    tmp_path, monkeypatch
):
    """Another run in the middle of a write transaction (SQLite's reserved lock, held past the busy timeout):
    reads go on and this run stays writable; a store first opened then cannot write, says why, and still reads."""
    cache = EmbeddingCache(tmp_path, "ns", {})
    cache.put(H1, np.ones(4, dtype=np.float32))
    cache.close()
    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT_S", 0.05)
    messages = []
    reader = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    assert reader.writable
    with contextlib.closing(sqlite3.connect(cache.path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO meta (key, value) VALUES ('other run', '')")
        np.testing.assert_array_equal(reader.get(H1), np.ones(4))
        assert reader.writable and messages == []
        opened_now = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
        np.testing.assert_array_equal(opened_now.get(H1), np.ones(4))
        assert not opened_now.writable
        writer.execute("ROLLBACK")
    assert messages == [
        f"cache {tmp_path / 'embeddings'} is not writable (database is locked): read-only, new results not cached"
    ]
