"""Tool-call oracle: the reply calls a tool, the right function, with arguments that are a JSON object matching
that function's schema (and containing the values the request named)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from apr.qa.coder_cases import ToolCase, tool_schema
from apr.qa.oracles.feature import FeatureVerdict, failed, passed
from apr.qa.oracles.json_schema import schema_errors


@dataclass(frozen=True)
class ToolCall:
    """One entry of the reply's ``message.tool_calls``, as the client received it."""

    name: str
    arguments: str  # the JSON string OpenAI's shape carries


def check(case: ToolCase, calls: list[ToolCall], content: str | None, finish_reason: str | None) -> FeatureVerdict:
    """The first call names ``case.function``; every call's arguments parse and match its function's schema."""
    if not calls:
        text = (content or "").strip().replace("\n", " ")[:120]
        return failed(f"no tool call (finish_reason {finish_reason}); content: {text!r}", calls=0)
    for call in calls:
        schema = tool_schema(call.name)
        if schema is None:
            return failed(f"called {call.name!r}, which is not among the tools", calls=len(calls))
        try:
            arguments: Any = json.loads(call.arguments)
        except json.JSONDecodeError as err:
            return failed(f"{call.name}: arguments are not JSON: {err.msg}", calls=len(calls))
        errors = schema_errors(arguments, schema)
        if errors:
            return failed(f"{call.name}: arguments break the schema: {'; '.join(errors[:3])}", calls=len(calls))
    first = calls[0]
    if first.name != case.function:
        return failed(f"called {first.name}, expected {case.function}", calls=len(calls), called=first.name)
    arguments = json.loads(first.arguments)
    for name, wanted in case.argument_contains.items():
        value = arguments.get(name)
        if value is None or wanted.lower() not in str(value).lower():
            return failed(f"{first.name}: argument {name}={value!r} does not contain {wanted!r}", calls=len(calls))
    return passed(f"{first.name}({first.arguments}) matches its schema", calls=len(calls), called=first.name)
