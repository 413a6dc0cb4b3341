"""Tool plans, `<tool_call>` parsing and validation, streamed release of calls, grammars and the prefix store."""

from __future__ import annotations

import json

import pytest

from apr.serve.errors import ApiError
from apr.serve.prefix_store import PrefixStore, shared_prefix
from apr.serve.protocol import ChatCompletionRequest
from apr.serve.tools import CallStreamer, parse_reply, plan_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_plans_fold_tools_and_legacy_functions():
    assert plan_tools(request()).mode == "none"
    assert plan_tools(request(tools=[WEATHER])).mode == "auto"
    named = plan_tools(request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert (named.mode, named.name, named.forced) == ("named", "get_weather", True)
    legacy = plan_tools(request(functions=[WEATHER["function"]], function_call="auto"))
    assert legacy.legacy and legacy.mode == "auto"
    assert plan_tools(request(tools=[WEATHER], tool_choice="none")).template_tools() is None


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
        {"tool_choice": "required"},
        {"tools": [WEATHER], "functions": [WEATHER["function"]]},
        {"tools": [WEATHER, WEATHER]},
    ],
)
def test_contradictory_tool_requests_are_refused(fields):
    with pytest.raises(ApiError) as caught:
        plan_tools(request(**fields))
    assert caught.value.status == 400


def test_valid_calls_are_parsed_and_invalid_ones_stay_content():
    plan = plan_tools(request(tools=[WEATHER]))
    good = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    parsed = parse_reply(good, plan)
    assert parsed.content == "Sure." and json.loads(parsed.calls[0].arguments) == {"city": "Paris"}
    for bad in (
        '<tool_call>\n{"name": "get_weather", "arguments": {"town": 1}}\n</tool_call>',
        '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
        "<tool_call>\n{not json}\n</tool_call>",
    ):
        parsed = parse_reply(bad, plan)
        assert parsed.calls == [] and parsed.content == bad and parsed.rejected
    unterminated = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}'
    assert parse_reply(unterminated, plan).calls[0].name == "get_weather"


def test_the_streamer_holds_back_only_what_may_become_a_call():
    plan = plan_tools(request(tools=[WEATHER]))
    streamer = CallStreamer(plan)
    text = 'ok <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call> bye <tool'
    out = []
    for piece in [text[i : i + 3] for i in range(0, len(text), 3)]:
        out.extend(streamer.feed(piece))
    out.extend(streamer.finish())
    content = "".join(value for kind, value in out if kind == "content")
    calls = [value for kind, value in out if kind == "call"]
    assert content == "ok  bye <tool" and [call.name for call in calls] == ["get_weather"]


def test_the_prefix_store_lends_the_longest_shared_prefix_and_keeps_its_budget():
    import torch

    from apr.engine.batch import PrefixCache
    from apr.engine.kv_cache import SequenceCache

    assert shared_prefix([1, 2, 3], [1, 2, 4]) == 2
    store = PrefixStore(budget_bytes=3 * 1024)
    for ids in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 8, 9, 9, 9], [7, 7, 7, 7, 7]):
        key, entry = store.lease(ids, busy=set())
        assert isinstance(entry, PrefixCache) and entry.cache is None  # nothing shared yet: a new entry
        entry.cache, entry.ids = SequenceCache(1, 1, 4, 32, torch.float32, torch.device("cpu")), ids
    assert len(store) == 3
    key, entry = store.lease([1, 2, 3, 8, 9, 9, 1], busy=set())
    assert entry.ids == [1, 2, 3, 8, 9, 9, 9]
    # The entry lent out is skipped: the next request sharing it gets a new entry (the store's fourth).
    _, other = store.lease([1, 2, 3, 8, 9, 9, 1], busy={key})
    assert other.cache is None and len(store) == 4
    other.cache, other.ids = SequenceCache(1, 1, 4, 32, torch.float32, torch.device("cpu")), [1, 2, 3, 8, 9, 9, 1, 5]
    store.trim(busy={key})  # 4 caches x 1 KiB > 3 KiB: the oldest idle entry ([1..6]) goes, the lent one stays
    assert store.nbytes <= 3 * 1024 and len(store) == 3
    assert store.lease([1, 2, 3, 4, 5, 6], busy=set())[1].cache is None


def test_grammar_constraint_forces_a_schema_valid_document_on_a_fixture_tokenizer():
    import torch

    from apr.formats.fixtures import build_fixture_model
    from apr.serve.grammar import GrammarTokenizer, constraint_for

    tokenizer = build_fixture_model("qwen2").tokenizer
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    spec = constraint_for(
        request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}),
        plan_tools(request()),
    )
    grammar = GrammarTokenizer(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids)
    constraint = grammar.matcher(spec)
    generator = torch.Generator().manual_seed(0)
    chosen = []
    for _ in range(40):
        logits = constraint.mask(torch.randn(tokenizer.vocab_size, generator=generator))
        token = int(torch.argmax(logits))
        if token in tokenizer.eos_token_ids:
            break
        constraint.accept(token)
        chosen.append(token)
    assert json.loads(tokenizer.decode(chosen)) in ({"ok": True}, {"ok": False})


def test_a_reply_that_is_only_a_call_object_is_a_call_plain_and_streamed():
    plan = plan_tools(request(tools=[WEATHER]))
    fenced = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```'
    parsed = parse_reply(fenced, plan)
    assert parsed.content is None and json.loads(parsed.calls[0].arguments) == {"city": "Paris"}
    streamer = CallStreamer(plan)
    out = [piece for i in range(0, len(fenced), 4) for piece in streamer.feed(fenced[i : i + 4])]
    out.extend(streamer.finish())
    assert [kind for kind, _ in out] == ["call"]
    # Code that is not a call stays content, in both forms.
    code = "```python\nprint(1)\n```"
    assert parse_reply(code, plan).content == code
    streamer = CallStreamer(plan)
    assert streamer.feed(code) == [] and streamer.finish() == [("content", code)]
    assert parse_reply('{"name": "get_weather", "arguments": {"town": 1}}', plan).calls == []
