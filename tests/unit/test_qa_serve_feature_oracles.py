"""The serve-feature oracles (FIM, tool call, JSON schema, embeddings): each fails a wrong answer and passes a right one."""

from __future__ import annotations

import json
import math

import pytest

from apr.eval.sandbox import Execution, Status
from apr.qa.coder_cases import EMBEDDING_TRIPLES, FIM_CASES, JSON_CASES, TOOL_CASES, TOOLS, FimCase, tool_schema
from apr.qa.oracles import embedding, fim, json_schema, tool_call
from apr.qa.oracles.tool_call import ToolCall

ADD = FimCase(prefix="def add(a, b):\n    return ", suffix="\n\n\nprint(add(1, 2))\n", test="assert add(2, 3) == 5")


# ---- FIM ----------------------------------------------------------------------------------------------------


def test_fim_passes_a_middle_that_completes_the_code():
    assert fim.check(ADD, "a + b", "stop").passed


@pytest.mark.parametrize(
    ("middle", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("a +", "does not parse"),
        ("(a + b", "does not parse"),
    ],
)
def test_fim_fails_an_empty_or_unparsable_middle(middle, why):
    judged = fim.check(ADD, middle, "stop")
    assert not judged.passed and why in judged.reason


def test_fim_says_when_a_cut_middle_does_not_parse():
    assert "cut at max_tokens" in fim.check(ADD, "(a +", "length").reason


def test_fim_execution_verdicts_leave_the_machine_out():
    ran = Execution(Status.PASSED, "", 0.1, "rlimits+uncapped")
    wrong = Execution(Status.FAILED, "AssertionError", 0.1, "rlimits+uncapped")
    assert fim.check_execution(ran).passed
    judged = fim.check_execution(wrong)
    assert judged is not None and not judged.passed and "AssertionError" in judged.reason
    for status in (Status.TIMEOUT, Status.ERROR):  # the machine decided: no verdict about the model
        assert fim.check_execution(Execution(status, "killed", 10.0, "rlimits+uncapped")) is None


def test_every_fim_case_has_a_hole_that_a_right_middle_fills_and_its_test_checks():
    from apr.eval.sandbox import Sandbox

    right = {
        0: "a + b",
        1: "    return n % 2 == 0",
        2: "    return n * factorial(n - 1)",
        3: "        self.items.append(item)",
        4: "        if value > best:\n            best = value\n",
    }
    wrong = {0: "a - b", 1: "    return n % 2 == 1", 2: "    return n", 3: "        pass", 4: "        best = value\n"}
    sandbox = Sandbox()
    assert len(FIM_CASES) == len(right)
    for index, case in enumerate(FIM_CASES):
        assert not fim.check(case, "", "stop").passed  # the gap must be filled: prefix + suffix alone is no pass
        for middle, expected in ((right[index], Status.PASSED), (wrong[index], Status.FAILED)):
            assert fim.check(case, middle, "stop").passed, (index, middle)
            assert sandbox.run(fim.program(case, middle), case.test).status is expected, (index, middle)


# ---- tool calls ---------------------------------------------------------------------------------------------


WEATHER = TOOL_CASES[0]


def test_tool_call_passes_the_right_function_with_valid_arguments():
    judged = tool_call.check(
        WEATHER, [ToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}')], None, "tool_calls"
    )
    assert judged.passed and judged.metrics["called"] == "get_weather"


@pytest.mark.parametrize(
    ("calls", "why"),
    [
        ([], "no tool call"),
        ([ToolCall("get_time", '{"timezone": "Europe/Paris"}')], "expected get_weather"),
        ([ToolCall("launch_rocket", "{}")], "not among the tools"),
        ([ToolCall("get_weather", '{"city": "Paris"')], "not JSON"),
        ([ToolCall("get_weather", '{"city": 7}')], "break the schema"),
        ([ToolCall("get_weather", '{"unit": "celsius"}')], "break the schema"),  # city is required
        ([ToolCall("get_weather", '{"city": "Paris", "unit": "kelvin"}')], "break the schema"),
        ([ToolCall("get_weather", '{"city": "Paris", "when": "now"}')], "break the schema"),  # no extra keys
        ([ToolCall("get_weather", '{"city": "Berlin"}')], "does not contain 'paris'"),
        ([ToolCall("get_weather", '["Paris"]')], "break the schema"),
    ],
)
def test_tool_call_fails_a_wrong_call(calls, why):
    judged = tool_call.check(WEATHER, calls, "It is sunny.", "stop")
    assert not judged.passed and why in judged.reason


def test_every_tool_case_names_a_tool_and_the_tools_schemas_are_valid():
    import jsonschema

    names = {tool["function"]["name"] for tool in TOOLS}
    for case in TOOL_CASES:
        assert case.function in names
        schema = tool_schema(case.function)
        assert schema is not None
        jsonschema.validators.validator_for(schema).check_schema(schema)
        assert set(case.argument_contains) <= set(schema["properties"])
    assert tool_schema("nothing") is None


# ---- JSON mode ----------------------------------------------------------------------------------------------


PERSON = JSON_CASES[0].schema


def test_json_mode_passes_a_document_matching_the_schema():
    assert json_schema.check('{"name": "Alice", "age": 30}', "stop", PERSON).passed


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "no content"),
        ("", "no content"),
        ("Alice is 30.", "not JSON"),
        ('{"name": "Alice", "age": ', "not JSON"),
        ('{"name": "Alice"}', "schema violation"),
        ('{"name": "Alice", "age": "thirty"}', "schema violation"),
        ('{"name": "Alice", "age": -1}', "schema violation"),
        ('{"name": "Alice", "age": 30, "city": "Paris"}', "schema violation"),
        ("[1, 2]", "schema violation"),
    ],
)
def test_json_mode_fails_a_reply_that_is_not_json_or_breaks_the_schema(content, why):
    judged = json_schema.check(content, "stop", PERSON)
    assert not judged.passed and why in judged.reason


def test_every_json_case_has_a_valid_schema_and_a_document_that_matches_it():
    import jsonschema

    examples = [
        {"name": "Alice", "age": 30},
        {"languages": ["Python", "Rust", "Go"]},
        {"name": "add", "parameters": [{"name": "a", "type": "int"}, {"name": "b", "type": "int"}], "returns": "int"},
        {"sentiment": "positive", "confidence": 0.9},
    ]
    assert len(JSON_CASES) == len(examples)
    for case, example in zip(JSON_CASES, examples, strict=True):
        jsonschema.validators.validator_for(case.schema).check_schema(case.schema)
        assert json_schema.check(json.dumps(example), "stop", case.schema).passed
        assert not json_schema.check(json.dumps({"other": 1}), "stop", case.schema).passed


# ---- embeddings ---------------------------------------------------------------------------------------------


def test_embeddings_pass_when_paraphrases_are_closer():
    triples = [([1.0, 0.0], [0.9, 0.1], [0.0, 1.0]), ([0.0, 1.0], [0.1, 1.0], [1.0, 0.2])]
    judged = embedding.check(triples, min_ordered_fraction=1.0)
    assert judged.passed and judged.metrics["ordered"] == 2


def test_embeddings_fail_when_an_unrelated_text_is_closer():
    triples = [([1.0, 0.0], [0.9, 0.1], [0.0, 1.0]), ([0.0, 1.0], [1.0, 0.2], [0.1, 1.0])]
    assert not embedding.check(triples, min_ordered_fraction=1.0).passed
    assert embedding.check(triples, min_ordered_fraction=0.5).passed  # the playbook may allow a share
    assert not embedding.check(triples[:1], min_ordered_fraction=1.0, min_margin=1.5).passed


@pytest.mark.parametrize(
    "triples",
    [
        [],
        [([1.0, 0.0], [1.0], [0.0, 1.0])],  # differing lengths
        [([0.0, 0.0], [1.0, 0.0], [0.0, 1.0])],  # a zero vector
        [([math.nan, 1.0], [1.0, 0.0], [0.0, 1.0])],
        [([1.0, 1.0], [1.0, 1.0], [1.0, 1.0])],  # identical vectors: nothing is closer
    ],
)
def test_embeddings_fail_on_degenerate_vectors(triples):
    assert not embedding.check(triples, min_ordered_fraction=1.0).passed


def test_the_embedding_triples_are_distinct_texts():
    texts = [text for t in EMBEDDING_TRIPLES for text in (t.anchor, t.paraphrase, t.unrelated)]
    assert len(set(texts)) == len(texts) >= 9


# ---- applicability ------------------------------------------------------------------------------------------


def test_each_gate_applies_only_where_the_checkpoint_has_its_feature():
    from apr.qa.gates.catalog import GateId
    from apr.qa.gates.serve_features import Support

    coder = Support(fim=True, chat=True, tools=True)
    assert all(coder.lacks(g) is None for g in (GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS))
    chat_only = Support(fim=False, chat=True, tools=False)
    assert "FIM tokens" in (chat_only.lacks(GateId.FIM) or "")
    assert "render tools" in (chat_only.lacks(GateId.TOOL_CALLS) or "")
    assert chat_only.lacks(GateId.JSON_MODE) is None and chat_only.lacks(GateId.EMBEDDINGS) is None
    base = Support(fim=True, chat=False, tools=False)
    assert "no chat template" in (base.lacks(GateId.JSON_MODE) or "")
    assert "no chat template" in (base.lacks(GateId.TOOL_CALLS) or "")
    assert base.lacks(GateId.FIM) is None and base.lacks(GateId.EMBEDDINGS) is None
