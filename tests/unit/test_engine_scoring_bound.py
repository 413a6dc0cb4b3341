"""Engine.logits() refuses a sequence whose logits exceed its memory bound; prompt_logprobs() then scores it
chunk by chunk through the KV cache and agrees with the whole-sequence scores."""

from __future__ import annotations

import pytest

from apr.engine import api, load_engine
from apr.formats import load_model


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_a_sequence_over_the_logits_bound_is_scored_in_chunks_like_the_whole_sequence(
    fixture_models, monkeypatch, arch
):
    engine = load_engine(load_model(fixture_models[arch]["gguf"]), device="cpu", pack_cache=False)
    ids = [(7 * i + 3) % engine.config.vocab_size for i in range(40)]
    whole = engine.prompt_logprobs(ids)
    row_bytes = engine.config.vocab_size * 4
    monkeypatch.setattr(api, "MAX_LOGITS_BYTES", row_bytes * 16)  # 16 rows: 40 positions are over the bound
    monkeypatch.setattr(api, "SCORING_CHUNK", 9)  # 5 chunks, the last one short
    with pytest.raises(ValueError, match="score long sequences with prompt_logprobs"):
        engine.logits(ids)
    chunked = engine.prompt_logprobs(ids)
    assert chunked[0] is None and whole[0] is None and len(chunked) == len(whole) == 40
    assert max(abs(a - b) for a, b in zip(chunked[1:], whole[1:], strict=True)) < 0.05
    assert engine.logits(ids[:16]).shape == (16, engine.config.vocab_size)  # at the bound: still served


def test_empty_or_out_of_vocabulary_ids_are_refused(fixture_models):
    engine = load_engine(load_model(fixture_models["qwen2"]["gguf"]), device="cpu", pack_cache=False)
    with pytest.raises(ValueError, match="at least one token"):
        engine.prompt_logprobs([])
    with pytest.raises(ValueError, match="token ids must lie in"):
        engine.prompt_logprobs([0, engine.config.vocab_size])
