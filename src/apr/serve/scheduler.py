"""Continuous batching: one thread owns the engine's BatchDecoder and streams token events back to asyncio."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from apr.engine import Engine, LookupConfig, LookupStats, SamplingParams, TokenEvent

log = logging.getLogger("apr.serve")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class EngineFailure:
    """Put on a request's queue instead of a token when the engine could not serve it."""

    message: str
    shutting_down: bool = False


class SchedulerError(Exception):
    """Raised in a request's coroutine when its generation failed or the server is stopping."""

    def __init__(self, failure: EngineFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True)
class _Admit:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: asyncio.Queue
    # Optional engine extras: a grammar (engine.sampling.LogitConstraint) and a PrefixCache to start from.
    extras: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class PrefixHit:
    """Put on a request's queue before its first token: how many prompt tokens came from the prefix cache."""

    cached_tokens: int


@dataclass(frozen=True)
class _Cancel:
    request_id: str


@dataclass(frozen=True)
class _Call:
    function: Callable[[], Any]
    future: asyncio.Future


class ChunkedWork(Protocol[T_co]):
    """Engine work done in slices between batch steps (scoring a long prompt): `step()` until it says done."""

    def step(self) -> bool: ...

    def result(self) -> T_co: ...


@dataclass(frozen=True)
class _Chunked:
    work: ChunkedWork[Any]
    future: asyncio.Future


@dataclass(frozen=True)
class _Stop:
    pass


# What a client is told when the engine fails on its request: the cause goes to the server log only.
ENGINE_FAILED = "The engine failed while generating this reply; the server log has the cause (request {id})."
ENGINE_REFUSED = "The engine refused this request; the server log has the cause (request {id})."


@dataclass(frozen=True)
class Load:
    """What /health reports: sequences decoding now, requests waiting for a slot, and totals so far."""

    active: int = 0
    queued: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0


class Scheduler:
    """Admits requests into the engine's batch up to `max_batch`, steps it, and routes each event.

    The engine is touched only by the scheduler thread, so the event loop never blocks on it:
    coroutines send messages through a thread-safe inbox and receive events on per-request
    asyncio queues filled with `loop.call_soon_threadsafe`.
    """

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        loop: asyncio.AbstractEventLoop,
        prefix_cache_bytes: int = 0,
        prefill_chunk: int | None = None,
        lookup: LookupConfig | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._engine = engine
        # Lookup decoding for every request (Engine.new_batch's), and its totals over finished requests.
        self._lookup = lookup
        self._lookup_usage: LookupStats | None = None
        # Only where a cache can be continued (the CPU native layers) is keeping caches worth their memory;
        # elsewhere (CUDA graph pools among them) kept caches would only hold slots.
        can_continue = getattr(engine.transformer, "can_continue_prefill", lambda tokens: False)
        self._prefix_cache_bytes = prefix_cache_bytes if prefix_cache_bytes > 0 and can_continue(1) else 0
        self._max_batch = max_batch
        # Long prompts are prefilled (and scored) this many tokens per step, between decode steps.
        self._prefill_chunk = prefill_chunk
        self._loop = loop
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="apr-scheduler", daemon=True)
        self._load = Load()
        self._stopped = threading.Event()
        # Scheduler-thread state: request id -> (store key, entry) of the prefix entry lent to it, and the
        # requests whose cached-token count is still to be reported (with their first token).
        self._leases: dict[str, tuple[int, Any]] = {}
        self._unreported: set[str] = set()
        # (entries, bytes) of the prefix cache, replaced whole (atomic for /health's thread).
        self._prefix_usage: tuple[int, int] = (0, 0)

    # ---- event-loop side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel whatever is still running and wait for the thread to leave the engine.

        Called on the event-loop thread, like `generate`, so no request can slip into the inbox
        between the flag and the final drain.
        """
        self._stopped.set()
        if self._thread.is_alive():
            self._inbox.put(_Stop())
            self._thread.join(timeout)
        shutting_down = EngineFailure("The server is shutting down.", shutting_down=True)
        for message in self._drain(block=False):
            if isinstance(message, _Admit):
                message.sink.put_nowait(shutting_down)
            elif isinstance(message, (_Call, _Chunked)) and not message.future.done():
                message.future.set_exception(SchedulerError(shutting_down))

    @property
    def load(self) -> Load:
        return self._load

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def prefill_chunk(self) -> int | None:
        return self._prefill_chunk

    @property
    def lookup_usage(self) -> LookupStats | None:
        """Lookup decoding summed over the finished requests (generated: their tokens after the first,
        plus one); None when lookup is off."""
        if self._lookup is None:
            return None
        if self._lookup_usage is None:
            from apr.engine import LookupStats

            return LookupStats(self._lookup.draft_tokens, 0, 0, 0, 1)
        return self._lookup_usage

    @property
    def prefix_cache_enabled(self) -> bool:
        return self._prefix_cache_bytes > 0

    @property
    def prefix_usage(self) -> tuple[int, int]:
        """(entries, bytes) the prefix cache holds, as of the last request that left."""
        return self._prefix_usage

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        cached: list[int] | None = None,
        **extras: Any,
    ) -> AsyncGenerator[TokenEvent, None]:
        """Yield the request's token events until its finish_reason; cancel it if abandoned early.
        `cached` (a list) receives how many prompt tokens the prefix cache supplied."""
        if self._stopped.is_set():
            raise SchedulerError(EngineFailure("The server is shutting down.", shutting_down=True))
        sink: asyncio.Queue = asyncio.Queue()
        given = tuple((name, value) for name, value in extras.items() if value is not None)
        self._inbox.put(_Admit(request_id, list(prompt_ids), params, sink, given))
        finished = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, EngineFailure):
                    finished = True
                    raise SchedulerError(item)
                if isinstance(item, PrefixHit):
                    if cached is not None:
                        cached.append(item.cached_tokens)
                    continue
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self._inbox.put(_Cancel(request_id))

    async def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the scheduler thread, between two batch steps, and await its result."""
        if self._stopped.is_set():
            raise SchedulerError(EngineFailure("The server is shutting down.", shutting_down=True))
        future: asyncio.Future = self._loop.create_future()
        self._inbox.put(_Call(function, future))
        return await future

    async def call_chunked(self, work: ChunkedWork[T]) -> T:
        """Run `work` on the scheduler thread one step at a time, each between two batch steps."""
        if self._stopped.is_set():
            raise SchedulerError(EngineFailure("The server is shutting down.", shutting_down=True))
        future: asyncio.Future = self._loop.create_future()
        self._inbox.put(_Chunked(work, future))
        return await future

    # ---- scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            self._loop_forever()

    def _loop_forever(self) -> None:
        from apr.serve.prefix_store import PrefixStore

        batch = self._new_batch()
        waiting: deque[_Admit] = deque()
        running: dict[str, _Admit] = {}
        chunked: deque[_Chunked] = deque()
        prefixes = PrefixStore(self._prefix_cache_bytes) if self._prefix_cache_bytes else None

        while True:
            idle = not running and not waiting and not chunked
            messages = self._drain(block=idle)
            for position, message in enumerate(messages):
                if isinstance(message, _Stop):
                    shutting_down = EngineFailure("The server is shutting down.", shutting_down=True)
                    waiting.extend(m for m in messages[position + 1 :] if isinstance(m, _Admit))
                    self._fail_all(running, waiting, shutting_down)
                    late = [m for m in messages[position + 1 :] if isinstance(m, (_Call, _Chunked))]
                    for pending in [*chunked, *late]:
                        self._loop.call_soon_threadsafe(_settle, pending.future, None, SchedulerError(shutting_down))
                    self._publish(running, waiting)
                    return
                if isinstance(message, _Admit):
                    waiting.append(message)
                elif isinstance(message, _Cancel):
                    self._cancel(batch, message.request_id, running, waiting)
                elif isinstance(message, _Call):
                    self._execute(message)
                elif isinstance(message, _Chunked):
                    chunked.append(message)
            while waiting and len(running) < self._max_batch:
                admit = waiting.popleft()
                extras = dict(admit.extras)
                if prefixes is not None and "prefix" not in extras:
                    busy = {key for key, _ in self._leases.values()}
                    key, entry = prefixes.lease(admit.prompt_ids, busy)
                    extras["prefix"] = entry
                    self._leases[admit.request_id] = (key, entry)
                    self._unreported.add(admit.request_id)
                try:
                    batch.add(admit.request_id, admit.prompt_ids, admit.params, **extras)
                except Exception as exc:  # one bad request must not take the batch down
                    self._fail_one(admit, exc, ENGINE_REFUSED)
                    continue
                running[admit.request_id] = admit
            self._publish(running, waiting)
            if chunked:
                self._step_chunked(chunked)
            if not running:
                continue
            try:
                events = batch.step()
            except Exception as exc:  # the batch decoder isolates sequences; this is a failure outside them
                log.exception("batch step failed: %s: %s", type(exc).__name__, exc)
                for admit in running.values():
                    self._post(admit.sink, EngineFailure(ENGINE_FAILED.format(id=admit.request_id)))
                self._count(failed=len(running))
                running.clear()
                batch = self._new_batch()
                continue
            for failure in batch.take_failures():
                if failure.request_id in running:
                    self._fail_one(running.pop(failure.request_id), failure.error)
            self._route(events, running, waiting)
            if prefixes is not None:
                self._settle_leases(running, prefixes)

    def _new_batch(self) -> Any:
        return self._engine.new_batch(
            self._max_batch, prefill_chunk=self._prefill_chunk, isolate_failures=True, lookup=self._lookup
        )

    def _fail_one(self, admit: _Admit, error: Exception, told: str = ENGINE_FAILED) -> None:
        """End one request whose sequence the engine refused or failed on; its batch mates go on."""
        from apr.errors import AprError

        log.error("request %s failed in the engine: %s: %s", admit.request_id, type(error).__name__, error)
        # AprError messages are written for users (a corrupt model's NaN logits); anything else stays in the log.
        message = str(error) if isinstance(error, AprError) else told.format(id=admit.request_id)
        self._post(admit.sink, EngineFailure(message))
        self._count(failed=1)

    def _step_chunked(self, chunked: deque[_Chunked]) -> None:
        """One step of the oldest chunked work; the works take turns, so a short one is not stuck behind a long."""
        item = chunked.popleft()
        if item.future.done():  # its request was cancelled (the client left)
            return
        try:
            finished = item.work.step()
            result = item.work.result() if finished else None
        except Exception as exc:
            log.exception("chunked engine work failed: %s: %s", type(exc).__name__, exc)
            failure = SchedulerError(EngineFailure(ENGINE_FAILED.format(id="scoring")))
            self._loop.call_soon_threadsafe(_settle, item.future, None, failure)
            return
        if finished:
            self._loop.call_soon_threadsafe(_settle, item.future, result, None)
        else:
            chunked.append(item)

    def _settle_leases(self, running: dict[str, _Admit], prefixes: Any) -> None:
        """Return the entries of requests that left (finished, cancelled, failed) and keep the store in budget."""
        gone = [request_id for request_id in self._leases if request_id not in running]
        for request_id in gone:
            del self._leases[request_id]
            self._unreported.discard(request_id)
        if gone:
            prefixes.trim({key for key, _ in self._leases.values()})
        self._prefix_usage = (len(prefixes), prefixes.nbytes)

    def _drain(self, *, block: bool) -> list[Any]:
        messages = [self._inbox.get()] if block else []
        while True:
            try:
                messages.append(self._inbox.get_nowait())
            except queue.Empty:
                return messages

    def _route(self, events: list[TokenEvent], running: dict[str, _Admit], waiting: deque[_Admit]) -> None:
        deliveries: list[tuple[asyncio.Queue, TokenEvent | PrefixHit]] = []
        for event in events:
            admit = running.get(event.request_id)
            if admit is None:  # cancelled while this step ran
                continue
            if event.request_id in self._unreported:
                self._unreported.discard(event.request_id)
                _, entry = self._leases[event.request_id]
                deliveries.append((admit.sink, PrefixHit(entry.reused)))
            deliveries.append((admit.sink, event))
            if event.finish_reason is not None:
                del running[event.request_id]
                self._count(finished=1)
                if event.lookup is not None:
                    self._add_lookup(event.lookup)
        # Publish first, so a client that sees its last token also sees its slot free.
        self._publish(running, waiting)
        if deliveries:
            self._loop.call_soon_threadsafe(_deliver, deliveries)

    def _add_lookup(self, stats: LookupStats) -> None:
        """Adds a finished request's lookup figures to the totals (replaced whole: /health reads them)."""
        from apr.engine import LookupStats

        total = self.lookup_usage
        if total is None:
            return
        self._lookup_usage = LookupStats(
            total.draft_tokens,
            total.steps + stats.steps,
            total.drafted + stats.drafted,
            total.accepted + stats.accepted,
            total.generated + stats.generated - 1,  # keeps generated - 1 the sum of tokens after the first
        )

    def _publish(self, running: dict[str, _Admit], waiting: deque[_Admit]) -> None:
        """Replace the snapshot /health reads (one attribute store: atomic for the reading thread)."""
        load = self._load
        self._load = Load(len(running), len(waiting), load.finished, load.cancelled, load.failed)

    def _count(self, *, finished: int = 0, cancelled: int = 0, failed: int = 0) -> None:
        load = self._load
        self._load = Load(
            load.active, load.queued, load.finished + finished, load.cancelled + cancelled, load.failed + failed
        )

    def _cancel(self, batch: Any, request_id: str, running: dict[str, _Admit], waiting: deque[_Admit]) -> None:
        if running.pop(request_id, None) is not None:
            batch.cancel(request_id)
            self._count(cancelled=1)
            return
        for admit in waiting:
            if admit.request_id == request_id:
                waiting.remove(admit)
                self._count(cancelled=1)
                return

    def _execute(self, call: _Call) -> None:
        try:
            result = call.function()
        except Exception as exc:
            self._loop.call_soon_threadsafe(_settle, call.future, None, exc)
            return
        self._loop.call_soon_threadsafe(_settle, call.future, result, None)

    def _fail_all(self, running: dict[str, _Admit], waiting: deque[_Admit], failure: EngineFailure) -> None:
        for admit in [*running.values(), *waiting]:
            self._post(admit.sink, failure)
        self._count(failed=len(running) + len(waiting))
        running.clear()
        waiting.clear()

    def _post(self, sink: asyncio.Queue, item: Any) -> None:
        self._loop.call_soon_threadsafe(sink.put_nowait, item)


def _deliver(deliveries: list[tuple[asyncio.Queue, Any]]) -> None:
    for sink, event in deliveries:
        sink.put_nowait(event)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting request was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
