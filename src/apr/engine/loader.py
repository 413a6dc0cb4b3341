"""Builds a Transformer from a CanonicalModel: maps canonical tensor names onto layers and kernels."""

from __future__ import annotations

from collections.abc import Callable

from apr.engine.model import Block, Transformer
from apr.engine.native_model import NativeBlock, NativeTransformer
from apr.engine.pack_cache import PackStore
from apr.engine.weights import DenseLinear, WeightPolicy, build_linear, dense_tensor, embedding_rows, is_quantized
from apr.errors import FormatError
from apr.formats.model import CanonicalModel

LINEARS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
NORMS = {
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
    "pre_feedforward_layernorm": "pre_feedforward_layernorm",
    "post_feedforward_layernorm": "post_feedforward_layernorm",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
}


LayerProgress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each built layer (the embedding and head count as the last one)."""


def build_transformer(
    model: CanonicalModel,
    policy: WeightPolicy,
    max_positions: int,
    store: PackStore | None = None,
    progress: LayerProgress | None = None,
) -> Transformer:
    """The network of ``model`` with weights laid out per ``policy``; FormatError names a missing tensor.

    ``store`` supplies already converted layers (and records new conversions) by tensor name."""
    cfg = model.config
    total_steps = cfg.num_layers + 1
    # The native products take float32 activations; their glue kernels then replace ~40 small ops a layer.
    block_class, transformer_class = (
        (NativeBlock, NativeTransformer) if policy.kernels == "native" else (Block, Transformer)
    )

    def source(name: str):
        if name not in model.tensors:
            raise FormatError(f"{model.source_path}: tensor {name!r} is missing; the checkpoint is incomplete")
        return model.tensors[name]

    blocks = []
    for i in range(cfg.num_layers):
        prefix = f"model.layers.{i}."
        linears = {}
        for key, suffix in LINEARS.items():
            bias_name = f"{prefix}{suffix}.bias"
            bias = dense_tensor(model.tensors[bias_name], policy) if bias_name in model.tensors else None
            if key in ("q_proj", "k_proj", "v_proj") and cfg.attention_bias and bias is None:
                raise FormatError(f"{model.source_path}: {bias_name} is missing but the config says q/k/v have biases")
            linears[key] = build_linear(source(f"{prefix}{suffix}.weight"), bias, policy, store)
        norms = {
            key: dense_tensor(model.tensors[f"{prefix}{suffix}.weight"], policy)
            for key, suffix in NORMS.items()
            if f"{prefix}{suffix}.weight" in model.tensors
        }
        if "input_layernorm" not in norms or "post_attention_layernorm" not in norms:
            raise FormatError(f"{model.source_path}: layer {i} lacks its attention/MLP norm weights")
        if cfg.qk_norm and not ("q_norm" in norms and "k_norm" in norms):
            raise FormatError(f"{model.source_path}: layer {i} lacks q/k norms the config asks for")
        blocks.append(block_class(cfg, i, linears, norms))
        if progress is not None:
            progress(i + 1, total_steps)

    embed_source = source("model.embed_tokens.weight")
    if "lm_head.weight" in model.tensors:
        lm_head = build_linear(model.tensors["lm_head.weight"], None, policy, store)
    elif policy.packed and (is_quantized(embed_source.info.ggml_type) or policy.kernels == "native"):
        # Tied: the head gets its own packed copy (stored under a distinct cache name); read once per
        # token, a packed head costs a fraction of the dense embedding's bytes.
        lm_head = build_linear(_Renamed(embed_source, "lm_head.weight"), None, policy, store)
    else:
        lm_head = None  # tied to the dense embedding below: no second copy
    embedding = embedding_rows(embed_source, policy, store, shared_with_head=lm_head is None)
    if lm_head is None:
        lm_head = DenseLinear(embedding, None)
    final_norm = dense_tensor(source("model.norm.weight"), policy)
    if progress is not None:
        progress(total_steps, total_steps)
    return transformer_class(cfg, embedding, blocks, final_norm, lm_head, max_positions)


class _Renamed:
    """A TensorSource seen under another name (the tied embedding used as lm_head)."""

    def __init__(self, source, name: str) -> None:
        from dataclasses import replace

        self._source = source
        self.info = replace(source.info, name=name)

    def raw(self):
        return self._source.raw()

    def dequantize(self, dtype=None):
        return self._source.dequantize(dtype)


def weight_kinds(transformer: Transformer) -> dict[str, int]:
    """How many linear layers use each kernel kind (for ``describe``)."""
    layers = [getattr(block, key) for block in transformer.blocks for key in LINEARS] + [transformer.lm_head]
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
    return counts
