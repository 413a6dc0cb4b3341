"""Shared pytest fixtures: tiny random-weight fixture models and the real small models."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Real models live in the user's cache (pulled once, reused across runs); everything else a test
# registers (fixture files, local paths) goes to a throwaway APR_HOME so the user's cache stays clean.
REAL_MODEL_HOME = Path(os.environ.get("APR_HOME") or Path.home() / ".cache" / "apr")


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits
    # SIGINT ignored, and every subprocess inherits that in turn: `apr pull` or `dagster dev` would
    # then shrug off the Ctrl-C the stop tests send. A Python-level handler is reset to the default
    # on exec, so installing Python's own gives children the disposition a terminal user has.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def isolated_apr_home(tmp_path_factory: pytest.TempPathFactory):
    """Point APR_HOME (inherited by every `apr` subprocess) at a per-session temp dir."""
    home = tmp_path_factory.mktemp("apr-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("APR_HOME", str(home))
        yield home


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
    from apr.hub import Hub, ModelCache
    from apr.hub.catalog import load_catalog

    hub = Hub(ModelCache(REAL_MODEL_HOME), load_catalog())

    def _pull(ref: str) -> Path:
        return hub.pull(ref, progress=False).path

    return _pull
