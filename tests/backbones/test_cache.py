"""The embedding cache: packed, checked on read, never fatal, shareable by concurrent writers."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from helpers import PROJECT
from tlearn.backbones import cache as cache_module
from tlearn.backbones.cache import (
    CacheWarning,
    EmbeddingCache,
    KnownContents,
    RejectCache,
    clear,
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


def _read_only(monkeypatch):
    """Open every database read-only, as on a read-only mount (the tests run as root, which ignores modes)."""
    real = cache_module._connect
    monkeypatch.setattr(cache_module, "_connect", lambda path, read_only: real(path, read_only=True))


def test_read_only_cache_serves_hits_skips_damage_without_deleting_and_warns_once(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "ns", {})
    cache.put(H1, np.ones(4, dtype=np.float32))
    cache.put(H2, np.ones(4, dtype=np.float32))
    cache.close()
    _tamper(cache, "UPDATE embeddings SET crc32 = 1 WHERE hash = ?", bytes.fromhex(H2))
    _read_only(monkeypatch)
    messages = []
    read_only = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    np.testing.assert_array_equal(read_only.get(H1), np.ones(4))
    assert read_only.get(H2) is None and read_only.corrupt_entries == 1
    read_only.put(H3, np.ones(4, dtype=np.float32))
    read_only.close()
    assert not read_only.writable
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
    assert len(list(cache.path.parent.glob("ns.sqlite.damaged-*"))) == 1
    cache.put(H1, np.ones(1280, dtype=np.float32))
    cache.close()

    later = []
    again = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(later.append))
    np.testing.assert_array_equal(again.get(H1), np.ones(1280))  # the next run finds what this one cached
    assert later == [] and again.writable
