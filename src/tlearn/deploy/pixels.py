"""How many pixels the service decodes: per request, and at once in the whole process.

Bytes say little about the work an upload makes: a lossless WebP of one colour is a few hundred bytes and 39.7
MP (just under the upload limit), and decoding it takes seconds of CPU and hundreds of MB. So pixels are counted
from each image's header before it is decoded (`tlearn.data.images.declared_size`):

* `PixelBudget`: the pixels one request's images may declare in all; beyond it the request gets 413.
* `PixelGate`: the pixels decoded at once, all requests together. An image waits, on the event loop and
  holding no decoding thread, until its pixels fit beside those being decoded (an image alone always fits), so
  however many decoding threads and requests there are,
  memory holds about one limit's worth of pictures: under `benchmarks/bench_serve_hostile.py`'s WebP traffic two
  threads decoding two 39.7 MP pictures at once took the service to 1.64 GB against its stated 1.15 GB bound.
  A big picture (over `BIG_SHARE` of the limit) also takes its client's turn: one client's big pictures enter
  the gate one after another, so a client that sends many cannot queue them all ahead of another client's one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator

BIG_SHARE = 0.25  # a picture declaring more than this share of the gate's limit waits for its client's turn


class PixelBudget:
    """The pixels one request's images may declare in all; each image takes its share before it is decoded."""

    def __init__(self, limit: int) -> None:
        self.limit, self.taken = limit, 0
        self._lock = threading.Lock()

    def take(self, size: tuple[int, int] | None) -> str | None:
        """Why an image of `size` (width, height; None when its header does not say) cannot be decoded within
        the request's budget, or None when it took its share."""
        if size is None:
            return None
        with self._lock:
            self.taken += size[0] * size[1]
            if self.taken <= self.limit:
                return None
        return (
            f"the request's images declare more than {self.limit / 1e6:g} MP in all "
            f"(this one {size[0]}x{size[1]}); send fewer or smaller images per request"
        )


class PixelGate:
    """The pixels being decoded at once in this process; `admitted` waits (on the event loop) until an
    image's pixels fit.

    Example (in a coroutine):
        >>> gate = PixelGate(40_000_000)
        >>> async def decode_one():  # doctest: +SKIP
        ...     async with gate.admitted((6000, 6000)):  # 36 MP: waits while more than 4 MP are being decoded
        ...         return decode(upload)
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.busy = limit, 0
        self._changed = asyncio.Condition()
        self._turns: dict[str, asyncio.Lock] = {}  # per client with big pictures in flight
        self._in_line: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def admitted(self, size: tuple[int, int] | None, client: str | None = None) -> AsyncIterator[None]:
        """Hold an image's pixels while it is decoded (an image whose header gives no size counts as none: the
        decoder refuses those it cannot bound); a big picture first waits for `client`'s earlier big ones."""
        pixels = 0 if size is None else size[0] * size[1]
        async with self._turn(client if pixels > BIG_SHARE * self.limit else None):
            async with self._changed:
                await self._changed.wait_for(lambda: not self.busy or self.busy + pixels <= self.limit)
                self.busy += pixels
            try:
                yield
            finally:
                async with self._changed:
                    self.busy -= pixels
                    self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def _turn(self, client: str | None) -> AsyncIterator[None]:
        """One big picture per client at the gate and in the decoder (None: no turn to wait for)."""
        if client is None:
            yield
            return
        lock = self._turns.setdefault(client, asyncio.Lock())
        self._in_line[client] += 1
        try:
            async with lock:
                yield
        finally:
            self._in_line[client] -= 1
            if not self._in_line[client]:  # only clients with big pictures in flight are remembered
                del self._in_line[client], self._turns[client]
