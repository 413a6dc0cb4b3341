"""POST /v1/chat/completions: messages through the model's chat template, plain or streamed, with tool calls."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request

from apr.serve.admission import Job, chat_jobs
from apr.serve.choices import ChoiceRun, cached_prompt_tokens, merged_events, run_all, unless_disconnected
from apr.serve.errors import ApiError
from apr.serve.pool import Lease
from apr.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    FinishReason,
)
from apr.serve.render import SSE_DONE, chat_chunk, chat_logprobs, sse, usage
from apr.serve.route_meta import ERROR_RESPONSES, STREAM_RESPONSE
from apr.serve.state import ServeState, check_api_key, leased_stream, serve_state
from apr.serve.tools import CallStreamer, ToolPlan, parse_reply, tool_calls

log = logging.getLogger("apr.serve")
router = APIRouter(dependencies=[Depends(check_api_key)])


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERROR_RESPONSES, **STREAM_RESPONSE})
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: ServeState = Depends(serve_state)
):
    lease = await state.lease(body.model)
    streaming = False
    try:
        # Rendering and tokenizing run off the event loop, so other streams keep flowing meanwhile.
        jobs = await asyncio.to_thread(chat_jobs, body, lease.served)
        extras = await constraints(lease, jobs)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            streaming = True  # the stream holds the lease from here on
            return leased_stream(lease, _stream(lease, body, jobs, completion_id, created, extras))
        runs = await unless_disconnected(request, run_all(lease.scheduler, completion_id, jobs, extras))
    finally:
        if not streaming:
            lease.release()
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=body.model,
        choices=[_choice(lease, body, run) for run in runs],
        usage=usage(
            len(jobs[0].prompt_ids),
            sum(len(run.events) for run in runs),
            cached_prompt_tokens({run.job.index: run.cached_tokens for run in runs}, body.n),
        ),
    )


async def constraints(lease: Lease, jobs: list[Job]) -> dict[int, dict]:
    """A fresh grammar matcher per constrained choice; built off the event loop (the first one per model
    builds llguidance's tokenizer view, which takes seconds)."""
    if not any(job.constraint is not None for job in jobs):
        return {}
    grammar = lease.served.grammar
    return {
        job.index: {"constraint": await asyncio.to_thread(grammar.matcher, job.constraint)}
        for job in jobs
        if job.constraint is not None
    }


def _top(body: ChatCompletionRequest) -> int:
    return body.top_logprobs or 0


def _choice(lease: Lease, body: ChatCompletionRequest, run: ChoiceRun) -> ChatChoice:
    logprobs = chat_logprobs(lease.served, run.events, _top(body)) if body.logprobs else None
    plan = run.job.tools
    parsed = parse_reply(run.job.opening + run.text, plan)
    if parsed.rejected:
        log.warning("tool call left as content: %s", "; ".join(parsed.rejected))
    finish_reason: FinishReason = run.finish_reason
    message = AssistantMessage(content=parsed.content)
    if parsed.calls:
        if plan.legacy:
            message.function_call = parsed.calls[0]
            finish_reason = "function_call"
        else:
            message.tool_calls = tool_calls(parsed.calls)
            finish_reason = "tool_calls"
    elif message.content is None:
        message.content = ""
    return ChatChoice(index=run.job.index, message=message, logprobs=logprobs, finish_reason=finish_reason)


def _call_delta(plan: ToolPlan, number: int, call) -> dict:
    """OpenAI's first delta of a call carries id, type and name; the arguments follow (here in one piece)."""
    if plan.legacy:
        return {"function_call": {"name": call.name, "arguments": call.arguments}}
    (identified,) = tool_calls([call])
    entry = {
        "index": number,
        "id": identified.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    return {"tool_calls": [entry]}


async def _stream(
    lease: Lease,
    body: ChatCompletionRequest,
    jobs: list[Job],
    completion_id: str,
    created: int,
    extras: dict[int, dict],
) -> AsyncIterator[str]:
    """First a role delta per choice, then content (or tool-call) deltas, a finish chunk, optional usage, [DONE]."""
    completion_tokens = 0
    streamers = {job.index: CallStreamer(job.tools, job.opening) if job.tools.active else None for job in jobs}
    calls_made = {job.index: 0 for job in jobs}
    cached: dict[int, list[int]] = {}

    def chunk(job: Job, **fields) -> str:
        return sse(chat_chunk(completion_id, created, body.model, job.index, **fields))

    def releases(job: Job, pieces) -> list[str]:
        out = []
        for kind, value in pieces:
            if kind == "content":
                out.append(chunk(job, content=value))
            else:
                out.append(chunk(job, extra=_call_delta(job.tools, calls_made[job.index], value)))
                calls_made[job.index] += 1
        return out

    try:
        scheduler = lease.scheduler
        for job in jobs:
            yield chunk(job, role=True, content="")
        async with aclosing(merged_events(scheduler, completion_id, jobs, extras, cached)) as events:
            async for job, event in events:
                completion_tokens += 1
                logprobs = chat_logprobs(lease.served, [event], _top(body)) if body.logprobs else None
                streamer = streamers[job.index]
                if streamer is None:
                    if event.text or logprobs is not None:
                        yield chunk(job, content=event.text, logprobs=logprobs)
                else:
                    for piece in releases(job, streamer.feed(event.text)):
                        yield piece
                if event.finish_reason is not None:
                    finish_reason: FinishReason = event.finish_reason
                    if streamer is not None:
                        for piece in releases(job, streamer.finish()):
                            yield piece
                        if calls_made[job.index]:
                            finish_reason = "function_call" if job.tools.legacy else "tool_calls"
                    yield chunk(job, finish_reason=finish_reason)
    except ApiError as error:
        yield sse(error.body())
        yield SSE_DONE
        return
    if body.stream_options is not None and body.stream_options.include_usage:
        cached_tokens = cached_prompt_tokens({index: sum(found) for index, found in cached.items()}, body.n)
        totals = usage(len(jobs[0].prompt_ids), completion_tokens, cached_tokens)
        yield sse(ChatCompletionChunk(id=completion_id, created=created, model=body.model, choices=[], usage=totals))
    yield SSE_DONE
