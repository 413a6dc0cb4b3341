"""Continuous batching in apr serve: batch-invariant greedy output, freed slots on disconnect, clean stops."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest
from serve_harness import RunningServer, start_server

PROMPTS = ["The quick brown fox", "Hello, my name is", "1, 2, 3, 4,", "def add(a, b):"]


@pytest.fixture(scope="module")
def model_path(fixture_models):
    return fixture_models["llama"]["gguf"]


@pytest.fixture(scope="module")
def server(model_path):
    running = start_server(model_path, "--batch-size", "4")
    yield running
    running.stop()


def model_of(server: RunningServer) -> str:
    return httpx.get(f"{server.base_url}/models").json()["data"][0]["id"]


def health(server: RunningServer) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def greedy(server: RunningServer, prompt: str, max_tokens: int = 24) -> str:
    client = server.client()
    reply = client.completions.create(model=model_of(server), prompt=prompt, max_tokens=max_tokens, temperature=0.0)
    return reply.choices[0].text


def wait_until_idle(server: RunningServer, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = health(server)
        if state["requests"]["active"] == 0 and state["requests"]["queued"] == 0:
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def test_greedy_output_is_the_same_alone_and_in_a_concurrent_batch(server):
    alone = {prompt: greedy(server, prompt) for prompt in PROMPTS}
    # Twice the batch size: requests also queue and join the batch mid-flight.
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda prompt: greedy(server, prompt), PROMPTS * 2))
    assert together == [alone[prompt] for prompt in PROMPTS * 2]


def test_concurrent_streams_are_each_complete_and_isolated(server):
    client = server.client()
    model = model_of(server)

    def streamed(prompt: str) -> str:
        chunks = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=20, temperature=0.0, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def plain(prompt: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=20, temperature=0.0
        )
        return reply.choices[0].message.content

    expected = [plain(prompt) for prompt in PROMPTS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(streamed, PROMPTS)) == expected


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    body = {
        "model": model_of(server),
        "prompt": PROMPTS[0],
        "max_tokens": 100_000,
        "temperature": 0.8,
        "seed": 1,
        "stream": True,
    }
    context = health(server)["max_context"]
    body["max_tokens"] = context - 16
    cancelled_before = health(server)["requests"]["cancelled"]
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
        assert all(line.startswith("data: ") or line == "" for line in received)
        assert health(server)["requests"]["active"] == 1
    state = wait_until_idle(server)
    assert (state["requests"]["active"], state["requests"]["queued"]) == (0, 0)
    # Cancelled, not merely run to its end: the slot was freed because the client left.
    assert state["requests"]["cancelled"] == cancelled_before + 1
    assert greedy(server, PROMPTS[1], max_tokens=4) == greedy(server, PROMPTS[1], max_tokens=4)


def test_a_client_that_gives_up_on_a_plain_request_frees_its_slot(server):
    # A raw socket, closed as soon as the server reports the request active: a client-side timeout
    # would race the tiny fixture model, which finishes its whole context in under a second.
    body = json.dumps(
        {
            "model": model_of(server),
            "prompt": PROMPTS[0],
            "temperature": 0.0,
            "max_tokens": health(server)["max_context"] - 16,
        }
    ).encode()
    cancelled_before = health(server)["requests"]["cancelled"]
    address = urlparse(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: apr\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 10
        while health(server)["requests"]["active"] == 0:
            assert time.monotonic() < deadline, "the request never became active"
            time.sleep(0.005)
    state = wait_until_idle(server)
    assert state["requests"]["active"] == 0
    assert state["requests"]["cancelled"] == cancelled_before + 1


def test_health_answers_while_generating(server):
    model = model_of(server)
    client = server.client()
    done = threading.Event()

    def generate() -> None:
        client.completions.create(model=model, prompt=PROMPTS[2], max_tokens=64, temperature=0.0)
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    seen_active = False
    while not done.is_set():
        state = health(server)
        assert state["status"] == "ok"
        seen_active |= state["requests"]["active"] == 1
        time.sleep(0.02)
    worker.join()
    assert seen_active


# ---- stopping ------------------------------------------------------------------------------


def port_is_closed(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as probe:
        return probe.connect_ex((parsed.hostname, parsed.port)) != 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_cleanly_even_mid_request(model_path, sig):
    # No grace period: the in-flight stream must be cancelled, not allowed to finish.
    running = start_server(model_path, "--batch-size", "2", "--shutdown-grace", "0")
    port = urlparse(running.url).port
    assert port and port != 0
    body = {"model": model_of(running), "prompt": PROMPTS[0], "temperature": 0.8, "seed": 3, "stream": True}
    body["max_tokens"] = health(running)["max_context"] - 16
    with httpx.stream("POST", f"{running.base_url}/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(lines)
        started = time.monotonic()
        returncode = running.stop(sig)
        stopped_after = time.monotonic() - started
        tail = [line for line in lines if line]
    assert returncode == 0
    assert stopped_after < 15
    # The cut-off stream still ends properly: an error event, then [DONE].
    assert tail[-1] == "data: [DONE]"
    assert "shutting down" in tail[-2]
    assert "Traceback" not in "".join(running.stderr)
    assert any("apr serve: stopped" in line for line in running.stdout)
    assert port_is_closed(running.url)
