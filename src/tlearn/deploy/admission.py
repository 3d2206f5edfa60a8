"""Which prediction requests the service takes on: at most so many at once, and at most a share of them from one
client.

A request is "pending" from its admission until it is answered: while its images decode and while it waits for
the model. The process-wide cap (`max_pending_requests`) bounds the work queued behind the model; alone, it lets
one client that opens many connections (up to `max_connections_per_client` of them) take every slot, and every
other client is then told "busy". The per-client cap (`max_pending_per_client`, counted by peer address) leaves
the rest of the slots to the others. Both refusals are 503 with Retry-After, so a well-behaved client retries.

The default share is three quarters of the slots: one client cannot shut the others out, and 16 clients on one
address (`benchmarks/bench_serve_hostile.py`) still fit. Behind a reverse proxy every request comes from the
proxy's address: give it the whole queue there (`--max-queue-per-client` = `--max-queue`), and let the proxy's
own limits tell its clients apart.
"""

from __future__ import annotations

from collections import Counter


class Busy(Exception):
    """A request the service does not take on now; its message says which cap it met."""


class Admission:
    """The pending requests, all together and per client (used from the event loop only, so no lock).

    Example:
        >>> admission = Admission(limit=4, per_client=2)
        >>> admission.take("10.0.0.1"), admission.take("10.0.0.1"), admission.take("10.0.0.2")
        (None, None, None)
        >>> admission.take("10.0.0.1")
        Traceback (most recent call last):
        ...
        tlearn.deploy.admission.Busy: busy: this client already has 2 requests being served; retry shortly
    """

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit, self.per_client = limit, per_client
        self.by_client: Counter[str] = Counter()

    @classmethod
    def sharing(cls, limit: int, per_client: int | None) -> Admission:
        """`limit` slots, at most `per_client` of them (default: three quarters of the slots) to one client.

        Example:
            >>> Admission.sharing(32, None).per_client, Admission.sharing(1, None).per_client
            (24, 1)
        """
        return cls(limit, per_client or max(1, 3 * limit // 4))

    @property
    def pending(self) -> int:
        return sum(self.by_client.values())

    def take(self, client: str) -> None:
        """Hold a slot for a request from `client` (give it back with `release`).

        Raises:
            Busy: all slots are taken, or this client holds its share of them.
        """
        if self.pending >= self.limit:
            raise Busy(f"busy: {self.limit} requests are already being served; retry shortly")
        if self.by_client[client] >= self.per_client:
            raise Busy(f"busy: this client already has {self.per_client} requests being served; retry shortly")
        self.by_client[client] += 1

    def release(self, client: str) -> None:
        """Give back a slot `take` gave `client`."""
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]  # only clients with requests in flight are remembered
