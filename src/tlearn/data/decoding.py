"""Decoding image files into preprocessed batches in worker processes, ahead of the model.

The backbone is the bottleneck on a CPU, so decoding runs in other processes and overlaps the forward pass.
`BatchDecoder` starts decoding as soon as it is created — before torch is even imported by the caller — and
keeps a bounded number of batches in flight, so memory stays constant on folders of any size. Workers need
only PIL and NumPy and start in a fraction of a second. Batches travel as compact uint8 (B, H, W, 3) arrays.
A file that cannot be decoded is reported in its batch's `failures`, never raised.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError
from tlearn.data.preprocess import EvalPreprocess, Preprocessing

ImageSource = Path | str | bytes


@dataclass
class DecodedBatch:
    """A batch of decoded images; `positions` index into the decoder's input sequence."""

    positions: list[int]
    pixels: np.ndarray  # (B, H, W, 3) uint8, B == len(positions)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


def default_workers(*, accelerator: bool = False) -> int:
    """Decoding processes to use: half the cores on CPU (the rest run the model), most of them for a GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores - 1)) if accelerator else max(1, min(8, cores // 2))


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
    ) -> None:
        self._chunks = [
            (start, list(sources[start : start + batch_size])) for start in range(0, len(sources), batch_size)
        ]
        self._preprocessing = preprocessing
        self._max_pixels = max_pixels
        self._pool = ProcessPoolExecutor(max_workers=workers) if workers > 0 and len(self._chunks) > 0 else None
        # Enough batches in flight to decode well ahead while the caller is still importing torch.
        self._window = max(8, 2 * workers)
        self._pending: deque[Future[DecodedBatch]] = deque()
        self._next_chunk = 0
        self._fill()

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self) -> Iterator[DecodedBatch]:
        if self._pool is None:
            for start, sources in self._chunks:
                yield decode_chunk(start, sources, self._preprocessing, self._max_pixels)
            return
        while self._pending:
            batch = self._pending.popleft().result()
            self._fill()
            yield batch

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self._window and self._next_chunk < len(self._chunks):
            start, sources = self._chunks[self._next_chunk]
            self._pending.append(self._pool.submit(decode_chunk, start, sources, self._preprocessing, self._max_pixels))
            self._next_chunk += 1

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


def decode_chunk(
    start: int, sources: Sequence[ImageSource], preprocessing: Preprocessing, max_pixels: int
) -> DecodedBatch:
    """Decode and preprocess consecutive sources; runs in a worker process."""
    prep = EvalPreprocess(preprocessing, max_pixels=max_pixels)
    height, width = preprocessing.input_size
    positions: list[int] = []
    arrays: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    for offset, source in enumerate(sources):
        try:
            arrays.append(prep.from_file(source))
            positions.append(start + offset)
        except ImageDecodeError as error:
            failures.append((start + offset, str(error)))
    pixels = np.stack(arrays) if arrays else np.empty((0, height, width, 3), dtype=np.uint8)
    return DecodedBatch(positions, pixels, failures)
