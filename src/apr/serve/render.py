"""Build OpenAI reply objects (choices, logprobs, usage, stream chunks) from engine token events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from apr.serve.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    CompletionLogprobs,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from apr.serve.scoring import PromptScores
from apr.serve.served import ServedModel

if TYPE_CHECKING:
    from apr.engine import TokenEvent

SSE_DONE = "data: [DONE]\n\n"


def sse(payload: object) -> str:
    """One server-sent event carrying a JSON document (a pydantic model or a plain dict)."""
    if hasattr(payload, "model_dump_json"):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


def _named_top(served: ServedModel, top: dict[int, float] | None, limit: int) -> dict[str, float] | None:
    if top is None:
        return None
    ranked = sorted(top.items(), key=lambda item: item[1], reverse=True)[:limit]
    named: dict[str, float] = {}
    for token_id, logprob in ranked:
        # Distinct ids can spell alike (a byte fragment decodes to U+FFFD); keep the likelier.
        named.setdefault(served.token_text(token_id), logprob)
    return named


def completion_logprobs(
    served: ServedModel,
    events: Sequence[TokenEvent],
    top: int,
    *,
    prompt_ids: Sequence[int] = (),
    prompt_scores: PromptScores | None = None,
    text_offset: int = 0,
) -> CompletionLogprobs:
    """The legacy shape; with an echoed prompt its tokens come first (the first has no logprob)."""
    result = CompletionLogprobs()
    offset = text_offset
    scored_prompt = zip(prompt_ids, prompt_scores.logprobs, prompt_scores.top_logprobs) if prompt_scores else ()
    rows = [*scored_prompt, *((e.token_id, e.logprob, e.top_logprobs) for e in events)]
    for token_id, logprob, top_logprobs in rows:
        token = served.token_text(token_id)
        result.tokens.append(token)
        result.token_logprobs.append(logprob)
        result.top_logprobs.append(_named_top(served, top_logprobs, top) if top else None)
        result.text_offset.append(offset)
        offset += len(token)
    return result


def _spelled(served: ServedModel, token_id: int, logprob: float | None) -> TopLogprob:
    token = served.token_text(token_id)
    return TopLogprob(token=token, logprob=logprob if logprob is not None else 0.0, bytes=list(token.encode("utf-8")))


def chat_logprobs(served: ServedModel, events: Sequence[TokenEvent], top: int) -> ChoiceLogprobs:
    content = []
    for event in events:
        chosen = _spelled(served, event.token_id, event.logprob)
        ranked = sorted((event.top_logprobs or {}).items(), key=lambda item: item[1], reverse=True)[:top]
        alternatives = [_spelled(served, token_id, logprob) for token_id, logprob in ranked]
        content.append(TokenLogprob(**chosen.model_dump(), top_logprobs=alternatives))
    return ChoiceLogprobs(content=content)


def chat_chunk(
    completion_id: str,
    created: int,
    model: str,
    index: int,
    *,
    role: bool = False,
    content: str | None = None,
    logprobs: ChoiceLogprobs | None = None,
    finish_reason: str | None = None,
    extra: dict | None = None,
) -> ChatCompletionChunk:
    """`extra`: more delta fields (`tool_calls` or the legacy `function_call`)."""
    delta = ChatDelta(role="assistant" if role else None, content=content, **(extra or {}))
    choice = ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
    return ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[choice])
