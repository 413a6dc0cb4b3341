"""ModelConfig <-> Hugging Face config.json / generation_config.json (transformers 5 semantics)."""

from __future__ import annotations

import math
from typing import Any

from apr.formats.config import ModelConfig

_HF_CLASS = {
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "llama": ("LlamaForCausalLM", "llama"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}
_ARCH_OF_MODEL_TYPE = {"qwen2": "qwen2", "llama": "llama", "gemma3_text": "gemma3", "gemma3": "gemma3"}


def hf_config_from_model_config(config: ModelConfig) -> dict[str, Any]:
    """config.json contents that ``transformers.AutoModelForCausalLM`` loads into the same network."""
    cls, model_type = _HF_CLASS[config.architecture]
    eos = list(config.eos_token_ids)
    data: dict[str, Any] = {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": config.pad_token_id,
        "torch_dtype": "float32",
        "_name_or_path": config.name,
    }
    if config.architecture == "gemma3":
        data.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar),
            sliding_window=config.sliding_window,
            rope_local_base_freq=config.rope_local_theta,
            layer_types=[
                ("sliding_attention" if kind == "sliding" else "full_attention") for kind in config.layer_kinds
            ],
            final_logit_softcapping=config.final_logit_softcapping,
            attn_logit_softcapping=None,
            rope_parameters={
                "full_attention": _rope(config.rope_theta, config.rope_scaling_factor),
                "sliding_attention": {
                    "rope_type": "default",
                    "rope_theta": config.rope_local_theta or config.rope_theta,
                },
            },
        )
    else:
        data.update(hidden_act="silu", rope_parameters=_rope(config.rope_theta, config.rope_scaling_factor))
        if config.architecture == "llama":
            data.update(attention_bias=config.attention_bias, mlp_bias=False)
        else:
            data.update(use_sliding_window=False, sliding_window=None)
    return data


def _rope(theta: float, factor: float) -> dict[str, Any]:
    if factor != 1.0:
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    return {"rope_type": "default", "rope_theta": theta}


def generation_config_from_model_config(config: ModelConfig) -> dict[str, Any]:
    eos = list(config.eos_token_ids)
    return {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos if len(eos) > 1 else (eos[0] if eos else None),
        "pad_token_id": config.pad_token_id,
        "do_sample": False,
    }


def _rope_theta(data: dict[str, Any], layer_kind: str) -> tuple[float | None, float]:
    params = data.get("rope_parameters") or {}
    if layer_kind in params:
        params = params[layer_kind]
    scaling = data.get("rope_scaling") or {}
    theta = params.get("rope_theta", data.get("rope_theta"))
    factor = (
        params.get("factor", scaling.get("factor", 1.0))
        if (params.get("rope_type") or scaling.get("rope_type") or "default") == "linear"
        else 1.0
    )
    return (float(theta) if theta is not None else None), float(factor)


def model_config_from_hf(
    data: dict[str, Any], generation: dict[str, Any], *, eos_extra: tuple[int, ...], add_bos_token: bool
) -> ModelConfig:
    """ModelConfig from config.json (+ generation_config.json); raises ValueError naming a missing key."""
    model_type = data.get("model_type")
    arch = _ARCH_OF_MODEL_TYPE.get(str(model_type))
    if arch is None:
        raise ValueError(f"model_type {model_type!r} is not supported (qwen2, llama, gemma3_text)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in data:
            raise ValueError(f"config.json lacks {key!r}")
    hidden, heads = int(data["hidden_size"]), int(data["num_attention_heads"])
    layers = int(data["num_hidden_layers"])
    head_dim = int(data.get("head_dim") or hidden // heads)
    theta, factor = _rope_theta(data, "full_attention")
    if theta is None:
        raise ValueError("config.json has no rope_theta (or rope_parameters); refusing to guess it")
    eos_value = generation.get("eos_token_id", data.get("eos_token_id"))
    eos = [eos_value] if isinstance(eos_value, int) else list(eos_value or [])
    eos_ids = tuple(dict.fromkeys([*eos, *eos_extra]))
    common: dict[str, Any] = dict(
        architecture=arch,
        vocab_size=int(data["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(data["intermediate_size"]),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(data.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        context_length=int(data.get("max_position_embeddings") or 2048),
        rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling_factor=factor,
        tie_word_embeddings=bool(data.get("tie_word_embeddings", arch == "gemma3")),
        attention_bias=arch == "qwen2" or bool(data.get("attention_bias", False)),
        bos_token_id=generation.get("bos_token_id", data.get("bos_token_id")),
        eos_token_ids=eos_ids,
        pad_token_id=data.get("pad_token_id", generation.get("pad_token_id")),
        add_bos_token=add_bos_token,
        name=str(data.get("_name_or_path", "")),
    )
    if arch == "gemma3":
        local_theta, _ = _rope_theta(data, "sliding_attention")
        kinds = data.get("layer_types") or []
        pattern = int(data.get("sliding_window_pattern") or 6)
        layer_types = (
            tuple("sliding" if k == "sliding_attention" else "full" for k in kinds)
            if kinds
            else tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(layers))
        )
        common.update(
            qk_norm=True,
            hidden_activation="gelu_tanh",
            norm_weight_offset=1.0,
            embedding_multiplier=math.sqrt(hidden),
            query_pre_attn_scalar=float(data.get("query_pre_attn_scalar") or head_dim),
            sliding_window=int(data.get("sliding_window") or 4096),
            layer_types=layer_types,
            rope_local_theta=float(data.get("rope_local_base_freq") or local_theta or 10_000.0),
            final_logit_softcapping=data.get("final_logit_softcapping"),
        )
    return ModelConfig(**common).validate()


def _int_if_whole(value: float | None) -> int | float | None:
    """transformers types some config floats as int (query_pre_attn_scalar)."""
    return int(value) if value is not None and float(value).is_integer() else value
