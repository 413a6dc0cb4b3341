"""PrefixCache: a conversation's next request starts from the cache the last one left, and nothing changes."""

from __future__ import annotations

import pytest
import torch

from apr.engine import PrefixCache, SamplingParams, load_engine, native
from apr.engine.kv_cache import SequenceCache

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")
ARCHS = ["qwen2", "llama", "gemma3"]


@pytest.fixture(scope="module")
def engines(fixture_models):
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_engine(fixture_models[arch]["gguf"], device="cpu", compile=False, pack_cache=False)
        return cache[arch]

    return get


def ids_in_vocab(engine, count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, engine.config.vocab_size, (count,), generator=generator).tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_prefill_continued_from_a_cache_has_the_bits_of_one_prefill(engines, arch):
    """Positions 0..s-1 prefilled, then s..t-1 on top (gemma3: across its sliding window of the fixture),
    against 0..t-1 at once: the same hidden states of the last part and the same cache."""
    engine = engines(arch)
    model, cfg = engine.transformer, engine.config
    ids = torch.tensor(ids_in_vocab(engine, 40, seed=1))

    def new_cache() -> SequenceCache:
        return SequenceCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 64, model.dtype, torch.device("cpu"))

    with torch.inference_mode():
        whole_cache, split_cache = new_cache(), new_cache()
        whole = model.prefill(ids, whole_cache)
        model.prefill(ids[:23], split_cache)
        assert model.can_continue_prefill(17)
        rest = model.prefill(ids[23:], split_cache)
    assert split_cache.length == whole_cache.length == 40
    assert torch.equal(rest, whole[23:])
    assert torch.equal(split_cache.k[:, :, :40], whole_cache.k[:, :, :40])


@pytest.mark.parametrize("arch", ARCHS)
def test_a_second_turn_reuses_the_first_and_generates_the_same_tokens(engines, arch):
    engine = engines(arch)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    first_prompt = ids_in_vocab(engine, 20, seed=2)
    prefix = PrefixCache()
    first = engine.generate(first_prompt, params, prefix)
    assert prefix.reused == 0 and prefix.cache is not None
    # The cache holds the prompt and every generated token but the last (never fed back).
    held = first_prompt + first.token_ids[:-1]
    assert prefix.ids == held and prefix.cache.length == len(held)
    # The next prompt repeats the conversation, drops the last two tokens of the reply (as a re-rendered
    # template may) and adds a new message.
    second_prompt = held[:-2] + ids_in_vocab(engine, 9, seed=3)
    reused = engine.generate(second_prompt, params, prefix)
    assert prefix.reused == len(held) - 2
    fresh = engine.generate(second_prompt, params)
    assert reused.token_ids == fresh.token_ids
    assert reused.prompt_tokens == fresh.prompt_tokens == len(second_prompt)


def test_what_cannot_be_reused_starts_a_new_cache(engines):
    engine = engines("llama")
    params = SamplingParams(max_tokens=4, temperature=0.0)
    prompt = ids_in_vocab(engine, 12, seed=4)
    prefix = PrefixCache()
    engine.generate(prompt, params, prefix)
    held = list(prefix.ids)
    # The same prompt again: all but its last token come from the cache (that one is prefilled for its logits).
    again = engine.generate(prompt, params, prefix)
    assert prefix.reused == len(prompt) - 1
    assert again.token_ids == engine.generate(prompt, params).token_ids
    # A prompt that differs from the first token on shares nothing.
    other = [(held[0] + 1) % engine.config.vocab_size, *held[1:]]
    engine.generate(other, params, prefix)
    assert prefix.reused == 0
    # A request that needs more positions than the held cache has: the shared part moves to a larger one.
    capacity, held = prefix.cache.capacity, list(prefix.ids)
    longer = held + ids_in_vocab(engine, 3, seed=5)
    grown = engine.generate(longer, SamplingParams(max_tokens=capacity, temperature=0.0), prefix)
    assert prefix.reused == len(held) and prefix.cache.capacity > capacity
    assert grown.token_ids == engine.generate(longer, SamplingParams(max_tokens=capacity, temperature=0.0)).token_ids
    prefix.clear()
    assert prefix.cache is None and prefix.ids == [] and prefix.reused == 0
