"""APR v2 JSON metadata: typed keys, the embedded tokenizer, and our exact ModelConfig."""

from __future__ import annotations

from typing import Any

from apr.formats.config import ModelConfig
from apr.formats.model import CanonicalModel
from apr.formats.tokenizer_spec import TokenizerSpec

ROPE_TYPE_CODE = {"norm": 0, "neox": 2}


def _chat_format(template: str | None) -> str:
    if not template:
        return "raw"
    return "chatml" if "<|im_start|>" in template else "custom"


def build_metadata(
    model: CanonicalModel,
    shapes: dict[str, list[int]],
    value_offsets: dict[str, float],
    total_size: int,
    param_count: int,
) -> dict[str, Any]:
    """One flat JSON object: the reference's typed keys first, then ``tokenizer.*`` and ``apr.*`` keys.

    Only canonical key names are written (never an alias next to it: realizar then drops everything).
    """
    config, spec = model.config, model.tokenizer.spec
    text = model.tokenizer.special_tokens_map()
    special = {k: v for k, v in text.items() if v is not None}
    for key, token in (("im_start_token", "<|im_start|>"), ("im_end_token", "<|im_end|>")):
        if token in spec.tokens:
            special[key] = token
    meta: dict[str, Any] = {
        "model_type": config.architecture,
        "name": config.name or None,
        "license": None,
        "data_source": None,
        "data_license": None,
        "version": "1.0.0",
        "original_format": model.source_format,
        "total_size": total_size,
        "param_count": param_count,
        "chat_template": spec.chat_template,
        "chat_format": _chat_format(spec.chat_template),
        "special_tokens": special,
        "architecture": config.architecture,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_kv_heads": config.num_kv_heads,
        "vocab_size": config.vocab_size,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.context_length,
        "rope_theta": config.rope_theta,
        "rope_type": ROPE_TYPE_CODE[config.rope_type],
        "rms_norm_eps": config.rms_norm_eps,
        "head_dim": config.head_dim,
        "tensor_shapes": shapes,
        "tied_embeddings": config.tie_word_embeddings,
        "tokenizer.vocabulary": list(spec.tokens),
        "tokenizer.vocab_size": spec.vocab_size,
        "tokenizer.merges": list(spec.merges),
        "tokenizer.scores": list(spec.scores),
        "tokenizer.token_type": list(spec.token_types),
        "tokenizer.model": spec.model,
        "tokenizer.model_type": spec.model,
        "tokenizer.pre_type": spec.pre,
        "tokenizer.bos_token_id": spec.bos_token_id,
        "tokenizer.eos_token_id": spec.eos_token_id,
        "tokenizer.eos_token_ids": list(spec.eos_token_ids),
        "tokenizer.unknown_token_id": spec.unk_token_id,
        "tokenizer.padding_token_id": spec.pad_token_id,
        "tokenizer.add_bos_token": spec.add_bos_token,
        "tokenizer.add_eos_token": spec.add_eos_token,
        "tokenizer.add_space_prefix": spec.add_space_prefix,
        "tokenizer.chat_template": spec.chat_template,
        "apr.model_config": {k: v for k, v in config.to_dict().items() if k != "extra"},
        "apr.value_offsets": value_offsets,
    }
    return meta


def spec_from_metadata(meta: dict[str, Any]) -> TokenizerSpec:
    tokens = meta.get("tokenizer.vocabulary")
    if not tokens:
        raise ValueError("no embedded tokenizer (tokenizer.vocabulary is missing)")
    eos = meta.get("tokenizer.eos_token_id")
    extra = tuple(i for i in meta.get("tokenizer.eos_token_ids") or () if i != eos)
    return TokenizerSpec(
        model=meta.get("tokenizer.model_type") or meta.get("tokenizer.model") or "gpt2",
        pre=meta.get("tokenizer.pre_type") or "default",
        tokens=tuple(tokens),
        token_types=tuple(meta.get("tokenizer.token_type") or [1] * len(tokens)),
        merges=tuple(meta.get("tokenizer.merges") or ()),
        scores=tuple(meta.get("tokenizer.scores") or ()),
        bos_token_id=meta.get("tokenizer.bos_token_id"),
        eos_token_id=eos,
        unk_token_id=meta.get("tokenizer.unknown_token_id"),
        pad_token_id=meta.get("tokenizer.padding_token_id"),
        add_bos_token=bool(meta.get("tokenizer.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.add_eos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.add_space_prefix", False)),
        chat_template=meta.get("tokenizer.chat_template") or meta.get("chat_template"),
        extra_eos_token_ids=extra,
    ).validate()


def config_from_metadata(meta: dict[str, Any]) -> ModelConfig:
    exact = meta.get("apr.model_config")
    if isinstance(exact, dict):
        return ModelConfig.from_dict(exact)
    raise ValueError("no apr.model_config in the metadata (file not written by apr); re-convert it with `apr convert`")
