"""Lookup decoding on a real model (smollm2:135m): greedy replies token for token those of plain decoding."""

from __future__ import annotations

import pytest

from apr.engine import LookupConfig, SamplingParams, load_engine

pytestmark = pytest.mark.integration

EDITS = [
    "Rename the variable total to acc:\n\ndef sum_positive(values):\n    total = 0\n    for value in values:\n"
    "        if value > 0:\n            total += value\n    return total\n",
    "Add type hints to this function:\n\ndef count_words(words):\n    counts = {}\n    for word in words:\n"
    "        counts[word] = counts.get(word, 0) + 1\n    return counts\n",
    "Repeat this list exactly: apples, pears, plums, apples, pears, plums, apples, pears, plums.",
    "Write a short poem about the sea.",
]


def test_lookup_greedy_replies_are_those_of_plain_greedy(real_model):
    engine = load_engine(real_model("smollm2:135m"), device="cpu", compile=False)
    assert engine.lookup_unavailable() is None
    tokenizer = engine.tokenizer
    params = SamplingParams(max_tokens=64)
    accepted = 0
    for edit in EDITS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": edit}], add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
        plain = engine.generate(ids, params)
        looked = engine.generate(ids, params, lookup=LookupConfig(draft_tokens=10))
        assert looked.token_ids == plain.token_ids, edit
        assert looked.logprobs == plain.logprobs
        assert looked.lookup is not None
        accepted += looked.lookup.accepted
    assert accepted > 0  # drafts were verified and kept, not only rejected
