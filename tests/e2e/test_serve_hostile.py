"""Hostile requests against a real `apr serve`: each is refused alone (4xx naming the field), and the streams
running meanwhile all finish with the same text they have when nothing else happens."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_harness import RunningServer, start_server

PROMPTS = ["The quick brown fox", "Hello, my name is", "1, 2, 3, 4,", "def add(a, b):", "Once upon", "Dear"]
MAX_CONTEXT = 256
BODY_LIMIT_MB = "0.05"  # 52,428 bytes


@pytest.fixture(scope="module")
def server(fixture_models):
    running = start_server(
        fixture_models["llama"]["gguf"],
        "--batch-size",
        "8",
        "--max-context",
        str(MAX_CONTEXT),
        "--max-body-mb",
        BODY_LIMIT_MB,
        "--prefill-chunk",
        "32",
    )
    yield running
    running.stop()


def model_of(server: RunningServer) -> str:
    return httpx.get(f"{server.base_url}/models", timeout=30).json()["data"][0]["id"]


def post(server: RunningServer, body: dict | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.base_url}/completions", content=content, headers={"content-type": "application/json"}, timeout=60
    )


def streamed(server: RunningServer, model: str, prompt: str) -> tuple[str, str | None, bool]:
    """(text, finish_reason, saw [DONE]) of one greedy streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0.0, "stream": True}
    text, finish, done = "", None, False
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[len("data: ") :])
            assert "error" not in chunk, chunk
            text += chunk["choices"][0]["text"]
            finish = chunk["choices"][0]["finish_reason"] or finish
    return text, finish, done


def bad_requests(model: str) -> list[tuple[bytes | dict, int, str | None]]:
    """(body, expected status, expected `param`) for each class of bad request."""
    base = {"model": model, "prompt": "hi", "max_tokens": 4}
    out: list[tuple[bytes | dict, int, str | None]] = [
        ({**base, "temperature": 3.0}, 400, "temperature"),
        ({**base, "top_p": 1.5}, 400, "top_p"),
        ({**base, "top_k": -1}, 400, "top_k"),
        ({**base, "repetition_penalty": 1e-300}, 400, "repetition_penalty"),
        ({**base, "max_tokens": -1}, 400, "max_tokens"),
        ({**base, "n": 1000}, 400, "n"),
        ({**base, "logprobs": 50}, 400, "logprobs"),
        ({**base, "seed": 2**64}, 400, "seed"),
        ({**base, "stop": [""]}, 400, "stop"),
        # A lone surrogate, escaped in otherwise valid JSON (json.dumps writes it as \ud800).
        (json.dumps({**base, "prompt": "caf\ud800"}).encode(), 400, "prompt"),
        (json.dumps({**base, "stop": ["\udfff"]}).encode(), 400, "stop.0"),
        ({**base, "prompt": "word " * 400}, 400, "prompt"),
        ({**base, "prompt": "x" * 60_000}, 413, None),
        (b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 413, None),
        (b'{"model": "m", "prompt": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400, None),
    ]
    return out


def test_bad_requests_during_streaming_leave_every_stream_complete_and_correct(server):
    model = model_of(server)
    expected = [streamed(server, model, prompt) for prompt in PROMPTS]  # each alone, nothing else running
    assert all(finish is not None and done for _, finish, done in expected)
    cases = bad_requests(model)
    with ThreadPoolExecutor(len(PROMPTS) + 4) as pool:
        streams = [pool.submit(streamed, server, model, prompt) for prompt in PROMPTS]
        answers = list(pool.map(lambda case: post(server, case[0]), cases))
        results = [future.result() for future in streams]
    assert results == expected
    for (body, status, param), response in zip(cases, answers):
        shown = body if isinstance(body, dict) else body[:60]
        assert response.status_code == status, (shown, response.text[:300])
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["param"] == param, (shown, error)
        assert "Traceback" not in error["message"] and 'File "' not in error["message"]
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["requests"]["failed"] == 0


def test_a_too_long_prompt_is_refused_with_both_numbers(server):
    model = model_of(server)
    response = post(server, {"model": model, "prompt": "word " * 400, "max_tokens": 8})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and str(MAX_CONTEXT) in message
    tokens = int(message.split("(")[1].split(" in the prompt")[0])
    assert tokens > MAX_CONTEXT


def test_extreme_but_valid_sampling_settings_are_served(server):
    """The edges of the documented ranges sample without NaN: a denormal top_p, a tiny temperature, the
    smallest repetition penalty."""
    model = model_of(server)
    for extra in ({"top_p": 2.2e-311}, {"temperature": 1e-30}, {"repetition_penalty": 0.01, "temperature": 1.0}):
        response = post(server, {"model": model, "prompt": "hi there", "max_tokens": 6, "seed": 1, **extra})
        assert response.status_code == 200, (extra, response.text[:300])
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_long_echo_prompt_is_scored_in_chunks(server):
    """Echo scoring of a prompt many prefill chunks long: every position scored, the first without context."""
    model = model_of(server)
    ids = list(range(5, 205))
    response = post(server, {"model": model, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    assert response.status_code == 200, response.text[:300]
    logprobs = response.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert len(logprobs) == len(ids) and logprobs[0] is None
    assert all(isinstance(value, float) and value <= 0.0 for value in logprobs[1:])
