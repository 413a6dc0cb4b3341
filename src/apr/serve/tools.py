"""Function calling: the request's tools and tool choice, chat turns for the template, and parsing `<tool_call>`s."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from apr.serve.errors import bad_request
from apr.serve.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionSpec,
    NamedFunction,
    NamedToolChoice,
    ToolCall,
)

# Qwen2.5 (and Hermes-style templates) wrap each call as <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>.
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolPlan:
    """What the request asks of the model: the functions it may call and how (`mode`)."""

    functions: tuple[FunctionSpec, ...] = ()
    # "none": tools are not shown; "auto": the model decides; "required": some call; "named": `name`.
    mode: str = "none"
    name: str | None = None
    # The request used the legacy `functions`/`function_call`: reply with `function_call`.
    legacy: bool = False

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.mode != "none"

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")

    def callable(self) -> tuple[FunctionSpec, ...]:
        if self.mode == "named":
            return tuple(f for f in self.functions if f.name == self.name)
        return self.functions

    def template_tools(self) -> list[dict[str, Any]] | None:
        """Tools as the chat template reads them (the OpenAI `tools` shape), or None when none are shown."""
        if not self.active:
            return None
        return [{"type": "function", "function": spec.model_dump(exclude_none=True)} for spec in self.callable()]


def plan_tools(request: ChatCompletionRequest) -> ToolPlan:
    """Fold `tools`/`tool_choice` and the legacy `functions`/`function_call` into one plan, refusing contradictions."""
    if request.tools is not None and request.functions is not None:
        raise bad_request("Send either 'tools' or the legacy 'functions', not both.", param="functions")
    choice: Literal["none", "auto", "required"] | NamedToolChoice | NamedFunction | None
    if request.functions is not None:
        functions, choice, legacy, param = tuple(request.functions), request.function_call, True, "function_call"
    else:
        functions = tuple(tool.function for tool in request.tools or ())
        choice, legacy, param = request.tool_choice, False, "tool_choice"
        if request.function_call is not None:
            raise bad_request("'function_call' goes with 'functions'; with 'tools' send 'tool_choice'.", param=param)
    names = [spec.name for spec in functions]
    if len(set(names)) != len(names):
        raise bad_request("Function names must be unique.", param="tools")
    if choice is None:
        mode, name = ("auto" if functions else "none"), None
    elif isinstance(choice, str):
        mode, name = choice, None
    else:
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
        mode = "named"
    if mode in ("required", "named", "auto") and not functions and choice is not None:
        raise bad_request(f"'{param}' {mode!r} needs at least one function in 'tools'.", param=param)
    if mode == "named" and name not in names:
        raise bad_request(f"'{param}' names '{name}', which is not among the given functions.", param=param)
    if mode == "required" and legacy:
        raise bad_request("'function_call' takes 'none', 'auto' or {'name': ...}.", param=param)
    return ToolPlan(functions=functions, mode=mode, name=name, legacy=legacy)


def template_message(message: ChatMessage) -> dict[str, Any]:
    """One turn as the chat template expects it: tool calls with their arguments as objects."""
    role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
    turn: dict[str, Any] = {"role": role, "content": message.text()}
    calls = list(message.tool_calls or ())
    if message.function_call is not None:
        calls.append(_legacy_call(message.function_call))
    if calls:
        turn["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _arguments_object(call.function.arguments)},
            }
            for call in calls
        ]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        turn["name"] = message.name
    return turn


def _legacy_call(function_call) -> Any:
    from apr.serve.protocol import ToolCallIn

    return ToolCallIn(id=None, function=function_call)


def _arguments_object(arguments: str) -> Any:
    # HF templates (Qwen's `tool_call.arguments | tojson`) expect an object, OpenAI sends a JSON string.
    try:
        return json.loads(arguments)
    except ValueError as exc:
        raise bad_request(f"A tool call's 'arguments' is not valid JSON: {exc}.", param="messages") from exc


def forced_opening(plan: ToolPlan) -> str:
    """Text the assistant turn starts with when a call is required: the model continues from there."""
    if plan.mode == "named":
        return f'{CALL_OPEN}\n{{"name": "{plan.name}", "arguments": '
    if plan.mode == "required":
        return f"{CALL_OPEN}\n"
    return ""


@dataclass
class ParsedReply:
    content: str | None
    calls: list[FunctionCall] = field(default_factory=list)
    # Why a `<tool_call>` block was not accepted as a call (kept in the content instead).
    rejected: list[str] = field(default_factory=list)


def parse_reply(text: str, plan: ToolPlan) -> ParsedReply:
    """Split the model's text into content and validated calls; an invalid block stays content."""
    if not plan.active:
        return ParsedReply(content=text)
    if CALL_OPEN not in text:
        return _bare_call(text, plan)
    calls: list[FunctionCall] = []
    rejected: list[str] = []
    kept: list[str] = []
    last = 0
    for match in _CALL.finditer(text):
        call, problem = _validated_call(match.group(1), plan)
        if call is None:
            rejected.append(problem)
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    content = "".join(kept).strip() if calls else text
    return ParsedReply(content=content or None, calls=calls, rejected=rejected)


def _bare_call(text: str, plan: ToolPlan) -> ParsedReply:
    """A reply that is nothing but one call object, bare or in a ```json fence, is a call too: small Qwen models
    answer so now and then. It must still name a given function with schema-valid arguments."""
    body = _FENCE.sub("", text.strip()).strip()
    if not body.startswith("{"):
        return ParsedReply(content=text)
    call, problem = _validated_call(body, plan)
    if call is None:
        return ParsedReply(content=text)
    return ParsedReply(content=None, calls=[call])


def _validated_call(body: str, plan: ToolPlan) -> tuple[FunctionCall | None, str]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None, "no function name"
    spec = next((f for f in plan.callable() if f.name == data["name"]), None)
    if spec is None:
        return None, f"unknown function {data['name']!r}"
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            return None, f"arguments not JSON ({exc})"
    problem = schema_problem(arguments, spec.parameters)
    if problem is not None:
        return None, problem
    return FunctionCall(name=spec.name, arguments=json.dumps(arguments, ensure_ascii=False)), ""


def schema_problem(value: Any, schema: dict | None) -> str | None:
    """Why `value` does not match the JSON schema, or None when it does (no schema: any object)."""
    import jsonschema

    if schema is None:
        return None if isinstance(value, dict) else "arguments are not an object"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"arguments do not match the schema: {exc.message}"
    except jsonschema.SchemaError as exc:
        return f"the function's schema is invalid: {exc.message}"
    return None


def check_schema(schema: dict | None, param: str) -> None:
    """Refuse a request whose JSON schema is itself invalid, before anything is generated."""
    import jsonschema

    if schema is None:
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise bad_request(f"Invalid JSON schema in '{param}': {exc.message}.", param=param) from exc


def tool_calls(calls: list[FunctionCall]) -> list[ToolCall]:
    return [ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=call) for call in calls]


class CallStreamer:
    """Holds streamed text back while it may be a `<tool_call>` block, and releases finished calls as deltas.

    Yields ("content", text) for plain text and ("call", FunctionCall) for each validated block; a block that
    does not validate is released as content, as in the non-streamed reply.
    """

    def __init__(self, plan: ToolPlan, opening: str = "") -> None:
        self._plan = plan
        self._pending = opening
        # A reply opening with "{" or "```" may be a bare call object (see _bare_call): held back to the end.
        self._whole: str | None = None
        self._released = bool(opening)

    def feed(self, text: str) -> list[tuple[str, Any]]:
        if self._whole is not None and not self._released:
            self._whole += text
            return []
        if not self._released:
            head = (self._pending + text).lstrip()
            if not head:
                self._pending += text
                return []
            if head.startswith(("{", "`")) and not head.startswith(CALL_OPEN):
                self._whole = self._pending + text
                self._pending = ""
                return []
            self._released = True
        self._pending += text
        out: list[tuple[str, Any]] = []
        while self._pending:
            start = self._pending.find(CALL_OPEN)
            if start < 0:
                # Keep a tail that could still grow into "<tool_call>".
                keep = _partial_tail(self._pending, CALL_OPEN)
                released, self._pending = (
                    self._pending[: len(self._pending) - keep],
                    self._pending[len(self._pending) - keep :],
                )
                if released:
                    out.append(("content", released))
                return out
            if start > 0:
                out.append(("content", self._pending[:start]))
                self._pending = self._pending[start:]
            end = self._pending.find(CALL_CLOSE)
            if end < 0:
                return out
            block = self._pending[: end + len(CALL_CLOSE)]
            self._pending = self._pending[end + len(CALL_CLOSE) :]
            out.extend(self._block(block))
        return out

    def finish(self) -> list[tuple[str, Any]]:
        if self._whole is not None and not self._released:
            parsed = _bare_call(self._whole, self._plan)
            if parsed.calls:
                return [("call", call) for call in parsed.calls]
            return [("content", self._whole)] if self._whole else []
        pending, self._pending = self._pending, ""
        if pending.startswith(CALL_OPEN):
            return self._block(pending)
        return [("content", pending)] if pending else []

    def _block(self, block: str) -> list[tuple[str, Any]]:
        parsed = parse_reply(block, self._plan)
        if parsed.calls:
            return [("call", call) for call in parsed.calls]
        return [("content", block)]


def _partial_tail(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
