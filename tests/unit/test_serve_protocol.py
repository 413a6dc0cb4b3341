"""The serve wire models: strict request validation and OpenAI-shaped error descriptions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from apr.serve.errors import ApiError, describe_validation_errors
from apr.serve.protocol import ChatCompletionRequest, CompletionRequest


def validation_error(model, data: dict) -> ApiError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return describe_validation_errors([dict(error) for error in caught.value.errors()])


def test_completion_defaults_follow_openai():
    request = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert request.max_tokens is None and request.temperature == 1.0 and request.top_p == 1.0
    assert request.n == 1 and request.stream is False and request.echo is False and request.logprobs is None
    assert request.stop_strings() == ()


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_every_openai_prompt_shape_is_accepted(prompt):
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt


def test_stop_accepts_a_string_or_a_list():
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": "\n"}).stop_strings() == ("\n",)
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": ["a", "b"]}).stop_strings() == (
        "a",
        "b",
    )


@pytest.mark.parametrize(
    "changes, param",
    [
        ({"max_tokens": "5"}, "max_tokens"),  # strict: no string-to-int coercion
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"echo": 1}, "echo"),
        ({"stop": ""}, "stop"),
        ({"logprobs": 21}, "logprobs"),
        ({"seed": 2**64}, "seed"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_bad_completion_fields_name_the_field(changes, param):
    error = validation_error(CompletionRequest, {"model": "m", "prompt": "x", **changes})
    assert error.status == 400
    assert error.param == param
    assert param in error.message
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_a_missing_field_is_named():
    error = validation_error(CompletionRequest, {"model": "m"})
    assert error.param == "prompt"
    assert "Field required" in error.message


def test_nested_chat_fields_are_named_with_their_index():
    error = validation_error(
        ChatCompletionRequest,
        {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
    )
    assert error.param == "messages.1.role"


def test_chat_content_may_be_text_parts():
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        }
    )
    assert request.messages[0].text() == "ab"


def test_a_body_that_is_not_an_object_is_described_as_such():
    with pytest.raises(ValidationError) as caught:
        CompletionRequest.model_validate([1, 2])
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    error = describe_validation_errors(errors)
    assert error.code == "invalid_body"
    assert error.param is None


def test_malformed_json_is_its_own_error():
    error = describe_validation_errors(
        [{"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}]
    )
    assert error.code == "invalid_json"
    assert "Expecting value" in error.message
