"""The continuous-batching scheduler, driven with a real fixture engine from an asyncio loop."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import aclosing

import pytest

from apr.serve.scheduler import Scheduler, SchedulerError

PROMPTS = ["The quick brown fox", "Hello there", "1, 2, 3,"]


@pytest.fixture(scope="module")
def engine(fixture_models):
    from apr.engine import load_engine

    return load_engine(fixture_models["llama"]["gguf"], device="cpu")


def greedy(max_tokens: int):
    from apr.engine import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


async def collect(scheduler: Scheduler, request_id: str, ids: list[int], params) -> list:
    # generate is an async generator (it has aclose); its annotation only promises an AsyncIterator.
    async with aclosing(scheduler.generate(request_id, ids, params)) as events:  # type: ignore[type-var]
        return [event async for event in events]


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def run_with_scheduler(engine, max_batch: int, body):
    async def main():
        scheduler = Scheduler(engine, max_batch, asyncio.get_running_loop())
        scheduler.start()
        try:
            return await body(scheduler)
        finally:
            scheduler.stop()

    return asyncio.run(main())


def test_concurrent_requests_match_their_solo_runs_and_queue_beyond_the_batch(engine):
    prompts = [engine.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    solo = [engine.generate(ids, greedy(12)).token_ids for ids in prompts]

    async def body(scheduler):
        runs = await asyncio.gather(*(collect(scheduler, f"r{i}", ids, greedy(12)) for i, ids in enumerate(prompts)))
        return runs, scheduler.load

    runs, load = run_with_scheduler(engine, 2, body)  # 3 requests, 2 slots: one waits its turn
    assert [[event.token_id for event in run] for run in runs] == solo
    assert all(run[-1].finish_reason in ("stop", "length") for run in runs)
    assert all(event.finish_reason is None for run in runs for event in run[:-1])
    assert (load.active, load.queued, load.finished, load.cancelled) == (0, 0, 3, 0)


def test_leaving_a_stream_early_cancels_the_sequence(engine):
    ids = engine.tokenizer.encode(PROMPTS[0], add_special_tokens=True)

    async def body(scheduler):
        async with aclosing(scheduler.generate("long", ids, greedy(400))) as events:
            async for index, _ in aenumerate(events):
                if index == 2:
                    break
        await wait_for(lambda: scheduler.load.cancelled == 1 and scheduler.load.active == 0)
        # The freed slot serves the next request at once.
        return await collect(scheduler, "next", ids, greedy(3)), scheduler.load

    events, load = run_with_scheduler(engine, 1, body)
    assert len(events) <= 3 and events[-1].finish_reason is not None
    assert load.finished == 1 and load.cancelled == 1


async def aenumerate(iterator):
    index = 0
    async for item in iterator:
        yield index, item
        index += 1


def test_a_request_the_engine_refuses_fails_alone(engine):
    ids = engine.tokenizer.encode(PROMPTS[1], add_special_tokens=True)
    out_of_vocab = [engine.config.vocab_size + 5]

    async def body(scheduler):
        bad = collect(scheduler, "bad", out_of_vocab, greedy(4))
        good = collect(scheduler, "good", ids, greedy(4))
        return await asyncio.gather(bad, good, return_exceptions=True), scheduler.load

    (bad, good), load = run_with_scheduler(engine, 2, body)
    assert isinstance(bad, SchedulerError) and "refused" in str(bad)
    assert good[-1].finish_reason is not None
    assert load.failed == 1 and load.finished == 1


def test_calls_run_on_the_scheduler_thread(engine):
    async def body(scheduler):
        return await scheduler.call(lambda: threading.current_thread().name)

    assert run_with_scheduler(engine, 1, body) == "apr-scheduler"


def test_stopping_fails_running_requests_with_a_shutdown_error(engine):
    ids = engine.tokenizer.encode(PROMPTS[2], add_special_tokens=True)

    async def main():
        scheduler = Scheduler(engine, 1, asyncio.get_running_loop())
        scheduler.start()
        task = asyncio.create_task(collect(scheduler, "cut", ids, greedy(400)))
        await wait_for(lambda: scheduler.load.active == 1)
        scheduler.stop()
        with pytest.raises(SchedulerError) as caught:
            await task
        assert caught.value.failure.shutting_down
        with pytest.raises(SchedulerError):
            await collect(scheduler, "late", ids, greedy(2))

    asyncio.run(main())
