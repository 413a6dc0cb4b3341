"""Run the app under uvicorn: bind (port 0 = any free port), announce readiness, stop cleanly on signals.

Imported only by the `serve` command, so uvicorn is loaded only there.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from apr.errors import AprError
from apr.serve.served import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

READY_PREFIX = "apr serve: ready at"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; with port 0 the kernel picks a free port, read back from the socket."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise AprError(f"cannot resolve --host {host!r}: {exc.strerror}; use an address such as 127.0.0.1") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise AprError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port (0 picks a free one)"
        ) from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def run(app: FastAPI, settings: ServeSettings, sock: socket.socket, announce: Callable[[str], None]) -> list[int]:
    """Serve on `sock` (from `bind`) until SIGINT/SIGTERM; return the signals that stopped it.

    In-flight requests get `graceful_timeout_s` to finish; then the scheduler is stopped, so those
    still running end with an error reply (or a final error event) instead of being torn down.
    """
    received: list[int] = []
    # uvicorn re-raises the signal that stopped it once it is done; this keeps that from killing
    # the process, so a requested stop exits 0.
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(number)) for sig in STOP_SIGNALS}
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # The scheduler is stopped at graceful_timeout_s; this outer limit only bounds the last replies.
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s) + 5,
    )
    server = _GracefulServer(config, grace_s=settings.graceful_timeout_s, on_grace_expired=_stopper(app))
    try:
        asyncio.run(_serve(server, sock, announce))
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received


def _stopper(app: FastAPI) -> Callable[[], None]:
    def stop_schedulers() -> None:
        app.state.apr.pool.stop()

    return stop_schedulers


async def _serve(server: uvicorn.Server, sock: socket.socket, announce: Callable[[str], None]) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if server.started:
        announce(f"{READY_PREFIX} {url_of(sock)}")
    await serving


class _GracefulServer(uvicorn.Server):
    """uvicorn.Server whose shutdown stops the scheduler once the grace period is over."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float, on_grace_expired: Callable[[], None]) -> None:
        super().__init__(config)
        self._grace_s = grace_s
        self._on_grace_expired = on_grace_expired

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self._grace_s, self._on_grace_expired)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()
