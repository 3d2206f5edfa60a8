"""Running the service: uvicorn with the guards' connection handling, on the host and port asked for.

`tlearn.deploy.serving` builds the app; this module binds it. Connections are guarded below the app, where
uvicorn accepts them (`guards.guarded_h11`): a connection that never completes its headers is closed after
`header_timeout_s`, and one client (an IP address) may hold at most `max_connections_per_client` connections
(`max_connections` in all); beyond those it gets an immediate 503 with `Retry-After`. Idle connections do not
count against the requests the app serves at once (`guards.RequestLimit`, which never refuses `/healthz`), so
64 sockets left open cannot turn the service away from everyone else.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tlearn.deploy.guards import ANY_HOST, ASGIApp, guarded_h11
from tlearn.deploy.serving import ServeSettings, create_app

_WILDCARD_BINDS = ("0.0.0.0", "::", "")


def server_config(app: ASGIApp, *, host: str, port: int, settings: ServeSettings, log_level: str = "info") -> Any:
    """uvicorn's configuration with the service's connection limits and timeouts (a `uvicorn.Config`).

    Example:
        >>> config = server_config(app, host="127.0.0.1", port=8000, settings=ServeSettings())  # doctest: +SKIP
        >>> uvicorn.Server(config).run()  # doctest: +SKIP
    """
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_h11(
            settings.header_timeout_s,
            max_per_client=settings.max_connections_per_client,
            max_connections=settings.max_connections,
            retry_after_s=settings.retry_after_s,
        ),
        limit_concurrency=None,  # requests are limited by the app (RequestLimit), connections by guarded_h11
        timeout_keep_alive=settings.timeout_keep_alive_s,
        timeout_graceful_shutdown=5,
    )


def serving_settings(settings: ServeSettings, host: str) -> ServeSettings:
    """`settings` with the bound host allowed as a `Host` name (any name when bound to every interface)."""
    bound = ANY_HOST if host in _WILDCARD_BINDS else host
    return replace(settings, allowed_hosts=(*settings.allowed_hosts, bound))


def run_server(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str | None = None,
    device: str = "auto",
    settings: ServeSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve a model directory or `.onnx` file over HTTP until interrupted.

    Raises:
        ModelFileError: the model cannot be found or does not fit the engine (checked before the server starts).

    Example: `run_server("runs/ants/ants.onnx", port=8000)`
    """
    import uvicorn

    from tlearn.engines.loading import check_engine, load_engine, local_model

    model = local_model(model)  # a Hub name is downloaded once, before the server starts
    check_engine(model, engine=engine, device=device)
    settings = serving_settings(settings or ServeSettings(), host)
    app = create_app(lambda: load_engine(model, engine=engine, device=device), settings)
    uvicorn.Server(server_config(app, host=host, port=port, settings=settings, log_level=log_level)).run()
