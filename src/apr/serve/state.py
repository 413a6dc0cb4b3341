"""What every route reaches through `request.app.state.apr`: settings, the model pool, download jobs."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from apr.serve.download_jobs import Downloads
from apr.serve.errors import ApiError
from apr.serve.pool import Lease, ModelPool
from apr.serve.route_meta import SSE_HEADERS
from apr.serve.served import ServedModel, ServeSettings


@dataclass
class ServeState:
    settings: ServeSettings
    pool: ModelPool
    described: dict[str, Any]
    downloads: Downloads = field(default_factory=Downloads)
    started: float = field(default_factory=time.monotonic)

    @property
    def served(self) -> ServedModel:
        """The default model (the one named on the command line; always loaded)."""
        return self.pool.default_served

    async def lease(self, model: str) -> Lease:
        """Hold the model a request names (loading it if cached); release the lease when the reply is done."""
        if not self.pool.started:
            raise ApiError(503, "The server is not ready yet.", type="server_error")
        return await self.pool.acquire(model)


def leased_stream(lease: Lease, stream: AsyncIterator[str]) -> StreamingResponse:
    """An SSE reply holding `lease` until the stream ends; the background task releases it too, for a client
    that leaves before the stream starts (an unstarted generator never runs its `finally`)."""

    async def held() -> AsyncIterator[str]:
        try:
            async with aclosing(stream) as pieces:  # type: ignore[type-var]  # our streams are async generators
                async for piece in pieces:
                    yield piece
        finally:
            lease.release()

    return StreamingResponse(
        held(), media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(lease.release)
    )


def serve_state(request: Request) -> ServeState:
    """FastAPI dependency: the app's state."""
    return request.app.state.apr


def check_api_key(request: Request) -> None:
    """FastAPI dependency for /v1: with --api-key set, demand `Authorization: Bearer KEY`."""
    expected = serve_state(request).settings.api_key
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer KEY'.", code="invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
