"""The embedding cache's "never fatal" promise where a damaged database cannot be set aside (issue 23)."""

from __future__ import annotations

import sqlite3

import numpy as np

from tlearn.backbones import cache as cache_module
from tlearn.backbones.cache import EmbeddingCache, warn_once


def _damage_every_page_but_the_schema(path) -> bytes:
    """Overwrite the start of every page after the first (the schema): the file still opens, the write check on
    opening (`meta`) and every read meet the damage."""
    with sqlite3.connect(path) as connection:
        (size,) = connection.execute("PRAGMA page_size").fetchone()
    damaged = bytearray(path.read_bytes())
    for page in range(2, len(damaged) // size + 1):
        damaged[(page - 1) * size : (page - 1) * size + 64] = b"\xff" * 64
    path.write_bytes(bytes(damaged))
    return bytes(damaged)


def test_a_database_found_damaged_on_opening_that_cannot_be_moved_aside_is_bypassed_not_fatal(tmp_path, monkeypatch):
    """Before the fix, the store closed its connection to move the file aside, could not move it, and still called
    itself read-only: the first read raised AttributeError ('NoneType' object has no attribute 'execute'), and the
    warning called the damage "not writable"."""
    cache = EmbeddingCache(tmp_path, "ns", {})
    for index in range(400):
        cache.put(f"{index:064x}", np.full(1280, index, dtype=np.float32))
    cache.close()
    damaged = _damage_every_page_but_the_schema(cache.path)

    def refuse(source, target):  # a folder this user may not write in, or a file held open elsewhere (Windows)
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(cache_module.os, "replace", refuse)
    messages = []
    cache = EmbeddingCache(tmp_path, "ns", {}, warn=warn_once(messages.append))
    assert cache.get(f"{5:064x}") is None and dict(cache.get_many([f"{6:064x}"])) == {}
    cache.put(f"{7:064x}", np.ones(1280, dtype=np.float32))
    assert not cache.writable
    cache.close()
    assert messages == [
        f"cache database {cache.path} is damaged (database disk image is malformed): computing without it"
    ]
    assert cache.path.read_bytes() == damaged  # left as it was: nothing moved, nothing written
