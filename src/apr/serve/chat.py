"""POST /v1/chat/completions: messages through the model's chat template, plain or streamed."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from apr.serve.admission import Job, chat_jobs
from apr.serve.choices import ChoiceRun, merged_events, run_all, unless_disconnected
from apr.serve.errors import ApiError
from apr.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
)
from apr.serve.render import SSE_DONE, chat_chunk, chat_logprobs, sse, usage
from apr.serve.route_meta import ERROR_RESPONSES, SSE_HEADERS, STREAM_RESPONSE
from apr.serve.state import ServeState, check_api_key, serve_state

router = APIRouter(dependencies=[Depends(check_api_key)])


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: ServeState = Depends(serve_state)
):
    jobs = chat_jobs(body, state.served)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        stream = _stream(state, body, jobs, completion_id, created)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    runs = await unless_disconnected(request, run_all(state.running_scheduler, completion_id, jobs))
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=body.model,
        choices=[_choice(state, body, run) for run in runs],
        usage=usage(len(jobs[0].prompt_ids), sum(len(run.events) for run in runs)),
    )


def _top(body: ChatCompletionRequest) -> int:
    return body.top_logprobs or 0


def _choice(state: ServeState, body: ChatCompletionRequest, run: ChoiceRun) -> ChatChoice:
    logprobs = chat_logprobs(state.served, run.events, _top(body)) if body.logprobs else None
    return ChatChoice(
        index=run.job.index,
        message=AssistantMessage(content=run.text),
        logprobs=logprobs,
        finish_reason=run.finish_reason,
    )


async def _stream(
    state: ServeState, body: ChatCompletionRequest, jobs: list[Job], completion_id: str, created: int
) -> AsyncIterator[str]:
    """First a role delta per choice, then content deltas, a finish chunk, optional usage, [DONE]."""
    completion_tokens = 0
    try:
        scheduler = state.running_scheduler
        for job in jobs:
            yield sse(chat_chunk(completion_id, created, body.model, job.index, role=True, content=""))
        async with aclosing(merged_events(scheduler, completion_id, jobs)) as events:
            async for job, event in events:
                completion_tokens += 1
                logprobs = chat_logprobs(state.served, [event], _top(body)) if body.logprobs else None
                if event.text or logprobs is not None:
                    yield sse(
                        chat_chunk(completion_id, created, body.model, job.index, content=event.text, logprobs=logprobs)
                    )
                if event.finish_reason is not None:
                    yield sse(
                        chat_chunk(completion_id, created, body.model, job.index, finish_reason=event.finish_reason)
                    )
    except ApiError as error:
        yield sse(error.body())
        yield SSE_DONE
        return
    if body.stream_options is not None and body.stream_options.include_usage:
        totals = usage(len(jobs[0].prompt_ids), completion_tokens)
        yield sse(ChatCompletionChunk(id=completion_id, created=created, model=body.model, choices=[], usage=totals))
    yield SSE_DONE
