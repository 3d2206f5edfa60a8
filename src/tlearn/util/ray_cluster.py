"""Joining a Ray cluster (`--ray ADDRESS`), shared by batch prediction (deploy/ray_predict.py) and the embedding
step of training (backbones/ray_embedding.py): Ray imported only when asked for, one-line errors for a missing
install or an unreachable address.

`ADDRESS` is what `ray.init` takes: `auto` for the cluster this machine belongs to, `ray://HOST:10001` for a
remote one, or `local` to start a cluster of this machine's cores for the command.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from tlearn.errors import TlearnError
from tlearn.util.text import first_line

LOCAL = "local"  # --ray local: a cluster of this machine's cores, started for the command
CONNECT_TIMEOUT_S = 5.0  # how long a HOST:PORT address may take to accept a connection


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise TlearnError('--ray needs Ray Data: pip install "tlearn[ray]"') from None
    return ray


def connect(ray: Any, address: str) -> None:
    """Join the cluster at `address` (or start a local one), once per process (a process already connected, as
    a notebook may be, keeps its cluster)."""
    require_listening(address)
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=None if address == LOCAL else address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise TlearnError(f"cannot reach the Ray cluster at {address!r}: {first_line(error)}") from None


def require_listening(address: str) -> None:
    """Fail fast when a HOST:PORT address (plain or `ray://`) accepts no connection: `ray.init` itself retries
    for minutes before giving up on a mistyped address."""
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return  # "auto", "local" and other forms: Ray answers those quickly itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise TlearnError(f"cannot reach the Ray cluster at {address!r}: {reason}") from None
