"""The CUDA path (dense bf16 with CUDA graphs by default, packed int4 tinygemm with --dtype bf16): parity,
batching, graph fallback; on a CUDA device only."""

from __future__ import annotations

import pytest
import torch

from apr.engine import SamplingParams, load_engine

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible to torch"),
]


def _top1_agreement(engine, reference, trials: int = 20) -> float:
    g = torch.Generator().manual_seed(0)
    agree = total = 0
    for _ in range(trials):
        ids = torch.randint(3, engine.config.vocab_size, (24,), generator=g).tolist()
        agree += int((engine.logits(ids).argmax(-1) == reference.logits(ids).argmax(-1)).sum())
        total += len(ids)
    return agree / total


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_cuda_packed_top1_agrees_with_cpu_fp32(fixture_models, arch):
    reference = load_engine(fixture_models[arch]["gguf"], device="cpu", dtype="fp32")
    engine = load_engine(fixture_models[arch]["gguf"], device="cuda", dtype="bf16")
    assert engine.device.type == "cuda" and engine.describe()["weights"].get("int4", 0) > 0
    assert _top1_agreement(engine, reference) >= 0.97


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_cuda_default_is_dense_bf16_with_graphs_and_agrees_with_cpu_fp32(fixture_models, arch):
    reference = load_engine(fixture_models[arch]["gguf"], device="cpu", dtype="fp32")
    engine = load_engine(fixture_models[arch]["gguf"], device="cuda")
    described = engine.describe()
    assert described["kernels"] == "torch dense" and described["dtype"] == "bfloat16"
    assert set(described["weights"]) == {"dense"}
    assert _top1_agreement(engine, reference) >= 0.97
    # Decoded through the captured graphs: each step's top-1 against the CPU reference's full-sequence logits.
    prompt = [5, 6, 7, 8, 9]
    tokens = _greedy_steps(engine, [prompt], 24)[0]
    assert "captured" in engine.describe()["compile"] and "eager" not in engine.describe()["compile"]
    full = reference.logits(prompt + tokens[:-1])
    steps = full[len(prompt) - 1 :].argmax(-1).tolist()
    assert sum(a == b for a, b in zip(steps, tokens)) / len(steps) >= 0.9


def _greedy_steps(engine, prompts: list[list[int]], count: int) -> list[list[int]]:
    """``count`` greedy tokens of each prompt, all decoded together through the engine's decode step (no EOS stop)."""
    model = engine.transformer
    with torch.inference_mode():
        caches = [engine.new_cache(256) for _ in prompts]
        token = torch.cat(
            [
                model.head(model.prefill(torch.tensor(p, device=engine.device), c)[-1:]).argmax(-1)
                for p, c in zip(prompts, caches)
            ]
        )
        out = [token.tolist()]
        for _ in range(count - 1):
            token = engine.decode_step(token, caches).argmax(-1)
            out.append(token.tolist())
    return [list(row) for row in zip(*out)]


def _drain(decoder) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    while decoder.active:
        for event in decoder.step():
            got.setdefault(event.request_id, []).append(event.token_id)
    return got


@pytest.mark.parametrize("dtype", ["auto", "bf16"])
def test_cuda_greedy_is_identical_alone_and_batched(fixture_models, dtype):
    engine = load_engine(fixture_models["qwen2"]["gguf"], device="cuda", dtype=dtype)
    prompts = [[5, 6, 7], list(range(20, 50)), [9, 9, 100, 4]]
    params = SamplingParams(max_tokens=16)
    alone = [engine.generate(p, params).token_ids for p in prompts]
    decoder = engine.new_batch(len(prompts))
    for i, p in enumerate(prompts):
        decoder.add(str(i), p, params)
    got = _drain(decoder)
    assert [got[str(i)] for i in range(len(prompts))] == alone


def test_cuda_graphs_match_eager_and_survive_more_sequences_than_slots(fixture_models):
    """More sequences than pool slots: the extra ones get private caches and such a batch runs eagerly."""
    graphs = load_engine(fixture_models["llama"]["gguf"], device="cuda")
    eager = load_engine(fixture_models["llama"]["gguf"], device="cuda", cuda_graphs=False)
    assert "cuda graphs" in graphs.describe()["compile"] and "cuda graphs" not in eager.describe()["compile"]
    for count in (5, 20):  # 5: one captured graph of 8 rows; 20 > 16 slots: the eager fallback
        prompts = [[3 + i, 40 + i, 7] for i in range(count)]
        got, want = _greedy_steps(graphs, prompts, 12), _greedy_steps(eager, prompts, 12)
        same = sum(a == b for x, y in zip(got, want) for a, b in zip(x, y))
        assert same / (12 * count) >= 0.9
    assert graphs._decode_step.pool.free == 16  # every slot came back when its cache was dropped
