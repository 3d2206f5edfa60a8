"""Micro-batching: concurrent submissions share model calls, within the batch size, and errors reach everyone."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tlearn.deploy.batching import MicroBatcher


class RecordingModel:
    """Row sums as 'probabilities'; records each call's batch size and the thread it ran on."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.threads: set[int] = set()
        self.event_loop_thread: int | None = None
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(pixels))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True).astype(np.float32)


def images(*values: int) -> np.ndarray:
    return np.stack([np.full((2, 2, 3), value, dtype=np.uint8) for value in values])


def run_async(coroutine):
    """asyncio.run in a fresh thread: the session's Playwright browser keeps an event loop on the main thread."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def run_concurrently(model: RecordingModel, requests: list[np.ndarray], **options):
    async def scenario():
        model.event_loop_thread = threading.get_ident()
        batcher = MicroBatcher(model, **options)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(pixels) for pixels in requests), return_exceptions=True)
        finally:
            await batcher.stop()

    return run_async(scenario())


def test_concurrent_requests_share_one_model_call_and_get_their_own_rows():
    model = RecordingModel()
    answers = run_concurrently(model, [images(1), images(2, 3), images(4)], max_batch_size=8, max_wait_s=0.05)
    assert model.batch_sizes == [4]
    assert [rows[:, 0].tolist() for rows, _ in answers] == [[12], [24, 36], [48]]
    assert all(timing.batch_images == 4 and timing.batch_requests == 3 for _, timing in answers)
    assert model.event_loop_thread not in model.threads  # the model never runs on the event loop


def test_batches_never_exceed_the_maximum_and_nothing_is_lost():
    model = RecordingModel(delay_s=0.01)
    requests = [images(*range(n)) for n in (3, 3, 3, 1, 2)]
    answers = run_concurrently(model, requests, max_batch_size=4, max_wait_s=0.02)
    assert max(model.batch_sizes) <= 4 and sum(model.batch_sizes) == 12
    assert [len(rows) for rows, _ in answers] == [3, 3, 3, 1, 2]


def test_a_single_request_waits_at_most_the_window():
    model = RecordingModel()
    started = time.perf_counter()
    [(rows, timing)] = run_concurrently(model, [images(5)], max_batch_size=32, max_wait_s=0.01)
    assert rows[0, 0] == 60 and timing.batch_requests == 1
    assert time.perf_counter() - started < 1.0 and timing.queue_ms < 500


def test_a_failing_model_fails_each_request_of_its_batch_and_the_batcher_goes_on():
    model = RecordingModel(fail=True)
    answers = run_concurrently(model, [images(1), images(2)], max_batch_size=8, max_wait_s=0.05)
    assert all(isinstance(answer, RuntimeError) for answer in answers)

    async def after_failure():
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError):
                await batcher.submit(images(1))
            model.fail = False
            rows, _ = await batcher.submit(images(2))
            return rows
        finally:
            await batcher.stop()

    assert run_async(after_failure())[0, 0] == 24
