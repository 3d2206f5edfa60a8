"""Decoding image files into preprocessed batches in worker processes, ahead of the model.

The backbone is the bottleneck on a CPU, so decoding runs in other processes and overlaps the forward pass.
`BatchDecoder` starts decoding as soon as it is created — before torch is even imported by the caller — and
keeps a bounded number of batches in flight, so memory stays constant on folders of any size. Workers need
only PIL and NumPy and start in a fraction of a second. Batches travel as compact uint8 (B, H, W, 3) arrays.
A file that cannot be decoded is reported in its batch's `failures`, never raised.

Each batch is decoded as a few small tasks (`TASK_IMAGES` files each). When the caller asks for a batch
whose tasks are not done yet, it decodes queued tasks itself instead of waiting (`caller_decodes`): on a CPU
the workers take half the cores, so with 12 MP photos (where decoding, not the model, is the bottleneck) the
caller's idle core doubles the decoding rate; with small images the workers keep ahead and the caller never
decodes. A caller that still has its model to load turns this off until then: decoding would only delay it.

With `hash_contents`, each file is read once and the very bytes that are hashed (SHA-256, the cache's key)
are the bytes that are decoded: a file replaced between a hash and a later re-read can never have its
pixels stored under the old content's key. A `skip` probe (e.g. "is this content already in the cache?")
lets a worker stop after hashing, so a renamed or copied folder is recognised without decoding it again.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, read_file_bytes
from tlearn.data.preprocess import EvalPreprocess, Preprocessing
from tlearn.util.orphans import die_with_parent

ImageSource = Path | str | bytes
# Called in the worker with a content hash; True means "known already, do not decode". Must be picklable.
ContentProbe = Callable[[str], bool]


@dataclass
class DecodedBatch:
    """A batch of decoded images; `positions` index into the decoder's input sequence."""

    positions: list[int]
    pixels: np.ndarray  # (B, H, W, 3) uint8, B == len(positions)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)
    transient: set[int] = field(default_factory=set)  # failure positions not to remember (ran out of memory)
    content_hashes: dict[int, str] = field(default_factory=dict)  # position → SHA-256 of the bytes (hash_contents)
    known: list[int] = field(default_factory=list)  # positions hashed but not decoded: the probe knew them


def default_workers(*, accelerator: bool = False) -> int:
    """Decoding processes to use: half the cores on CPU (the rest run the model), most of them for a GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores - 1)) if accelerator else max(1, min(8, cores // 2))


@dataclass(frozen=True)
class DecodeTask:
    """What a worker does with each source: preprocessing, limits, and whether to hash and probe first."""

    preprocessing: Preprocessing
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    hash_contents: bool = False
    skip: ContentProbe | None = None


# Files per decoding task: small enough that the caller can take tasks over when it would wait for a batch.
TASK_IMAGES = 8


@dataclass
class _Task:
    """Consecutive sources [start, stop) of batch `batch`, decoding in a worker (or already decoded)."""

    batch: int
    start: int
    stop: int
    future: Future[DecodedBatch]


class BatchDecoder:
    """Iterate over preprocessed batches of `sources`, decoded in parallel, in input order.

    Example:
        >>> with BatchDecoder(paths, preprocessing, batch_size=32, workers=1) as batches:  # doctest: +SKIP
        ...     for batch in batches:
        ...         embeddings = backbone.embed(batch.pixels)
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        preprocessing: Preprocessing,
        *,
        batch_size: int = 32,
        workers: int = 1,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        hash_contents: bool = False,
        skip: ContentProbe | None = None,
        caller_decodes: bool = True,
    ) -> None:
        self.caller_decodes = caller_decodes  # may change between batches
        self._sources = sources
        self._batch_size = batch_size
        self._batches = range(0, len(sources), batch_size)
        self._task = DecodeTask(preprocessing, max_pixels, hash_contents, skip)
        self._ranges = [
            (number, start, min(start + TASK_IMAGES, batch_start + batch_size, len(sources)))
            for number, batch_start in enumerate(self._batches)
            for start in range(batch_start, min(batch_start + batch_size, len(sources)), TASK_IMAGES)
        ]
        self._pool = (
            ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))
            if workers > 0 and len(self._batches) > 0
            else None
        )
        # Tasks in flight: as many images as 8 batches, to decode well ahead while the caller imports torch.
        self._window = max(8, 2 * workers) * -(-batch_size // TASK_IMAGES)
        self._pending: deque[_Task] = deque()
        self._next_task = 0
        self._fill()

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[DecodedBatch]:
        if self._pool is None:
            for start in self._batches:
                yield run_task(start, self._sources[start : start + self._batch_size], self._task)
            return
        parts: list[DecodedBatch] = []
        while self._pending:
            task = self._pending[0]
            if self.caller_decodes:
                self._decode_while_waiting(task)
            parts.append(self._pending.popleft().future.result())
            self._fill()
            if not self._pending or self._pending[0].batch != task.batch:
                yield merge_batches(parts)
                parts = []

    def _decode_while_waiting(self, awaited: _Task) -> None:
        """Until `awaited` is done, decode queued tasks no worker has started, latest first (no race with the
        workers, which take them in order)."""
        while not awaited.future.done():
            idle = next((task for task in reversed(self._pending) if task.future.cancel()), None)
            if idle is None:
                return
            done: Future[DecodedBatch] = Future()
            done.set_result(run_task(idle.start, self._sources[idle.start : idle.stop], self._task))
            idle.future = done

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self._window and self._next_task < len(self._ranges):
            number, start, stop = self._ranges[self._next_task]
            future = self._pool.submit(run_task, start, list(self._sources[start:stop]), self._task)
            self._pending.append(_Task(number, start, stop, future))
            self._next_task += 1

    def close(self) -> None:
        """Stop the workers (pending work is cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def __enter__(self) -> BatchDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def merge_batches(parts: Sequence[DecodedBatch]) -> DecodedBatch:
    """One batch from consecutive decoded parts (positions stay in input order)."""
    if len(parts) == 1:
        return parts[0]
    merged = DecodedBatch(
        [p for part in parts for p in part.positions], np.concatenate([part.pixels for part in parts])
    )
    for part in parts:
        merged.failures.extend(part.failures)
        merged.transient.update(part.transient)
        merged.content_hashes.update(part.content_hashes)
        merged.known.extend(part.known)
    return merged


def decode_chunk(
    start: int, sources: Sequence[ImageSource], preprocessing: Preprocessing, max_pixels: int
) -> DecodedBatch:
    """Decode and preprocess consecutive sources (no hashing); runs in a worker process."""
    return run_task(start, sources, DecodeTask(preprocessing, max_pixels))


def run_task(start: int, sources: Sequence[ImageSource], task: DecodeTask) -> DecodedBatch:
    """Read (once), optionally hash and probe, decode and preprocess consecutive sources; runs in a worker."""
    prep = EvalPreprocess(task.preprocessing, max_pixels=task.max_pixels)
    height, width = task.preprocessing.input_size
    batch = DecodedBatch([], np.empty((0, height, width, 3), dtype=np.uint8))
    arrays: list[np.ndarray] = []
    for position, source in enumerate(sources, start):
        try:
            content = source if isinstance(source, bytes) else read_file_bytes(source)
            if task.hash_contents:
                content_hash = hashlib.sha256(content).hexdigest()
                batch.content_hashes[position] = content_hash
                if task.skip is not None and task.skip(content_hash):
                    batch.known.append(position)
                    continue
            arrays.append(prep.from_file(content))
            batch.positions.append(position)
        except ImageDecodeError as error:
            batch.failures.append((position, str(error)))
            if error.transient:
                batch.transient.add(position)
    if arrays:
        batch.pixels = np.stack(arrays)
    return batch
