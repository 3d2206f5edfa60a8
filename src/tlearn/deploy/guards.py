"""Guards in front of the service: which hosts it answers to, how large and how slow a request may be.

Each closes a way for one client to hold the service or its memory: `HostCheck` refuses requests addressed to
another host name (DNS rebinding), `OriginCheck` POSTs from other sites' pages, `BodyLimit` bounds a request
body's size and the time it may take to arrive, `RequestLimit` the requests in the app at once (never
`/healthz`), and `guarded_h11` closes connections whose request headers never complete (slowloris) and caps
the connections per client. They are plain ASGI middleware and a uvicorn protocol, independent of the model
behind them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


class HostCheck:
    """ASGI middleware: 421 for a `Host` header the service is not meant to be reached by (DNS rebinding).

    A page on evil.example can point evil.example's DNS at 127.0.0.1 and then call the service from the
    user's browser as a same-origin request; its `Host` header still says evil.example, so refusing any host
    but this machine's loopback names (and those allowed) stops it. Requests without a `Host` header (HTTP/1.0
    tools, not browsers) pass. An allowed name `*.example.com` admits every subdomain of example.com.

    Starlette's `TrustedHostMiddleware` does the same matching but answers a plain-text 400 "Invalid host
    header" that cannot tell the user which option fixes it, refuses HTTP/1.0 requests without a `Host`, and
    compares bracketed IPv6 hosts with their port; this one answers the service's one-line JSON error (421,
    the status for a request addressed to the wrong server) naming `--allow-host`.
    """

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any_host = ANY_HOST in allowed
        names = [_host_name(name) for name in (*LOOPBACK_HOSTS, *allowed) if name != ANY_HOST]
        self.allowed = {name for name in names if not name.startswith("*.")}
        self.allowed_suffixes = tuple(name[1:] for name in names if name.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any_host:
            given = dict(scope["headers"]).get(b"host")
            name = _host_name(given.decode("latin-1")) if given is not None else None
            if name is not None and name not in self.allowed and not name.endswith(self.allowed_suffixes):
                shown = name[:100]
                message = (
                    f"host {shown!r} is not served here (protection against DNS rebinding); "
                    f"start the service with --allow-host {shown} to serve it under that name"
                )
                await refuse(scope, send, 421, message)
                return
        await self.app(scope, receive, send)


class OriginCheck:
    """ASGI middleware: 403 for a request that changes or costs something (not GET, HEAD or OPTIONS) sent by a
    web page of another origin.

    Any page a visitor has open can POST to a service on their machine (a "simple" cross-site form post needs no
    CORS permission: the browser sends it and only hides the answer), so without this check a page elsewhere
    could make the service decode bombs or use it as a free classifier. Browsers say where a request comes from:
    `Sec-Fetch-Site: cross-site` / `same-site`, and an `Origin` whose host and port differ from the `Host` the
    request was sent to. Both are refused unless the origin is allowed (`--allow-origin`, `*` for any).
    Requests without these headers (curl, Python clients: not browsers) pass, as do the service's own page's.
    """

    SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any_origin = ANY_HOST in allowed
        self.allowed = {origin.strip().rstrip("/").lower() for origin in allowed if origin != ANY_HOST}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any_origin and scope["method"] not in self.SAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1").strip().rstrip("/").lower()
            host = headers.get(b"host", b"").decode("latin-1").strip().lower()
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
            foreign = site in ("cross-site", "same-site") or (
                origin not in ("", "null") and origin.split("://", 1)[-1] != host
            )
            if foreign and origin not in self.allowed:
                shown = (origin or "another site")[:100]
                message = (
                    f"a {scope['method']} from the web page at {shown} is refused (cross-site request); start the "
                    f"service with --allow-origin {shown if origin else 'ORIGIN'} to accept that page's requests"
                )
                await refuse(scope, send, 403, message)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name of a `Host` header or address without its port, lower case (`[::1]:8000` → `::1`)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes` (declared or streamed), 408 for one that does
    not arrive in full within `timeout_s` (a slow client would otherwise hold its connection and memory)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def guarded_receive() -> Message:
            nonlocal received
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                raise HTTPException(
                    408, f"request body not received within {self.timeout_s:g} s; send it faster or in parts"
                ) from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())  # FastAPI passes HTTPExceptions through body parsing
            return message

        await self.app(scope, guarded_receive, send)

    def _message(self) -> str:
        return f"request too large (limit {self.max_bytes / 1024 / 1024:g} MB; see --max-request-mb)"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await refuse(scope, send, 413, self._message())


async def refuse(scope: Scope, send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Answer a request the guards turn away: `{"detail": ...}` with `status`, its body never read."""
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def guarded_h11(header_seconds: float, *, max_per_client: int, max_connections: int, retry_after_s: int) -> type:
    """uvicorn's h11 protocol with the guards connections need below the app.

    * A connection whose request headers are not complete `header_seconds` after it opened (or after its
      previous response) is closed: uvicorn itself waits for them forever (slowloris).
    * One client (a peer address) holds at most `max_per_client` connections, and all clients together
      `max_connections`; a connection beyond either is answered 503 with `Retry-After` and closed at once.

    uvicorn's own `limit_concurrency` counts open connections, idle ones included: 64 sockets that never sent a
    byte made every request, `/healthz` too, a plain 503 until the deadline closed them. Requests are counted by
    `RequestLimit` instead; here only connections.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_by_client: dict[str, int] = {}
    refusal = _busy_response("too many connections from this client; retry shortly", retry_after_s)

    class GuardedH11Protocol(H11Protocol):
        _deadline_generation = 0
        _client: str | None = None  # set when the connection is counted

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if open_by_client.get(client, 0) >= max_per_client or sum(open_by_client.values()) >= max_connections:
                transport.write(refusal)
                transport.close()
                return
            open_by_client[client] = open_by_client.get(client, 0) + 1
            self._client = client
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._client is not None:
                left = open_by_client.get(self._client, 1) - 1
                if left > 0:
                    open_by_client[self._client] = left
                else:
                    open_by_client.pop(self._client, None)
                self._client = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._deadline_generation += 1
            self.loop.call_later(header_seconds, self._header_deadline, self._deadline_generation)

        def _header_deadline(self, generation: int) -> None:
            waiting_for_headers = self.conn.their_state is h11.IDLE
            if generation == self._deadline_generation and waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def _busy_response(message: str, retry_after_s: int) -> bytes:
    """A complete HTTP/1.1 503 with `Retry-After` and the service's JSON error body, that closes the connection."""
    body = json.dumps({"detail": message}).encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nretry-after: {retry_after_s}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class RequestLimit:
    """ASGI middleware: at most `max_requests` HTTP requests in the app at once; more get 503 with `Retry-After`.

    `/healthz` is never refused (a liveness probe that sees a busy service must not restart it), and only
    requests count, not the connections they came on (see `guarded_h11`).
    """

    def __init__(self, app: ASGIApp, max_requests: int, retry_after_s: int, always: tuple[str, ...] = ("/healthz",)):
        self.app = app
        self.max_requests, self.retry_after_s, self.always = max_requests, retry_after_s, always
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.always:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            message = f"busy: {self.max_requests} requests are already being served; retry shortly"
            await refuse(scope, send, 503, message, headers={"Retry-After": str(self.retry_after_s)})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
