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


@pytest.fixture(scope="session")
def real_converted(real_model, tmp_path_factory: pytest.TempPathFactory):
    """A real model converted once per session: a callable ``(ref, format) -> Path`` (``apr`` keeps the stored
    blocks; ``safetensors`` is the default float32). Several tests read the same conversion of the 1.5B model,
    which costs tens of seconds a time. No conversion report: the converters' fidelity is what
    tests/integration/test_formats_real.py proves; the readers re-read the output strictly either way."""
    from apr.formats.convert import TargetFormat, convert

    made: dict[tuple[str, str], Path] = {}

    def _convert(ref: str, fmt: TargetFormat) -> Path:
        if (ref, fmt) not in made:
            folder = tmp_path_factory.mktemp(f"{ref.replace(':', '-')}-{fmt}")
            target = folder / ("model.apr" if fmt == "apr" else "model")
            convert(real_model(ref), fmt, target, report=False)
            made[ref, fmt] = target
        return made[ref, fmt]

    return _convert


@pytest.fixture(scope="session")
def hf_reference():
    """transformers' own float32 model read from a GGUF file (its reader, its dequantization): a callable
    ``path -> model``, loaded once per session. The reference several real-model tests compare against; its
    load parses the whole GGUF twice in Python (tens of seconds for gemma3's 262k-token vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded: dict[Path, object] = {}

    def _load(path: Path):
        if path not in loaded:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            loaded[path] = model.eval()
        return loaded[path]

    return _load
