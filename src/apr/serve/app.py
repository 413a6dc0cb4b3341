"""FastAPI app factory for `apr serve`: routes, OpenAI error shapes, the model pool's lifecycle, /health."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from apr import __version__
from apr.serve import chat, completions, downloads, embeddings, tokenize
from apr.serve.body_limit import BodyLimit
from apr.serve.errors import install_error_handlers
from apr.serve.pool import EngineLoader, LoadedModel, ModelPool
from apr.serve.protocol import ModelCard, ModelList
from apr.serve.route_meta import ERROR_RESPONSES
from apr.serve.served import ServedModel, ServeSettings
from apr.serve.state import ServeState, check_api_key, serve_state

if TYPE_CHECKING:
    from apr.engine import Engine
    from apr.hub.cache import CachedModel


def create_app(engine: Engine, settings: ServeSettings, load: EngineLoader | None = None) -> FastAPI:
    """The app serving `engine` (pinned) and, on demand, any model in the apr cache (loaded by `load`);
    the schedulers start and stop with the app's lifespan."""
    served = ServedModel.from_engine(engine, settings)
    pool = ModelPool(
        settings,
        served,
        budget_bytes=budget_bytes(settings, engine),
        load=load or _engine_loader(settings),
        cached=_cached_models,
    )
    state = ServeState(settings=settings, pool=pool, described=dict(engine.describe()))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start()
        try:
            yield
        finally:
            pool.stop()

    app = FastAPI(
        title="apr serve",
        version=__version__,
        description="OpenAI-compatible completions and chat completions from apr's own engine.",
        lifespan=lifespan,
    )
    app.state.apr = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(embeddings.router)
    app.include_router(tokenize.router)
    app.include_router(downloads.router)

    @app.get("/health")
    async def health(state: ServeState = Depends(serve_state)) -> dict[str, Any]:
        """Liveness, memory and load; answered on the event loop without touching an engine."""
        pool = state.pool
        load = pool.load_totals()
        memory = _memory(state)
        loaded = pool.loaded()
        now = time.monotonic()
        return {
            "status": "ok" if pool.started else "starting",
            "model": state.served.model_id,
            # The default model is pinned: loaded before the socket accepts anything, never unloaded.
            "model_loaded": pool.default is not None,
            "format": state.described.get("format"),
            "device": str(state.served.engine.device),
            # The default model's kernel family and CPU threads (what its throughput figures were measured on).
            "kernels": state.described.get("kernels"),
            "threads": state.described.get("threads"),
            # The default model's KV cache dtype (--kv-cache; models loaded on demand get the same option).
            "kv_cache": state.described.get("kv_cache"),
            "memory": memory,
            "memory_usage": _memory_usage(memory, loaded, pool.budget_bytes),
            "models": [_loaded_entry(model, now) for model in loaded],
            "model_pool": {
                "max_loaded_bytes": pool.budget_bytes,
                "max_models": state.settings.max_models,
                "idle_unload_s": state.settings.idle_unload_s,
                "loading": pool.loading(),
                "loads": pool.events.loads,
                "evicted": pool.events.evicted,
                "idle_unloaded": pool.events.idle_unloaded,
            },
            "requests": {
                "active": load.active,
                "queued": load.queued,
                "batch_size": state.settings.batch_size,
                "finished": load.finished,
                "cancelled": load.cancelled,
                "failed": load.failed,
            },
            "prefix_cache": _prefix_cache(state, loaded),
            "lookup": _lookup_usage(state, loaded),
            "max_context": state.served.max_context,
            "uptime_s": round(time.monotonic() - state.started, 3),
        }

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(check_api_key)], responses=ERROR_RESPONSES)
    @app.get("/models", response_model=ModelList, dependencies=[Depends(check_api_key)], responses=ERROR_RESPONSES)
    async def list_models(state: ServeState = Depends(serve_state)) -> ModelList:
        """The default model first, then every model in the apr cache; `loaded` says which are in memory."""
        cards = []
        for model_id, loaded, entry in await state.pool.listing():
            served = loaded.served if loaded is not None else None
            cards.append(
                ModelCard(
                    id=model_id,
                    created=served.created if served is not None else _created(entry),
                    max_model_len=served.max_context if served is not None else None,
                    loaded=loaded is not None,
                    size_bytes=entry.size_bytes if entry is not None else None,
                )
            )
        return ModelList(data=cards)

    return app


def _lookup_usage(state: ServeState, loaded: list[LoadedModel]) -> dict[str, Any]:
    """Lookup decoding over the requests the loaded models finished so far: drafts verified and accepted."""
    from apr.engine import LookupStats

    usages = [stats for model in loaded if (stats := model.scheduler.lookup_usage) is not None]
    if not usages:
        return {"enabled": False}
    total = LookupStats(
        state.settings.lookup,
        sum(u.steps for u in usages),
        sum(u.drafted for u in usages),
        sum(u.accepted for u in usages),
        sum(u.generated - 1 for u in usages) + 1,  # generated - 1 stays the sum of tokens after the first
    )
    return {"enabled": True, **total.to_dict()}


def budget_bytes(settings: ServeSettings, engine: Engine) -> int:
    """--max-loaded-mb in bytes; unset, half the memory of the device the models load on."""
    if settings.max_loaded_mb is not None:
        return int(settings.max_loaded_mb * 2**20)
    if engine.device.type == "cuda":
        import torch

        return torch.cuda.get_device_properties(engine.device).total_memory // 2
    import psutil

    return psutil.virtual_memory().total // 2


def _engine_loader(settings: ServeSettings) -> EngineLoader:
    def load(path):
        from apr.engine import load_engine

        return load_engine(path, device=settings.device, numerics=settings.numerics, kv_cache=settings.kv_cache)

    return load


def _cached_models() -> list[CachedModel]:
    from apr.hub import list_cached

    return list_cached()


def _created(entry: CachedModel | None) -> int:
    if entry is None or not entry.pulled_at:
        return 0
    try:
        return int(datetime.fromisoformat(entry.pulled_at).timestamp())
    except ValueError:
        return 0


def _loaded_entry(model: LoadedModel, now: float) -> dict[str, Any]:
    load = model.scheduler.load
    return {
        "id": model.model_id,
        "pinned": model.pinned,
        "bytes": model.nbytes,
        "in_flight": model.in_flight,
        "idle_s": round(model.idle_for(now), 3),
        "requests": {"active": load.active, "queued": load.queued, "finished": load.finished},
    }


def _prefix_cache(state: ServeState, loaded: list[LoadedModel]) -> dict[str, Any]:
    schedulers = [model.scheduler for model in loaded if model.scheduler.prefix_cache_enabled]
    usages = [scheduler.prefix_usage for scheduler in schedulers]
    return {
        "enabled": bool(schedulers),
        "budget_mb": state.settings.prefix_cache_mb if schedulers else 0,
        "entries": sum(entries for entries, _ in usages),
        "bytes": sum(nbytes for _, nbytes in usages),
    }


def _memory_usage(memory: dict[str, int | None], loaded: list[LoadedModel], budget: int) -> dict[str, Any]:
    """The PRD's `memory_usage`: the process's resident memory in MiB and as a share of the machine's, and
    the weights' bytes of each loaded model against the budget."""
    import psutil

    rss = memory["rss_bytes"] or 0
    vram = memory["vram_bytes"]
    return {
        "rss_mib": round(rss / 2**20, 1),
        "rss_percent": round(100.0 * rss / psutil.virtual_memory().total, 2),
        "vram_mib": None if vram is None else round(vram / 2**20, 1),
        "models_bytes": {model.model_id: model.nbytes for model in loaded},
        "loaded_bytes": sum(model.nbytes for model in loaded),
        "budget_bytes": budget,
    }


def _memory(state: ServeState) -> dict[str, int | None]:
    import psutil

    memory: dict[str, int | None] = {"rss_bytes": psutil.Process().memory_info().rss, "vram_bytes": None}
    if state.served.engine.device.type == "cuda":
        import torch

        memory["vram_bytes"] = int(torch.cuda.memory_allocated(state.served.engine.device))
    return memory
