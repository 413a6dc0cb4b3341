"""What every route reaches through `request.app.state.apr`: settings, the served model, the scheduler."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from apr.serve.download_jobs import Downloads
from apr.serve.errors import ApiError
from apr.serve.scheduler import Scheduler
from apr.serve.served import ServedModel, ServeSettings


@dataclass
class ServeState:
    settings: ServeSettings
    served: ServedModel
    described: dict[str, Any]
    scheduler: Scheduler | None = None
    downloads: Downloads = field(default_factory=Downloads)
    started: float = field(default_factory=time.monotonic)

    @property
    def running_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise ApiError(503, "The server is not ready yet.", type="server_error")
        return self.scheduler


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
