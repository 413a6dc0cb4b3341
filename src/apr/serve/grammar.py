"""Grammar-constrained decoding with llguidance: JSON mode, JSON schemas and forced tool calls.

Why llguidance (bench/bench_grammar_libs.py on Qwen2.5's 151,936-token vocabulary, py3.11 CPU): both it
and xgrammar install from PyPI and accept the same documents; llguidance compiles a schema in ~1.3 ms
against xgrammar's ~87 ms (paid per request, since every request brings its own schema), needs no
other package where xgrammar pulls triton (~1 GB) and transformers, and reads the model's
tokenizer.json directly. Its mask takes ~30 µs a token (xgrammar ~5 µs), nothing beside a ~50 ms decode
step. Its one-time tokenizer setup (~3 s) is paid once per model, off the event loop.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apr.serve.errors import bad_request
from apr.serve.protocol import ChatCompletionRequest
from apr.serve.tools import CALL_CLOSE, ToolPlan, check_schema

if TYPE_CHECKING:
    import torch

    from apr.formats.tokenizer import Tokenizer


@dataclass(frozen=True)
class ConstraintSpec:
    """What the reply must match, as an llguidance grammar (Lark with inline `%json` schemas)."""

    kind: str  # "json_object" | "json_schema" | "tool_call"
    grammar: str


def constraint_for(request: ChatCompletionRequest, plan: ToolPlan) -> ConstraintSpec | None:
    """The constraint a chat request asks for: a forced tool call, or its `response_format`."""
    if plan.forced:
        return _tool_call_constraint(plan)
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ConstraintSpec("json_object", _lark_json({"type": "object"}))
    if fmt.json_schema is None:
        raise bad_request("'response_format' json_schema needs a 'json_schema' object.", param="response_format")
    schema = fmt.json_schema.schema_
    check_schema(schema, "response_format.json_schema.schema")
    return ConstraintSpec("json_schema", _lark_json(schema or {"type": "object"}))


# Canonical separators, no free whitespace: what json.dumps writes and models imitate, and a random-weight model
# cannot wander into endless blanks.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _with_layout(schema: dict[str, Any] | None) -> str:
    return json.dumps({**(schema or {"type": "object"}), "x-guidance": JSON_LAYOUT})


def _lark_json(schema: dict[str, Any]) -> str:
    return f"start: %json {_with_layout(schema)}\n"


def _tool_call_constraint(plan: ToolPlan) -> ConstraintSpec:
    """After the forced opening (tools.forced_opening): a named call's arguments, or a whole call."""
    close = json.dumps("}\n" + CALL_CLOSE)
    if plan.mode == "named":
        spec = plan.callable()[0]
        return ConstraintSpec("tool_call", f"start: args {close}\nargs: %json {_with_layout(spec.parameters)}\n")
    alternatives: list[str] = []
    rules: list[str] = []
    for number, spec in enumerate(plan.callable()):
        head = json.dumps(f'{{"name": "{spec.name}", "arguments": ')
        alternatives.append(f"{head} args{number} {close}")
        rules.append(f"args{number}: %json {_with_layout(spec.parameters)}")
    return ConstraintSpec("tool_call", "start: " + " | ".join(alternatives) + "\n" + "\n".join(rules) + "\n")


class GrammarTokenizer:
    """llguidance's view of one model's tokenizer, built once on first use (it takes seconds)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: tuple[int, ...]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = stop_ids
        self._built: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._built is None:
                import llguidance

                self._built = llguidance.LLTokenizer(
                    self._tokenizer.to_tokenizer_json(), n_vocab=self._vocab_size, eos_token=list(self._stop_ids)
                )
            return self._built

    def matcher(self, spec: ConstraintSpec) -> GrammarConstraint:
        """A fresh matcher for one sequence; a grammar llguidance cannot build is the client's 400."""
        import llguidance

        matcher = llguidance.LLMatcher(self.get(), spec.grammar, log_level=0)
        if matcher.is_error():
            raise bad_request(
                f"The requested structure cannot be enforced: {matcher.get_error()}",
                param="response_format" if spec.kind != "tool_call" else "tools",
            )
        return GrammarConstraint(matcher, self._vocab_size, self._stop_ids)


class GrammarConstraint:
    """One sequence's grammar state, used by engine.sampling.Sampler: mask the logits, then accept the token."""

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> None:
        import torch

        self._matcher = matcher
        self._words = (vocab_size + 31) // 32
        self._mask = torch.full((1, self._words), -1, dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)
        self._stop_ids = stop_ids

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        import llguidance.torch as lltorch
        import torch

        if self._matcher.is_error():
            # Cannot happen for tokens we chose from its own mask; end the reply rather than break the grammar.
            allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
            allowed[list(self._stop_ids)] = True
        else:
            lltorch.fill_next_token_bitmask(self._matcher, self._mask, 0)
            allowed = ((self._mask[0].unsqueeze(1) >> self._bits) & 1).flatten().bool()
            if allowed.shape[0] < logits.shape[-1]:
                allowed = torch.cat([allowed, torch.zeros(logits.shape[-1] - allowed.shape[0], dtype=torch.bool)])
            allowed = allowed[: logits.shape[-1]]
        return logits.masked_fill(~allowed, float("-inf"))

    def accept(self, token: int) -> None:
        if not self._matcher.is_stopped():
            self._matcher.consume_token(token)
