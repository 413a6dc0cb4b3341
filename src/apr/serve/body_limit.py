"""Refuse request bodies beyond the server's limit (413) before they are read whole: a pure ASGI middleware."""

from __future__ import annotations

import json
from typing import Any

from apr.serve.errors import ApiError

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"The request body exceeds this server's limit of {limit} bytes (apr serve --max-body-mb); "
            "send fewer or shorter prompts per request.",
            code="request_too_large",
        )


class BodyLimit:
    """A declared Content-Length over `limit` is answered at once; a body that grows past it while being
    read (chunked transfer, or a lying header) ends with the same 413 raised from `receive`."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _reply(send, BodyTooLarge(self.limit))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The unread body is not drained: the connection is closed after this reply.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
