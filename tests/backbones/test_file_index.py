"""The file index: unchanged files keep their content hash without being read; any change is noticed."""

from __future__ import annotations

import os
import shutil
import time

from tlearn.backbones.cache import FileIndex

HASH_A, HASH_B = "aa" * 32, "bb" * 32


def _age(path, seconds: float = 60) -> None:
    """Set mtime in the past so the entry is not 'racy' (ctime follows the change itself)."""
    past = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(past, past))


def _indexed(tmp_path, path, content_hash=HASH_A):
    index = FileIndex(tmp_path / "cache")
    states, errors = index.stat([path])
    assert not errors
    states = [states[0].__class__(**{**states[0].__dict__, "seen_ns": states[0].seen_ns + int(10e9)})]
    assert index.record(states[0], content_hash)
    index.close()
    return FileIndex(tmp_path / "cache")


def test_unchanged_files_are_found_and_changes_are_noticed(tmp_path):
    files = {name: tmp_path / name for name in ("same", "rewritten", "touched", "replaced", "copied-over")}
    for path in files.values():
        path.write_bytes(b"12345")
        _age(path)
    index = FileIndex(tmp_path / "cache")
    states, _ = index.stat(list(files.values()))
    later = [state.__class__(**{**state.__dict__, "seen_ns": state.seen_ns + int(10e9)}) for state in states]
    assert all(index.record(state, HASH_A) for state in later)
    index.close()

    files["rewritten"].write_bytes(b"54321")  # same size, new mtime
    os.utime(files["touched"])  # mtime only
    replacement = tmp_path / "new"
    replacement.write_bytes(b"12345")
    shutil.copystat(files["replaced"], replacement)
    os.replace(replacement, files["replaced"])  # same size and mtime, new inode
    source = tmp_path / "source"
    source.write_bytes(b"abcde")
    shutil.copystat(files["copied-over"], source)
    shutil.copy2(source, files["copied-over"])  # `cp -p` over it: same inode, size and mtime; ctime changes
    hashes = FileIndex(tmp_path / "cache").lookup(FileIndex.stat(list(files.values()))[0])
    assert hashes == [HASH_A, None, None, None, None]


def test_recently_modified_files_are_not_trusted(tmp_path):
    """git's racy entries: a second change within the timestamp tick would go unnoticed, so none is recorded."""
    path = tmp_path / "fresh.jpg"
    path.write_bytes(b"12345")
    index = FileIndex(tmp_path / "cache")
    states, _ = index.stat([path])
    assert not index.record(states[0], HASH_A)
    index.close()
    assert FileIndex(tmp_path / "cache").lookup(FileIndex.stat([path])[0]) == [None]


def test_missing_files_and_non_utf8_names(tmp_path):
    odd = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    odd.write_bytes(b"12345")
    _age(odd)
    index = _indexed(tmp_path, odd, HASH_B)
    states, errors = index.stat([tmp_path / "gone.jpg", odd])
    assert states[0] is None and "No such file" in errors[0]
    assert index.lookup(states) == [None, HASH_B]
