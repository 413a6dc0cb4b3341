"""ModelConfig: the one typed description of a transformer checkpoint, read from file metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Architecture = Literal["qwen2", "llama", "gemma3"]
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("qwen2", "llama", "gemma3")
# Upper bounds far above any real model: a corrupt or hostile file is refused before its sizes allocate.
CONFIG_LIMITS: dict[str, int] = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 19,
    "num_layers": 1 << 10,
    "num_heads": 1 << 10,
    "num_kv_heads": 1 << 10,
    "head_dim": 1 << 12,
    "context_length": 1 << 24,
}

# Rotary embedding style. "neox" rotates the two halves of each head (HF's rotate_half);
# "norm" rotates adjacent pairs (GGML's LLAMA_ROPE_TYPE_NORM). Canonical (HF-convention)
# weights always use "neox"; GGUF llama files store q/k rows permuted for "norm" and the
# reader undoes that permutation, so the engine only ever sees "neox".
RopeType = Literal["neox", "norm"]
LayerType = Literal["full", "sliding"]
Activation = Literal["silu", "gelu_tanh"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything the engine needs to build the network. Field semantics follow Hugging Face.

    Readers fill every field from metadata (GGUF keys, config.json, APR JSON); nothing is
    guessed from file names. ``validate()`` rejects inconsistent values.
    """

    architecture: Architecture
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: RopeType = "neox"
    # Gemma3: sliding-window layers use their own rope base (10_000); None = same as rope_theta.
    rope_local_theta: float | None = None
    # Linear rope scaling factor for global layers (Gemma3 >= 4B uses 8.0); 1.0 = none.
    rope_scaling_factor: float = 1.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k (Gemma3)
    hidden_activation: Activation = "silu"
    # Gemma: norms compute x * (1 + w) and embeddings are scaled by sqrt(hidden_size).
    norm_weight_offset: float = 0.0
    embedding_multiplier: float = 1.0
    # Softmax scale is query_pre_attn_scalar ** -0.5 (Gemma3); None means head_dim ** -0.5.
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] = ()  # per layer; empty means all "full"
    final_logit_softcapping: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    add_bos_token: bool = False
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def layer_kinds(self) -> tuple[LayerType, ...]:
        full: tuple[LayerType, ...] = ("full",)
        return self.layer_types or full * self.num_layers

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def validate(self) -> ModelConfig:
        """Raise ValueError naming the first inconsistent field; return self when sound."""
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {SUPPORTED_ARCHITECTURES}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "context_length",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
            if getattr(self, name) > CONFIG_LIMITS[name]:
                raise ValueError(f"{name} {getattr(self, name)} is beyond any model (at most {CONFIG_LIMITS[name]})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if not 0 < self.rms_norm_eps < 1:
            raise ValueError(f"rms_norm_eps out of range: {self.rms_norm_eps}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        if "sliding" in self.layer_kinds and not self.sliding_window:
            raise ValueError("sliding layers need sliding_window")
        for tid in (*self.eos_token_ids, self.bos_token_id, self.pad_token_id):
            if tid is not None and not 0 <= tid < self.vocab_size:
                raise ValueError(f"special token id {tid} outside vocab of {self.vocab_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layer_types"] = list(self.layer_types)
        data["eos_token_ids"] = list(self.eos_token_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        values = dict(data)
        values["layer_types"] = tuple(values.get("layer_types", ()))
        values["eos_token_ids"] = tuple(values.get("eos_token_ids", ()))
        return cls(**values).validate()
