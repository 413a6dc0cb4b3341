"""apr serve over real HTTP with the official openai client: completions, chat, streaming, usage, logprobs."""

from __future__ import annotations

import math

import httpx
import pytest
from serve_harness import RunningServer, start_server

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def model_path(fixture_models):
    # The llama fixture runs on for many tokens (the qwen2 one stops almost at once).
    return fixture_models["llama"]["gguf"]


@pytest.fixture(scope="module")
def server(model_path):
    running = start_server(model_path, "--batch-size", "4")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer):
    return server.client()


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from apr.formats import load_model

    return load_model(model_path).tokenizer


def complete(client, model_id: str, **kwargs):
    args = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.0, **kwargs}
    return client.completions.create(model=model_id, **args)


def chat(client, model_id: str, **kwargs):
    args = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 12, "temperature": 0.0, **kwargs}
    return client.chat.completions.create(model=model_id, **args)


def test_models_and_health_describe_the_served_model(server, client, model_path):
    models = client.models.list().data
    # The served model first; after it, whatever the session's apr cache holds (other tests register models),
    # none of them loaded.
    assert models[0].id == model_path.name and models[0].loaded is True
    assert all(m.loaded is False for m in models[1:])
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    assert health["model"] == model_path.name
    assert health["format"] == "gguf"
    assert health["device"] == "cpu"
    assert health["kv_cache"] == "float32"  # --kv-cache's default
    assert health["memory"]["rss_bytes"] > 0
    requests = health["requests"]
    assert (requests["active"], requests["queued"], requests["batch_size"]) == (0, 0, 4)
    assert requests["failed"] == 0


def test_completion_reports_usage_consistent_with_the_tokens(client, model_id, tokenizer):
    reply = complete(client, model_id, logprobs=0)
    choice = reply.choices[0]
    assert reply.object == "text_completion"
    assert choice.finish_reason in ("stop", "length")
    prompt_ids = tokenizer.encode(PROMPT, add_special_tokens=True)
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == len(choice.logprobs.tokens)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12
    else:
        assert reply.usage.completion_tokens <= 12


def test_streamed_completion_equals_the_plain_one(client, model_id):
    plain = complete(client, model_id, max_tokens=16)
    chunks = list(complete(client, model_id, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1


def test_a_list_of_prompts_gets_one_choice_each(client, model_id):
    prompts = [PROMPT, "Hello", "1, 2, 3,"]
    reply = complete(client, model_id, prompt=prompts, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    for index, prompt in enumerate(prompts):
        alone = complete(client, model_id, prompt=prompt, max_tokens=6)
        assert reply.choices[index].text == alone.choices[0].text


def test_chat_completion_plain_and_streamed_agree(client, model_id):
    plain = chat(client, model_id, max_tokens=16)
    assert plain.object == "chat.completion"
    assert plain.choices[0].message.role == "assistant"
    assert plain.usage.completion_tokens >= 1
    chunks = list(chat(client, model_id, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    # The streamed request may reuse the plain one's prompt from the prefix cache: only cached_tokens differ.
    streamed_usage = chunks[-1].usage
    assert (streamed_usage.prompt_tokens, streamed_usage.completion_tokens, streamed_usage.total_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
        plain.usage.total_tokens,
    )


def test_raw_stream_is_server_sent_events_ending_in_done(server, model_id):
    body = {"model": model_id, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 2


def test_stop_string_cuts_the_text_before_it(client, model_id):
    full = complete(client, model_id, max_tokens=24).choices[0].text
    assert len(full) >= 4, f"the fixture model produced too little text to test stop strings: {full!r}"
    stop = full[len(full) // 2]
    reply = complete(client, model_id, max_tokens=24, stop=[stop])
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_same_seed_same_text_and_different_seeds_differ(client, model_id):
    def sampled(seed: int) -> str:
        return complete(client, model_id, temperature=1.0, seed=seed, max_tokens=16).choices[0].text

    first = sampled(7)
    assert sampled(7) == first
    others = {sampled(seed) for seed in (8, 9, 10)}
    assert others != {first}


def test_completion_logprobs_rank_the_greedy_token_first(client, model_id):
    reply = complete(client, model_id, logprobs=3, max_tokens=8)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == reply.usage.completion_tokens
    for _token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert value <= 0.0
        assert 1 <= len(top) <= 3
        assert math.isclose(max(top.values()), value, abs_tol=1e-4)


def test_chat_logprobs_with_top_logprobs(client, model_id):
    reply = chat(client, model_id, logprobs=True, top_logprobs=2, max_tokens=8)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert math.isclose(item.logprob, item.top_logprobs[0].logprob, abs_tol=1e-4)
        assert item.bytes == list(item.token.encode("utf-8"))


def test_echo_logprobs_score_the_prompt_like_the_engine(client, model_id, model_path, tokenizer):
    from apr.engine import load_engine

    engine = load_engine(model_path, device="cpu")
    ids = tokenizer.encode(PROMPT, add_special_tokens=True)
    expected = engine.prompt_logprobs(ids)
    reply = complete(client, model_id, echo=True, logprobs=1, max_tokens=1)
    logprobs = reply.choices[0].logprobs
    assert reply.choices[0].text.startswith(PROMPT)
    scored = logprobs.token_logprobs[: len(ids)]
    assert scored[0] is None and logprobs.top_logprobs[0] is None
    for got, want in zip(scored[1:], expected[1:]):
        assert math.isclose(got, want, abs_tol=2e-3)
    assert len(logprobs.tokens) == len(ids) + 1
    # lm-eval reads is_greedy from the top-1 entry of each prompt position.
    for value, top in zip(scored[1:], logprobs.top_logprobs[1 : len(ids)]):
        assert max(top.values()) >= value - 1e-4


def test_echo_with_zero_max_tokens_only_scores(client, model_id, tokenizer):
    reply = complete(client, model_id, echo=True, logprobs=0, max_tokens=0)
    assert reply.choices[0].text == PROMPT
    assert reply.usage.completion_tokens == 0
    assert len(reply.choices[0].logprobs.token_logprobs) == len(tokenizer.encode(PROMPT, add_special_tokens=True))
