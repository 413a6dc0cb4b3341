"""Attention trace: recompute every layer's attention probabilities on a prompt and check they are not degenerate.

It replays the engine's own prefill (same projections, rope and masks, read-only) with explicit softmax
probabilities, because the engine's fused attention does not expose them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import AttentionTraceGate
from apr.qa.recording import Check, verdict

if TYPE_CHECKING:
    import torch

    from apr.engine import Engine

ATTENTION = GateId.ATTENTION_TRACE
TRACE_PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox runs back into the forest."


@dataclass(frozen=True)
class HeadStats:
    layer: int
    head: int
    normalized_entropy: float  # mean over query positions ≥ 1 of H(p) / log(#keys visible)
    first_position_mass: float  # mean probability given to position 0


def _head_stats(layer: int, probs: torch.Tensor, visible: torch.Tensor) -> list[HeadStats]:
    """probs [heads, T, T]; visible [T] = number of keys each query sees."""

    queries = slice(1, None)  # the first query sees only itself: nothing to measure
    p = probs[:, queries].float().clamp_min(1e-12)
    entropy = -(p * p.log()).sum(-1) / visible[queries].float().log()[None]
    first = probs[:, queries, 0].float()
    return [HeadStats(layer, h, float(entropy[h].mean()), float(first[h].mean())) for h in range(probs.shape[0])]


def trace_attention(engine: Engine, ids: list[int]) -> tuple[list[HeadStats], torch.Tensor]:
    """Per-head statistics of every layer for one prompt (at least two tokens), and the replay's logits
    (which must equal ``engine.logits(ids)``: the proof that the replay is the engine's network)."""
    import torch

    # The reference network's submodules are typed as plain nn.Modules: its attributes are read as Any here.
    model: Any = engine.transformer
    with torch.inference_mode():
        t = len(ids)
        tokens = torch.tensor(ids, device=engine.device)
        positions = torch.arange(t, device=engine.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=engine.device).tril()
        window = model.cfg.sliding_window
        local = causal.triu(-(window - 1)) if window else causal
        x = model.embed(tokens)
        stats: list[HeadStats] = []
        for block in model.blocks:
            cos, sin = model.rope(block, positions)
            q, k, v = block.qkv(block.input_norm(x), cos, sin, rows=False)
            group = block.heads // block.kv_heads
            keys = k.repeat_interleave(group, dim=1).transpose(0, 1).float()
            values = v.repeat_interleave(group, dim=1).transpose(0, 1)
            mask = local if block.sliding else causal
            scores = (q.transpose(0, 1).float() @ keys.transpose(1, 2)) * block.scale
            probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            stats += _head_stats(block.index, probs, mask.sum(-1))
            attn = (probs.to(values.dtype) @ values).transpose(0, 1).reshape(t, -1)
            x = block.finish(x, attn, rows=False)
        logits = model.head(x).float().cpu()
    return stats, logits


def attention_checks(engine: Engine, ids: list[int], settings: AttentionTraceGate, fmt) -> list[Check]:
    stats, _ = trace_attention(engine, ids)
    heads = len(stats)
    mean_entropy = sum(s.normalized_entropy for s in stats) / heads
    sink_heads = sum(s.first_position_mass > settings.max_first_position_mass for s in stats)
    finite = all(math.isfinite(s.normalized_entropy) for s in stats)
    collapsed = verdict(
        ATTENTION,
        "entropy",
        finite and mean_entropy >= settings.min_normalized_entropy,
        f"mean normalized attention entropy {mean_entropy:.3f} over {heads} heads "
        f"(min {settings.min_normalized_entropy}){'' if finite else '; NaN in attention'}",
        heads,
        format=fmt,
        measured=mean_entropy,
        threshold=settings.min_normalized_entropy,
        unit="normalized entropy",
        metrics={"heads": heads, "prompt_tokens": len(ids), "mean_normalized_entropy": round(mean_entropy, 5)},
    )
    position0 = verdict(
        ATTENTION,
        "first-position",
        sink_heads < heads,
        f"{sink_heads} of {heads} heads put more than {settings.max_first_position_mass} of their attention on "
        "position 0" + (": attention only ever looks at the first token" if sink_heads == heads else ""),
        heads,
        format=fmt,
        measured=sink_heads / heads,
        threshold=1.0,
        unit="share of heads",
        metrics={"sink_heads": sink_heads, "heads": heads},
    )
    return [collapsed, position0]
