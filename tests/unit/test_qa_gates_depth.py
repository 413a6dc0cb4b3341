"""The defence-in-depth gates on fixture models: stop behaviour, perplexity, the reference config and golden sets —
each falsified by its defect and corroborated on the clean fixture."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apr.qa.axes import Backend, Format
from apr.qa.evidence import Outcome
from apr.qa.gates.load import load_engine_check
from apr.qa.gates.thresholds import GoldenCase, GoldenOutputGate, PerplexityGate, StopBehaviorGate

CORROBORATED, FALSIFIED = Outcome.CORROBORATED, Outcome.FALSIFIED


def fixture(arch: str):
    from apr.formats.fixtures import build_fixture_model

    return build_fixture_model(arch)


def with_spec(model, **changes):
    """``model`` with its tokenizer spec changed (a new Tokenizer over the same backend)."""
    from apr.formats.tokenizer import Tokenizer

    spec = dataclasses.replace(model.tokenizer.spec, **changes)
    return dataclasses.replace(model, tokenizer=Tokenizer(spec, model.tokenizer.backend))


def outcomes(checks) -> dict[str, Outcome]:
    return {c.check: c.outcome for c in checks}


def replace_tensor(model, name: str, values: np.ndarray) -> None:
    """Swap one tensor of an in-memory model for float32 ``values``."""
    from apr.formats.ggml import F32, encode_float, tensor_nbytes
    from apr.formats.model import TensorInfo
    from apr.formats.tensor_source import StoredTensor

    shape = tuple(values.shape)
    data = encode_float(values, F32)
    model.tensors[name] = StoredTensor(TensorInfo(name, shape, F32, tensor_nbytes(F32, shape)), lambda: data)


def engine_of(model):
    check, engine = load_engine_check(model, Format.GGUF, Backend.CPU, cuda_available=False, pack_cache=False)
    assert engine is not None, check.reason
    return engine


# ---- stop behaviour: static -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_clean_fixtures_pass_the_static_stop_checks(arch):
    from apr.qa.gates.stop import stop_static_checks

    checks = stop_static_checks(fixture(arch), Format.GGUF)
    assert outcomes(checks) == {"eos-ids": CORROBORATED, "end-of-turn": CORROBORATED}, [c.reason for c in checks]


def test_eos_moved_to_a_special_token_that_ends_nothing_is_falsified_twice():
    from apr.qa.gates.stop import stop_static_checks

    model = fixture("llama")
    start = model.tokenizer.spec.tokens.index("<|im_start|>")
    checks = stop_static_checks(with_spec(model, eos_token_id=start), Format.GGUF)
    assert outcomes(checks) == {"eos-ids": FALSIFIED, "end-of-turn": FALSIFIED}
    assert "<|im_start|>" in checks[0].reason and "will not stop" in checks[1].reason


def test_eos_on_an_ordinary_word_is_falsified():
    from apr.formats.tokenizer_spec import TOKEN_NORMAL
    from apr.qa.gates.stop import eos_vocab_check

    model = fixture("qwen2")
    word = model.tokenizer.spec.token_types.index(TOKEN_NORMAL)
    check = eos_vocab_check(with_spec(model, eos_token_id=word), Format.GGUF)
    assert check.outcome is FALSIFIED and "ordinary text token" in check.reason


def test_a_broken_chat_template_is_falsified_by_stop_and_golden():
    from apr.qa.gates.golden import golden_checks
    from apr.qa.gates.stop import end_of_turn_check

    model = fixture("qwen2")
    broken = with_spec(model, chat_template=model.tokenizer.spec.chat_template[:40])
    check = end_of_turn_check(broken, Format.GGUF)
    assert check is not None and check.outcome is FALSIFIED and "does not render" in check.reason
    golden = golden_checks(engine_of(broken), GoldenOutputGate(), True, Format.GGUF)
    assert [c.outcome for c in golden] == [FALSIFIED] and "prompt not built" in golden[0].reason


def test_a_base_model_plans_no_end_of_turn_or_reply_checks():
    from apr.qa.gates.stop import end_of_turn_check, stop_reply_checks

    model = with_spec(fixture("gemma3"), chat_template=None)
    assert end_of_turn_check(model, Format.GGUF) is None
    assert stop_reply_checks(engine_of(model), StopBehaviorGate(), True, Format.GGUF) == []


# ---- stop behaviour: greedy replies ---------------------------------------------------------------------


def test_a_reply_that_ends_on_an_eos_passes_and_one_that_runs_to_the_limit_fails():
    """The fixture's greedy reply is known; declaring its 4th token an eos id makes it stop there."""
    from apr.engine import SamplingParams
    from apr.qa.gates.golden import prompt_ids
    from apr.qa.gates.stop import stop_reply_checks

    model = fixture("qwen2")
    settings = StopBehaviorGate(prompts=("Say hello.",), max_tokens=16, max_fraction=0.75)
    never = engine_of(dataclasses.replace(model, config=dataclasses.replace(model.config, eos_token_ids=())))
    never = engine_of(with_spec(never.model, eos_token_id=None, extra_eos_token_ids=()))
    reply = never.generate(prompt_ids(never, "Say hello.", True), SamplingParams(temperature=0.0, max_tokens=16))
    [ran] = stop_reply_checks(never, settings, True, Format.GGUF)
    assert reply.finish_reason == "length" and ran.outcome is FALSIFIED and "never ends" in ran.reason
    fourth = next(t for i, t in enumerate(reply.token_ids) if i >= 3 and t not in reply.token_ids[:i])
    stopping = engine_of(
        dataclasses.replace(never.model, config=dataclasses.replace(model.config, eos_token_ids=(fourth,)))
    )
    [ended] = stop_reply_checks(stopping, settings, True, Format.GGUF)
    assert ended.outcome is CORROBORATED, ended.reason
    assert ended.metrics["finish_reason"] == "stop" and ended.measured is not None and ended.measured <= 12


# ---- perplexity -----------------------------------------------------------------------------------------


def test_perplexity_passes_under_its_limit_and_fails_over_it_or_on_nan():
    from apr.qa.gates.perplexity import perplexity_checks

    model = fixture("llama")
    texts = ("The quick brown fox jumps over the lazy dog.",)
    [clean] = perplexity_checks(engine_of(model), PerplexityGate(texts=texts, max_mean_nll=50.0), Format.GGUF)
    assert clean.outcome is CORROBORATED and clean.measured is not None and clean.n_compared > 3
    [strict] = perplexity_checks(
        engine_of(model), PerplexityGate(texts=texts, max_mean_nll=clean.measured / 2), Format.GGUF
    )
    assert strict.outcome is FALSIFIED and "above the limit" in strict.reason
    name = "model.layers.1.post_attention_layernorm.weight"
    values = model.tensors[name].dequantize().numpy().copy()
    values[0] = np.nan
    replace_tensor(model, name, values)
    [nan] = perplexity_checks(engine_of(model), PerplexityGate(texts=texts, max_mean_nll=50.0), Format.GGUF)
    assert nan.outcome is FALSIFIED and "not finite" in nan.reason


# ---- reference config -----------------------------------------------------------------------------------


def reference_of(model, **changes):
    from apr.qa.gates.reference_config import ReferenceConfig

    cfg = model.config
    values = dict(
        repo="fixture/llama",
        refs=("fixture:llama",),
        architecture=cfg.architecture,
        vocab_size=cfg.vocab_size,
        min_tokenizer_tokens=model.tokenizer.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        context_length=cfg.context_length,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        eos_token_ids=(model.tokenizer.spec.eos_token_id,),
    )
    return ReferenceConfig(**{**values, **changes})


def test_reference_config_finds_each_difference_and_nothing_on_a_match():
    from apr.qa.gates.reference_config import reference_differences

    model = fixture("llama")
    assert reference_differences(reference_of(model), model) == []
    plausible_but_wrong = dataclasses.replace(
        model, config=dataclasses.replace(model.config, rope_theta=10_000.0, rms_norm_eps=1e-3)
    )
    found = reference_differences(reference_of(model), plausible_but_wrong)
    assert [p.split()[0] for p in found] == ["rms_norm_eps", "rope_theta"]
    other_eos = with_spec(model, eos_token_id=1)
    assert reference_differences(reference_of(model), other_eos) == ["eos id 1 is not among the reference eos ids [2]"]


def test_reference_config_check_is_planned_only_for_known_models():
    from apr.qa.gates.reference_config import REFERENCE_CONFIGS, find_reference, reference_config_check

    model = fixture("llama")
    assert reference_config_check(model, Format.GGUF, "some-unknown:1b") is None
    smol = REFERENCE_CONFIGS[0]
    assert find_reference("smollm2:135m", model) is smol
    check = reference_config_check(model, Format.GGUF, "smollm2:135m")  # a tiny llama is not SmolLM2
    assert check is not None and check.outcome is FALSIFIED and "hidden_size 64 != reference 576" in check.reason


# ---- golden sets ----------------------------------------------------------------------------------------


def test_golden_cases_carry_their_capability_and_each_is_judged():
    from apr.qa.gates.golden import golden_checks

    engine = engine_of(fixture("qwen2"))
    settings = GoldenOutputGate(
        cases=(
            GoldenCase(prompt="What is 2+2?", expect_any=("4",), capability="arithmetic"),
            GoldenCase(prompt="Capital of France?", expect_any=("Paris",), capability="facts"),
        ),
        max_tokens=4,
    )
    checks = golden_checks(engine, settings, True, Format.GGUF)
    assert [c.check for c in checks] == ["golden:0", "golden:1"]
    assert [c.metrics["capability"] for c in checks] == ["arithmetic", "facts"]
    assert all(c.outcome is FALSIFIED for c in checks)  # random weights answer neither
