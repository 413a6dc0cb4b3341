"""Structure statistics for `apr inspect --trace-structure`: per-tensor stats and red flags."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from apr.formats import names
from apr.formats.ggml import type_name
from apr.formats.model import CanonicalModel
from apr.formats.tensor_encode import row_chunks
from apr.formats.tensor_source import StoredTensor

NEAR_ZERO = 1e-3
# Rope bases an architecture is expected to use (Qwen2.5 needs 1e6; 1e4 there means config.json was lost).
ROPE_THETA_RANGE = {"qwen2": (1e5, 1e8), "llama": (1e3, 1e7), "gemma3": (1e4, 1e8)}


@dataclass
class TensorStats:
    name: str
    dtype: str
    shape: list[int]
    mean: float
    std: float
    min: float
    max: float
    nan_count: int
    inf_count: int
    zero_fraction: float


def tensor_stats(source: StoredTensor) -> TensorStats:
    """Stats of the HF-convention values, accumulated chunk by chunk in float64."""
    count = zeros = nan = inf = 0
    total = total_sq = 0.0
    low, high = math.inf, -math.inf
    for start, stop in row_chunks(source):
        values = source.dequantize_rows(start, stop).astype(np.float64).reshape(-1)
        finite = np.isfinite(values)
        nan += int(np.isnan(values).sum())
        inf += int(np.isinf(values).sum())
        good = values[finite]
        count += good.size
        total += float(good.sum())
        total_sq += float((good * good).sum())
        zeros += int((good == 0).sum())
        if good.size:
            low, high = min(low, float(good.min())), max(high, float(good.max()))
    mean = total / count if count else math.nan
    var = max(0.0, total_sq / count - mean * mean) if count else math.nan
    return TensorStats(
        source.info.name,
        type_name(source.info.ggml_type),
        list(source.info.shape),
        mean,
        math.sqrt(var),
        low if count else math.nan,
        high if count else math.nan,
        nan,
        inf,
        zeros / count if count else math.nan,
    )


def trace_structure(model: CanonicalModel, name_filter: str | None = None) -> dict[str, Any]:
    """Per-tensor stats plus the flags a conversion bug leaves behind (stats only for names containing
    ``name_filter`` when given; shape and tying checks always see the whole model)."""
    config = model.config
    stats = {
        name: tensor_stats(source)
        for name, source in model.tensors.items()
        if name_filter is None or name_filter in name
    }
    flags: list[str] = []
    bias_mean = {
        name: s.mean for name, s in stats.items() if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))
    }
    if config.attention_bias and not bias_mean:
        flags.append("attention_bias is set but no q/k/v bias tensors exist")
    flags.extend(
        f"{name}: q/k/v bias is all zero (dropped biases?)"
        for name, s in stats.items()
        if name in bias_mean and s.zero_fraction == 1.0
    )
    norm_scale = {}
    for name in stats:
        if names.is_norm_weight(name):
            # The scale a norm actually applies is w + offset (Gemma: 1 + w); norms are small, decode whole.
            scale = np.abs(model.tensors[name].dequantize_numpy().astype(np.float64) + config.norm_weight_offset)
            effective = float(scale.mean())
            norm_scale[name] = effective
            if effective < NEAR_ZERO:
                flags.append(f"{name}: norm weight near zero (mean |scale| {effective:.2e})")
    flags.extend(
        f"{name}: {s.nan_count} NaN / {s.inf_count} Inf values"
        for name, s in stats.items()
        if s.nan_count or s.inf_count
    )
    low, high = ROPE_THETA_RANGE.get(config.architecture, (1.0, 1e9))
    if not low <= config.rope_theta <= high:
        flags.append(
            f"rope_theta {config.rope_theta:g} is implausible for {config.architecture} (expected {low:g}-{high:g})"
        )
    embed = model.tensors["model.embed_tokens.weight"].info.shape
    transposed = tuple(embed) != (config.vocab_size, config.hidden_size)
    if transposed:
        flags.append(f"embedding shape {list(embed)} is not [vocab, hidden] (transposed?)")
    head = model.tensors.get("lm_head.weight")
    head_copies_embedding = bool(
        head is not None
        and head.info.ggml_type == model.tensors["model.embed_tokens.weight"].info.ggml_type
        and np.array_equal(head.raw(), model.tensors["model.embed_tokens.weight"].raw())
    )
    if head_copies_embedding:
        flags.append("lm_head.weight is a byte copy of the embedding (tied weights stored twice)")
    return {
        "rope_theta": config.rope_theta,
        "rope_local_theta": config.rope_local_theta,
        "tied_embeddings": config.tie_word_embeddings,
        "embedding_transposed": transposed,
        "lm_head_copies_embedding": head_copies_embedding,
        "bias_mean": bias_mean,
        "norm_effective_mean": norm_scale,
        "flags": flags,
        "tensors": [asdict(s) for s in stats.values()],
    }
