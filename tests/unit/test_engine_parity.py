"""Engine vs transformers on tiny seeded fp32 models: logits, top-1 agreement and greedy continuations."""

from __future__ import annotations

import pytest
import torch

from engine_tiny_models import ARCHS, tiny_pair

from apr.engine import SamplingParams, load_engine


def _prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (count,), generator=g)
    return [torch.randint(4, vocab, (int(n),), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    hf, canonical = tiny_pair(request.param)
    return request.param, hf, load_engine(canonical, device="cpu", dtype="fp32", compile=False)


def test_logits_match_transformers_at_every_position(pair):
    arch, hf, engine = pair
    worst, agree, total = 0.0, 0, 0
    for ids in _prompts(20, engine.config.vocab_size, seed=1):
        ours = engine.logits(ids)
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0].float()
        worst = max(worst, float((ours - theirs).abs().max()))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
    print(f"{arch}: top-1 agreement {agree}/{total}, max |dlogit| {worst:.2e}")
    assert agree == total
    assert worst < 1e-3


def test_greedy_continuations_match_transformers(pair):
    arch, hf, engine = pair
    for ids in _prompts(4, engine.config.vocab_size, seed=2):
        ours = engine.generate(ids, SamplingParams(max_tokens=32)).token_ids
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        assert ours == out[0, len(ids):].tolist(), arch


def test_cached_decode_matches_uncached_logits(pair):
    """Prefill + token-by-token decode reproduces the no-cache logits (sliding windows crossed for gemma3)."""
    _, _, engine = pair
    ids = _prompts(1, engine.config.vocab_size, seed=3)[0] + list(range(10, 30))
    from apr.engine.kv_cache import SequenceCache

    model, cfg = engine.transformer, engine.config
    cache = SequenceCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 256, torch.float32, torch.device("cpu"))
    split = 5
    with torch.inference_mode():
        stepped = [model.head(model.prefill(torch.tensor(ids[:split]), cache))]
        for token in ids[split:]:
            stepped.append(model.decode(torch.tensor([token]), [cache]))
    full = engine.logits(ids)
    assert torch.allclose(torch.cat(stepped)[split - 1:], full[split - 1:], atol=1e-4)
