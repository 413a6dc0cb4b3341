"""POST /v1/completions: plain text completion, with echo + logprobs for log-likelihood scoring."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request

from apr.serve.admission import Job, completion_jobs
from apr.serve.choices import ChoiceRun, cached_prompt_tokens, merged_events, run_all, score, unless_disconnected
from apr.serve.errors import ApiError
from apr.serve.pool import Lease
from apr.serve.protocol import Completion, CompletionChoice, CompletionRequest
from apr.serve.render import SSE_DONE, completion_logprobs, sse, usage
from apr.serve.route_meta import ERROR_RESPONSES, STREAM_RESPONSE
from apr.serve.state import ServeState, check_api_key, leased_stream, serve_state

router = APIRouter(dependencies=[Depends(check_api_key)])


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
)
async def create_completion(body: CompletionRequest, request: Request, state: ServeState = Depends(serve_state)):
    lease = await state.lease(body.model)
    streaming = False
    try:
        # Tokenizing a long prompt takes a while: off the event loop, so other streams keep flowing meanwhile.
        jobs = await asyncio.to_thread(completion_jobs, body, lease.served)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            streaming = True  # the stream holds the lease from here on
            return leased_stream(lease, _stream(lease, body, jobs, completion_id, created))
        runs = await unless_disconnected(request, _run(lease, body, jobs, completion_id))
    finally:
        if not streaming:
            lease.release()
    choices = [_choice(lease, body, run) for run in runs]
    completion_tokens = sum(len(run.events) for run in runs)
    return Completion(
        id=completion_id,
        created=created,
        model=body.model,
        choices=choices,
        usage=usage(
            _prompt_tokens(jobs, body.n),
            completion_tokens,
            cached_prompt_tokens({run.job.index: run.cached_tokens for run in runs}, body.n),
        ),
    )


def _prompt_tokens(jobs: list[Job], n: int) -> int:
    # n choices share one prompt: count each prompt once, as OpenAI does.
    return sum(len(job.prompt_ids) for job in jobs if job.index % n == 0)


async def _run(lease: Lease, body: CompletionRequest, jobs: list[Job], completion_id: str) -> list[ChoiceRun]:
    scheduler = lease.scheduler
    scores = None
    if body.echo and body.logprobs is not None:
        # Scoring is a forward pass per prompt; choices of one prompt share it.
        unique = {job.index // body.n: job for job in jobs}
        computed = await asyncio.gather(
            *(score(scheduler, lease.served.engine, job, body.logprobs) for job in unique.values())
        )
        scores = dict(zip(unique, computed))
    runs = await run_all(scheduler, completion_id, jobs)
    if scores is not None:
        for run in runs:
            run.prompt_scores = scores[run.job.index // body.n]
    return runs


def _choice(lease: Lease, body: CompletionRequest, run: ChoiceRun) -> CompletionChoice:
    prefix = run.job.prompt_text if body.echo else ""
    logprobs = None
    if body.logprobs is not None:
        logprobs = completion_logprobs(
            lease.served,
            run.events,
            body.logprobs,
            prompt_ids=run.job.prompt_ids if body.echo else (),
            prompt_scores=run.prompt_scores,
            text_offset=0 if body.echo else len(run.job.prompt_text),
        )
    return CompletionChoice(
        index=run.job.index, text=prefix + run.text, logprobs=logprobs, finish_reason=run.finish_reason
    )


async def _stream(
    lease: Lease, body: CompletionRequest, jobs: list[Job], completion_id: str, created: int
) -> AsyncIterator[str]:
    def chunk(index: int, text: str, logprobs=None, finish_reason=None, **extra) -> dict:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice],
            **extra,
        }

    completion_tokens = 0
    cached: dict[int, list[int]] = {}
    try:
        scheduler = lease.scheduler
        for job in jobs:
            if body.echo:
                yield sse(chunk(job.index, job.prompt_text))
            if job.params is None:
                yield sse(chunk(job.index, "", finish_reason="length"))
        async with aclosing(merged_events(scheduler, completion_id, jobs, cached=cached)) as events:
            async for job, event in events:
                completion_tokens += 1
                logprobs = None
                if body.logprobs is not None:
                    logprobs = completion_logprobs(lease.served, [event], body.logprobs).model_dump()
                if event.text or logprobs or event.finish_reason:
                    yield sse(chunk(job.index, event.text, logprobs, event.finish_reason))
    except ApiError as error:
        yield sse(error.body())
        yield SSE_DONE
        return
    if body.stream_options is not None and body.stream_options.include_usage:
        cached_tokens = cached_prompt_tokens({index: sum(found) for index, found in cached.items()}, body.n)
        totals = usage(_prompt_tokens(jobs, body.n), completion_tokens, cached_tokens).model_dump()
        yield sse(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [],
                "usage": totals,
            }
        )
    yield SSE_DONE
