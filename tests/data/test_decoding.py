"""Decoding workers: input order, per-file failures, and each file read exactly once when it is hashed."""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass

import numpy as np

from helpers import colour_image, write_broken_files
from tlearn.data.decoding import TASK_IMAGES, BatchDecoder, DecodeTask, run_task
from tlearn.data.preprocess import Preprocessing

PRE = Preprocessing((32, 32), "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0)


@dataclass(frozen=True)
class KnowsHashes:
    """A picklable probe, as the cache gives the workers."""

    known: frozenset[str]

    def __call__(self, content_hash: str) -> bool:
        return content_hash in self.known


def _images(folder, count):
    paths = []
    for n in range(count):
        path = folder / f"img_{n}.png"
        colour_image((n * 20 % 255, 40, 40), size=40, seed=n).save(path)
        paths.append(path)
    return paths


def test_batches_keep_input_order_and_report_failures(tmp_path):
    paths = _images(tmp_path, 5)
    broken = write_broken_files(tmp_path / "broken")
    sources = [paths[0], tmp_path / "broken" / "truncated.jpg", *paths[1:], tmp_path / "missing.png"]
    with BatchDecoder(sources, PRE, batch_size=3, workers=1) as batches:
        seen = list(batches)
    positions = [p for batch in seen for p in batch.positions]
    failures = dict(f for batch in seen for f in batch.failures)
    assert positions == [0, 2, 3, 4, 5]
    assert broken["truncated.jpg"] in failures[1] and "cannot read file" in failures[6]
    assert all(batch.pixels.shape == (len(batch.positions), 32, 32, 3) for batch in seen)


def test_hashes_are_of_the_bytes_decoded_and_the_probe_skips_decoding(tmp_path):
    paths = _images(tmp_path, 4)
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    probe = KnowsHashes(frozenset({digests[1], digests[3]}))
    with BatchDecoder(paths, PRE, batch_size=2, workers=1, hash_contents=True, skip=probe) as batches:
        seen = list(batches)
    assert {p: h for batch in seen for p, h in batch.content_hashes.items()} == dict(enumerate(digests))
    assert [p for batch in seen for p in batch.known] == [1, 3]
    assert [p for batch in seen for p in batch.positions] == [0, 2]  # only the unknown ones were decoded


def test_each_file_is_read_once(tmp_path, monkeypatch):
    """Hash and decode share one read: nothing can replace the file between them."""
    paths = _images(tmp_path, 3)
    opened = []
    real_open = io.open

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(tmp_path)):
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr("builtins.open", counting_open)
    batch = run_task(0, paths, DecodeTask(PRE, hash_contents=True))
    assert sorted(opened) == sorted(map(str, paths))
    assert batch.positions == [0, 1, 2] and len(batch.content_hashes) == 3
    np.testing.assert_array_equal(batch.pixels[0], run_task(0, [paths[0].read_bytes()], DecodeTask(PRE)).pixels[0])


@dataclass(frozen=True)
class SlowInWorkers:
    """A probe that stalls in worker processes and notes which process asked, in `log` (one pid per line)."""

    caller: int
    log: str

    def __call__(self, content_hash: str) -> bool:
        with open(self.log, "a") as record:
            record.write(f"{os.getpid()}\n")
        if os.getpid() != self.caller:
            time.sleep(0.2)
        return False


def test_batches_larger_than_a_task_come_whole_and_in_order(tmp_path):
    paths = _images(tmp_path, 2 * TASK_IMAGES + 3)
    size = TASK_IMAGES + 3  # batches span two tasks, the last one is short
    with BatchDecoder(paths, PRE, batch_size=size, workers=2, hash_contents=True) as batches:
        seen = list(batches)
    assert [batch.positions for batch in seen] == [
        list(range(start, min(start + size, len(paths)))) for start in range(0, len(paths), size)
    ]
    assert [sorted(batch.content_hashes) for batch in seen] == [batch.positions for batch in seen]
    single = run_task(0, paths, DecodeTask(PRE))
    np.testing.assert_array_equal(np.concatenate([batch.pixels for batch in seen]), single.pixels)


def test_the_caller_decodes_queued_tasks_when_the_workers_fall_behind(tmp_path):
    paths = _images(tmp_path, 4 * TASK_IMAGES)
    log = tmp_path / "asked.txt"
    probe = SlowInWorkers(os.getpid(), str(log))
    with BatchDecoder(paths, PRE, batch_size=len(paths), workers=1, hash_contents=True, skip=probe) as batches:
        (batch,) = list(batches)
    assert batch.positions == list(range(len(paths)))
    askers = log.read_text().split()
    assert askers.count(str(os.getpid())) >= TASK_IMAGES  # the caller decoded at least one task itself
    assert len(askers) == len(paths)  # and every file was decoded exactly once
