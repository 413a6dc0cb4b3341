"""Requests to a remote OpenAI-compatible endpoint through the official ``openai`` client: streamed, timed from the
client (time to first token, decode tok/s), rate limited, retried with backoff on HTTP 429/5xx and connection errors.

Every request ends in one of four typed answers: a ``Reply``; a ``Refusal`` (a clean 4xx: the endpoint said no);
``Malformed`` (HTTP 200 that is no OpenAI response); or ``Unanswered`` (the retries ran out on 429, 5xx, a connection
error or the deadline: the network or the server's machine, never evidence about the model). Once a request found
the endpoint unreachable, later requests try once until one gets through, so a dead endpoint ends a run in seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from apr.qa.endpoint.spec import EndpointSpec, is_loopback
from apr.qa.infra import InfraCause

MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 30.0
# Response headers that say what software serves the endpoint; nothing else of a response is kept.
SERVER_HEADERS = ("server", "via", "x-powered-by", "openai-version", "x-served-by", "x-model-server")


@dataclass(frozen=True)
class Reply:
    """An answer: the text, why it ended, its tokens (from ``usage``, else counted as streamed chunks) and timings."""

    text: str
    finish_reason: str | None
    completion_tokens: int
    tokens_from: Literal["usage", "chunks"]
    ttft_s: float | None  # request sent → first text
    total_s: float  # request sent → stream ended
    attempts: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first over the time they took to stream (None with fewer than two tokens)."""
        if self.ttft_s is None or self.completion_tokens < 2 or self.total_s <= self.ttft_s:
            return None
        return (self.completion_tokens - 1) / (self.total_s - self.ttft_s)

    def metrics(self) -> dict[str, float | int | str | None]:
        decode = self.decode_tok_s
        return {
            "completion_tokens": self.completion_tokens,
            "tokens_from": self.tokens_from,
            "finish_reason": self.finish_reason,
            "ttft_s": round(self.ttft_s, 4) if self.ttft_s is not None else None,
            "request_s": round(self.total_s, 4),
            "decode_tok_s": round(decode, 3) if decode is not None else None,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Refusal:
    """A clean HTTP 4xx (not 429): the endpoint refused the request and said why."""

    status: int
    message: str
    attempts: int


@dataclass(frozen=True)
class Malformed:
    """HTTP 200, but not an OpenAI-shaped response: the endpoint broke the protocol."""

    reason: str
    attempts: int


@dataclass(frozen=True)
class Unanswered:
    """No answer after the retries: what stopped it (a machine cause) and the last error."""

    cause: InfraCause
    reason: str
    attempts: int


Answer = Reply | Refusal | Malformed | Unanswered


@dataclass(frozen=True)
class Listing:
    """What ``GET /models`` said: the model ids (None: the route is missing or broken), and that in words."""

    models: list[str] | None
    note: str


class EndpointUnusable(Exception):
    """The endpoint cannot be certified at all (unreachable at the start, refuses the key, does not serve the model)."""


class RateLimiter:
    """At most ``rps`` request starts per second across every thread (None: no limit)."""

    def __init__(self, rps: float | None) -> None:
        self.interval = 1.0 / rps if rps else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def server_headers(headers: Any) -> dict[str, str]:
    """The identifying headers of a response (``SERVER_HEADERS``), lower-cased names."""
    return {name: str(headers[name])[:200] for name in SERVER_HEADERS if headers is not None and name in headers}


class EndpointClient:
    """One endpoint, one served model; thread-safe (the openai client and httpx pool are)."""

    def __init__(self, spec: EndpointSpec, served_model: str, api_key: str | None, timeout_s: float) -> None:
        import httpx
        from openai import OpenAI

        self.spec, self.served_model, self.timeout_s = spec, served_model, timeout_s
        # A local endpoint is reached directly; a remote one through the environment's proxy settings, if any.
        # openai's annotations name its own vendored client class; an httpx.Client is what it takes at run time.
        http_client: Any = httpx.Client(trust_env=not is_loopback(spec.url), timeout=timeout_s)
        self.client = OpenAI(
            base_url=spec.url,
            api_key=api_key or "no-key",  # the client insists on one; servers without keys ignore it
            max_retries=0,  # retried here, so that every attempt is counted and recorded
            timeout=timeout_s,
            http_client=http_client,
        )
        self.limiter = RateLimiter(spec.rate_limit_rps)
        self.headers: dict[str, str] = {}
        self._down_since: float | None = None  # set when a request found the endpoint unreachable
        self._usage_in_stream = True  # cleared when the server refuses stream_options
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # ---- the start: can it be certified at all? ----------------------------------------------------------------

    def served_models(self) -> Listing:
        """What ``GET /models`` says (``models`` None when the route is missing or broken: it is not the gate);
        ``EndpointUnusable`` when the endpoint cannot be reached or refuses the API key."""
        import openai

        try:
            raw = self.client.models.with_raw_response.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise EndpointUnusable(
                f"{self.spec.url}: HTTP {err.status_code} from GET /models: the endpoint refuses the API key "
                + (f"in ${self.spec.api_key_env}" if self.spec.api_key_env else "(none given: pass --api-key-env VAR)")
            ) from None
        except openai.APIStatusError as err:
            self.headers = server_headers(err.response.headers)
            return Listing(None, f"GET /models answered HTTP {err.status_code}")
        except openai.APIConnectionError as err:
            raise EndpointUnusable(
                f"{self.spec.url}: cannot reach the endpoint ({_cause_text(err)}); check the URL and that the server is up"
            ) from None
        self.headers = server_headers(raw.headers)
        models = [model.id for model in raw.parse().data]
        return Listing(models, f"GET /models lists {len(models)} model(s)")

    # ---- one request, retried ------------------------------------------------------------------------------------

    def ask(self, prompt: str, max_tokens: int, seed: int, *, api: str | None = None) -> Answer:
        """One greedy request (temperature 0, ``seed``) through the chat or completion API, streamed and timed."""
        import openai

        last = Unanswered(InfraCause.ENDPOINT_UNREACHABLE, "no attempt made", 0)
        retry_after: float | None = None
        # An endpoint already found unreachable gets one try per request until one gets through again.
        budget = 1 if self._is_down() else self.spec.retries + 1
        for attempt in range(1, budget + 1):
            if attempt > 1:
                time.sleep(retry_after if retry_after is not None else self._backoff(attempt - 1))
            self.limiter.wait()
            retry_after = None
            try:
                answer = self._stream(prompt, max_tokens, seed, api or self.spec.api, attempt)
            except openai.RateLimitError as err:
                self._up()
                last = Unanswered(InfraCause.RATE_LIMITED, f"HTTP 429: {_message(err)}", attempt)
                retry_after = _retry_after(err.response.headers)
                continue
            except openai.APITimeoutError:
                last = Unanswered(InfraCause.DEADLINE, f"no answer within {self.timeout_s:.0f}s", attempt)
                continue
            except openai.APIConnectionError as err:
                last = self._unreachable(_cause_text(err), attempt)
                continue
            except openai.APIStatusError as err:
                self._up()
                if err.status_code >= 500:
                    last = Unanswered(InfraCause.ENDPOINT_ERROR, f"HTTP {err.status_code}: {_message(err)}", attempt)
                    continue
                if err.status_code == 400 and self._usage_in_stream and "stream_options" in _message(err):
                    self._usage_in_stream = False  # the server does not take stream_options: count chunks instead
                    continue
                return Refusal(err.status_code, _message(err), attempt)
            if isinstance(answer, Unanswered):
                last = (
                    self._unreachable(answer.reason, attempt)
                    if answer.cause is InfraCause.ENDPOINT_UNREACHABLE
                    else answer
                )
                continue
            self._up()
            return answer
        return last

    def _backoff(self, retry: int) -> float:
        return min(MAX_BACKOFF_S, self.spec.backoff_s * 2 ** (retry - 1))

    def _is_down(self) -> bool:
        with self._lock:
            return self._down_since is not None

    def _unreachable(self, why: str, attempts: int) -> Unanswered:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.time()
            since = time.strftime("%H:%M:%S", time.gmtime(self._down_since))
        return Unanswered(InfraCause.ENDPOINT_UNREACHABLE, f"{why} (unreachable since {since} UTC)", attempts)

    def _up(self) -> None:
        with self._lock:
            self._down_since = None

    # ---- the stream -----------------------------------------------------------------------------------------------

    def _stream(self, prompt: str, max_tokens: int, seed: int, api: str, attempts: int) -> Answer:
        import httpx

        options: dict[str, Any] = {"model": self.served_model, "max_tokens": max_tokens, "temperature": 0, "seed": seed}
        if self._usage_in_stream:
            options["stream_options"] = {"include_usage": True}
        started = time.monotonic()
        if api == "chat":
            stream: Any = self.client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], stream=True, **options
            )
        else:
            stream = self.client.completions.create(prompt=prompt, stream=True, **options)
        headers = server_headers(stream.response.headers)
        pieces: list[str] = []
        first: float | None = None
        finish: str | None = None
        chunks = 0
        usage_tokens: int | None = None
        try:
            for chunk in stream:
                if getattr(chunk, "usage", None) is not None and chunk.usage.completion_tokens is not None:
                    usage_tokens = int(chunk.usage.completion_tokens)
                for choice in chunk.choices or ():
                    piece = (choice.delta.content if api == "chat" else choice.text) or ""
                    if piece:
                        pieces.append(piece)
                        chunks += 1
                        first = first if first is not None else time.monotonic() - started
                    finish = choice.finish_reason or finish
        except httpx.TimeoutException:
            return Unanswered(InfraCause.DEADLINE, f"the stream stalled past {self.timeout_s:.0f}s", attempts)
        except httpx.TransportError as err:
            return Unanswered(InfraCause.ENDPOINT_UNREACHABLE, f"the stream broke off: {err!r}", attempts)
        except (ValueError, AttributeError, TypeError) as err:  # undecodable JSON, chunks without choices or deltas
            return Malformed(f"not an OpenAI stream: {type(err).__name__}: {str(err)[:200]}", attempts)
        finally:
            stream.close()
        total = time.monotonic() - started
        if finish is None:
            return Malformed("the stream ended without a finish_reason", attempts)
        return Reply(
            text="".join(pieces),
            finish_reason=finish,
            completion_tokens=usage_tokens if usage_tokens is not None else chunks,
            tokens_from="usage" if usage_tokens is not None else "chunks",
            ttft_s=first,
            total_s=total,
            attempts=attempts,
            headers=headers,
        )


def _message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):  # OpenAI's {"error": {"message": ...}}, or FastAPI's {"detail": ...}
        inner = body.get("error", body)
        message = inner.get("message", inner.get("detail")) if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return message[:300]
    return str(getattr(err, "message", err))[:300]


def _cause_text(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__
    return f"{type(cause).__name__}: {cause}"[:200] if cause is not None else type(err).__name__
