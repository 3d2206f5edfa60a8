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

from tlearn.deploy.batching import BatchError, BatchTiming, MicroBatcher

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


def test_a_lone_request_runs_at_once_and_a_batch_waits_only_for_requests_on_their_way():
    """With nothing else on its way a request never waits out the window (30 s here); a request decoding its
    images (`expecting`) is waited for, and joins the batch."""
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=32, max_wait_s=LONG_WAIT_S)
        await batcher.start()
        try:
            alone = await asyncio.wait_for(batcher.submit(images(1)), 10)  # would hang 30 s if it waited
            with batcher.expecting():  # a second request still decoding
                first = asyncio.create_task(batcher.submit(images(2)))
                await until(lambda: batcher.queued_jobs == 0)  # the collector holds the first job, waiting
                await asyncio.sleep(0.05)
                assert not first.done()
            together = await asyncio.wait_for(asyncio.gather(first, batcher.submit(images(3))), 10)
            return alone, together
        finally:
            await batcher.stop()

    (_, alone_timing), together = run_async(scenario())
    assert alone_timing.batch_requests == 1 and alone_timing.queue_ms < 5000
    assert model.batch_sizes == [1, 2]  # the expected request joined the waiting one
    assert [timing.batch_requests for _, timing in together] == [2, 2]


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


def test_a_batch_size_below_one_is_refused_and_one_runs_each_image_alone():
    """`max_batch_size` is at least 1 (one image per model call); 0 would never make progress."""
    with pytest.raises(ValueError) as refused:
        MicroBatcher(RecordingModel(), max_batch_size=0)
    assert str(refused.value) == "max_batch_size must be at least 1, got 0"
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0)
        await batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit(images(1, 2, 3)), 30)
        finally:
            await batcher.stop()

    rows, timing = run_async(scenario())
    assert model.batch_sizes == [1, 1, 1] and rows[:, 0].tolist() == [12, 24, 36] and timing.model_calls == 3


def test_a_request_without_images_gets_no_rows_and_never_reaches_the_model():
    """An empty request is answered at once with (0, 0) probabilities and an all-zero timing."""
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.0)
        await batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit(np.zeros((0, 2, 2, 3), dtype=np.uint8)), 30)
        finally:
            await batcher.stop()

    rows, timing = run_async(scenario())
    assert rows.shape == (0, 0) and rows.dtype == np.float32
    assert timing == BatchTiming(queue_ms=0.0, inference_ms=0.0, batch_images=0, batch_requests=0, model_calls=0)
    assert model.batch_sizes == []


class FakeClock:
    """`time` for the batcher: perf_counter reads `now`, which only the test and the model move."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_timings_report_the_queue_wait_and_every_model_call_of_a_request(monkeypatch):
    """The timing a client is shown: the wait until its first batch started, and the model time of all the
    batches its images were split over (a fake clock: each model call takes exactly 0.25 s)."""
    clock = FakeClock()
    monkeypatch.setattr("tlearn.deploy.batching.time", clock)

    def model(pixels: np.ndarray) -> np.ndarray:
        clock.now += 0.25
        return np.ones((len(pixels), 2), dtype=np.float32)

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.0)
        try:
            request = asyncio.create_task(batcher.submit(images(*range(10))))  # submitted at 100.0
            await until(lambda: batcher.queued_jobs == 3)
            clock.now = 102.0  # two seconds in the queue before the collector starts
            await batcher.start()
            return await asyncio.wait_for(request, 30)
        finally:
            await batcher.stop()

    rows, timing = run_async(scenario())
    assert rows.shape == (10, 2)
    assert timing == BatchTiming(queue_ms=2000.0, inference_ms=750.0, batch_images=4, batch_requests=1, model_calls=3)


def test_a_job_that_does_not_fit_goes_first_into_the_next_batch():
    """A request that would overflow the batch waits for the next one and leads it: no batch exceeds the
    maximum, and no request is passed over."""
    model = RecordingModel()
    model.gate = threading.Event()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=LONG_WAIT_S)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(images(1, 1, 1, 1)))  # a full batch, held in the model
            await wait_for_thread_event(model.entered)
            queued = []
            for pixels in (images(2, 2, 2), images(3, 3), images(4), images(5)):
                queued.append(asyncio.create_task(batcher.submit(pixels)))
                await until(lambda: batcher.queued_jobs == len(queued))
            model.gate.set()  # next: [3 images] (2 would not fit), then [2 + 1 + 1] led by the held-over request
            await first
            return await asyncio.wait_for(asyncio.gather(*queued), 30)
        finally:
            await batcher.stop()

    answers = run_async(scenario())
    assert model.batch_sizes == [4, 3, 4]
    assert [rows[:, 0].tolist() for rows, _ in answers] == [[24, 24, 24], [36, 36], [48], [60]]
    assert [timing.batch_requests for _, timing in answers] == [1, 3, 3, 3]


def test_stopping_cancels_the_requests_still_queued_even_before_the_collector_started():
    """`stop` cancels what is still waiting for a batch (here: a batcher that was never started), and may be
    called again."""
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.0)
        waiting = asyncio.create_task(batcher.submit(images(1, 2)))
        await until(lambda: batcher.queued_jobs == 1)
        await batcher.stop()
        await batcher.stop()  # harmless the second time
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return batcher.queued_jobs

    assert run_async(scenario()) == 0 and model.batch_sizes == []


def test_stopping_waits_for_the_model_call_in_progress_and_runs_no_other():
    """The service closes the model after `stop`: the model call still running must have returned by then, and a
    probe queued behind it never runs. Stopping again is harmless."""
    model = RecordingModel()
    model.gate = threading.Event()
    returned = threading.Event()

    def watched(pixels: np.ndarray) -> np.ndarray:
        rows = model(pixels)
        returned.set()
        return rows

    async def scenario():
        batcher = MicroBatcher(watched, max_batch_size=1, max_wait_s=0.0, probe=images(0))
        await batcher.start()
        request = asyncio.create_task(batcher.submit(images(1)))
        await wait_for_thread_event(model.entered)
        probing = asyncio.create_task(batcher.probe())  # queued behind the running call
        for _ in range(10):
            await asyncio.sleep(0)
        threading.Timer(0.2, model.gate.set).start()  # the call returns a moment after stop is asked
        await batcher.stop()
        finished = returned.is_set()
        await batcher.stop()
        request.cancel()
        probing.cancel()
        await asyncio.gather(request, probing, return_exceptions=True)
        return finished

    assert run_async(scenario())
    assert model.batch_sizes == [1]  # the batch only: the queued probe was cancelled


def test_a_request_whose_batch_runs_when_the_service_stops_is_cancelled_not_left_waiting():
    """`stop` during a model call: the requests of that batch end (cancelled) instead of waiting forever."""
    model = RecordingModel()
    model.gate = threading.Event()

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0)
        await batcher.start()
        request = asyncio.create_task(batcher.submit(images(1)))
        await wait_for_thread_event(model.entered)
        threading.Timer(0.2, model.gate.set).start()
        await batcher.stop()
        done, _ = await asyncio.wait([request], timeout=2)
        return done and request.cancelled()

    assert run_async(scenario())


def test_a_model_answer_with_nan_fails_its_batch_instead_of_reaching_clients():
    """`_check_rows` promises finite rows: NaN probabilities are the model's failure (an error), not an answer."""

    def nan_model(pixels: np.ndarray) -> np.ndarray:
        return np.full((len(pixels), 2), np.nan, dtype=np.float32)

    async def scenario():
        batcher = MicroBatcher(nan_model, max_batch_size=4, max_wait_s=0.0)
        await batcher.start()
        try:
            return await batcher.submit(images(2))
        finally:
            await batcher.stop()

    with pytest.raises(BatchError, match="not finite"):
        run_async(scenario())


def test_one_model_call_runs_at_a_time_probes_included():
    """Batches and probes share one inference thread: a probe asked for during a batch waits for it."""
    active, overlaps = [0], []
    lock = threading.Lock()
    gate, entered = threading.Event(), threading.Event()

    def model(pixels: np.ndarray) -> np.ndarray:
        with lock:
            active[0] += 1
            overlaps.append(active[0])
        entered.set()
        gate.wait(30)
        with lock:
            active[0] -= 1
        return np.ones((len(pixels), 2), dtype=np.float32)

    async def scenario():
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0, probe=images(0))
        await batcher.start()
        try:
            request = asyncio.create_task(batcher.submit(images(1)))
            await wait_for_thread_event(entered)
            probing = asyncio.create_task(batcher.probe())
            await asyncio.sleep(0.2)  # room for a second thread to enter the model, were there one
            gate.set()
            return await asyncio.wait_for(request, 30), await asyncio.wait_for(probing, 30)
        finally:
            await batcher.stop()

    (rows, _), probed = run_async(scenario())
    assert rows.shape == (1, 2) and probed is None
    assert overlaps == [1, 1]  # the batch, then the probe: never two calls at once


def test_failures_carry_the_models_exception_and_a_one_line_reason():
    """A failed batch's BatchError keeps the model's own exception (the service picks its status from it) and
    names it in one line: the type and the first line of its message, or the type alone."""
    errors = [RuntimeError("first line\nsecond line"), RuntimeError(), ValueError("   ")]

    def model(pixels: np.ndarray) -> np.ndarray:
        raise errors[int(pixels[0, 0, 0, 0])]

    async def failures(batcher: MicroBatcher) -> list[BatchError]:
        caught = []
        for index in range(len(errors)):
            with pytest.raises(BatchError) as failed:
                await batcher.submit(images(index))
            caught.append(failed.value)
        return caught

    [caught] = batcher_scenario(model, failures)
    prefix = "the model failed on a batch of 1 image(s)"
    assert [str(error) for error in caught] == [
        f"{prefix} (RuntimeError: first line)",
        f"{prefix} (RuntimeError)",
        f"{prefix} (ValueError)",
    ]
    assert [error.cause for error in caught] == errors


@pytest.mark.parametrize(
    "answer, shape",
    [
        (lambda n: [[0.5, 0.5]] * n, "list"),  # the right length, but not an array
        (lambda n: np.ones(n, dtype=np.float32), "(1,)"),  # one value per image: no class axis
        (lambda n: None, "NoneType"),
    ],
)
def test_answers_that_are_not_one_row_per_image_fail_the_batch(answer, shape):
    """Only an array of one row per image is an answer; anything else fails the batch, naming what came back."""
    [reason] = batcher_scenario(lambda pixels: answer(len(pixels)), failing_submit)
    assert (
        reason
        == f"the model failed on a batch of 1 image(s) (ValueError: expected 1 rows of probabilities, got {shape})"
    )


def test_bad_batches_on_a_model_that_answers_its_probe_never_mark_it_broken():
    """A batch failure with a probe that still answers is the batch's fault: the count starts over, however many
    such batches come."""
    model = RecordingModel()

    def picky(pixels: np.ndarray) -> np.ndarray:
        if pixels[0, 0, 0, 0] == 9:
            raise RuntimeError("cannot handle this image")
        return model(pixels)

    async def state(batcher: MicroBatcher):
        return batcher.consecutive_failures, batcher.failure

    results = batcher_scenario(picky, failing_nine, failing_nine, failing_nine, state, probe=images(0))
    assert results[-1] == (0, None)


async def failing_nine(batcher: MicroBatcher) -> str:
    with pytest.raises(BatchError) as failed:
        await batcher.submit(images(9))
    return str(failed.value)


def test_a_successful_batch_or_probe_starts_the_failure_count_over():
    """Only failures in a row count: a batch or probe that succeeds in between resets the count to 0."""
    model = RecordingModel(fail=True)

    async def succeed(batcher: MicroBatcher):
        model.fail = False
        await batcher.submit(images(1))
        model.fail = True
        return batcher.consecutive_failures

    async def state(batcher: MicroBatcher):
        return batcher.consecutive_failures, batcher.failure

    results = batcher_scenario(model, failing_submit, succeed, failing_submit, state)
    assert results[1] == 0 and results[3] == (1, None)  # never two in a row: not broken (limit 2)
    probe = images(0)

    async def recover(batcher: MicroBatcher):
        model.fail = False
        return await batcher.probe(), batcher.consecutive_failures, batcher.failure

    broken_then_recovered = batcher_scenario(model, failing_submit, failing_submit, state, recover, probe=probe)
    assert broken_then_recovered[2][1] is not None and broken_then_recovered[3] == (None, 0, None)
