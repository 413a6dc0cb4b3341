"""FastAPI app factory for `apr serve`: routes, OpenAI error shapes, scheduler lifecycle, /health."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from apr import __version__
from apr.serve import chat, completions, downloads, embeddings, tokenize
from apr.serve.body_limit import BodyLimit
from apr.serve.errors import install_error_handlers
from apr.serve.protocol import ModelCard, ModelList
from apr.serve.route_meta import ERROR_RESPONSES
from apr.serve.scheduler import Load, Scheduler
from apr.serve.served import ServedModel, ServeSettings
from apr.serve.state import ServeState, check_api_key, serve_state

if TYPE_CHECKING:
    from apr.engine import Engine

log = logging.getLogger("apr.serve")


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """The app serving `engine`; its scheduler thread starts and stops with the app's lifespan."""
    state = ServeState(
        settings=settings,
        served=ServedModel.from_engine(engine, settings),
        described=dict(engine.describe()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler = Scheduler(
            engine,
            settings.batch_size,
            asyncio.get_running_loop(),
            prefix_cache_bytes=settings.prefix_cache_mb * 2**20,
            prefill_chunk=settings.prefill_chunk,
            lookup=_lookup_config(engine, settings),
        )
        scheduler.start()
        state.scheduler = scheduler
        try:
            yield
        finally:
            scheduler.stop()

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
        """Liveness and load; answered on the event loop without touching the engine."""
        load = state.scheduler.load if state.scheduler is not None else Load()
        memory = _memory(state)
        return {
            "status": "ok" if state.scheduler is not None else "starting",
            "model": state.served.model_id,
            # The engine is loaded before the socket accepts anything, so a served model is always loaded.
            "model_loaded": True,
            "format": state.described.get("format"),
            "device": str(state.served.engine.device),
            "memory": memory,
            "memory_usage": _memory_usage(memory),
            "requests": {
                "active": load.active,
                "queued": load.queued,
                "batch_size": state.settings.batch_size,
                "finished": load.finished,
                "cancelled": load.cancelled,
                "failed": load.failed,
            },
            "prefix_cache": _prefix_cache(state),
            "lookup": _lookup_usage(state),
            "max_context": state.served.max_context,
            "uptime_s": round(time.monotonic() - state.started, 3),
        }

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(check_api_key)], responses=ERROR_RESPONSES)
    @app.get("/models", response_model=ModelList, dependencies=[Depends(check_api_key)], responses=ERROR_RESPONSES)
    async def list_models(state: ServeState = Depends(serve_state)) -> ModelList:
        served = state.served
        return ModelList(data=[ModelCard(id=served.model_id, created=served.created, max_model_len=served.max_context)])

    return app


def _lookup_config(engine: Engine, settings: ServeSettings):
    """The LookupConfig of ``--lookup N``, or None (0, or an engine that cannot run it: logged)."""
    if not settings.lookup:
        return None
    reason = engine.lookup_unavailable()
    if reason is not None:
        log.warning("--lookup %d ignored: %s", settings.lookup, reason)
        return None
    from apr.engine import LookupConfig

    return LookupConfig(draft_tokens=settings.lookup)


def _lookup_usage(state: ServeState) -> dict[str, Any]:
    """Lookup decoding over the requests finished so far: drafts verified and accepted."""
    scheduler = state.scheduler
    stats = scheduler.lookup_usage if scheduler is not None else None
    return {"enabled": stats is not None, **(stats.to_dict() if stats is not None else {})}


def _prefix_cache(state: ServeState) -> dict[str, Any]:
    scheduler = state.scheduler
    enabled = scheduler is not None and scheduler.prefix_cache_enabled
    entries, nbytes = scheduler.prefix_usage if scheduler is not None and enabled else (0, 0)
    return {
        "enabled": enabled,
        "budget_mb": state.settings.prefix_cache_mb if enabled else 0,
        "entries": entries,
        "bytes": nbytes,
    }


def _memory_usage(memory: dict[str, int | None]) -> dict[str, float | int | None]:
    """The PRD's `memory_usage`: the process's resident memory in MiB and as a share of the machine's."""
    import psutil

    rss = memory["rss_bytes"] or 0
    vram = memory["vram_bytes"]
    return {
        "rss_mib": round(rss / 2**20, 1),
        "rss_percent": round(100.0 * rss / psutil.virtual_memory().total, 2),
        "vram_mib": None if vram is None else round(vram / 2**20, 1),
    }


def _memory(state: ServeState) -> dict[str, int | None]:
    import psutil

    memory: dict[str, int | None] = {"rss_bytes": psutil.Process().memory_info().rss, "vram_bytes": None}
    if state.served.engine.device.type == "cuda":
        import torch

        memory["vram_bytes"] = int(torch.cuda.memory_allocated(state.served.engine.device))
    return memory
