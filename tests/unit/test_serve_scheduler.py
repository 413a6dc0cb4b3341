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
    async with aclosing(scheduler.generate(request_id, ids, params)) as events:
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


class FailingConstraint:
    """A grammar whose mask raises at the `fail_at`-th token: a failure inside the batch step, in one sequence."""

    def __init__(self, fail_at: int) -> None:
        self.calls, self.fail_at = 0, fail_at

    def mask(self, logits):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("internal detail: /secret/path")
        return logits

    def accept(self, token: int) -> None:
        pass


def test_a_sequence_failing_inside_the_batch_step_ends_alone(engine):
    prompts = [engine.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    solo = [engine.generate(ids, greedy(12)).token_ids for ids in prompts]

    async def body(scheduler):
        async def failing():
            async with aclosing(
                scheduler.generate("bad", prompts[0], greedy(12), constraint=FailingConstraint(3))
            ) as events:
                return [event async for event in events]

        good = [collect(scheduler, f"r{i}", ids, greedy(12)) for i, ids in enumerate(prompts)]
        return await asyncio.gather(failing(), *good, return_exceptions=True), scheduler.load

    (bad, *runs), load = run_with_scheduler(engine, 4, body)
    assert isinstance(bad, SchedulerError)
    assert "engine failed" in str(bad) and "secret" not in str(bad)  # the cause stays in the server log
    assert [[event.token_id for event in run] for run in runs] == solo
    assert load.failed == 1 and load.finished == 3


def test_a_long_prompt_is_prefilled_in_chunks_while_other_streams_decode(engine):
    """With a prefill chunk, a long prompt takes several steps; a short stream already decoding gets a token
    in each of them, and both results equal their solo runs (the chunked prefill continues the cache)."""
    short = engine.tokenizer.encode(PROMPTS[1], add_special_tokens=True)
    long = (engine.tokenizer.encode(" ".join(PROMPTS) * 12, add_special_tokens=True))[:150]
    solo_short = engine.generate(short, greedy(40)).token_ids
    solo_long = engine.generate(long, greedy(6)).token_ids
    arrivals: list[tuple[str, float]] = []

    async def body(scheduler):
        async def stream(name, ids, params, delay):
            await asyncio.sleep(delay)
            out = []
            async with aclosing(scheduler.generate(name, ids, params)) as events:
                async for event in events:
                    arrivals.append((name, time.monotonic()))
                    out.append(event.token_id)
            return out

        return await asyncio.gather(stream("short", short, greedy(40), 0.0), stream("long", long, greedy(6), 0.05))

    async def main():
        scheduler = Scheduler(engine, 4, asyncio.get_running_loop(), prefill_chunk=16)
        scheduler.start()
        try:
            return await body(scheduler)
        finally:
            scheduler.stop()

    got_short, got_long = asyncio.run(main())
    assert got_short == solo_short[: len(got_short)] and got_short == solo_short
    assert got_long == solo_long
    # The long prompt's first token came after ceil(150 / 16) = 10 steps; the short stream got a token in
    # each of them (a whole-prompt prefill would give it none meanwhile).
    first_long = next(at for name, at in arrivals if name == "long")
    short_before = [at for name, at in arrivals if name == "short" and at < first_long]
    assert len(short_before) >= 10


def test_chunked_scoring_equals_whole_prompt_scoring(engine):
    from apr.serve.scoring import ChunkedScore, score_prompt

    ids = engine.tokenizer.encode(" ".join(PROMPTS) * 4, add_special_tokens=True)[:70]
    whole = score_prompt(engine, ids, 3)

    async def body(scheduler):
        return await scheduler.call_chunked(ChunkedScore(engine, ids, 3, 16))

    chunked = run_with_scheduler(engine, 1, body)
    assert chunked.logprobs[0] is None and len(chunked.logprobs) == len(ids)
    assert chunked.logprobs[1:] == pytest.approx(whole.logprobs[1:], abs=1e-3)
    assert [set(top) for top in chunked.top_logprobs[1:]] == [set(top) for top in whole.top_logprobs[1:]]
