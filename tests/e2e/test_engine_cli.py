"""`apr run` and `apr chat` as real subprocesses on fixture checkpoints: JSON shape, piped chat, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

APR = [sys.executable, "-m", "apr.cli.main"]


def apr(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [*APR, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env, encoding="utf-8"
    )


@pytest.mark.parametrize("fmt", ["gguf", "apr", "safetensors"])
def test_run_json_document(fixture_models, fmt):
    path = fixture_models["qwen2"][fmt]
    proc = apr("run", str(path), "--prompt", "hello there", "--max-tokens", "5", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(doc) >= {"text", "prompt_tokens", "completion_tokens", "finish_reason", "timings", "model", "device"}
    assert set(doc["timings"]) >= {"load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "total_s"}
    assert doc["model"]["format"] == fmt and doc["model"]["architecture"] == "qwen2"
    assert doc["prompt_tokens"] > 0 and 1 <= doc["completion_tokens"] <= 5
    assert doc["finish_reason"] in ("stop", "length")
    assert doc["device"] == "cpu"
    assert doc["kv_cache"] == "float32"  # the default: the cache the certifications were measured with


def test_run_is_deterministic_greedy_and_seeded(fixture_models):
    path = str(fixture_models["llama"]["gguf"])
    base = ("run", path, "--prompt", "abc", "--max-tokens", "8", "--json", "--raw")
    first, second = (json.loads(apr(*base).stdout) for _ in range(2))
    assert first["text"] == second["text"]
    sampled = [json.loads(apr(*base, "--temperature", "1.0", "--seed", "11").stdout)["text"] for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_chat_reads_piped_turns_and_prints_one_json_line_per_reply(fixture_models):
    path = str(fixture_models["llama"]["gguf"])
    proc = apr("chat", path, "--max-tokens", "4", "--json", stdin="hi\n/reset\nsecond turn 你好\n/exit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    assert all({"text", "completion_tokens", "finish_reason", "timings"} <= set(line) for line in lines)
    assert [line["cached_prompt_tokens"] for line in lines] == [0, 0]  # /reset forgot the first turn's cache


def test_chat_continues_each_turn_from_the_cache_the_last_one_left(fixture_models):
    path = str(fixture_models["qwen2"]["gguf"])
    proc = apr("chat", path, "--max-tokens", "4", "--json", "--device", "cpu", stdin="hi\nand then?\n")
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines() if line.strip())
    assert first["cached_prompt_tokens"] == 0
    assert 0 < second["cached_prompt_tokens"] < second["prompt_tokens"]


def test_chat_takes_a_multi_line_turn_exactly_as_run_takes_the_prompt(fixture_models):
    """The same multi-line prompt through `apr run`, a three-quote block and a JSON message: the same
    prompt tokens and the same greedy reply, so chat certifies what run and serve certify."""
    path = str(fixture_models["qwen2"]["gguf"])
    prompt = "def add(a, b):\n    return a + b\n\nExplain."
    options = ("--max-tokens", "6", "--json", "--device", "cpu")
    ran = json.loads(apr("run", path, "--prompt", prompt, *options).stdout.strip().splitlines()[-1])
    block = '"""\n' + prompt + '\n"""\n'
    message = json.dumps({"role": "user", "content": prompt}) + "\n"
    flattened = " ".join(prompt.splitlines()) + "\n"
    replies = {}
    for name, stdin in (("block", block), ("message", message), ("flattened", flattened)):
        proc = apr("chat", path, *options, stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        replies[name] = json.loads(proc.stdout.strip().splitlines()[0])
    for name in ("block", "message"):
        assert replies[name]["prompt_tokens"] == ran["prompt_tokens"], name
        assert replies[name]["text"] == ran["text"], name
    assert replies["flattened"]["prompt_tokens"] != ran["prompt_tokens"]


def test_bad_model_path_is_one_error_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    proc = apr("run", str(broken), "--prompt", "x", "--json")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_bad_sampling_option_is_one_error_line(fixture_models):
    proc = apr("run", str(fixture_models["llama"]["gguf"]), "--prompt", "x", "--top-p", "0")
    assert proc.returncode == 2 and "top_p" in proc.stderr and "Traceback" not in proc.stderr


def test_run_with_lookup_prints_the_same_reply_and_its_acceptance(fixture_models):
    """`--lookup` changes the speed, not the reply: streamed, the text of plain greedy on stdout and a stderr
    line saying how many drafts were accepted (the JSON figures: test_engine_lookup.py). With --compile it
    is refused in one line before anything loads."""
    path = str(fixture_models["llama"]["gguf"])
    base = ("run", path, "--prompt", "abcabcabcabcabcabc", "--max-tokens", "24", "--raw", "--device", "cpu")
    plain = json.loads(apr(*base, "--json").stdout)
    streamed = apr(*base, "--lookup", "8")
    assert streamed.returncode == 0 and streamed.stdout.rstrip("\n") == plain["text"]
    assert "lookup" not in plain
    assert "lookup:" in streamed.stderr and "drafted tokens accepted" in streamed.stderr
    refused = apr(*base, "--lookup", "8", "--compile")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --lookup")


def test_run_with_an_fp16_kv_cache_and_its_refusal(fixture_models):
    """`--kv-cache f16` reaches the engine (its JSON names the cache's dtype, read from the engine); where f16
    cannot run (here: exact numerics) it is one error line, not a silently float32 run."""
    path = str(fixture_models["qwen2"]["gguf"])
    base = ("run", path, "--prompt", "hello there", "--max-tokens", "5", "--device", "cpu", "--kv-cache", "f16")
    ran = apr(*base, "--json")
    assert ran.returncode == 0, ran.stderr
    doc = json.loads(ran.stdout.strip().splitlines()[-1])
    assert doc["kv_cache"] == "float16" and 1 <= doc["completion_tokens"] <= 5
    refused = apr(*base, "--numerics", "exact")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "error: --kv-cache f16 contradicts --numerics exact (float32 reference numerics); drop one of them"
    ]
