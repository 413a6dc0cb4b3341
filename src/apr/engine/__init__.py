"""The apr inference engine: pure-torch transformer, packed quantized weights, generation and batching.

The engine knows token ids only; tokenizers, files and the network belong to the callers.
The plain data types (SamplingParams and co.) import without torch; the engine itself (Engine,
load_engine, BatchDecoder, PrefixCache) pulls torch in on first use, so a CLI verb can check its
input before paying for that import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apr.engine.types import (
    FinishReason,
    GenerationResult,
    KvCache,
    LookupConfig,
    LookupStats,
    SamplingParams,
    Timings,
    TokenEvent,
)

if TYPE_CHECKING:
    from apr.engine.api import Engine, load_engine
    from apr.engine.batch import BatchDecoder, PrefixCache

__all__ = [
    "Engine",
    "load_engine",
    "BatchDecoder",
    "PrefixCache",
    "SamplingParams",
    "LookupConfig",
    "LookupStats",
    "TokenEvent",
    "GenerationResult",
    "Timings",
    "FinishReason",
    "KvCache",
]

_TORCH_BACKED = {"Engine": "apr.engine.api", "load_engine": "apr.engine.api", "BatchDecoder": "apr.engine.batch"}
_TORCH_BACKED["PrefixCache"] = "apr.engine.batch"


def __getattr__(name: str) -> Any:
    module_name = _TORCH_BACKED.get(name)
    if module_name is None:
        raise AttributeError(f"module 'apr.engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
