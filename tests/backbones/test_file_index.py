"""The file index: unchanged files keep their content hash without being read; any change is noticed."""

from __future__ import annotations

import os
import shutil
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tlearn.backbones.cache import RACY_SECONDS, FileIndex, FileState

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


@settings(max_examples=60, deadline=None)
@given(
    mtime_before=st.integers(min_value=-5_000_000_000, max_value=5_000_000_000),
    ctime_before=st.integers(min_value=-5_000_000_000, max_value=5_000_000_000),
)
def test_the_racy_rule_trusts_a_file_only_when_both_timestamps_are_older_than_the_tick(
    tmp_path_factory, mtime_before, ctime_before
):
    """Recorded exactly when mtime and ctime both lie more than RACY_SECONDS before the stat was taken."""
    seen = 1_700_000_000_000_000_000
    state = FileState(b"/data/a.jpg", 1, 2, 3, seen - mtime_before, seen - ctime_before, seen)
    index = FileIndex(tmp_path_factory.mktemp("racy") / "cache")
    tick = int(RACY_SECONDS * 1e9)
    assert index.record(state, HASH_A) == (mtime_before > tick and ctime_before > tick)
    index.close()


def test_the_racy_tick_boundary(tmp_path):
    seen, tick = 1_700_000_000_000_000_000, int(RACY_SECONDS * 1e9)
    index = FileIndex(tmp_path / "cache")
    old = seen - tick - 1
    assert index.record(FileState(b"/a", 1, 2, 3, old, old, seen), HASH_A)
    assert not index.record(FileState(b"/b", 1, 2, 3, seen - tick, old, seen), HASH_A)  # mtime on the tick
    assert not index.record(FileState(b"/c", 1, 2, 3, old, seen - tick, seen), HASH_A)  # ctime on the tick
    index.close()
