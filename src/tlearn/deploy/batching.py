"""Micro-batching: concurrent requests share one model call, so throughput grows with load.

Each request submits its images and awaits its own rows of probabilities. A collector task takes the first
waiting job, waits a short window for more (or until the batch is full) while other requests are on their way
(`expecting`: decoding their images), runs the model once on all of them in
a worker thread — never on the event loop — and hands each job its rows. One model call runs at a time: the
runtime already spreads a batch over the CPU cores. A request with more images than a batch holds is split
into several jobs, so no model call ever exceeds `max_batch_size` images (memory stays bounded). A job with no
other request on its way runs at once: waiting out the window for company that cannot come cost a lone client
5 ms of its ~20 ms answer (benchmarks/bench_serve.py, concurrency 1).

Nothing that goes wrong in one batch stops the collector: a model exception, a shape mismatch or a wrong
number of rows fails that batch's requests with a `BatchError` naming the reason, and the next batch runs.
After a failure the model is probed on a known-good input; if the probe fails too, or failures keep coming,
`failure` says why the model can no longer answer (the service's `/readyz` reports it) until a later batch or
probe succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger("tlearn.serve")


class BatchError(RuntimeError):
    """The model call of a batch failed; the message says why, and `cause` is the model's own exception (None
    when batching itself failed), from which the service chooses its answer's status."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.cause = cause


@dataclass(frozen=True)
class BatchTiming:
    """How one request's images were run."""

    queue_ms: float  # from submission until its (first) batch started
    inference_ms: float  # the model call(s) of its batch(es)
    batch_images: int  # images in its (largest) batch, all requests together
    batch_requests: int  # requests sharing that batch
    model_calls: int = 1  # batches its images were split over


@dataclass
class _Job:
    pixels: np.ndarray  # (n, H, W, 3) uint8, n <= max_batch_size
    future: asyncio.Future[tuple[np.ndarray, BatchTiming]]
    submitted: float


class MicroBatcher:
    """Groups concurrent `submit` calls into batches of at most `max_batch_size` images for `infer`.

    Args:
        infer: (B, H, W, 3) uint8 → (B, C) probabilities; runs in a worker thread.
        max_batch_size: images per model call; a larger request is split over several calls.
        max_wait_s: how long the first job of a batch waits for company.
        probe: (1, H, W, 3) pixels the model is known to answer (the warm-up input), run after a failure to
            tell a bad batch from a broken model. None: failures are only counted.
        max_consecutive_failures: failed batches in a row after which the model counts as unable to answer.

    Example:
        >>> batcher = MicroBatcher(engine.probabilities, max_batch_size=32, max_wait_s=0.005)  # doctest: +SKIP
        >>> await batcher.start()  # doctest: +SKIP
        >>> probabilities, timing = await batcher.submit(pixels)  # doctest: +SKIP
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        probe: np.ndarray | None = None,
        max_consecutive_failures: int = 3,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive_failures = 0
        self.failure: str | None = None  # why the model can no longer answer; None while it can
        self._probe = probe
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._held_over: deque[_Job] = deque()  # a job that did not fit the previous batch goes first next time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlearn-inference")
        self._collector: asyncio.Task[None] | None = None
        self._expected = 0  # requests decoding images they will submit (`expecting`)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Within this block a request is on its way (decoding its images): a batch being formed waits for it,
        up to `max_wait_s`. Leave the block right before `submit` (no await between them)."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1

    @property
    def queued_jobs(self) -> int:
        """Jobs waiting for a batch (a request split over several batches counts once per batch)."""
        return self._queue.qsize() + len(self._held_over)

    async def start(self) -> None:
        """Start collecting (call from the event loop that will submit)."""
        self._collector = asyncio.create_task(self._collect_forever())

    async def stop(self) -> None:
        """Stop collecting; requests still waiting are cancelled."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
            self._collector = None
        for job in [*self._held_over, *_drain(self._queue)]:
            job.future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, pixels: np.ndarray) -> tuple[np.ndarray, BatchTiming]:
        """Probabilities for (n, H, W, 3) uint8 pixels, computed in shared batches of at most `max_batch_size`.

        Raises:
            BatchError: the model call of one of its batches failed.
        """
        loop = asyncio.get_running_loop()
        jobs = []
        for start in range(0, len(pixels), self.max_batch_size):
            future: asyncio.Future[tuple[np.ndarray, BatchTiming]] = loop.create_future()
            jobs.append(_Job(pixels[start : start + self.max_batch_size], future, time.perf_counter()))
            self._queue.put_nowait(jobs[-1])
        try:
            answers = await asyncio.gather(*(job.future for job in jobs))
        finally:
            for job in jobs:  # the caller went away or a sibling batch failed: nothing left to compute
                job.future.cancel()
        if not answers:
            return np.empty((0, 0), dtype=np.float32), BatchTiming(0.0, 0.0, 0, 0, 0)
        timings = [timing for _, timing in answers]
        return np.concatenate([rows for rows, _ in answers]), BatchTiming(
            queue_ms=timings[0].queue_ms,
            inference_ms=sum(timing.inference_ms for timing in timings),
            batch_images=max(timing.batch_images for timing in timings),
            batch_requests=max(timing.batch_requests for timing in timings),
            model_calls=len(timings),
        )

    async def probe(self) -> str | None:
        """Run the probe input now (after any batch in progress); returns why it failed, or None.

        A success clears `failure`, so a service whose model recovered becomes ready again without traffic.
        """
        if self._probe is None:
            return self.failure
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._executor, self._infer, self._probe)
            _check_rows(rows, len(self._probe))
        except Exception as error:  # the model's own failure is the answer here
            self.failure = f"the model fails on a known-good input ({_describe(error)})"
            return self.failure
        self.failure, self.consecutive_failures = None, 0
        return None

    async def _collect_forever(self) -> None:
        while True:
            jobs = await self._next_batch()
            try:
                await self._run(jobs)
            except Exception as error:  # a bug in batching itself: fail these jobs, keep serving the next ones
                logger.exception("micro-batch failed")
                self._fail(jobs, f"internal error while batching ({_describe(error)})")

    async def _next_batch(self) -> list[_Job]:
        """The next jobs to run together: the first one waits at most `max_wait_s` for others to join."""
        loop = asyncio.get_running_loop()
        jobs = [self._held_over.popleft() if self._held_over else await self._queue.get()]
        images = len(jobs[0].pixels)
        deadline = loop.time() + self.max_wait_s
        while images < self.max_batch_size:
            if self._expected == 0 and self._queue.empty():
                break  # no other request is on its way: waiting could only delay this one
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
        try:
            pixels = np.concatenate([job.pixels for job in jobs])  # (B, H, W, 3)
            probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, pixels)
            _check_rows(probabilities, len(pixels))
        except asyncio.CancelledError:  # `stop` while this batch ran: its requests are cancelled, never left waiting
            for job in jobs:
                job.future.cancel()
            raise
        except Exception as error:  # the model failed on this batch: each of its requests gets the reason
            images = sum(len(job.pixels) for job in jobs)
            await self._after_failure()  # first, so readiness is settled by the time a client hears of it
            self._fail(jobs, f"the model failed on a batch of {images} image(s) ({_describe(error)})", error)
            return
        self.consecutive_failures, self.failure = 0, None
        inference_ms = 1000 * (time.perf_counter() - started)
        offset = 0
        for job in jobs:
            rows = probabilities[offset : offset + len(job.pixels)]
            offset += len(job.pixels)
            timing = BatchTiming(1000 * (started - job.submitted), inference_ms, len(pixels), len(jobs))
            if not job.future.done():
                job.future.set_result((rows, timing))

    def _fail(self, jobs: list[_Job], reason: str, cause: BaseException | None = None) -> None:
        logger.error("%s", reason)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(BatchError(reason, cause))

    async def _after_failure(self) -> None:
        """Count the failure and probe the model: a bad batch leaves it ready, a broken model does not."""
        self.consecutive_failures += 1
        if await self.probe() is None and self._probe is not None:
            self.consecutive_failures = 0  # the probe answered: the batch was at fault, not the model
            return
        if self.consecutive_failures >= self.max_consecutive_failures and self.failure is None:
            self.failure = f"the last {self.consecutive_failures} batches failed"


def _check_rows(probabilities: object, images: int) -> None:
    """A model answer must be one finite row per image; anything else is the model's failure, not the client's."""
    if not isinstance(probabilities, np.ndarray) or probabilities.ndim != 2 or len(probabilities) != images:
        shape = getattr(probabilities, "shape", type(probabilities).__name__)
        raise ValueError(f"expected {images} rows of probabilities, got {shape}")
    if not np.isfinite(probabilities).all():
        raise ValueError("the model gave probabilities that are not finite numbers (NaN or infinity)")


def _describe(error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _drain(queue: asyncio.Queue[_Job]) -> list[_Job]:
    jobs = []
    while not queue.empty():
        jobs.append(queue.get_nowait())
    return jobs
