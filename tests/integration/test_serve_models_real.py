"""apr serve loads a real cached model on demand off the event loop: the default model answers meanwhile."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from conftest import REAL_MODEL_HOME  # noqa: E402
from serve_harness import start_server  # noqa: E402

pytestmark = pytest.mark.integration

REF = "smollm2:135m"


def test_a_real_model_loads_on_demand_while_the_default_model_keeps_answering(real_model, fixture_models):
    real_model(REF)
    # The real cache: smollm2 is there by its ref, with its packed weights (engine-cache) from earlier runs.
    running = start_server(fixture_models["qwen2"]["gguf"], "--batch-size", "2", env={"APR_HOME": str(REAL_MODEL_HOME)})
    try:
        client = running.client(timeout=300)
        default = client.models.list().data[0].id
        replies: list = []
        question = [{"role": "user", "content": "What is 2+2?"}]
        loader = threading.Thread(
            target=lambda: replies.append(
                client.chat.completions.create(model=REF, messages=question, max_tokens=16, temperature=0.0)
            )
        )
        loader.start()
        deadline = time.monotonic() + 120
        # /health answers while the load runs and names it: the load is not on the event loop.
        while REF not in httpx.get(f"{running.url}/health").json()["model_pool"]["loading"]:
            assert loader.is_alive(), "the load ended before /health saw it running; nothing was compared"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        answered = client.completions.create(model=default, prompt="Hello", max_tokens=4, temperature=0.0)
        still_loading = REF in httpx.get(f"{running.url}/health").json()["model_pool"]["loading"]
        loader.join(300)
        assert answered.choices[0].finish_reason in ("stop", "length")
        assert still_loading, "the default model's reply came only after the other model had loaded"
        assert "4" in replies[0].choices[0].message.content
        health = httpx.get(f"{running.url}/health").json()
        assert health["memory_usage"]["models_bytes"][REF] > 50 * 2**20
        assert health["model_pool"]["loads"] == 1 and health["model_pool"]["loading"] == []
    finally:
        running.stop()
