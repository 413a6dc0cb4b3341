"""The CUDA path (bf16 dense, packed int4 with the CUDA tile layout): parity and batching, on a CUDA device only."""

from __future__ import annotations

import pytest
import torch

from apr.engine import SamplingParams, load_engine

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible to torch"),
]


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_cuda_packed_top1_agrees_with_cpu_fp32(fixture_models, arch):
    reference = load_engine(fixture_models[arch]["gguf"], device="cpu", dtype="fp32")
    engine = load_engine(fixture_models[arch]["gguf"], device="cuda")
    assert engine.device.type == "cuda" and engine.describe()["weights"].get("int4", 0) > 0
    g = torch.Generator().manual_seed(0)
    agree = total = 0
    for _ in range(20):
        ids = torch.randint(3, engine.config.vocab_size, (24,), generator=g).tolist()
        agree += int((engine.logits(ids).argmax(-1) == reference.logits(ids).argmax(-1)).sum())
        total += len(ids)
    assert agree / total >= 0.97


def test_cuda_greedy_is_identical_alone_and_batched(fixture_models):
    engine = load_engine(fixture_models["qwen2"]["gguf"], device="cuda")
    prompts = [[5, 6, 7], list(range(20, 50)), [9, 9, 100, 4]]
    params = SamplingParams(max_tokens=16)
    alone = [engine.generate(p, params).token_ids for p in prompts]
    decoder = engine.new_batch(len(prompts))
    for i, p in enumerate(prompts):
        decoder.add(str(i), p, params)
    got: dict[str, list[int]] = {}
    while decoder.active:
        for event in decoder.step():
            got.setdefault(event.request_id, []).append(event.token_id)
    assert [got[str(i)] for i in range(len(prompts))] == alone
