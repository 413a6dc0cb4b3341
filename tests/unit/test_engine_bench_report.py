"""`apr bench`'s JSON names what its figures were measured on: the kernel family, the CPU model, the threads."""

from __future__ import annotations

from apr.cpu import cpu_model
from apr.engine import load_engine, native
from apr.engine.bench import BenchPlan, run_bench


def test_bench_json_names_the_kernels_cpu_and_threads(fixture_models):
    engine = load_engine(fixture_models["qwen2"]["gguf"], device="cpu", compile=False, pack_cache=False)
    plan = BenchPlan(prompt_tokens=4, decode_tokens=3, min_reps=1, min_seconds=0.0, warmup=0, batch=2)
    doc = run_bench(engine, plan, load_s=0.0).to_json()
    assert doc["host"]["cpu"] == cpu_model() != ""
    assert doc["host"]["threads"] == doc["engine"]["threads"] >= 1
    assert doc["engine"]["kv_cache"] == "float32"  # --kv-cache's default, named with the figures
    if native.available():  # the variant that ran, e.g. "apr native avx512vnni ..."
        assert doc["engine"]["kernels"].startswith(f"apr native {native.variant()} ")
    else:
        assert doc["engine"]["kernels"].startswith("torch")
    assert doc["batch"] == 2 and doc["batch_decode_tok_s"]["median"] > 0
