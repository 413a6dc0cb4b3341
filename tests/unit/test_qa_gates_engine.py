"""Gates that run the engine in-process: load, format and tokenizer parity, attention trace, golden output."""

from __future__ import annotations

import pytest
import torch

from apr.qa.axes import Backend, Format
from apr.qa.evidence import Outcome
from apr.qa.gates.attention import TRACE_PROMPT, attention_checks, trace_attention
from apr.qa.gates.load import load_engine_check
from apr.qa.gates.parity import (
    LogitComparison,
    encode_prompts,
    format_parity_checks,
    prompt_logits,
    tokenizer_parity_checks,
)
from apr.qa.gates.thresholds import AttentionTraceGate

PROMPTS = ("What is 2+2?", "def add(a, b):", "你好，世界")


@pytest.fixture(scope="module")
def qwen2():
    from apr.formats.fixtures import build_fixture_model

    return build_fixture_model("qwen2")


@pytest.fixture(scope="module")
def engine(qwen2):
    check, engine = load_engine_check(qwen2, Format.GGUF, Backend.CPU, cuda_available=False)
    assert check.outcome is Outcome.CORROBORATED, check.reason
    return engine


def test_gpu_load_without_cuda_is_skipped_not_passed(qwen2):
    check, engine = load_engine_check(qwen2, Format.GGUF, Backend.GPU, cuda_available=False)
    assert engine is None and check.outcome is Outcome.SKIPPED and "CUDA" in check.reason


def test_identical_logits_agree_fully_and_perturbed_ones_do_not():
    torch.manual_seed(0)
    reference = [torch.randn(5, 50), torch.randn(3, 50)]
    same = LogitComparison.of(reference, [t.clone() for t in reference])
    assert same.top1_agreement == 1.0 and same.mean_kl == pytest.approx(0.0, abs=1e-6) and same.positions == 8
    shuffled = LogitComparison.of(reference, [t[:, torch.randperm(50)] for t in reference])
    assert shuffled.top1_agreement < 0.5 and shuffled.mean_kl > 0.5


def test_format_parity_passes_for_the_same_network_and_fails_for_a_broken_one(engine, qwen2):
    ids = encode_prompts(qwen2, PROMPTS)
    good = prompt_logits(engine, ids)
    broken = [t.flip(-1) for t in good]  # a permuted vocabulary: what a mangled lm_head produces
    checks = format_parity_checks(
        {Format.GGUF: good, Format.APR: [t.clone() for t in good], Format.SAFETENSORS: broken},
        Format.GGUF,
        0.9,
        0.1,
        (Format.GGUF, Format.APR, Format.SAFETENSORS),
    )
    verdicts = {c.check: c.outcome for c in checks}
    assert verdicts == {"apr~gguf": Outcome.CORROBORATED, "safetensors~gguf": Outcome.FALSIFIED}


def test_a_format_without_logits_is_skipped_never_passed(engine, qwen2):
    good = prompt_logits(engine, encode_prompts(qwen2, PROMPTS[:1]))
    checks = format_parity_checks({Format.GGUF: good}, Format.GGUF, 0.9, 0.1, (Format.GGUF, Format.APR))
    assert [c.outcome for c in checks] == [Outcome.SKIPPED]


def test_tokenizer_parity_finds_a_different_tokenizer():
    from apr.formats.fixtures import build_fixture_model

    qwen, llama = build_fixture_model("qwen2"), build_fixture_model("llama")
    corpus = ("Hello, world!", "def f(x):\n    return x", "你好 café")
    same = tokenizer_parity_checks(
        {Format.GGUF: qwen, Format.APR: build_fixture_model("qwen2")}, Format.GGUF, corpus, (Format.GGUF, Format.APR)
    )
    assert [c.outcome for c in same] == [Outcome.CORROBORATED]
    differs = tokenizer_parity_checks(
        {Format.GGUF: qwen, Format.APR: llama}, Format.GGUF, corpus, (Format.GGUF, Format.APR)
    )
    assert [c.outcome for c in differs] == [Outcome.FALSIFIED]


def test_attention_replay_is_the_engines_own_network(engine, qwen2):
    ids = encode_prompts(qwen2, (TRACE_PROMPT,))[0]
    stats, logits = trace_attention(engine, ids)
    reference = engine.logits(ids)
    assert len(stats) == qwen2.config.num_layers * qwen2.config.num_heads
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    assert torch.allclose(torch.softmax(logits, -1), torch.softmax(reference, -1), atol=0.02)


def test_attention_checks_pass_on_a_healthy_model_and_fail_on_thresholds_it_cannot_meet(engine, qwen2):
    ids = encode_prompts(qwen2, (TRACE_PROMPT,))[0]
    healthy = attention_checks(engine, ids, AttentionTraceGate(), Format.GGUF)
    assert all(c.outcome is Outcome.CORROBORATED for c in healthy)
    impossible = attention_checks(
        engine, ids, AttentionTraceGate(min_normalized_entropy=1.0, max_first_position_mass=1e-6), Format.GGUF
    )
    assert [c.outcome for c in impossible] == [Outcome.FALSIFIED, Outcome.FALSIFIED]


def test_golden_output_fails_on_a_random_model(engine):
    from apr.qa.gates.golden import golden_checks
    from apr.qa.gates.thresholds import GoldenOutputGate

    checks = golden_checks(engine, GoldenOutputGate(max_tokens=8), chat=True, fmt=Format.GGUF)
    assert [c.outcome for c in checks] == [Outcome.FALSIFIED]  # random weights do not know that 2+2=4
