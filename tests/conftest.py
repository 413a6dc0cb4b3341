"""Shared pytest fixtures: tiny random-weight fixture models and the real small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Tiny random checkpoints: ``fixture_models[arch][format] -> path``.

    arch in ``qwen2``, ``llama``, ``gemma3``; format in ``safetensors``, ``gguf``, ``apr``.
    Built once per session in a few seconds.
    """
    from apr.formats.fixtures import build_fixture_set

    return build_fixture_set(tmp_path_factory.mktemp("fixture-models"))


@pytest.fixture(scope="session")
def real_model():
    """Pull (or reuse from the apr cache) a real small model; returns a callable ref -> Path."""
    from apr.hub import pull

    def _pull(ref: str) -> Path:
        return pull(ref, progress=False).path

    return _pull
