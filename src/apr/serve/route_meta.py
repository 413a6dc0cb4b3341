"""Metadata shared by the routes: SSE headers and the error/stream replies the OpenAPI schema documents."""

from __future__ import annotations

from typing import Any

from apr.serve.protocol import ErrorResponse

# Proxies must pass events through as they come instead of buffering the whole reply.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (OpenAI error body)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    404: {"model": ErrorResponse, "description": "Unknown model (neither served nor in the apr cache)."},
    503: {
        "model": ErrorResponse,
        "description": "The server is shutting down, or the named model fits only by unloading models in use.",
    },
    507: {"model": ErrorResponse, "description": "The named model does not fit in --max-loaded-mb."},
}

STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The reply; with `stream: true`, server-sent events ending in `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
