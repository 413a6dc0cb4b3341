"""apr serve on qwen2.5-coder:1.5b for code tools: a FIM completion, a tool call and a JSON-schema reply that are right."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from conftest import REAL_MODEL_HOME  # noqa: E402
from serve_harness import start_server  # noqa: E402

pytestmark = pytest.mark.integration

REF = "qwen2.5-coder:1.5b"


@pytest.fixture(scope="module")
def client(real_model):
    real_model(REF)
    # The real model's cache home also holds its converted weights (engine-cache): loading from there takes
    # seconds instead of minutes of repacking under the session's throwaway APR_HOME.
    running = start_server(REF, "--batch-size", "2", env={"APR_HOME": str(REAL_MODEL_HOME)})
    yield running.client(timeout=300)
    running.stop()


def test_fim_fills_the_body_of_a_function(client):
    prefix = "def add_numbers(a, b):\n    "
    suffix = "\n\nprint(add_numbers(2, 3))\n"
    reply = client.completions.create(model=REF, prompt=prefix, suffix=suffix, max_tokens=24, temperature=0.0)
    middle = reply.choices[0].text
    # The instruct checkpoint fills the gap, then may go on writing more functions before its 24 tokens end
    # (seen: "return a + b\n\ndef multiply_numbers(a, b"); an editor keeps the first block, so do we.
    first_block = middle.split("\n\n")[0]
    assert "return" in first_block and "a + b" in first_block.replace("a+b", "a + b"), middle
    ast.parse(prefix + first_block + suffix)  # the filled-in file compiles


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_code",
        "description": "Search the code base for a string.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_a_tool_call_names_the_right_function_with_valid_arguments(client, tool_choice):
    # auto: the model's own choice, parsed from its text (seen on this model: a ```json object rather than
    # <tool_call> tags, which the parser accepts when it names a tool with valid arguments); required:
    # grammar-constrained, the model still picks the function and writes the arguments.
    reply = client.chat.completions.create(
        model=REF,
        messages=[{"role": "user", "content": "What's the weather like in Paris right now?"}],
        tools=[WEATHER, SEARCH],
        tool_choice=tool_choice,
        max_tokens=60,
        temperature=0.0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert "paris" in arguments["city"].lower()


def test_a_json_schema_reply_is_correct(client):
    schema = {
        "type": "object",
        "properties": {"language": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["language", "year"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=REF,
        messages=[{"role": "user", "content": "In which year was the Python language first released?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "release", "schema": schema}},
        max_tokens=40,
        temperature=0.0,
    )
    data = json.loads(reply.choices[0].message.content)
    jsonschema.validate(data, schema)
    assert data["year"] == 1991 and "python" in data["language"].lower()


def test_similar_code_embeds_closer_than_unrelated_text(client):
    texts = [
        "def add(a, b):\n    return a + b",
        "def sum_two(x, y):\n    return x + y",
        "The weather in Paris is mild in spring.",
    ]
    vectors = np.array([item.embedding for item in client.embeddings.create(model=REF, input=texts).data])
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated
