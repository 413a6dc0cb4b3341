"""Run a request's choices on the scheduler: all at once, merged into one stream, or until the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from apr.serve.admission import Job
from apr.serve.errors import ApiError
from apr.serve.scheduler import Scheduler, SchedulerError
from apr.serve.scoring import ChunkedScore, PromptScores, score_prompt

if TYPE_CHECKING:
    from fastapi import Request

    from apr.engine import Engine, SamplingParams, TokenEvent
    from apr.engine.types import FinishReason

T = TypeVar("T")


@dataclass
class ChoiceRun:
    """A finished choice: its job, every token event, and (for echo + logprobs) the prompt's scores."""

    job: Job
    events: list[TokenEvent] = field(default_factory=list)
    prompt_scores: PromptScores | None = None
    # Prompt tokens whose keys and values came from the serve prefix cache.
    cached_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(event.text for event in self.events)

    @property
    def finish_reason(self) -> FinishReason:
        # No events means nothing was asked for (max_tokens 0 with echo): the length limit ended it.
        reason = self.events[-1].finish_reason if self.events else None
        return reason or "length"


def cached_prompt_tokens(cached_by_choice: dict[int, int], n: int) -> int:
    """Prompt tokens served from the prefix cache, counted once per prompt (its best choice), like prompt_tokens."""
    best: dict[int, int] = {}
    for index, cached in cached_by_choice.items():
        best[index // n] = max(best.get(index // n, 0), cached)
    return sum(best.values())


def as_api_error(error: SchedulerError) -> ApiError:
    status = 503 if error.failure.shutting_down else 500
    return ApiError(status, error.failure.message, type="server_error")


async def score(scheduler: Scheduler, engine: Engine, job: Job, top: int) -> PromptScores:
    """The prompt's own log-probabilities; a prompt longer than one prefill chunk is scored chunk by chunk
    between batch steps, so the streams running meanwhile keep flowing."""
    chunk = scheduler.prefill_chunk
    try:
        if chunk is not None and len(job.prompt_ids) > chunk:
            return await scheduler.call_chunked(ChunkedScore(engine, job.prompt_ids, top, chunk))
        return await scheduler.call(partial(score_prompt, engine, job.prompt_ids, top))
    except SchedulerError as error:
        raise as_api_error(error) from error


async def run_choice(scheduler: Scheduler, request_id: str, job: Job, extras: dict | None = None) -> ChoiceRun:
    run = ChoiceRun(job=job)
    if job.params is None:
        return run
    cached: list[int] = []
    try:
        events = scheduler.generate(request_id, job.prompt_ids, job.params, cached=cached, **(extras or {}))
        async with aclosing(events):
            async for event in events:
                run.events.append(event)
    except SchedulerError as error:
        raise as_api_error(error) from error
    run.cached_tokens = sum(cached)
    return run


async def run_all(
    scheduler: Scheduler, completion_id: str, jobs: list[Job], extras: dict[int, dict] | None = None
) -> list[ChoiceRun]:
    """`extras[job.index]`: engine extras for that choice (its grammar constraint, its prefix cache)."""
    extras = extras or {}
    return list(
        await asyncio.gather(
            *(run_choice(scheduler, f"{completion_id}-{job.index}", job, extras.get(job.index)) for job in jobs)
        )
    )


async def merged_events(
    scheduler: Scheduler,
    completion_id: str,
    jobs: list[Job],
    extras: dict[int, dict] | None = None,
    cached: dict[int, list[int]] | None = None,
) -> AsyncGenerator[tuple[Job, TokenEvent], None]:
    """Events of every choice as they come; leaving early (client gone) cancels them all.
    `cached[job.index]` (if given) receives that choice's cached prompt tokens."""
    inbox: asyncio.Queue = asyncio.Queue()
    extras = extras or {}
    cached = cached if cached is not None else {}

    async def pump(job: Job, params: SamplingParams) -> None:
        try:
            events = scheduler.generate(
                f"{completion_id}-{job.index}",
                job.prompt_ids,
                params,
                cached=cached.setdefault(job.index, []),
                **extras.get(job.index, {}),
            )
            async with aclosing(events):
                async for event in events:
                    inbox.put_nowait((job, event))
        except SchedulerError as error:
            inbox.put_nowait((job, error))
        inbox.put_nowait((job, None))

    tasks = [asyncio.create_task(pump(job, job.params)) for job in jobs if job.params is not None]
    remaining = len(tasks)
    try:
        while remaining:
            job, item = await inbox.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, SchedulerError):
                raise as_api_error(item)
            else:
                yield job, item
    finally:
        # No awaiting here: under a cancelled scope every await would raise again. A cancelled
        # pump leaves `generate` early, which tells the scheduler to drop the sequence.
        for task in tasks:
            task.cancel()


# nginx's code for "client closed request": nobody reads it, but the access log tells the story.
CLIENT_CLOSED = 499


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, but cancel it (freeing its batch slots) as soon as the client disconnects."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        raise ApiError(CLIENT_CLOSED, "The client closed the connection before the reply was ready.")
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        continue
