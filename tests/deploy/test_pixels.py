"""The service's pixel budgets: per request, and the gate that bounds what the whole process decodes at once."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from tlearn.deploy.pixels import PixelBudget, PixelGate


def test_a_request_budget_refuses_the_image_that_crosses_it_naming_it():
    budget = PixelBudget(100)
    assert budget.take((5, 10)) is None and budget.take(None) is None and budget.take((5, 10)) is None
    refusal = budget.take((2, 1))
    assert refusal is not None and "more than 0.0001 MP" in refusal and "(this one 2x1)" in refusal


def run(coroutine):
    """asyncio.run in a fresh thread: the session's Playwright browser keeps an event loop on the main thread."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def test_big_pictures_wait_for_each_other_small_ones_pass_beside_and_one_alone_always_fits():
    async def scenario():
        gate, most = PixelGate(40), [0]

        async def decode(size):
            async with gate.admitted(size):
                most[0] = max(most[0], gate.busy)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(decode((5, 6)) for _ in range(3)), *(decode((1, 5)) for _ in range(2)))
        alone = PixelGate(10)
        async with alone.admitted((100, 100)):  # larger than the limit, but nothing else is being decoded
            inside = alone.busy
        return most[0], gate.busy, inside, alone.busy

    assert run(scenario()) == (40, 0, 10_000, 0)  # 30 + 5 + 5 at most, never two pictures of 30


def test_the_gate_lets_a_waiting_picture_in_once_the_first_is_decoded():
    async def scenario():
        gate, release, order = PixelGate(40), asyncio.Event(), []

        async def first():
            async with gate.admitted((6, 6)):
                order.append("first in")
                await release.wait()
            order.append("first out")

        async def second():
            async with gate.admitted((6, 6)):
                order.append("second in")

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        await asyncio.sleep(0.05)
        waiting = list(order)  # 36 + 36 > 40: the second waits
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return waiting, order

    waiting, order = run(scenario())
    assert waiting == ["first in"] and order == ["first in", "first out", "second in"]


def test_one_clients_big_pictures_take_turns_so_another_clients_picture_is_not_queued_behind_them_all():
    async def scenario(clients):
        gate, order = PixelGate(40), []

        async def decode(name, client, size=(6, 6)):  # 36 pixels: a big picture (more than a quarter of 40)
            async with gate.admitted(size, client):
                order.append(name)
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(decode(f"a{i}", clients[0])) for i in range(3)]
        await asyncio.sleep(0)  # the flood is in line first
        tasks.append(asyncio.create_task(decode("b", clients[1])))
        small = [asyncio.create_task(decode(f"small{i}", clients[0], (1, 2))) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*tasks, *small), 10)
        return order, gate._turns, gate._in_line

    order, turns, in_line = run(scenario(["10.0.0.1", "10.0.0.2"]))
    assert [name for name in order if not name.startswith("small")] == ["a0", "b", "a1", "a2"]
    assert order.index("small0") < order.index("b")  # small pictures take no turn: they pass beside a0
    assert turns == {} and not in_line  # nothing kept for clients with nothing in flight
    order, *_ = run(scenario([None, None]))  # without a client (the gate alone): first come, first served
    assert [name for name in order if not name.startswith("small")] == ["a0", "a1", "a2", "b"]
