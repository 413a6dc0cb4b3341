"""The models `apr serve` holds: the default one pinned, cached ones loaded on demand within a memory budget
(least recently used idle model evicted first), idle ones unloaded after a while."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from apr.serve.errors import ApiError
from apr.serve.scheduler import Load, Scheduler
from apr.serve.served import ServedModel, ServeSettings

if TYPE_CHECKING:
    from apr.engine import Engine, LookupConfig
    from apr.hub.cache import CachedModel

log = logging.getLogger("apr.serve")

EngineLoader = Callable[[Path], "Engine"]
CacheLister = Callable[[], "list[CachedModel]"]


@dataclass
class LoadedModel:
    """One model in memory with its own scheduler thread; `in_flight` requests hold it against eviction."""

    served: ServedModel
    scheduler: Scheduler
    nbytes: int
    pinned: bool
    loaded_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    @property
    def model_id(self) -> str:
        return self.served.model_id

    def idle_for(self, now: float) -> float:
        return 0.0 if self.in_flight else now - self.last_used


@dataclass
class Lease:
    """A request's hold on a loaded model; released once (the route's finally and a stream's end may both try)."""

    model: LoadedModel
    pool: ModelPool
    released: bool = False

    @property
    def served(self) -> ServedModel:
        return self.model.served

    @property
    def scheduler(self) -> Scheduler:
        return self.model.scheduler

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.give_back(self.model)


@dataclass
class _PendingLoad:
    """A load in progress; every request waiting on it is counted, and gets its hold when the load ends."""

    task: asyncio.Future[LoadedModel]
    waiters: int = 0
    # Set once the finished load has handed its holds out (its done-callback ran).
    settled: bool = False


@dataclass(frozen=True)
class PoolEvent:
    """Counters /health reports: loads done, and models evicted for room or unloaded for idleness."""

    loads: int = 0
    evicted: int = 0
    idle_unloaded: int = 0


def model_bytes(engine: Engine) -> int:
    """Bytes the engine's weights take: every distinct tensor storage its modules hold, counted once."""
    seen: dict[tuple[str, int], int] = {}
    module = engine.transformer
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


class ModelPool:
    """Resolves a request's `model` to a loaded model, loading cached models on demand (once per model, off the
    event loop), evicting the least recently used idle one when the budget is full, never one in use.

    Lives on the event loop: every method but the loader runs there, so the bookkeeping needs no lock.
    """

    def __init__(
        self,
        settings: ServeSettings,
        default: ServedModel,
        *,
        budget_bytes: int,
        load: EngineLoader,
        cached: CacheLister,
    ) -> None:
        self._settings = settings
        self._default = default
        self._budget = budget_bytes
        self._load_engine = load
        self._list_cached = cached
        self._models: dict[str, LoadedModel] = {}
        self._loading: dict[str, _PendingLoad] = {}
        # Bytes set aside for loads in progress (their file size until measured), so two loads cannot overrun.
        self._reserved: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self.events = PoolEvent()
        self._stopping = False

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the default model's scheduler and the idle sweeper on the running loop."""
        self._loop = asyncio.get_running_loop()
        default = self._default
        pinned = LoadedModel(default, self._new_scheduler(default.engine), model_bytes(default.engine), pinned=True)
        self._models[default.model_id] = pinned
        if self._budget and pinned.nbytes > self._budget:
            log.warning(
                "the default model takes %.1f MiB, over --max-loaded-mb (%.1f MiB): no other model can load",
                pinned.nbytes / 2**20,
                self._budget / 2**20,
            )
        if self._settings.idle_unload_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_idle())

    def stop(self) -> None:
        """Stop every scheduler (requests still running end with a shutting-down error)."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for model in self._models.values():
            model.scheduler.stop()

    @property
    def started(self) -> bool:
        return self._loop is not None

    # ---- what /health and /v1/models read ---------------------------------------------------------

    @property
    def default(self) -> LoadedModel | None:
        return self._models.get(self._default.model_id)

    @property
    def default_served(self) -> ServedModel:
        return self._default

    @property
    def budget_bytes(self) -> int:
        return self._budget

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def loading(self) -> list[str]:
        """Refs of the models being loaded now."""
        return sorted(self._loading)

    def load_totals(self) -> Load:
        """Requests over every loaded model (totals of evicted models leave with them)."""
        loads = [model.scheduler.load for model in self._models.values()]
        return Load(*(sum(getattr(load, name) for load in loads) for name in Load.__dataclass_fields__))

    async def listing(self) -> list[tuple[str, LoadedModel | None, CachedModel | None]]:
        """(id, loaded model or None, cache entry or None) for the default model, then every cached model."""
        entries = await asyncio.to_thread(self._list_cached)
        rows: list[tuple[str, LoadedModel | None, CachedModel | None]] = [(self._default.model_id, self.default, None)]
        for entry in entries:
            if self._default.knows(entry.ref) or self._default.knows(str(entry.path)):
                continue
            rows.append((entry.ref, self._models.get(entry.ref), entry))
        return rows

    # ---- leases -----------------------------------------------------------------------------------

    async def acquire(self, name: str) -> Lease:
        """Hold the model `name` names, loading it first when it is cached but not loaded."""
        if self._stopping:
            raise ApiError(503, "The server is shutting down.", type="server_error")
        found = self._find_loaded(name)
        if found is not None:
            return self._hold(found)
        entry = await self._cached_entry(name)
        found = self._find_loaded(name) or self._models.get(entry.ref)  # loaded while the cache was read
        if found is not None:
            return self._hold(found)
        pending = self._loading.get(entry.ref)
        if pending is None:
            pending = self._begin_load(entry)
        pending.waiters += 1
        try:
            model = await asyncio.shield(pending.task)
        except asyncio.CancelledError:
            # Once the load has ended it counted this waiter among the holders: give that hold back.
            if pending.settled and not pending.task.cancelled() and pending.task.exception() is None:
                self.give_back(pending.task.result())
            else:
                pending.waiters -= 1
            raise
        return Lease(model, self)

    def give_back(self, model: LoadedModel) -> None:
        model.in_flight -= 1
        model.last_used = time.monotonic()

    def _hold(self, model: LoadedModel) -> Lease:
        model.in_flight += 1
        model.last_used = time.monotonic()
        return Lease(model, self)

    def _find_loaded(self, name: str) -> LoadedModel | None:
        direct = self._models.get(name)
        if direct is not None:
            return direct
        return next((model for model in self._models.values() if model.served.knows(name)), None)

    async def _cached_entry(self, name: str) -> CachedModel:
        entries = await asyncio.to_thread(self._list_cached)
        for entry in entries:
            if name in (entry.ref, entry.path.name):
                return entry
        raise ApiError(
            404,
            f"The model '{name}' does not exist on this server: it is neither served nor in the apr cache "
            "(see GET /v1/models; POST /models/download pulls one).",
            param="model",
            code="model_not_found",
        )

    # ---- loading and eviction ---------------------------------------------------------------------

    def _begin_load(self, entry: CachedModel) -> _PendingLoad:
        estimate = entry.size_bytes
        self._make_room(entry.ref, estimate)
        self._reserved[entry.ref] = estimate
        task = asyncio.ensure_future(self._load(entry))
        pending = _PendingLoad(task)
        self._loading[entry.ref] = pending
        task.add_done_callback(lambda done: self._finish_load(entry.ref, pending, done))
        return pending

    async def _load(self, entry: CachedModel) -> LoadedModel:
        from apr.errors import AprError

        started = time.monotonic()
        try:
            # A load takes seconds to minutes: on a thread, so the other models' requests keep flowing.
            engine = await asyncio.to_thread(self._load_engine, entry.path)
        except (AprError, OSError, ValueError) as exc:
            log.error("loading %s failed: %s: %s", entry.ref, type(exc).__name__, exc)
            raise ApiError(
                500,
                f"The cached model '{entry.ref}' could not be loaded: {exc}",
                type="server_error",
                param="model",
                code="model_load_failed",
            ) from exc
        served = ServedModel.named(engine, self._settings, entry.ref, frozenset({entry.ref}))
        model = LoadedModel(served, self._new_scheduler(engine), model_bytes(engine), pinned=False)
        log.warning("loaded %s (%.1f MiB) in %.1f s", entry.ref, model.nbytes / 2**20, time.monotonic() - started)
        return model

    def _finish_load(self, ref: str, pending: _PendingLoad, done: asyncio.Future[LoadedModel]) -> None:
        """On the loop, as the load ends: register the model with one hold per waiting request."""
        self._loading.pop(ref, None)
        self._reserved.pop(ref, None)
        pending.settled = True
        if done.cancelled() or done.exception() is not None:
            return
        model = done.result()
        model.in_flight = pending.waiters
        self._models[ref] = model
        self.events = PoolEvent(self.events.loads + 1, self.events.evicted, self.events.idle_unloaded)
        # The file size was an estimate: a model that unpacked larger than its file pushes out idle ones.
        while self._over(0, 0):
            idle = self._evictable(but=model)
            if not idle:
                log.warning("models in memory exceed the budget until requests finish")
                return
            self._evict(min(idle, key=lambda other: other.last_used))

    def _make_room(self, ref: str, needed: int) -> None:
        """Evict least recently used idle models until `needed` more bytes and one more model fit; refuse if
        they cannot (507 when the model could never fit, 503 while the models in the way are in use)."""
        budget = self._budget
        pinned = sum(model.nbytes for model in self._models.values() if model.pinned)
        if budget and pinned + needed > budget:
            raise ApiError(
                507,
                f"The model '{ref}' needs about {needed / 2**20:.1f} MiB; with the pinned default model that "
                f"exceeds this server's --max-loaded-mb ({budget / 2**20:.1f} MiB).",
                type="server_error",
                param="model",
                code="insufficient_memory",
            )

        while self._over(needed, 1):
            idle = self._evictable()
            if not idle:
                raise ApiError(
                    503,
                    f"The model '{ref}' cannot be loaded now: the models in memory are all serving requests "
                    "(--max-loaded-mb / --max-models); retry shortly.",
                    type="server_error",
                    param="model",
                    code="model_capacity_busy",
                )
            self._evict(min(idle, key=lambda model: model.last_used))

    def _over(self, more_bytes: int, more_models: int) -> bool:
        budget, most = self._budget, self._settings.max_models
        used = sum(model.nbytes for model in self._models.values()) + sum(self._reserved.values())
        count = len(self._models) + len(self._reserved)
        return bool(budget and used + more_bytes > budget) or bool(most and count + more_models > most)

    def _evictable(self, but: LoadedModel | None = None) -> list[LoadedModel]:
        return [m for m in self._models.values() if not m.pinned and m.in_flight == 0 and m is not but]

    def _evict(self, model: LoadedModel) -> None:
        self._unload(model)
        self.events = PoolEvent(self.events.loads, self.events.evicted + 1, self.events.idle_unloaded)

    def _unload(self, model: LoadedModel) -> None:
        del self._models[model.model_id]
        model.scheduler.stop()  # idle: its thread leaves at once
        log.warning("unloaded %s (%.1f MiB)", model.model_id, model.nbytes / 2**20)
        device = model.served.engine.device
        del model
        # The weights are freed when the last reference goes; collect the cycles now, off the loop.
        asyncio.get_running_loop().run_in_executor(None, _release_memory, device.type == "cuda")

    async def _sweep_idle(self) -> None:
        limit = self._settings.idle_unload_s
        period = min(max(limit / 4, 0.2), 30.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for model in list(self._models.values()):
                if not model.pinned and model.in_flight == 0 and now - model.last_used >= limit:
                    self._unload(model)
                    self.events = PoolEvent(self.events.loads, self.events.evicted, self.events.idle_unloaded + 1)

    def _new_scheduler(self, engine: Engine) -> Scheduler:
        assert self._loop is not None, "the pool is started on the event loop before any load"
        settings = self._settings
        scheduler = Scheduler(
            engine,
            settings.batch_size,
            self._loop,
            prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
            prefill_chunk=settings.prefill_chunk,
            lookup=lookup_config(engine, settings),
        )
        scheduler.start()
        return scheduler


def _release_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def lookup_config(engine: Engine, settings: ServeSettings) -> LookupConfig | None:
    """The LookupConfig of ``--lookup N`` for ``engine``, or None (0, or an engine that cannot run it: logged)."""
    if not settings.lookup:
        return None
    reason = engine.lookup_unavailable()
    if reason is not None:
        log.warning("--lookup %d ignored: %s", settings.lookup, reason)
        return None
    from apr.engine import LookupConfig

    return LookupConfig(draft_tokens=settings.lookup)
