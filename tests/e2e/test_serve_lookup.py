"""apr serve --lookup over real HTTP with the openai client: greedy replies are plain greedy's, /health counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from serve_harness import start_server

from apr.engine import SamplingParams, load_engine


def test_lookup_serves_plain_greedy_replies_and_reports_its_acceptance(fixture_models):
    path = fixture_models["llama"]["gguf"]
    engine = load_engine(path, device="cpu", compile=False, pack_cache=False)
    span = [40, 41, 42, 43, 44, 45, 46, 47]
    prompts = [span * 3, [90, 91] + span + [92] + span[:4], list(range(100, 130))]
    expected = [engine.generate(prompt, SamplingParams(max_tokens=24)).text for prompt in prompts]
    running = start_server(path, "--batch-size", "2", "--lookup", "6")  # 3 requests: one waits, then joins
    try:
        client = running.client()
        model = client.models.list().data[0].id

        def complete(prompt: list[int]) -> str:
            reply = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0.0)
            return reply.choices[0].text

        with ThreadPoolExecutor(max_workers=3) as pool:
            assert list(pool.map(complete, prompts)) == expected
        lookup = httpx.get(f"{running.url}/health", timeout=10).json()["lookup"]
        assert lookup["enabled"] and lookup["draft_tokens"] == 6
        assert lookup["steps"] > 0 and 0 < lookup["accepted"] <= lookup["drafted"]
    finally:
        running.stop()
