"""The logical shape every canonical tensor must have, derived from the ModelConfig."""

from __future__ import annotations

from apr.formats.config import ModelConfig


def expected_shape(config: ModelConfig, name: str) -> tuple[int, ...]:
    h, q, kv, inter, d = config.hidden_size, config.q_size, config.kv_size, config.intermediate_size, config.head_dim
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (config.vocab_size, h)
    suffix = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
    table = {
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "mlp.gate_proj.weight": (inter, h),
        "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter),
        "self_attn.q_norm.weight": (d,),
        "self_attn.k_norm.weight": (d,),
    }
    if suffix in table:
        return table[suffix]
    if name.endswith("norm.weight"):
        return (h,)
    raise KeyError(f"no expected shape for {name!r}")


def check_shapes(where: object, config: ModelConfig, tensors: dict) -> None:
    """Shapes must agree with the config (catches transposed or wrongly sized weights)."""
    from apr.errors import FormatError

    for name, source in tensors.items():
        want = expected_shape(config, name)
        if tuple(source.info.shape) != want:
            raise FormatError(
                f"{where}: tensor {name!r} has shape {list(source.info.shape)}, the config implies {list(want)}"
            )
