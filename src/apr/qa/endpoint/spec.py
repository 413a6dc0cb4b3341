"""The ``endpoint:`` section of a playbook (and `apr certify --endpoint`'s options): which OpenAI-compatible server
to certify, with which credentials (named, never written), and how hard to push it."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
EndpointApi = Literal["chat", "completion"]


def base_url(url: str) -> str:
    """``url`` as the OpenAI base URL requests go to (``/v1`` added when it has no path); ValueError naming the
    problem when it is no http(s) URL, or carries credentials, a query or a fragment (they would end up in evidence)."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host, such as http://127.0.0.1:8080/v1")
    try:
        parts.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} carries credentials; put the API key in an environment variable (--api-key-env)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a query or fragment; pass the OpenAI base URL alone, e.g. http://host:8080/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_loopback(url: str) -> bool:
    """Whether the endpoint is on this machine (then no proxy from the environment may sit in between)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EndpointSpec(BaseModel):
    """A remote OpenAI-compatible endpoint under test (docs/endpoint.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (a URL without a path gets /v1)")
    served_model: str | None = Field(
        None, min_length=1, description="model name sent in every request; default: the playbook's model.ref"
    )
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME, description="environment variable holding the API key (its value is never written)"
    )
    api: EndpointApi = Field(
        "chat", description="chat (chat completions) or completion (text completions: base models)"
    )
    concurrency: int = Field(1, ge=1, le=64, description="requests in flight at once")
    rate_limit_rps: float | None = Field(None, gt=0, le=1000, description="most request starts per second")
    retries: int = Field(3, ge=0, le=10, description="retries of a request on HTTP 429/5xx or a connection error")
    backoff_s: float = Field(
        0.5, gt=0, le=60, description="first wait before a retry; doubled on each (Retry-After wins)"
    )
    request_timeout_s: float | None = Field(
        None, gt=0, description="deadline of one request; default: the playbook's execution.timeout_s"
    )
    min_decode_tok_s: float | None = Field(
        None, gt=0, description="THROUGHPUT floor of one stream; default: the THROUGHPUT gate's cpu minimum"
    )

    @field_validator("url")
    @classmethod
    def _a_base_url(cls, value: str) -> str:
        return base_url(value)
