"""The engine on the real small models: parity with transformers (same GGUF) and sanity answers in every format."""

from __future__ import annotations

import pytest
import torch

from apr.engine import SamplingParams, load_engine

pytestmark = pytest.mark.integration

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The speed of light is",
    "import numpy as np\n",
    "Water boils at",
    "My favourite colour is",
    "The first president of the United States",
    "1, 2, 3, 4,",
    "In the beginning",
    "Python is a programming language that",
    "The sun rises in the",
    "A haiku about autumn:",
    "SELECT * FROM users WHERE",
    "The mitochondria is",
    "To be or not to be,",
    "Machine learning models are",
    "The quick brown fox",
    "Paris, London and",
    "Hello, my name is",
]


def _parity(hf, path, fp32_greedy_prompts: int):
    """Our engine (fp32 reference mode and the default packed path) against transformers fp32 (``hf``, read from
    the same GGUF). The default path on CPU is apr's native kernels where they build (``kernels`` in describe())."""
    exact = load_engine(path, device="cpu", dtype="fp32", compile=False)
    packed = load_engine(path, device="cpu", compile=False)
    tok = exact.tokenizer
    print(f"default path: {packed.describe()['kernels']} {packed.describe()['weights']}")
    stats = {"fp32": [0, 0, 0.0], "packed": [0, 0, 0.0]}
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_special_tokens=True)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].float()
        for name, engine in (("fp32", exact), ("packed", packed)):
            ours = engine.logits(ids)
            stats[name][0] += int((ours.argmax(-1) == ref.argmax(-1)).sum())
            stats[name][1] += len(ids)
            stats[name][2] = max(stats[name][2], float((ours - ref).abs().max()))
    greedy = {"fp32": 0, "packed": 0}
    for prompt in PROMPTS[:fp32_greedy_prompts]:
        ids = tok.encode(prompt, add_special_tokens=True)
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=list(exact.eos_token_ids),
                pad_token_id=exact.eos_token_ids[0],
            )
        expected = ref[0, len(ids) :].tolist()
        for name, engine in (("fp32", exact), ("packed", packed)):
            greedy[name] += engine.generate(ids, SamplingParams(max_tokens=32)).token_ids == expected
    for name, (agree, total, worst) in stats.items():
        print(
            f"{path.name} {name}: top-1 {agree}/{total} ({agree / total:.1%}), max |dlogit| {worst:.3f}, "
            f"greedy-32 identical {greedy[name]}/{fp32_greedy_prompts}"
        )
    return stats, greedy


@pytest.mark.parametrize("ref", ["smollm2:135m", "gemma3:270m"])
def test_parity_with_transformers_on_the_same_gguf(real_model, hf_reference, ref):
    path = real_model(ref)
    stats, greedy = _parity(hf_reference(path), path, fp32_greedy_prompts=5)
    agree, total, _ = stats["fp32"]
    assert agree / total >= 0.99
    assert greedy["fp32"] == 5
    # The packed path (activations quantized to int8 per 32 by the native kernels, or bf16 with PyTorch's
    # kernels) is held to top-1 agreement; its greedy continuations drift at near-ties (measured with the
    # bf16 kernels: smollm2 3/5, gemma3 1/5 identical over 32 tokens), so that count is reported, not asserted.
    agree, total, _ = stats["packed"]
    assert agree / total >= 0.85


SANITY = [
    ("What is 2+2?", 24, lambda t: "4" in t),
    ("Write a Python function to add two numbers.", 100, lambda t: "def" in t and "return" in t),
    ("Write 'Hello' in Chinese.", 16, lambda t: "你好" in t and "\ufffd" not in t),
]


@pytest.mark.parametrize("fmt", ["gguf", "apr", "safetensors"])
def test_qwen_coder_answers_sanely_in_every_format(real_model, real_converted, fmt):
    ref = "qwen2.5-coder:1.5b"
    path = real_model(ref) if fmt == "gguf" else real_converted(ref, fmt)
    engine = load_engine(path, device="cpu")
    tok = engine.tokenizer
    assert tok.has_chat_template
    for prompt, max_tokens, ok in SANITY:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        result = engine.generate(tok.encode(text, add_special_tokens=False), SamplingParams(max_tokens=max_tokens))
        print(f"{fmt} {prompt!r} -> {result.text!r}")
        assert ok(result.text), (fmt, prompt, result.text)


@pytest.mark.parametrize("ref", ["smollm2:135m", "gemma3:270m"])
def test_exact_numerics_match_the_float32_log_likelihoods(real_model, hf_reference, ref):
    """--numerics exact: per-token log-likelihoods within 1e-3 nats of transformers fp32 on the same GGUF (what
    lm-eval's loglikelihood tasks compare); the default fast mode's deviation is measured and printed."""
    path = real_model(ref)
    hf = hf_reference(path)
    engines = {"exact": load_engine(path, device="cpu", numerics="exact"), "fast": load_engine(path, device="cpu")}
    worst = {"exact": 0.0, "fast": 0.0}
    for prompt in PROMPTS[:4]:
        ids = engines["exact"].tokenizer.encode(prompt + " and so on, as everyone knows.", add_special_tokens=True)
        with torch.no_grad():
            reference = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        expected = reference[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        for name, engine in engines.items():
            got = torch.tensor(engine.prompt_logprobs(ids)[1:])
            worst[name] = max(worst[name], float((got - expected).abs().max()))
    print(f"{ref}: max |Δ log p| per token vs transformers fp32: exact {worst['exact']:.2e}, fast {worst['fast']:.3f}")
    assert worst["exact"] < 1e-3
