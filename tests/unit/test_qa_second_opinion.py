"""The exact second opinion of the reply gates, on fixture models: a reply only the fast engine gets wrong is the
engine's numerics (NUMERICS-PARITY), a reply both engines get wrong is the model's (GOLDEN-OUTPUT, STOP-BEHAVIOR)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from apr.engine import SamplingParams, load_engine
from apr.formats import load_model
from apr.qa.axes import Format
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.gates.golden import golden_checks, prompt_ids
from apr.qa.gates.numerics import numerics_checks
from apr.qa.gates.second_opinion import ExactSecondOpinion
from apr.qa.gates.stop import stop_reply_checks
from apr.qa.gates.thresholds import GoldenCase, GoldenOutputGate, NumericsGate, StopBehaviorGate
from apr.qa.recording import Recorder, Timer, stamp_all

PROMPT = "Say hello."
TOKENS = 24


def greedy(engine, prompt: str = PROMPT):
    return engine.generate(prompt_ids(engine, prompt, True), SamplingParams(temperature=0.0, max_tokens=TOKENS))


@pytest.fixture(scope="module")
def model(fixture_models):
    return load_model(fixture_models["qwen2"]["gguf"])


@pytest.fixture(scope="module")
def replies(model):
    """A fast engine whose numerics go wrong (its final norm negated: a kernel defect, simulated, the weights
    untouched) and the exact engine's replies: they differ, and the exact one is the model's."""
    fast = load_engine(model, device="cpu", pack_cache=False)
    with torch.inference_mode():
        for _, tensor in fast.transformer.final_norm.named_buffers():
            tensor.mul_(-1.0)
    exact = load_engine(model, device="cpu", numerics="exact", pack_cache=False)
    fast_reply, exact_reply = greedy(fast), greedy(exact)
    assert fast_reply.token_ids != exact_reply.token_ids, "the simulated kernel defect changed nothing"
    return fast, fast_reply, exact_reply


def only_in(text: str, other: str) -> str:
    """The shortest piece of ``text`` that ``other`` does not contain."""
    for size in range(1, len(text) + 1):
        for start in range(len(text) - size + 1):
            piece = text[start : start + size]
            if piece.strip() and piece.lower() not in other.lower():
                return piece
    raise AssertionError(f"{text!r} has no piece that {other!r} lacks")


def clean_prefix(engine, fast_ids: list[int], exact_ids: list[int]) -> tuple[int, str]:
    """The shortest reply length at which the exact reply has text the fast one lacks and no replacement
    character (a random fixture writes byte tokens), with that text."""
    for length in range(1, len(exact_ids) + 1):
        exact_text = engine.tokenizer.decode(exact_ids[:length])
        fast_text = engine.tokenizer.decode(fast_ids[:length])
        if "\ufffd" not in exact_text and exact_text.strip() and exact_text.lower() not in fast_text.lower():
            return length, only_in(exact_text, fast_text)
    raise AssertionError("the exact reply has no clean prefix the fast one lacks")


def test_a_golden_reply_only_the_fast_engine_gets_wrong_passes_and_is_recorded_under_numerics(model, replies):
    fast, fast_reply, exact_reply = replies
    length, expected = clean_prefix(fast, fast_reply.token_ids, exact_reply.token_ids)
    settings = GoldenOutputGate(cases=(GoldenCase(prompt=PROMPT, expect_any=(expected,)),), max_tokens=length)
    second = ExactSecondOpinion(model)
    [check] = golden_checks(fast, settings, True, Format.GGUF, second)
    assert check.outcome is Outcome.CORROBORATED, check.reason
    assert check.numerics == "exact" and expected in check.output
    assert "numerics finding" in check.reason and "NUMERICS-PARITY reply:golden:0" in check.reason
    [record] = stamp_all(Recorder(model="m"), [check], Timer())
    assert record.provenance.numerics == "exact"

    checks = numerics_checks(model, fast, NumericsGate(), Format.GGUF, second)
    flips = [c for c in checks if c.check == "reply:golden:0"]
    assert len(flips) == 1 and flips[0].gate is GateId.NUMERICS_PARITY and flips[0].outcome is Outcome.FALSIFIED
    assert flips[0].output == fast.tokenizer.decode(fast_reply.token_ids[:length]) and flips[0].prompt == PROMPT
    second.close()


def test_a_golden_reply_both_engines_get_wrong_is_the_models_failure(model, replies):
    fast, _, _ = replies
    settings = GoldenOutputGate(cases=(GoldenCase(prompt=PROMPT, expect_any=("Paris",)),), max_tokens=TOKENS)
    second = ExactSecondOpinion(model)
    [check] = golden_checks(fast, settings, True, Format.GGUF, second)
    assert check.outcome is Outcome.FALSIFIED
    fast_reason, exact_reason = check.reason.split("; the exact float32 engine too: ")
    assert fast_reason and exact_reason and check.numerics == "exact"  # both engines' reasons are given
    assert second.flips == [] and second.flip_checks() == []
    second.close()


def test_a_stop_reply_only_the_fast_engine_runs_on_is_recorded_under_numerics(model, replies):
    """An eos id that the exact reply reaches and the fast reply never writes: only the fast engine runs to the
    limit."""
    fast, fast_reply, exact_reply = replies
    eos = next(t for t in exact_reply.token_ids[2:] if t not in fast_reply.token_ids)
    stops_there = dataclasses.replace(model, config=dataclasses.replace(model.config, eos_token_ids=(eos,)))
    second = ExactSecondOpinion(stops_there)
    settings = StopBehaviorGate(prompts=(PROMPT,), max_tokens=TOKENS, max_fraction=1.0)
    declared = fast.eos_token_ids
    fast.eos_token_ids = second.engine().eos_token_ids  # what an engine of ``stops_there`` stops on
    try:
        [check] = stop_reply_checks(fast, settings, True, Format.GGUF, second)
    finally:
        fast.eos_token_ids = declared
    assert check.outcome is Outcome.CORROBORATED, check.reason
    assert check.metrics["finish_reason"] == "stop" and "the fast engine's reply failed" in check.reason
    assert [flip.check for flip in second.flips] == ["stops:0"]
    second.close()


def test_an_exact_engine_gets_no_second_opinion(model):
    exact = load_engine(model, device="cpu", numerics="exact", pack_cache=False)
    settings = GoldenOutputGate(cases=(GoldenCase(prompt=PROMPT, expect_any=("Paris",)),), max_tokens=4)
    second = ExactSecondOpinion(model)
    [check] = golden_checks(exact, settings, True, Format.GGUF, second)
    assert check.outcome is Outcome.FALSIFIED and "exact float32 engine too" not in check.reason
    assert second.flips == [] and check.numerics is None
