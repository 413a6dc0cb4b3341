"""The pooled, tensor-only decode step (the CUDA graph target) computes what the eager decode does; runs on CPU."""

from __future__ import annotations

import gc

import pytest
import torch
from engine_tiny_models import tiny_pair

from apr.engine import load_engine
from apr.engine.cuda_graphs import CachePool
from apr.engine.kv_cache import SequenceCache

PROMPTS = [[10, 20, 30], list(range(40, 75)), [200, 5, 9, 77, 13, 140, 141]]


@pytest.fixture(scope="module", params=["qwen2", "gemma3"])
def engine(request):
    # gemma3: sliding-window layers with their own RoPE table; its fixture window is small enough to slide here.
    _, canonical = tiny_pair(request.param, seed=7)
    return load_engine(canonical, device="cpu", dtype="fp32", compile=False, max_positions=512)


def _private(engine, capacity: int) -> SequenceCache:
    cfg = engine.config
    return SequenceCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, capacity, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("span", [256, 512])
def test_pooled_step_equals_eager_decode_row_for_row(engine, span):
    model = engine.transformer
    pool = CachePool(model, slots=4, capacity=512)
    pooled = [pool.acquire(256) for _ in PROMPTS]
    private = [_private(engine, 256) for _ in PROMPTS]
    assert [c.slot for c in pooled] == [0, 1, 2]
    with torch.inference_mode():
        for prompt, a, b in zip(PROMPTS, pooled, private):
            model.prefill(torch.tensor(prompt), a)
            model.prefill(torch.tensor(prompt), b)
        tokens = torch.tensor([5, 9, 77])
        for _ in range(40):  # past gemma3's fixture window, so the sliding mask is exercised
            want = torch.cat([model.decode(tokens[i : i + 1], [private[i]]) for i in range(len(PROMPTS))])
            # Two padding rows (token 0 at position 0 of the scratch slot) ride along, as in a captured graph.
            args = torch.tensor(
                [
                    [*tokens.tolist(), 0, 0],
                    [*(c.length for c in pooled), 0, 0],
                    [*(c.slot for c in pooled), pool.scratch, pool.scratch],
                ]
            )
            got = model.decode_slots(args, pool.k, pool.v, span)[: len(PROMPTS)]
            for cache in pooled:
                cache.length += 1
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            tokens = want.argmax(-1)
        for a, b in zip(pooled, private):  # the keys and values it wrote are the eager ones
            torch.testing.assert_close(a.k[:, :, : a.length], b.k[:, :, : b.length], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.v[:, :, : a.length], b.v[:, :, : b.length], rtol=1e-5, atol=1e-5)


def test_pool_hands_out_zeroed_slots_and_takes_them_back(engine):
    pool = CachePool(engine.transformer, slots=2, capacity=512)
    first = pool.acquire(256)
    second = pool.acquire(512)
    assert first is not None and second is not None and pool.acquire(256) is None  # full
    assert pool.acquire(1024) is None  # longer than the pool holds
    assert first.capacity == 256 and second.capacity == 512
    first.k.fill_(3.0)
    slot = first.slot
    del first
    gc.collect()
    assert pool.free == 1
    again = pool.acquire(256)
    assert again is not None and again.slot == slot and not again.k.any() and not again.v.any()
    assert not pool.k[pool.scratch].any()  # nothing handed out the scratch slot
