"""Run a whole sequence through the model's public pieces and record what each layer does.

The trace does not re-implement the model: each block's own ``input_norm``, ``qkv`` and ``finish`` compute
the layer, and only the attention in between is spelled out (``softmax(q k^T * scale + mask) v``), so that
its weights can be kept. The result equals ``Transformer.prefill``'s scaled_dot_product_attention up to
float rounding; tests check the final logits against ``Engine.logits``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from apr.formats.atomic import atomic_path
from apr.trace.format import TRACE_FORMAT, TRACE_VERSION

# Weights are written with this many decimals: enough to chart, and it keeps a 28-layer trace in megabytes.
WEIGHT_DECIMALS = 5


def _hidden_record(layer: int, name: str, x: torch.Tensor) -> dict[str, Any]:
    x32 = x.float()
    finite = x32[torch.isfinite(x32)]
    stats = finite if finite.numel() else torch.zeros(1)
    return {
        "type": "hidden",
        "layer": layer,
        "name": name,
        "mean": float(stats.mean()),
        "std": float(stats.std(unbiased=False)),
        "rms": float(stats.pow(2).mean().sqrt()),
        "min": float(stats.min()),
        "max": float(stats.max()),
        "abs_max": float(stats.abs().max()),
        "nan": int(torch.isnan(x32).sum()),
        "inf": int(torch.isinf(x32).sum()),
        "token_l2": [round(float(v), 4) for v in x32.norm(dim=-1)],
    }


def _attention_records(layer: int, sliding: bool, weights: torch.Tensor, rep: int) -> Iterator[dict[str, Any]]:
    """One record per head: the causal rows of its weights ``[T, T]`` and summary statistics."""
    t = weights.shape[-1]
    eps = torch.finfo(torch.float32).tiny
    for head in range(weights.shape[0]):
        w = weights[head]
        entropy = -(w * torch.log(w.clamp_min(eps))).sum(-1)
        yield {
            "type": "attention",
            "layer": layer,
            "head": head,
            "kv_head": head // rep,
            "sliding": sliding,
            "entropy_mean": float(entropy.mean()),
            "entropy_min": float(entropy.min()),
            "max_weight": float(w.max()),
            "first_token_weight": float(w[:, 0].mean()),
            "diagonal_weight": float(w.diagonal().mean()),
            "weights": [[round(float(v), WEIGHT_DECIMALS) for v in w[q, : q + 1]] for q in range(t)],
        }


def _attention(
    block: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output ``[T, heads*d]``, weights ``[heads, T, T]``) of causal attention, GQA by repeating kv heads."""
    t = q.shape[0]
    rep = q.shape[1] // k.shape[1]
    qh = q.transpose(0, 1).float()
    kh = k.transpose(0, 1).float().repeat_interleave(rep, dim=0)
    vh = v.transpose(0, 1).float().repeat_interleave(rep, dim=0)
    allowed = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    if window:
        allowed = allowed.triu(-(window - 1))
    scores = (qh @ kh.transpose(1, 2)) * block.scale
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = (weights @ vh).transpose(0, 1).reshape(t, -1)
    return out.to(q.dtype), weights


@torch.inference_mode()
def trace_forward(transformer: Any, ids: list[int], kinds: set[str]) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """(records, logits ``[T, vocab]``) of one cache-free pass over ``ids``. ``kinds``: attention, hidden."""
    tokens = torch.tensor(ids, device=transformer.embedding.device)
    positions = torch.arange(len(ids), device=tokens.device)
    x = transformer.embed(tokens)
    records: list[dict[str, Any]] = []
    if "hidden" in kinds:
        records.append(_hidden_record(-1, "embedding", x))
    tables = transformer.rope_tables_at(positions)
    window = transformer.cfg.sliding_window
    for block in transformer.blocks:
        cos, sin = tables[block.sliding]
        q, k, v = block.qkv(block.input_norm(x), cos, sin, rows=False)
        out, weights = _attention(block, q, k, v, window if block.sliding else None)
        if "attention" in kinds:
            records.extend(_attention_records(block.index, block.sliding, weights, q.shape[1] // k.shape[1]))
        x = block.finish(x, out, rows=False)
        if "hidden" in kinds:
            records.append(_hidden_record(block.index, f"blk.{block.index}", x))
    if "hidden" in kinds:
        records.append(_hidden_record(len(transformer.blocks), "final_norm", transformer.final_norm(x)))
    return records, transformer.head(x)


def trace_header(
    model: Any, transformer: Any, ids: list[int], pieces: list[str], prompt_tokens: int, kinds: set[str]
) -> dict[str, Any]:
    cfg = transformer.cfg
    return {
        "type": "header",
        "format": TRACE_FORMAT,
        "version": TRACE_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(model.source_path),
        "model_format": model.source_format,
        "architecture": cfg.architecture,
        "dtype": str(transformer.dtype).removeprefix("torch."),
        "kinds": sorted(kinds),
        "num_layers": cfg.num_layers,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "sliding_window": cfg.sliding_window,
        "tokens": list(ids),
        "token_text": pieces,
        "prompt_tokens": prompt_tokens,
    }


def write_trace(path: Path, header: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """Header, records, then an end record counting them (a reader refuses a file without it); atomic."""
    with atomic_path(Path(path)) as temp, temp.open("w", encoding="utf-8") as handle:
        for record in (header, *records, {"type": "end", "records": len(records)}):
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
    return Path(path)
