"""Metadata against the reference config: the published Hugging Face config of a known model, value by value.

Plausibility bounds catch what no model of an architecture can have (a Qwen2 rope base of 1e4); they cannot
catch a value that is plausible but not this model's (SmolLM2's 1e5 rope base written as 1e4, an eps off by
a factor of ten, an eos id pointing at another special token). When the checkpoint says which model it is
(its ref, or the ``general.name`` it carries), every field is compared with that model's published config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apr.formats.model import CanonicalModel
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.recording import Check, verdict

META = GateId.METADATA_PLAUSIBILITY
FLOAT_RTOL = 1e-3  # GGUF stores float32: 1e-6 reads back as 9.99999997e-07


@dataclass(frozen=True)
class ReferenceConfig:
    """The values a model's published config.json / generation_config.json / tokenizer.json give."""

    repo: str  # where the values come from
    refs: tuple[str, ...]  # hub refs and general.name values that identify the model
    architecture: str
    vocab_size: int  # embedding rows
    min_tokenizer_tokens: int  # the tokenizer's own entries (the embedding may be padded past them)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    eos_token_ids: tuple[int, ...]  # config.json eos plus generation_config.json eos
    rope_local_theta: float | None = None
    # The committed fingerprint of the published checkpoint (apr.qa.gates.fingerprint; fingerprints/<this>).
    fingerprint: str | None = None


# From the model repositories' config.json and generation_config.json (the GGUF files of the hub catalogue were
# converted from these; docs/qa.md#reference-configs).
REFERENCE_CONFIGS: tuple[ReferenceConfig, ...] = (
    ReferenceConfig(
        repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        refs=("smollm2:135m", "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "Smollm2 135M 8k Lc100K Mix1 Ep2"),
        architecture="llama",
        vocab_size=49152,
        min_tokenizer_tokens=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        context_length=8192,
        rms_norm_eps=1e-5,
        rope_theta=100_000.0,
        eos_token_ids=(2,),
        fingerprint="smollm2-135m.json",
    ),
    ReferenceConfig(
        repo="google/gemma-3-270m",
        refs=("gemma3:270m", "hf://google/gemma-3-270m", "Gemma 3 270m"),
        architecture="gemma3",
        vocab_size=262144,
        min_tokenizer_tokens=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_layers=18,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        context_length=32768,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        eos_token_ids=(1, 106),
        fingerprint="gemma3-270m.json",
    ),
    ReferenceConfig(
        repo="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        refs=(
            "qwen2.5-coder:1.5b",
            "hf://Qwen/Qwen2.5-Coder-1.5B-Instruct",
            "Qwen2.5 Coder 1.5B Instruct GGUF",
            "Qwen2.5 Coder 1.5B Instruct",
        ),
        architecture="qwen2",
        vocab_size=151936,
        min_tokenizer_tokens=151665,
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        context_length=32768,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        eos_token_ids=(151645, 151643),
        fingerprint="qwen2.5-coder-1.5b.json",
    ),
)


def find_reference(ref: str | None, model: CanonicalModel) -> ReferenceConfig | None:
    """The reference of the model ``ref`` names, else of the name the checkpoint carries; None when unknown."""
    names = [n for n in (ref, model.config.name) if n]
    for name in names:
        for reference in REFERENCE_CONFIGS:
            if name in reference.refs:
                return reference
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=FLOAT_RTOL)


def reference_differences(reference: ReferenceConfig, model: CanonicalModel) -> list[str]:
    """Every field where the checkpoint disagrees with its reference, as 'field X != reference Y'."""
    cfg = model.config
    exact = {
        "architecture": (cfg.architecture, reference.architecture),
        "vocab_size": (cfg.vocab_size, reference.vocab_size),
        "hidden_size": (cfg.hidden_size, reference.hidden_size),
        "intermediate_size": (cfg.intermediate_size, reference.intermediate_size),
        "num_layers": (cfg.num_layers, reference.num_layers),
        "num_heads": (cfg.num_heads, reference.num_heads),
        "num_kv_heads": (cfg.num_kv_heads, reference.num_kv_heads),
        "head_dim": (cfg.head_dim, reference.head_dim),
        "context_length": (cfg.context_length, reference.context_length),
    }
    problems = [f"{key} {ours} != reference {theirs}" for key, (ours, theirs) in exact.items() if ours != theirs]
    floats = {
        "rms_norm_eps": (cfg.rms_norm_eps, reference.rms_norm_eps),
        "rope_theta": (cfg.rope_theta, reference.rope_theta),
    }
    if reference.rope_local_theta is not None:
        floats["rope_local_theta"] = (cfg.rope_local_theta or cfg.rope_theta, reference.rope_local_theta)
    problems += [
        f"{key} {ours:g} != reference {theirs:g}" for key, (ours, theirs) in floats.items() if not _close(ours, theirs)
    ]
    tok = model.tokenizer
    if tok is not None:
        if not reference.min_tokenizer_tokens <= tok.vocab_size <= reference.vocab_size:
            problems.append(
                f"tokenizer has {tok.vocab_size} tokens, reference {reference.min_tokenizer_tokens}"
                + (f"..{reference.vocab_size}" if reference.vocab_size != reference.min_tokenizer_tokens else "")
            )
        eos = tok.spec.eos_token_id
        if eos not in reference.eos_token_ids:
            problems.append(f"eos id {eos} is not among the reference eos ids {list(reference.eos_token_ids)}")
    return problems


def reference_config_check(model: CanonicalModel, fmt: Format, ref: str | None) -> Check | None:
    """One check against the published config; None (not planned) when the model is not a known one."""
    reference = find_reference(ref, model)
    if reference is None:
        return None
    problems = reference_differences(reference, model)
    fields = 13 + (reference.rope_local_theta is not None)
    return verdict(
        META,
        "reference-config",
        not problems,
        f"all {fields} fields match {reference.repo}"
        if not problems
        else f"differs from {reference.repo}: " + "; ".join(problems),
        fields,
        format=fmt,
        metrics={"reference": reference.repo, "differences": len(problems)},
    )
