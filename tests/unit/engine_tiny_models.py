"""Tiny seeded transformers models wrapped as CanonicalModels, plus a byte tokenizer, for engine unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from apr.formats.config import ModelConfig
from apr.formats.model import CanonicalModel, TensorInfo

ARCHS = ("qwen2", "llama", "gemma3")
SPECIALS = 4  # ids 0..3 are specials, byte b is id b + 4


class ByteTokenizer:
    """One token per UTF-8 byte: multibyte characters always span several tokens (the hard case for streaming)."""

    bos_token_id = 2
    has_chat_template = False
    chat_template = None
    vocab_size = 256 + SPECIALS

    def __init__(self, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.eos_token_ids = eos_token_ids

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b + SPECIALS for b in text.encode("utf-8")]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - SPECIALS for i in ids if i >= SPECIALS).decode("utf-8", errors="replace")


@dataclass
class DenseSource:
    """A TensorSource over an in-memory float tensor (stored as F32)."""

    info: TensorInfo
    value: torch.Tensor

    def raw(self):
        return self.value.float().numpy().view("uint8").reshape(max(1, self.value.shape[0]), -1)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.value.to(dtype or torch.float32).clone()


def hf_config(arch: str):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    if arch == "qwen2":
        return Qwen2Config(
            num_hidden_layers=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=False,
            **common,
        )
    if arch == "llama":
        return LlamaConfig(
            num_hidden_layers=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e5},
            tie_word_embeddings=True,
            **common,
        )
    return Gemma3TextConfig(
        num_hidden_layers=3,
        head_dim=16,
        sliding_window=6,
        query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        tie_word_embeddings=True,
        **common,
    )


def model_config(arch: Any, hf) -> ModelConfig:  # "qwen2" | "llama" | "gemma3"
    gemma = arch == "gemma3"
    rope = hf.rope_parameters
    return ModelConfig(
        architecture=arch,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        context_length=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps,
        rope_theta=(rope["full_attention"] if gemma else rope)["rope_theta"],
        rope_local_theta=rope["sliding_attention"]["rope_theta"] if gemma else None,
        tie_word_embeddings=hf.tie_word_embeddings,
        attention_bias=arch == "qwen2",
        qk_norm=gemma,
        hidden_activation="gelu_tanh" if gemma else "silu",
        norm_weight_offset=1.0 if gemma else 0.0,
        embedding_multiplier=hf.hidden_size**0.5 if gemma else 1.0,
        query_pre_attn_scalar=hf.query_pre_attn_scalar if gemma else None,
        sliding_window=hf.sliding_window if gemma else None,
        layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in hf.layer_types) if gemma else (),
    ).validate()


def tiny_pair(arch: str, seed: int = 0, eos_token_ids: tuple[int, ...] = ()):
    """(transformers model in fp32 eval mode, the same weights as a CanonicalModel with a byte tokenizer)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf_cfg = hf_config(arch)
    hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "norm" in name:
                # Norm weights near their identity value, so the (1 + w) / w conventions both matter.
                p.copy_((0.0 if arch == "gemma3" else 1.0) + 0.2 * noise)
            else:
                p.copy_(noise * (0.5 if "embed" in name else 0.15))
    tensors = {
        name: DenseSource(TensorInfo(name, tuple(p.shape), 0, p.numel() * 4), p.detach().clone())
        for name, p in hf.state_dict().items()
        if not (hf_cfg.tie_word_embeddings and name == "lm_head.weight")
    }
    # The engine reads a tokenizer and tensors only through what these duck types provide.
    tokenizer: Any = ByteTokenizer(eos_token_ids)
    stored: Any = tensors
    canonical = CanonicalModel(model_config(arch, hf_cfg), tokenizer, stored, Path(f"<tiny {arch}>"), "safetensors")
    return hf, canonical
