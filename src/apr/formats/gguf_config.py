"""ModelConfig and TokenizerSpec <-> GGUF metadata key/values (llama.cpp's key names)."""

from __future__ import annotations

import math
from typing import Any

from apr.formats.config import CONFIG_LIMITS, LayerType, ModelConfig
from apr.formats.tokenizer_spec import TokenizerSpec, eog_ids

# llama.cpp facts that GGUF files do not carry for Gemma3 (llama-model.cpp).
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0


def gemma3_layer_types(num_layers: int, pattern: int = GEMMA3_SLIDING_PATTERN) -> tuple[LayerType, ...]:
    """Every ``pattern``-th layer is global (HF ``layer_types``), the rest slide."""
    return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(num_layers))


def _need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise ValueError(f"missing metadata key {key!r}")
    return meta[key]


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], spec: TokenizerSpec) -> ModelConfig:
    """The typed config of a GGUF file, from its metadata and tensor list (never from the file name)."""
    arch = _need(meta, "general.architecture")
    p = f"{arch}."
    hidden = int(_need(meta, p + "embedding_length"))
    heads = int(_need(meta, p + "attention.head_count"))
    kv_heads = int(meta.get(p + "attention.head_count_kv", heads))
    head_dim = int(meta.get(p + "attention.key_length") or meta.get(p + "rope.dimension_count") or hidden // heads)
    layers = int(_need(meta, p + "block_count"))
    if not 0 < layers <= CONFIG_LIMITS["num_layers"]:  # before the per-layer tables below are built
        raise ValueError(f"block_count {layers} is out of range (1 to {CONFIG_LIMITS['num_layers']})")
    vocab = int(meta.get(p + "vocab_size") or spec.vocab_size)
    common: dict[str, Any] = dict(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(_need(meta, p + "feed_forward_length")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        context_length=int(_need(meta, p + "context_length")),
        rms_norm_eps=float(_need(meta, p + "attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(p + "rope.freq_base", 10_000.0)),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        bos_token_id=spec.bos_token_id,
        eos_token_ids=spec.eos_token_ids,
        pad_token_id=spec.pad_token_id,
        add_bos_token=spec.add_bos_token,
        name=str(meta.get("general.name", "")),
    )
    if arch == "gemma3":
        window = int(_need(meta, p + "attention.sliding_window"))
        scaling_type = meta.get(p + "rope.scaling.type")
        factor = float(meta.get(p + "rope.scaling.factor", 1.0)) if scaling_type in (None, "linear") else 1.0
        common.update(
            qk_norm=True,
            hidden_activation="gelu_tanh",
            norm_weight_offset=1.0,
            embedding_multiplier=math.sqrt(hidden),
            query_pre_attn_scalar=float(head_dim),
            sliding_window=window,
            layer_types=gemma3_layer_types(layers),
            rope_local_theta=GEMMA3_LOCAL_ROPE_BASE,
            rope_scaling_factor=factor,
        )
    return ModelConfig(**common).validate()


def gguf_kv_from_config(config: ModelConfig) -> dict[str, Any]:
    """Architecture keys for a GGUF file (values typed by the writer: ints u32, floats f32)."""
    p = f"{config.architecture}."
    kv: dict[str, Any] = {
        p + "context_length": config.context_length,
        p + "embedding_length": config.hidden_size,
        p + "block_count": config.num_layers,
        p + "feed_forward_length": config.intermediate_size,
        p + "attention.head_count": config.num_heads,
        p + "attention.head_count_kv": config.num_kv_heads,
        p + "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        p + "rope.freq_base": float(config.rope_theta),
        p + "vocab_size": config.vocab_size,
    }
    if config.architecture == "llama":
        kv[p + "rope.dimension_count"] = config.head_dim
    else:
        kv[p + "attention.key_length"] = config.head_dim
        kv[p + "attention.value_length"] = config.head_dim
    if config.architecture == "gemma3":
        kv[p + "attention.sliding_window"] = int(config.sliding_window or 0)
        if config.rope_scaling_factor != 1.0:
            kv[p + "rope.scaling.type"] = "linear"
            kv[p + "rope.scaling.factor"] = float(config.rope_scaling_factor)
    return kv


def spec_from_gguf(meta: dict[str, Any]) -> TokenizerSpec:
    """The tokenizer stored in a GGUF file (``tokenizer.ggml.*`` and ``tokenizer.chat_template``)."""
    tokens = tuple(_need(meta, "tokenizer.ggml.tokens"))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    extra = [int(meta[k]) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in meta]
    extra.extend(eog_ids(tokens, eos))
    return TokenizerSpec(
        model=str(_need(meta, "tokenizer.ggml.model")),  # type: ignore[arg-type]
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        tokens=tokens,
        token_types=tuple(int(t) for t in meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)),
        merges=tuple(meta.get("tokenizer.ggml.merges") or ()),
        scores=tuple(float(s) for s in meta.get("tokenizer.ggml.scores") or ()),
        bos_token_id=_opt_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_opt_int(eos),
        unk_token_id=_opt_int(meta.get("tokenizer.ggml.unknown_token_id")),
        pad_token_id=_opt_int(meta.get("tokenizer.ggml.padding_token_id")),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        extra_eos_token_ids=tuple(i for i in dict.fromkeys(extra) if i != eos),
    ).validate()


def gguf_kv_from_spec(spec: TokenizerSpec) -> dict[str, Any]:
    kv: dict[str, Any] = {
        "tokenizer.ggml.model": spec.model,
        "tokenizer.ggml.pre": spec.pre,
        "tokenizer.ggml.tokens": list(spec.tokens),
        "tokenizer.ggml.token_type": [int(t) for t in spec.token_types],
    }
    if spec.merges:
        kv["tokenizer.ggml.merges"] = list(spec.merges)
    if spec.scores:
        kv["tokenizer.ggml.scores"] = [float(s) for s in spec.scores]
    for key, value in (
        ("bos_token_id", spec.bos_token_id),
        ("eos_token_id", spec.eos_token_id),
        ("unknown_token_id", spec.unk_token_id),
        ("padding_token_id", spec.pad_token_id),
    ):
        if value is not None:
            kv[f"tokenizer.ggml.{key}"] = int(value)
    kv["tokenizer.ggml.add_bos_token"] = spec.add_bos_token
    kv["tokenizer.ggml.add_eos_token"] = spec.add_eos_token
    kv["tokenizer.ggml.add_space_prefix"] = spec.add_space_prefix
    if spec.chat_template:
        kv["tokenizer.chat_template"] = spec.chat_template
    return kv


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
