"""torch.compile of the decode step: same greedy tokens as eager, and the compile state is reported."""

from __future__ import annotations

import pytest

from apr.engine import SamplingParams, load_engine


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_greedy_tokens(fixture_models):
    path = fixture_models["llama"]["gguf"]
    eager = load_engine(path, device="cpu", compile=False)
    compiled = load_engine(path, device="cpu", compile=True)
    prompt = list(range(10, 30))
    params = SamplingParams(max_tokens=12)
    expected = eager.generate(prompt, params).token_ids
    assert compiled.generate(prompt, params).token_ids == expected
    state = compiled.describe()["compile"]
    assert state.startswith("torch.compile"), state  # a silent fallback to eager would fail here


def test_compile_off_is_reported_as_eager(fixture_models):
    engine = load_engine(fixture_models["llama"]["gguf"], device="cpu", compile=False)
    assert engine.describe()["compile"] == "eager"
