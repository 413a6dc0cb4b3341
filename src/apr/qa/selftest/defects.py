"""The catalogue of planted defects: each one a real conversion or packaging bug, applied to a GGUF copy.

Every defect says whether it applies to a model (a bias can only be dropped where there is one) and plants
itself deterministically (seeded), so the same model always gets the same mutants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from apr.qa.selftest.gguf_edit import GgufCopy, GgufTensor

SEED = 24
# Byte offsets of the f16 scale fields in each quantized block (GGML layouts): d first, then the min, if any.
SCALE_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}
ROPE_BUG_BASE = 10_000.0  # the llama default a converter falls back to when it loses the config's rope base
EPS_FACTOR = 100.0
FFN_FACTOR = 4.0
VOCAB_KEEP = 0.75
SCALE_SPREAD = 0.5  # quantization scales multiplied by exp(U(-spread, spread))
ENDING_TEXTS = ("<|im_end|>", "<|endoftext|>", "<eos>", "</s>", "<end_of_turn>", "<|eot_id|>", "<|end_of_text|>")


@dataclass(frozen=True)
class Defect:
    """One planted defect: its id, what it does, where it applies, and how it is planted."""

    id: str
    description: str
    plant: Callable[[GgufCopy], None]
    applies: Callable[[GgufCopy], str | None] = lambda copy: None  # None, or why it does not apply

    def why_not(self, copy: GgufCopy) -> str | None:
        return self.applies(copy)


# ---- helpers --------------------------------------------------------------------------------------------


def _type_name(ggml_type: int) -> str:
    from apr.formats.ggml import type_name

    return type_name(ggml_type)


def _scaled_blocks(
    tensor: GgufTensor, factors: np.ndarray | float, fields: tuple[int, ...] | None = None
) -> GgufTensor:
    """``tensor`` with its f16 scale fields multiplied (per block when ``factors`` is an array)."""
    from apr.formats.ggml import ggml_type

    if tensor.data.dtype != np.uint8:  # a float tensor: scale the values
        return GgufTensor(
            (tensor.data * np.asarray(factors, dtype=np.float32).mean()).astype(tensor.data.dtype), tensor.ggml_type
        )
    kind = ggml_type(tensor.ggml_type)
    blocks = np.array(tensor.data, copy=True).reshape(-1, kind.block_bytes)
    for offset in fields if fields is not None else SCALE_FIELDS[kind.name]:
        scale = blocks[:, offset : offset + 2].copy().view(np.float16)[:, 0].astype(np.float32)
        scaled = (scale * np.broadcast_to(np.asarray(factors, dtype=np.float32), scale.shape)).astype(np.float16)
        blocks[:, offset : offset + 2] = scaled.view(np.uint8).reshape(-1, 2)
    return GgufTensor(blocks.reshape(tensor.data.shape), tensor.ggml_type)


def _layer_tensors(copy: GgufCopy, suffix: str) -> list[str]:
    return [f"blk.{i}.{suffix}" for i in range(copy.layer_count()) if f"blk.{i}.{suffix}" in copy.tensors]


def _needs_template(copy: GgufCopy) -> str | None:
    return None if copy.get("tokenizer.chat_template") else "the model has no chat template"


def _needs_bias(copy: GgufCopy) -> str | None:
    return None if _layer_tensors(copy, "attn_q.bias") else f"{copy.architecture} has no q/k/v biases"


# ---- the defects ----------------------------------------------------------------------------------------


def layer_order(copy: GgufCopy) -> None:
    """Blocks renumbered in text order (0, 1, 10, 11, ..., 2, 20, ...): a converter that sorted names as strings."""
    count = copy.layer_count()
    order = sorted(range(count), key=str)  # position p now holds the block that was layer order[p]
    if order == list(range(count)):  # under 11 layers text order is numeric order: swap first and last
        order = [count - 1, *range(1, count - 1), 0]
    renamed: dict[str, GgufTensor] = {}
    for name, tensor in copy.tensors.items():
        if name.startswith("blk."):
            index, rest = name[4:].split(".", 1)
            name = f"blk.{order.index(int(index))}.{rest}"
        renamed[name] = tensor
    copy.tensors = renamed


def rope_theta(copy: GgufCopy) -> None:
    key = copy.key("rope.freq_base")
    theta = float(copy.get(key, ROPE_BUG_BASE))
    new = ROPE_BUG_BASE if theta != ROPE_BUG_BASE else 1_000_000.0
    if key in copy.metadata:
        copy.set(key, new)
    else:
        from gguf import GGUFValueType

        from apr.qa.selftest.gguf_edit import MetaValue

        copy.metadata[key] = MetaValue(new, GGUFValueType.FLOAT32)


def norm_eps(copy: GgufCopy) -> None:
    key = copy.key("attention.layer_norm_rms_epsilon")
    copy.set(key, float(copy.get(key)) * EPS_FACTOR)


def qk_permutation(copy: GgufCopy) -> None:
    """q/k rows in the wrong rotary order: llama.cpp's permutation undone (llama) or applied where none belongs."""
    from apr.formats.tensor_source import rope_permutation

    heads = {
        "attn_q": int(copy.get(copy.key("attention.head_count"))),
        "attn_k": int(copy.get(copy.key("attention.head_count_kv"))),
    }
    for part, n_head in heads.items():
        for name in _layer_tensors(copy, f"{part}.weight"):
            tensor = copy.tensors[name]
            perm = rope_permutation(tensor.data.shape[0], n_head)
            rows = np.argsort(perm) if copy.architecture == "llama" else perm
            copy.tensors[name] = GgufTensor(np.ascontiguousarray(tensor.data[rows]), tensor.ggml_type)


def gate_up(copy: GgufCopy) -> None:
    for gate in _layer_tensors(copy, "ffn_gate.weight"):
        up = gate.replace("ffn_gate", "ffn_up")
        copy.tensors[gate], copy.tensors[up] = copy.tensors[up], copy.tensors[gate]


def quant_scales(copy: GgufCopy) -> None:
    """Every block's scale d of every quantized matrix multiplied by a seeded factor in [e^-0.5, e^0.5]."""
    from apr.formats.ggml import ggml_type

    rng = np.random.default_rng(SEED)
    for name, tensor in copy.tensors.items():
        if tensor.data.dtype != np.uint8 or _type_name(tensor.ggml_type) not in SCALE_FIELDS:
            continue
        kind = ggml_type(tensor.ggml_type)
        n_blocks = tensor.data.size // kind.block_bytes
        factors = np.exp(rng.uniform(-SCALE_SPREAD, SCALE_SPREAD, n_blocks))
        copy.tensors[name] = _scaled_blocks(tensor, factors, SCALE_FIELDS[kind.name][:1])


def nan_norm(copy: GgufCopy) -> None:
    name = f"blk.{copy.layer_count() // 2}.ffn_norm.weight"
    values = np.array(copy.tensors[name].data, dtype=np.float32, copy=True)
    values[0] = np.nan
    copy.tensors[name] = GgufTensor(values, copy.tensors[name].ggml_type)


def embedding_transposed(copy: GgufCopy) -> None:
    """token_embd written [hidden, vocab] (dequantized to F16): a converter that forgot GGUF's reversed dims."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    tensor = copy.tensors["token_embd.weight"]
    values = dequantize(tensor.data, GGMLQuantizationType(tensor.ggml_type))
    copy.tensors["token_embd.weight"] = GgufTensor(
        np.ascontiguousarray(values.T).astype(np.float16), int(GGMLQuantizationType.F16)
    )


def attn_norm_zeroed(copy: GgufCopy) -> None:
    """Every attention norm stored as zeros (Gemma stores 1 + w, so its applied weight is zero too)."""
    for name in _layer_tensors(copy, "attn_norm.weight"):
        tensor = copy.tensors[name]
        copy.tensors[name] = GgufTensor(np.zeros_like(np.asarray(tensor.data, dtype=np.float32)), tensor.ggml_type)


def ffn_scaled(copy: GgufCopy) -> None:
    """Every ffn_down multiplied by 4 (all block scale fields, so each value is exactly 4x)."""
    for name in _layer_tensors(copy, "ffn_down.weight"):
        copy.tensors[name] = _scaled_blocks(copy.tensors[name], FFN_FACTOR)


def tokenizer_dropped(copy: GgufCopy) -> None:
    copy.metadata = {k: v for k, v in copy.metadata.items() if not k.startswith("tokenizer.")}


def vocab_truncated(copy: GgufCopy) -> None:
    """The tokenizer's token list (and types, scores, merges that need the lost tokens) cut to 3/4."""
    tokens = list(copy.get("tokenizer.ggml.tokens"))
    keep = int(len(tokens) * VOCAB_KEEP)
    kept = set(tokens[:keep])
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in copy.metadata:
            copy.set(key, list(copy.get(key))[:keep])
    merges = copy.get("tokenizer.ggml.merges")
    if merges:
        still = [m for m in merges if all(p in kept for p in m.split(" ")) and m.replace(" ", "") in kept]
        if still:
            copy.set("tokenizer.ggml.merges", still)
        else:  # GGUF has no empty arrays
            del copy.metadata["tokenizer.ggml.merges"]


def eos_changed(copy: GgufCopy) -> None:
    """The eos id moved to another special token that ends nothing (e.g. <|im_start|>, <pad>)."""
    from apr.formats.tokenizer_spec import TOKEN_CONTROL

    eos = int(copy.get("tokenizer.ggml.eos_token_id"))
    tokens = copy.get("tokenizer.ggml.tokens")
    types = copy.get("tokenizer.ggml.token_type")
    candidates = [
        i for i, kind in enumerate(types) if kind == TOKEN_CONTROL and i != eos and tokens[i] not in ENDING_TEXTS
    ]
    copy.set("tokenizer.ggml.eos_token_id", candidates[0] if candidates else (eos + 1) % len(tokens))


def chat_template_broken(copy: GgufCopy) -> None:
    """The chat template cut in half (a truncated metadata string): it no longer parses."""
    template = str(copy.get("tokenizer.chat_template"))
    copy.set("tokenizer.chat_template", template[: len(template) // 2])


def bias_dropped(copy: GgufCopy) -> None:
    drop = {name for part in ("attn_q", "attn_k", "attn_v") for name in _layer_tensors(copy, f"{part}.bias")}
    copy.tensors = {k: v for k, v in copy.tensors.items() if k not in drop}


DEFECTS: tuple[Defect, ...] = (
    Defect(
        "layer-order",
        "blocks renumbered in text order (0, 1, 10, 11, ..., 2, ...; first and last swapped under 11 layers)",
        layer_order,
    ),
    Defect("rope-theta", f"rope base changed to {ROPE_BUG_BASE:g} (1e6 where it already was)", rope_theta),
    Defect("norm-eps", f"rms norm eps multiplied by {EPS_FACTOR:g}", norm_eps),
    Defect(
        "qk-permutation",
        "q/k rows in the wrong rotary order (llama.cpp's permutation undone/misapplied)",
        qk_permutation,
    ),
    Defect("gate-up-swap", "ffn_gate and ffn_up swapped in every block", gate_up),
    Defect(
        "quant-scales",
        f"every block scale of every quantized matrix times exp(U(-{SCALE_SPREAD}, {SCALE_SPREAD}))",
        quant_scales,
    ),
    Defect("nan-norm", "one NaN in the middle block's ffn norm", nan_norm),
    Defect("embedding-transposed", "token embedding stored [hidden, vocab] (F16)", embedding_transposed),
    Defect("attn-norm-zeroed", "every attention norm weight zero", attn_norm_zeroed),
    Defect("ffn-scaled", f"every ffn_down times {FFN_FACTOR:g}", ffn_scaled),
    Defect("tokenizer-dropped", "all tokenizer.* metadata removed", tokenizer_dropped),
    Defect("vocab-truncated", f"tokenizer vocabulary cut to {VOCAB_KEEP:.0%}", vocab_truncated),
    Defect("eos-changed", "eos id moved to a special token that ends nothing", eos_changed),
    Defect("chat-template-broken", "chat template cut in half", chat_template_broken, _needs_template),
    Defect("bias-dropped", "q/k/v biases removed", bias_dropped, _needs_bias),
)
DEFECT_IDS: tuple[str, ...] = tuple(d.id for d in DEFECTS)


def defect(defect_id: str) -> Defect:
    for item in DEFECTS:
        if item.id == defect_id:
            return item
    raise KeyError(defect_id)
