"""Pydantic models of the OpenAI completions and chat-completions wire format (requests, replies, chunks)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from pydantic_core import PydanticCustomError

# OpenAI caps top logprobs at 5 (completions) and 20 (chat); we allow 20 on both.
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_CHOICES = 16
SEED_RANGE = 2**63
MIN_REPETITION_PENALTY = 0.01

NonEmptyText = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]


# The error type of text that is not Unicode (a lone UTF-16 surrogate such as "\\ud800" in the JSON).
INVALID_TEXT = "invalid_text"


def surrogate_path(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where `value` (parsed JSON) holds a string, or a key, with a lone surrogate; None when it has none."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    while pending:  # iterative: the JSON parser bounds the depth, this walk need not recurse
        item, where = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _has_surrogate(item):
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not key.isascii() and _has_surrogate(key):
                    return (*where, key.encode("utf-8", "backslashreplace").decode())
                pending.append((child, (*where, key)))
        elif isinstance(item, list):
            pending.extend((child, (*where, index)) for index, child in enumerate(item))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class StrictRequest(BaseModel):
    """Requests reject wrong JSON types instead of coercing them ("5" is not an int)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class TopLevelRequest(StrictRequest):
    """A whole request body: its text is checked to be Unicode at the edge, before any field is used."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_unicode(cls, data: Any) -> Any:
        where = surrogate_path(data)
        if where is not None:
            raise PydanticCustomError(
                INVALID_TEXT,
                "text must be valid Unicode; it holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)",
                {"path": ".".join(str(part) for part in where)},
            )
        return data


class StreamOptions(StrictRequest):
    include_usage: bool = False


class SamplingFields(TopLevelRequest):
    """Fields common to both endpoints; defaults follow the OpenAI API."""

    model: str
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    # Below 0.01 the division of seen tokens' logits overflows; above 10 nothing changes but the damage.
    repetition_penalty: Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=10.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stop: NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: Annotated[int, Field(ge=-SEED_RANGE, lt=SEED_RANGE)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted so that clients sending the OpenAI defaults work; any other value is refused.
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(SamplingFields):
    """POST /v1/completions. `prompt` may be text, a list of texts, token ids, or lists of token ids."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    # Fill-in-the-middle: the text after the gap; the prompt is the text before it.
    suffix: str | None = None
    # The language of a FIM request (Codestral/llama.cpp clients send it); it does not change the prompt.
    language: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None


class FunctionSpec(StrictRequest):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolSpec(StrictRequest):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(StrictRequest):
    name: NonEmptyText


class NamedToolChoice(StrictRequest):
    type: Literal["function"]
    function: NamedFunction


class FunctionCallIn(StrictRequest):
    name: str
    arguments: str


class ToolCallIn(StrictRequest):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class JsonSchemaFormat(StrictRequest):
    name: Annotated[str, Field(min_length=1, max_length=64)] = "response"
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictRequest):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class TextPart(StrictRequest):
    type: Literal["text"]
    text: str


class ChatMessage(StrictRequest):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # The legacy assistant turn that called a function (before `tool_calls`).
    function_call: FunctionCallIn | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionSpec] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None


# ---- replies -------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions shape that lm-eval reads (`token_logprobs[0]` of an echoed prompt is null)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    # Set instead of tool_calls when the request used the legacy `functions`.
    function_call: FunctionCall | None = None

    @model_serializer(mode="wrap")
    def _without_unset_calls(self, handler):
        data = handler(self)
        return {key: value for key, value in data.items() if key == "content" or value is not None}


FinishReason = Literal["stop", "length", "tool_calls", "function_call"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """A stream increment: `role` only in a choice's first chunk, `content` absent in its last."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict] | None = None
    function_call: dict | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "apr"
    # Known once the model is loaded (a cached model's context length is read when it loads).
    max_model_len: int | None = None
    # apr's additions: whether the model is in memory now, and its file's bytes (cached models).
    loaded: bool = False
    size_bytes: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
