"""The endpoint client against a scripted OpenAI-shaped HTTP server on loopback (real HTTP, real openai client):
retries with backoff on 429/5xx and dropped connections, recorded as machine causes when they run out; clean 4xx as
refusals; a broken stream as malformed; timings from the stream. Also the endpoint options' one-line errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apr.errors import AprError
from apr.qa.endpoint.client import EndpointClient, Malformed, RateLimiter, Refusal, Reply, Unanswered
from apr.qa.endpoint.plan import EndpointArgs, endpoint_plan
from apr.qa.endpoint.spec import EndpointSpec, base_url
from apr.qa.infra import InfraCause


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n".encode()


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from ``script`` in order (a status code, "ok", "garbage" or "drop"); the last one repeats."""

    script: list = []
    seen: list[float] = []

    def log_message(self, *args) -> None:  # quiet: pytest shows failures
        return

    def version_string(self) -> str:  # the Server header it sends
        return "scripted/1.0"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append(time.monotonic())
        step = self.script[min(len(self.seen) - 1, len(self.script) - 1)]
        if step == "drop":
            self.connection.close()
            return
        if isinstance(step, int):
            payload = json.dumps({"error": {"message": f"scripted {step}", "type": "x"}}).encode()
            self.send_response(step)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            if step == 429:
                self.send_header("retry-after", "0")
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        if step == "garbage":
            self.wfile.write(b"data: {not json\n\n")
            return
        for piece in ("Hel", "lo", " there"):
            self.wfile.write(_chunk({"content": piece}))
            self.wfile.flush()
            time.sleep(0.01)
        self.wfile.write(_chunk({}, "stop"))
        self.wfile.write(_chunk({}, usage={"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}))
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def client(*script, retries: int = 3) -> EndpointClient:
        Scripted.script, Scripted.seen = list(script), []
        spec = EndpointSpec(url=f"http://127.0.0.1:{server.server_port}/v1", retries=retries, backoff_s=0.01)
        return EndpointClient(spec, "m", None, timeout_s=10)

    yield client
    server.shutdown()
    server.server_close()


def test_a_streamed_reply_is_timed_and_counted_from_usage(scripted):
    reply = scripted("ok").ask("hi", 8, seed=1)
    assert isinstance(reply, Reply) and reply.text == "Hello there" and reply.finish_reason == "stop"
    assert reply.completion_tokens == 3 and reply.tokens_from == "usage" and reply.attempts == 1
    assert reply.ttft_s is not None and 0 < reply.ttft_s < reply.total_s and reply.decode_tok_s
    assert reply.headers == {"server": "scripted/1.0"}


@pytest.mark.parametrize(
    ("script", "attempts"), [((429, "ok"), 2), ((503, 500, "ok"), 3), (("drop", "ok"), 2)], ids=["429", "5xx", "drop"]
)
def test_429_5xx_and_dropped_connections_are_retried(scripted, script, attempts):
    reply = scripted(*script).ask("hi", 8, seed=1)
    assert isinstance(reply, Reply) and reply.attempts == attempts


@pytest.mark.parametrize(
    ("status", "cause"), [(429, InfraCause.RATE_LIMITED), (502, InfraCause.ENDPOINT_ERROR)], ids=["429", "502"]
)
def test_retries_that_run_out_are_a_machine_cause_never_a_verdict(scripted, status, cause):
    answer = scripted(status, retries=2).ask("hi", 8, seed=1)
    assert isinstance(answer, Unanswered) and answer.cause is cause and answer.attempts == 3
    assert f"HTTP {status}" in answer.reason


def test_backoff_doubles_between_retries(scripted):
    scripted(503, retries=3).ask("hi", 8, seed=1)
    gaps = [b - a for a, b in zip(Scripted.seen, Scripted.seen[1:], strict=False)]
    # At least 0.01, 0.02, 0.04 s (plus the request itself, however busy the machine).
    assert len(gaps) == 3 and all(gap >= 0.01 * 2**k for k, gap in enumerate(gaps)), gaps


def test_a_clean_4xx_is_a_refusal_and_is_not_retried(scripted):
    answer = scripted(400).ask("", 8, seed=1)
    assert isinstance(answer, Refusal) and answer.status == 400 and answer.attempts == 1 and len(Scripted.seen) == 1


def test_a_200_that_is_no_openai_stream_is_malformed(scripted):
    assert isinstance(scripted("garbage").ask("hi", 8, seed=1), Malformed)


def test_a_dead_endpoint_is_retried_once_then_tried_once_per_request(scripted):
    client = scripted("ok")
    client.spec = client.spec.model_copy(update={"url": "http://127.0.0.1:9/v1"})
    client.client = client.client.with_options(base_url="http://127.0.0.1:9/v1")
    first, second = client.ask("hi", 8, seed=1), client.ask("hi", 8, seed=1)
    assert isinstance(first, Unanswered) and first.cause is InfraCause.ENDPOINT_UNREACHABLE and first.attempts == 4
    assert isinstance(second, Unanswered) and second.attempts == 1 and "unreachable since" in second.reason


def test_the_rate_limit_spaces_request_starts_across_threads():
    limiter, began = RateLimiter(rps=40), time.monotonic()
    workers = [threading.Thread(target=limiter.wait) for _ in range(5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert time.monotonic() - began >= 4 / 40  # five starts: four intervals of 25 ms at least, however busy


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/v1", "not an http"),
        ("http://user:pw@host/v1", "credentials"),
        ("http://host/v1?key=1", "query"),
        ("http://host:99999/v1", "invalid port"),
        ("localhost:8080", "not an http"),
    ],
)
def test_urls_that_cannot_be_an_endpoint_are_refused(url, problem):
    with pytest.raises(ValueError, match=problem):
        base_url(url)


def test_a_url_without_a_path_gets_v1():
    assert base_url("http://127.0.0.1:8080") == base_url("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (EndpointArgs(url="http://127.0.0.1:1/v1"), "needs --served-model"),
        (EndpointArgs(served_model="m"), "--served-model needs --endpoint"),
        (EndpointArgs(url="http://h/v1", served_model="m", api_key_env="1BAD"), "api_key_env"),
    ],
)
def test_endpoint_options_that_do_not_fit_end_in_one_line(args, problem):
    with pytest.raises(AprError, match=problem):
        endpoint_plan(None, args, tier=None, output=None, progress=False)
