"""Lookup decoding on the fixture models: verify rows with the bits of decode steps, greedy output token for
token that of plain decoding, rollback that leaves the cache of plain decoding, honest acceptance counts."""

from __future__ import annotations

import pytest
import torch

from apr.engine import LookupConfig, PrefixCache, SamplingParams, load_engine
from apr.engine.lookup import NgramDrafter
from apr.engine.sampling import Sampler

ARCHS = ["qwen2", "llama", "gemma3"]
# auto: apr's native kernels where they build; bf16: PyTorch's packed kernels; fp32: the dense reference.
PATHS = ["auto", "bf16", "fp32"]
LOOKUP = LookupConfig(draft_tokens=6)


@pytest.fixture(scope="module")
def engines(fixture_models):
    loaded: dict[tuple[str, str], object] = {}

    def get(arch: str, dtype: str = "auto"):
        if (arch, dtype) not in loaded:
            loaded[arch, dtype] = load_engine(
                fixture_models[arch]["gguf"], device="cpu", dtype=dtype, compile=False, pack_cache=False
            )
        return loaded[arch, dtype]

    return get


def ids(count: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(3, vocab, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def repetitive_prompts(vocab: int) -> list[list[int]]:
    """Prompts whose continuations the drafter can guess from (repeated spans), and one it mostly cannot."""
    span = ids(12, 1, vocab)
    return [span * 3, ids(5, 2, vocab) + span + ids(4, 3, vocab) + span[:6], ids(30, 4, vocab), span[:4] * 6]


@pytest.mark.parametrize("dtype", PATHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_verify_rows_have_the_bits_of_decode_steps(engines, arch, dtype):
    """A span of 7 tokens through one decode_at call, beside another sequence's span in the same call, against
    7 one-token decode steps: the same logits bit for bit, and the same keys and values in the cache."""
    engine = engines(arch, dtype)
    model, vocab = engine.transformer, engine.config.vocab_size
    prompt, other = torch.tensor(ids(20, 5, vocab)), torch.tensor(ids(9, 6, vocab))
    span = torch.tensor(ids(7, 7, vocab))
    with torch.inference_mode():
        stepped, verified, mate = model.new_cache(64), model.new_cache(64), model.new_cache(64)
        for cache in (stepped, verified):
            model.prefill(prompt, cache)
        model.prefill(other, mate)
        steps = torch.cat([model.decode(span[i : i + 1], [stepped]) for i in range(7)])
        rows = model.decode_at(
            torch.cat([span[:3], other[:2], span[3:]]),
            [verified] * 3 + [mate] * 2 + [verified] * 4,
            [20, 21, 22, 9, 10, 23, 24, 25, 26],
        )
    assert torch.equal(torch.cat([rows[:3], rows[5:]]), steps)
    assert torch.equal(verified.k[:, :, :27], stepped.k[:, :, :27])
    assert torch.equal(verified.v[:, :, :27], stepped.v[:, :, :27])


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_lookup_is_token_identical_to_plain_greedy(engines, arch):
    engine = engines(arch)
    params = SamplingParams(max_tokens=40)
    accepted = drafted = 0
    for prompt in repetitive_prompts(engine.config.vocab_size):
        plain = engine.generate(prompt, params)
        looked = engine.generate(prompt, params, lookup=LOOKUP)
        assert looked.token_ids == plain.token_ids
        assert looked.text == plain.text and looked.finish_reason == plain.finish_reason
        assert looked.logprobs == plain.logprobs
        assert looked.lookup is not None and plain.lookup is None
        accepted += looked.lookup.accepted
        drafted += looked.lookup.drafted
    # Both outcomes happened, so the comparison covered accepted spans and rolled-back rows.
    assert 0 < accepted < drafted


def test_batched_lookup_matches_each_sequence_alone_without_lookup(engines):
    engine = engines("gemma3")  # its sliding window (6) is shorter than the drafts' spans
    prompts = repetitive_prompts(engine.config.vocab_size)
    alone = [engine.generate(p, SamplingParams(max_tokens=30)).token_ids for p in prompts]
    decoder = engine.new_batch(3, lookup=LOOKUP)  # fewer slots than requests: the last joins later
    for i, prompt in enumerate(prompts):
        decoder.add(f"r{i}", prompt, SamplingParams(max_tokens=30))
    got: dict[str, list[int]] = {}
    while decoder.active:
        for event in decoder.step():
            got.setdefault(event.request_id, []).append(event.token_id)
    assert [got[f"r{i}"] for i in range(len(prompts))] == alone


def test_rollback_leaves_the_cache_plain_decoding_leaves(engines):
    """Rejected rows wrote keys and values past the cache length; what the cache holds up to its length
    (what the next turn reuses) is bit for bit that of plain decoding."""
    engine = engines("llama")
    prompt = repetitive_prompts(engine.config.vocab_size)[1]
    params = SamplingParams(max_tokens=32)
    plain_prefix, lookup_prefix = PrefixCache(), PrefixCache()
    engine.generate(prompt, params, plain_prefix)
    looked = engine.generate(prompt, params, lookup_prefix, lookup=LOOKUP)
    assert looked.lookup is not None and looked.lookup.accepted < looked.lookup.drafted  # something rolled back
    assert plain_prefix.cache is not None and lookup_prefix.cache is not None
    length = plain_prefix.cache.length
    assert lookup_prefix.ids == plain_prefix.ids and lookup_prefix.cache.length == length
    assert torch.equal(lookup_prefix.cache.k[:, :, :length], plain_prefix.cache.k[:, :, :length])
    assert torch.equal(lookup_prefix.cache.v[:, :, :length], plain_prefix.cache.v[:, :, :length])
    # The next turn continues from the lookup cache exactly as from the plain one.
    follow = lookup_prefix.ids + ids(6, 9, engine.config.vocab_size)
    assert (
        engine.generate(follow, params, lookup_prefix, lookup=LOOKUP).token_ids
        == engine.generate(follow, params).token_ids
    )


def test_acceptance_counts_match_the_tokens_each_step_yielded(engines):
    engine = engines("qwen2")
    decoder = engine.new_batch(1, lookup=LOOKUP)
    decoder.add("r", repetitive_prompts(engine.config.vocab_size)[0], SamplingParams(max_tokens=48))
    per_step: list[int] = []
    last = None
    while decoder.active:
        events = decoder.step()
        per_step.append(len(events))
        last = events[-1]
    assert last is not None and last.lookup is not None and last.finish_reason == "length"
    stats = last.lookup
    assert per_step[0] == 1  # the prefill's token
    assert stats.steps == len(per_step) - 1
    assert stats.accepted == sum(n - 1 for n in per_step[1:])  # each step: its accepted drafts + its own token
    assert stats.generated == sum(per_step) == 48
    assert stats.tokens_per_step == 47 / stats.steps > 1
    assert stats.accepted <= stats.drafted


def test_run_json_carries_the_lookup_figures(engines):
    from apr.cli.engine_session import lookup_line, result_json

    engine = engines("qwen2")
    result = engine.generate(
        repetitive_prompts(engine.config.vocab_size)[0], SamplingParams(max_tokens=20), lookup=LOOKUP
    )
    assert result.lookup is not None
    figures = result_json(result)["lookup"]
    assert figures["draft_tokens"] == 6 and figures["accepted"] == result.lookup.accepted
    assert figures["tokens_per_step"] == round(19 / result.lookup.steps, 4)
    assert f"{result.lookup.accepted}/{result.lookup.drafted} drafted tokens accepted" in lookup_line(result)


def test_stop_strings_and_limits_end_a_drafted_span_where_plain_decoding_ends(engines):
    engine = engines("llama")
    prompt = repetitive_prompts(engine.config.vocab_size)[0]
    plain = engine.generate(prompt, SamplingParams(max_tokens=40))
    stop = plain.text[10:13]  # a string the reply reaches in the middle of a drafted span
    for params in (SamplingParams(max_tokens=40, stop=(stop,)), SamplingParams(max_tokens=7)):
        expected = engine.generate(prompt, params)
        looked = engine.generate(prompt, params, lookup=LOOKUP)
        assert (looked.token_ids, looked.text, looked.finish_reason) == (
            expected.token_ids,
            expected.text,
            expected.finish_reason,
        )


def test_sampled_lookup_is_seeded(engines):
    engine = engines("llama")
    prompt = repetitive_prompts(engine.config.vocab_size)[0]

    def sample(seed: int) -> list[int]:
        params = SamplingParams(temperature=3.0, top_k=200, seed=seed, max_tokens=24)
        result = engine.generate(prompt, params, lookup=LOOKUP)
        assert result.lookup is not None and result.lookup.drafted > 0
        return result.token_ids

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_speculative_sampling_keeps_the_distribution():
    """Draws with a draft token follow p exactly: accepted with p(draft), else drawn from p without it."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    p = torch.softmax(logits, dim=-1)
    sampler = Sampler(SamplingParams(temperature=1.0, seed=11))
    draws = 20_000
    counts = torch.zeros(6)
    for i in range(draws):
        token, _, _ = sampler.choose(logits, [], draft=i % 3)  # drafts of high, middle and low probability
        counts[token] += 1
    # Within 4.5 standard errors of every token's probability.
    tolerance = 4.5 * torch.sqrt(p * (1 - p) / draws)
    assert torch.all((counts / draws - p).abs() <= tolerance), (counts / draws, p)
    greedy = Sampler(SamplingParams())
    assert greedy.choose(logits, [], draft=4)[0] == 0


def test_lookup_is_refused_where_verify_rows_could_differ(fixture_models):
    engine = load_engine(fixture_models["llama"]["gguf"], device="cpu", compile=True, pack_cache=False)
    reason = engine.lookup_unavailable()
    assert reason is not None and "compile" in reason
    with pytest.raises(ValueError, match="compile"):
        engine.generate([10, 11, 12], SamplingParams(max_tokens=2), lookup=LOOKUP)


def test_drafter_takes_the_longest_latest_match_and_adapts_its_length():
    config = LookupConfig(draft_tokens=4, max_ngram=3, min_ngram=1)
    drafter = NgramDrafter(config, [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2])
    # "1 2" was followed by 3 4 5 9 at the start; the bigram wins over the later unigram "2 3 7".
    assert drafter.draft(10) == [3, 4, 5, 9]
    drafter.append(3)  # "1 2 3": trigram match at the start
    assert drafter.draft(2) == [4, 5]
    drafter.record(drafted=4, accepted=1)
    assert drafter.draft(10) == [4, 5]  # budget: 1 accepted + 1
    drafter.record(drafted=2, accepted=2)
    assert drafter.draft(10) == [4, 5, 9, 2]  # doubled, capped at draft_tokens
    assert NgramDrafter(config, [5, 6, 7]).draft(4) == []  # nothing repeats
    # A continuation that reaches the end repeats the pattern: 1 2 1 2 -> 1 2 1 2.
    assert NgramDrafter(config, [1, 2, 1, 2]).draft(4) == [1, 2, 1, 2]
