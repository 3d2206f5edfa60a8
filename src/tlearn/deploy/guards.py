"""Guards in front of the service: which hosts it answers to, how large and how slow a request may be.

Each closes a way for one client to hold the service or its memory: `HostCheck` refuses requests addressed to
another host name (DNS rebinding), `BodyLimit` bounds a request body's size and the time it may take to arrive,
and `h11_with_header_deadline` closes connections whose request headers never complete (slowloris). They are
plain ASGI middleware and a uvicorn protocol, independent of the model behind them.
"""

from __future__ import annotations

import asyncio
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


async def refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    """Answer a request the guards turn away: `{"detail": ...}` with `status`, its body never read."""
    await JSONResponse({"detail": detail}, status_code=status)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def h11_with_header_deadline(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete `seconds` after it
    opened or after its previous response (uvicorn itself waits for them forever: a slowloris could hold every
    connection `limit_concurrency` allows)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11Protocol(H11Protocol):
        _deadline_generation = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._deadline_generation += 1
            self.loop.call_later(seconds, self._header_deadline, self._deadline_generation)

        def _header_deadline(self, generation: int) -> None:
            waiting_for_headers = self.conn.their_state is h11.IDLE
            if generation == self._deadline_generation and waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineH11Protocol
