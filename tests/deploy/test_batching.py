"""Micro-batching: concurrent submissions share model calls within the batch size, large requests are split,
and any failure in a batch reaches its requests without stopping the next batch.

Overlap is arranged with events (a model held at a gate until the test has queued what it needs), never with
wall-clock windows, so the tests mean the same on an idle and on a loaded machine."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tlearn.deploy.batching import BatchError, MicroBatcher

LONG_WAIT_S = 30.0  # a batch window no test waits out: batches below fill up, or the test fails by timeout


class RecordingModel:
    """Row sums as 'probabilities'; records each call's batch size and thread, and can hold calls at a gate."""

    def __init__(self, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.threads: set[int] = set()
        self.event_loop_thread: int | None = None
        self.fail = fail
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(pixels))
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail:
            raise RuntimeError("model exploded")
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True).astype(np.float32)


def images(*values: int) -> np.ndarray:
    return np.stack([np.full((2, 2, 3), value, dtype=np.uint8) for value in values])


def run_async(coroutine):
    """asyncio.run in a fresh thread: the session's Playwright browser keeps an event loop on the main thread."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


async def until(condition) -> None:
    """Yield to the event loop until `condition()` holds (bounded, so a broken test fails instead of hanging)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def wait_for_thread_event(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, 30)


def test_queued_requests_share_one_model_call_and_get_their_own_rows():
    model = RecordingModel()
    model.gate = threading.Event()

    async def scenario():
        model.event_loop_thread = threading.get_ident()
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=LONG_WAIT_S)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(images(1, 1, 1, 1)))  # fills a batch: runs at once
            await wait_for_thread_event(model.entered)  # ...and is held inside the model
            later = [asyncio.create_task(batcher.submit(pixels)) for pixels in (images(1), images(2, 3), images(4))]
            await until(lambda: batcher.queued_jobs == 3)
            model.gate.set()  # the three waiting requests fill the next batch exactly
            return await first, await asyncio.gather(*later)
        finally:
            await batcher.stop()

    (_, first_timing), answers = run_async(scenario())
    assert model.batch_sizes == [4, 4]
    assert [rows[:, 0].tolist() for rows, _ in answers] == [[12], [24, 36], [48]]
    assert first_timing.batch_requests == 1
    assert all(timing.batch_images == 4 and timing.batch_requests == 3 for _, timing in answers)
    assert model.event_loop_thread not in model.threads  # the model never runs on the event loop


def test_batches_never_exceed_the_maximum_and_a_large_request_is_split():
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.0)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(images(*range(n))) for n in (3, 10, 1, 2)))
        finally:
            await batcher.stop()

    answers = run_async(scenario())
    assert max(model.batch_sizes) <= 4 and sum(model.batch_sizes) == 16
    assert [len(rows) for rows, _ in answers] == [3, 10, 1, 2]
    assert answers[1][0][:, 0].tolist() == [12 * value for value in range(10)]  # rows back in order
    assert answers[1][1].model_calls == 3  # 10 images: 4 + 4 + 2


def test_a_single_request_does_not_wait_longer_than_the_window():
    model = RecordingModel()
    started = time.perf_counter()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=32, max_wait_s=0.01)
        await batcher.start()
        try:
            return await batcher.submit(images(5))
        finally:
            await batcher.stop()

    rows, timing = run_async(scenario())
    assert rows[0, 0] == 60 and timing.batch_requests == 1
    assert time.perf_counter() - started < 5.0  # the window (10 ms) is the only wait; 5 s allows a loaded machine


def batcher_scenario(model, *steps, probe: np.ndarray | None = None):
    """Run `steps` (async functions of the batcher) in order on one batcher; returns their results."""

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.0, probe=probe, max_consecutive_failures=2)
        await batcher.start()
        try:
            return [await asyncio.wait_for(step(batcher), 30) for step in steps]  # a broken batcher fails, not hangs
        finally:
            await batcher.stop()

    return run_async(scenario())


async def failing_submit(batcher: MicroBatcher) -> str:
    with pytest.raises(BatchError) as failed:
        await batcher.submit(images(1))
    return str(failed.value)


def test_a_failing_model_fails_its_batch_with_the_reason_and_the_next_batch_runs():
    model = RecordingModel(fail=True)

    async def recover(batcher: MicroBatcher):
        model.fail = False
        return (await batcher.submit(images(2)))[0][0, 0]

    reason, answer = batcher_scenario(model, failing_submit, recover)
    assert reason == "the model failed on a batch of 1 image(s) (RuntimeError: model exploded)"
    assert answer == 24


def test_a_batch_that_cannot_be_assembled_fails_alone():
    model = RecordingModel()
    model.gate = threading.Event()
    odd = np.zeros((1, 3, 3, 3), dtype=np.uint8)  # another image size than the request it is batched with

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=2, max_wait_s=LONG_WAIT_S)
        await batcher.start()
        try:
            held = asyncio.create_task(batcher.submit(images(9, 9)))  # a full batch, held in the model
            await wait_for_thread_event(model.entered)
            pair = [asyncio.create_task(batcher.submit(pixels)) for pixels in (images(1), odd)]
            await until(lambda: batcher.queued_jobs == 2)
            model.gate.set()  # the pair fills the next batch, whose images cannot be stacked
            await held
            results = await asyncio.gather(*pair, return_exceptions=True)
            return results, (await batcher.submit(images(3, 3)))[0][:, 0].tolist()
        finally:
            await batcher.stop()

    results, after = run_async(scenario())
    assert all(isinstance(result, BatchError) and "ValueError" in str(result) for result in results)
    assert after == [36, 36] and model.batch_sizes == [2, 2]


def test_wrong_answers_from_the_model_are_failures_not_garbage():
    def short(pixels: np.ndarray) -> np.ndarray:
        return np.zeros((len(pixels) - 1, 2), dtype=np.float32)  # one row missing

    [reason] = batcher_scenario(short, failing_submit)
    assert "expected 1 rows of probabilities, got (0, 2)" in reason


def test_the_model_counts_as_broken_only_when_the_probe_fails_too():
    model = RecordingModel()
    probe = images(0)

    async def bad_batch_only(batcher: MicroBatcher):
        model.fail = True
        reason = await failing_submit(batcher)
        return reason, batcher.failure

    async def broken(batcher: MicroBatcher):
        return batcher.failure, await batcher.probe()

    async def recovered(batcher: MicroBatcher):
        model.fail = False
        return await batcher.probe(), batcher.failure

    [(reason, failure), (failure_after, probed), (probe_now, failure_now)] = batcher_scenario(
        model, bad_batch_only, broken, recovered, probe=probe
    )
    assert "model exploded" in reason
    assert failure == failure_after == probed == "the model fails on a known-good input (RuntimeError: model exploded)"
    assert probe_now is None and failure_now is None


def test_without_a_probe_consecutive_failures_mark_the_model_broken():
    model = RecordingModel(fail=True)

    async def state(batcher: MicroBatcher):
        return batcher.consecutive_failures, batcher.failure

    results = batcher_scenario(model, failing_submit, state, failing_submit, state)
    assert results[1] == (1, None) and results[3] == (2, "the last 2 batches failed")


def test_the_collector_survives_a_bug_in_batching_itself(monkeypatch):
    model = RecordingModel()
    real_run = MicroBatcher._run
    calls = []

    async def buggy_run(self, jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise KeyError("a bug")
        await real_run(self, jobs)

    monkeypatch.setattr(MicroBatcher, "_run", buggy_run)

    async def after_bug(batcher: MicroBatcher):
        return (await batcher.submit(images(2)))[0][0, 0]

    reason, answer = batcher_scenario(model, failing_submit, after_bug)
    assert "internal error while batching (KeyError: 'a bug')" in reason and answer == 24
