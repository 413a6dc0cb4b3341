"""Schemathesis over apr serve's exported OpenAPI schema: generated requests never get a 5xx (bounded run)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from serve_harness import start_server

# A small context bounds every generation, so a few dozen generated requests finish in seconds.
MAX_CONTEXT = "96"
EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def server(fixture_models):
    running = start_server(fixture_models["llama"]["gguf"], "--batch-size", "4", "--max-context", MAX_CONTEXT)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def operations(api_schema) -> list:
    return [result.ok() for result in api_schema.get_all_operations()]


def test_the_schema_documents_every_endpoint(api_schema):
    paths = {operation.path for operation in operations(api_schema)}
    assert {"/health", "/v1/models", "/v1/completions", "/v1/chat/completions"} <= paths


# schemathesis' pytest plugin does not run under pytest 9, so each operation is driven through
# its hypothesis strategy directly: valid (positive) and invalid (negative) requests alike.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_generated_requests_never_get_a_server_error(api_schema, server, mode):
    model_id = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    seen: list[int] = []
    # GET routes take no input, so there is nothing to make invalid on them.
    targets = [op for op in operations(api_schema) if mode is GenerationMode.POSITIVE or op.method.upper() == "POST"]
    for operation in targets:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
                # Random model names all stop at the 404; name the served model to reach generation.
                case.body["model"] = model_id
            response = case.call(base_url=server.url, timeout=120)
            seen.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:500]}"
            )
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"] and error["type"] == "invalid_request_error"

        check()
    assert len(seen) >= len(targets)
    if mode is GenerationMode.POSITIVE:
        assert 200 in seen, "no generated request was served: the run checked nothing useful"
    # The server is still healthy after whatever it was sent.
    assert httpx.get(f"{server.url}/health", timeout=30).json()["status"] == "ok"
