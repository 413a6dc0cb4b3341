"""apr serve answers bad requests with OpenAI-shaped 4xx errors and keeps serving afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from serve_harness import RunningServer, start_server

API_KEY = "sk-test-apr"


@pytest.fixture(scope="module")
def server(fixture_models):
    running = start_server(fixture_models["qwen2"]["gguf"], "--batch-size", "2")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model_id(server: RunningServer) -> str:
    return httpx.get(f"{server.base_url}/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def max_context(server: RunningServer) -> int:
    return httpx.get(f"{server.url}/health").json()["max_context"]


def assert_openai_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def still_serving(server: RunningServer, model_id: str) -> None:
    body = {"model": model_id, "prompt": "ok", "max_tokens": 2, "temperature": 0.0}
    response = httpx.post(f"{server.base_url}/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


RAW_BODIES = {
    "malformed json": (b'{"model": "m", "prompt": ', None, "invalid_json"),
    "invalid utf-8": (b'{"model": "m", "prompt": "\xff\xfe\xfd"}', None, "invalid_json"),
    "not an object": (b"[1, 2, 3]", None, "invalid_body"),
    "empty body": (b"", None, "invalid_body"),
}


@pytest.mark.parametrize("name", sorted(RAW_BODIES))
def test_undecodable_bodies_get_400(server, model_id, name):
    body, param, code = RAW_BODIES[name]
    response = httpx.post(f"{server.base_url}/completions", content=body, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, param=param, code=code)
    still_serving(server, model_id)


FIELD_ERRORS = {
    "missing prompt": ({"prompt": None}, "prompt"),
    "missing model": ({"model": None}, "model"),
    "mistyped max_tokens": ({"max_tokens": "ten"}, "max_tokens"),
    "float max_tokens": ({"max_tokens": 2.5}, "max_tokens"),
    "mistyped temperature": ({"temperature": "hot"}, "temperature"),
    "temperature out of range": ({"temperature": 5.0}, "temperature"),
    "negative max_tokens": ({"max_tokens": -5}, "max_tokens"),
    "mistyped stream": ({"stream": "yes"}, "stream"),
    "empty prompt list": ({"prompt": []}, "prompt"),
    "negative token id": ({"prompt": [1, -2]}, "prompt"),
    "unsupported penalty": ({"presence_penalty": 1.0}, "presence_penalty"),
    "too many logprobs": ({"logprobs": 50}, "logprobs"),
}


@pytest.mark.parametrize("name", sorted(FIELD_ERRORS))
def test_bad_fields_get_400_naming_the_field(server, model_id, name):
    changes, param = FIELD_ERRORS[name]
    body = {"model": model_id, "prompt": "hi", "max_tokens": 2}
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}
    response = httpx.post(f"{server.base_url}/completions", json=body)
    assert_openai_error(response, 400, param=param)
    still_serving(server, model_id)


def test_huge_max_tokens_exceeds_the_context(server, model_id):
    body = {"model": model_id, "prompt": "hi", "max_tokens": 10**12}
    assert_openai_error(httpx.post(f"{server.base_url}/completions", json=body), 400, code="context_length_exceeded")
    still_serving(server, model_id)


def test_prompt_beyond_the_context_is_refused(server, model_id, max_context):
    body = {"model": model_id, "prompt": [1] * (max_context + 5), "max_tokens": 1}
    assert_openai_error(
        httpx.post(f"{server.base_url}/completions", json=body), 400, param="prompt", code="context_length_exceeded"
    )
    text_body = {"model": model_id, "prompt": "word " * (max_context * 2), "max_tokens": 1}
    assert_openai_error(
        httpx.post(f"{server.base_url}/completions", json=text_body), 400, code="context_length_exceeded"
    )
    still_serving(server, model_id)


def test_unknown_model_is_404_through_the_openai_client(server, model_id):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    still_serving(server, model_id)


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ([{"role": "wizard", "content": "hi"}], "messages.0.role"),
        ([{"content": "hi"}], "messages.0.role"),
        ("hello", "messages"),
    ],
)
def test_bad_chat_messages_get_400(server, model_id, messages, param):
    body = {"model": model_id, "messages": messages, "max_tokens": 2}
    assert_openai_error(httpx.post(f"{server.base_url}/chat/completions", json=body), 400, param=param)
    still_serving(server, model_id)


def test_unknown_routes_and_methods_are_openai_shaped(server, model_id):
    assert_openai_error(httpx.get(f"{server.base_url}/nothing-here"), 404, code="not_found")
    assert_openai_error(httpx.get(f"{server.base_url}/completions"), 405, code="method_not_allowed")
    still_serving(server, model_id)


# ---- a second server: API key required, and a model without a chat template ----------------


@pytest.fixture(scope="module")
def model_without_template(fixture_models, tmp_path_factory) -> Path:
    """The qwen2 SafeTensors fixture with the chat template taken out of its tokenizer config."""
    copy = tmp_path_factory.mktemp("no-template") / "qwen2-no-template"
    shutil.copytree(fixture_models["qwen2"]["safetensors"], copy)
    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return copy


@pytest.fixture(scope="module")
def keyed_server(model_without_template):
    running = start_server(model_without_template, "--api-key", API_KEY, "--batch-size", "2")
    yield running
    running.stop()


def test_api_key_is_required_on_v1_but_not_on_health(keyed_server):
    for headers in ({}, {"authorization": "Bearer wrong-key"}, {"authorization": API_KEY}):
        response = httpx.get(f"{keyed_server.base_url}/models", headers=headers)
        assert_openai_error(response, 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="wrong-key").models.list()
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    client = keyed_server.client(api_key=API_KEY)
    model = client.models.list().data[0].id
    reply = client.completions.create(model=model, prompt="hi", max_tokens=2, temperature=0.0)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_chat_on_a_model_without_template_is_a_clear_400(keyed_server):
    client = keyed_server.client(api_key=API_KEY)
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert caught.value.body["code"] == "no_chat_template"
    assert "chat template" in caught.value.body["message"]
