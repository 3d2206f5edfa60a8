"""Micro-batching: concurrent requests share one model call, so throughput grows with load.

Each request submits its images and awaits its own rows of probabilities. A collector task takes the first
waiting request, waits a short window for more (or until the batch is full), runs the model once on all of
them in a worker thread — never on the event loop — and hands each request its rows. One model call runs at
a time: the runtime already spreads a batch over the CPU cores.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchTiming:
    """How one request's images were run."""

    queue_ms: float  # from submission until its batch started
    inference_ms: float  # the model call of its batch
    batch_images: int  # images in that batch, all requests together
    batch_requests: int


@dataclass
class _Job:
    pixels: np.ndarray  # (n, H, W, 3) uint8
    future: asyncio.Future[tuple[np.ndarray, BatchTiming]]
    submitted: float


class MicroBatcher:
    """Groups concurrent `submit` calls into batches of at most `max_batch_size` images for `infer`.

    Args:
        infer: (B, H, W, 3) uint8 → (B, C) probabilities; runs in a worker thread.
        max_batch_size: images per model call (a single larger request still runs, alone).
        max_wait_s: how long the first request of a batch waits for company.

    Example:
        >>> batcher = MicroBatcher(engine.probabilities, max_batch_size=32, max_wait_s=0.005)  # doctest: +SKIP
        >>> await batcher.start()  # doctest: +SKIP
        >>> probabilities, timing = await batcher.submit(pixels)  # doctest: +SKIP
    """

    def __init__(
        self, infer: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int = 32, max_wait_s: float = 0.005
    ) -> None:
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._held_over: deque[_Job] = deque()  # a job that did not fit the previous batch goes first next time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlearn-inference")
        self._collector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start collecting (call from the event loop that will submit)."""
        self._collector = asyncio.create_task(self._collect_forever())

    async def stop(self) -> None:
        """Stop collecting; requests still waiting are cancelled."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
            self._collector = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, pixels: np.ndarray) -> tuple[np.ndarray, BatchTiming]:
        """Probabilities for (n, H, W, 3) uint8 pixels, computed in a shared batch; and how it ran."""
        future: asyncio.Future[tuple[np.ndarray, BatchTiming]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(pixels, future, time.perf_counter()))
        return await future

    async def _collect_forever(self) -> None:
        while True:
            jobs = await self._next_batch()
            await self._run(jobs)

    async def _next_batch(self) -> list[_Job]:
        """The next jobs to run together: the first one waits at most `max_wait_s` for others to join."""
        loop = asyncio.get_running_loop()
        jobs = [self._held_over.popleft() if self._held_over else await self._queue.get()]
        images = len(jobs[0].pixels)
        deadline = loop.time() + self.max_wait_s
        while images < self.max_batch_size:
            try:
                job = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            if images + len(job.pixels) > self.max_batch_size:
                self._held_over.append(job)
                break
            jobs.append(job)
            images += len(job.pixels)
        return [job for job in jobs if not job.future.done()]  # a client may have gone away meanwhile

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        started = time.perf_counter()
        pixels = np.concatenate([job.pixels for job in jobs])
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, pixels)
        except Exception as error:  # the model failed on this batch: each of its requests gets the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        inference_ms = 1000 * (time.perf_counter() - started)
        offset = 0
        for job in jobs:
            rows = probabilities[offset : offset + len(job.pixels)]
            offset += len(job.pixels)
            timing = BatchTiming(1000 * (started - job.submitted), inference_ms, len(pixels), len(jobs))
            if not job.future.done():
                job.future.set_result((rows, timing))
