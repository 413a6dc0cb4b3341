"""The one tensor-name map per architecture: Hugging Face (canonical, also APR) <-> GGUF."""

from __future__ import annotations

import re

from apr.formats.config import SUPPORTED_ARCHITECTURES

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output.weight": "lm_head.weight",
    "output_norm.weight": "model.norm.weight",
}

_BLOCK_COMMON = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
}

_BLOCK_BY_ARCH: dict[str, dict[str, str]] = {
    "llama": {**_BLOCK_COMMON, "ffn_norm.weight": "post_attention_layernorm.weight"},
    "qwen2": {
        **_BLOCK_COMMON,
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias",
    },
    # Gemma3 has four norms per block; GGUF's "ffn_norm" is HF's *pre*-feedforward norm.
    "gemma3": {
        **_BLOCK_COMMON,
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
    },
}

_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _block_map(arch: str) -> dict[str, str]:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not one of {SUPPORTED_ARCHITECTURES}")
    return _BLOCK_BY_ARCH[arch]


def gguf_to_hf(arch: str, gguf_name: str) -> str | None:
    """Canonical (HF) name of a GGUF tensor, or None when the architecture has no such tensor."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    match = _GGUF_BLOCK.match(gguf_name)
    if not match:
        return None
    suffix = _block_map(arch).get(match.group(2))
    return f"model.layers.{match.group(1)}.{suffix}" if suffix else None


def hf_to_gguf(arch: str, hf_name: str) -> str | None:
    """GGUF name of a canonical tensor, or None when GGUF has no such tensor."""
    for gguf_name, hf in _GLOBAL.items():
        if hf == hf_name:
            return gguf_name
    match = _HF_BLOCK.match(hf_name)
    if not match:
        return None
    for gguf_suffix, hf_suffix in _block_map(arch).items():
        if hf_suffix == match.group(2):
            return f"blk.{match.group(1)}.{gguf_suffix}"
    return None


def expected_hf_names(arch: str, num_layers: int, *, tied: bool) -> list[str]:
    """Every tensor a complete checkpoint of ``arch`` holds, in canonical names."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not tied:
        names.append("lm_head.weight")
    for layer in range(num_layers):
        names.extend(f"model.layers.{layer}.{suffix}" for suffix in _block_map(arch).values())
    return names


def is_norm_weight(hf_name: str) -> bool:
    """RMSNorm weights, which Gemma stores offset by one in GGUF."""
    return hf_name.endswith("norm.weight")


def is_rope_permuted(arch: str, hf_name: str) -> bool:
    """GGUF llama files store q/k rows permuted for GGML's NORM rope (llama.cpp ``permute``)."""
    return arch == "llama" and (
        hf_name.endswith("self_attn.q_proj.weight") or hf_name.endswith("self_attn.k_proj.weight")
    )
