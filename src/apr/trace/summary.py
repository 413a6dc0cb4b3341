"""A trace read back, summarized per layer for `apr inspect TRACE` (text table or JSON) with red flags."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from apr.trace.format import TraceFile

# Heads whose mean attention entropy falls under this attend to a single token everywhere: the audit's
# "attention collapse" falsifier (QA-SHOWCASE-AUDIT lists entropy < 0.1).
COLLAPSE_ENTROPY = 0.1


def summarize(trace: TraceFile) -> dict[str, Any]:
    """Per layer: hidden-state statistics and attention entropy over heads; flags for NaN/Inf and collapse."""
    layers: dict[int, dict[str, Any]] = defaultdict(dict)
    for record in trace.hidden:
        layers[record["layer"]].update(
            name=record["name"],
            mean=record["mean"],
            std=record["std"],
            rms=record["rms"],
            abs_max=record["abs_max"],
            nonfinite=record["nan"] + record["inf"],
        )
    by_layer: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in trace.attention:
        by_layer[record["layer"]].append(record)
    flags = []
    for layer, heads in by_layer.items():
        entropies = [h["entropy_mean"] for h in heads]
        layers[layer].setdefault("name", f"blk.{layer}")
        layers[layer].update(
            heads=len(heads),
            entropy_mean=sum(entropies) / len(entropies),
            entropy_min=min(entropies),
            first_token_weight=max(h["first_token_weight"] for h in heads),
        )
        collapsed = [h["head"] for h in heads if h["entropy_mean"] < COLLAPSE_ENTROPY]
        if collapsed and trace.header.get("prompt_tokens", 0) > 1:
            flags.append(f"blk.{layer}: head(s) {collapsed} have attention entropy < {COLLAPSE_ENTROPY} (collapse)")
    for row in layers.values():
        if row.get("nonfinite"):
            flags.append(f"{row['name']}: {row['nonfinite']} NaN/Inf hidden values")
    header = trace.header
    return {
        "path": str(trace.path),
        "format": header["format"],
        "version": header["version"],
        "model": header["model"],
        "architecture": header["architecture"],
        "dtype": header["dtype"],
        "kinds": header["kinds"],
        "tokens": len(header["tokens"]),
        "prompt_tokens": header["prompt_tokens"],
        "layers": [{"layer": k, **layers[k]} for k in sorted(layers)],
        "flags": flags,
    }


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return f"{value:10.4g}" if isinstance(value, float) else f"{'-' if value is None else value:>10}"


def render_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"trace:         {summary['path']} ({summary['format']} v{summary['version']})",
        f"model:         {summary['model']} ({summary['architecture']}, {summary['dtype']})",
        f"tokens:        {summary['tokens']} ({summary['prompt_tokens']} prompt); kinds: "
        + ", ".join(summary["kinds"]),
    ]
    columns = {
        "rms": "RMS",
        "std": "STD",
        "abs_max": "ABS_MAX",
        "entropy_mean": "ENTROPY",
        "entropy_min": "ENT_MIN",
        "first_token_weight": "SINK_MAX",
    }
    keys = tuple(columns)
    lines.append(f"{'LAYER':12}" + "".join(f"{label:>11}" for label in columns.values()))
    for row in summary["layers"]:
        lines.append(f"{row['name']:12}" + "".join(" " + _cell(row, k) for k in keys))
    lines.append(
        "ENTROPY: mean over heads of each head's mean attention entropy (nats); ENT_MIN: lowest head; "
        "SINK_MAX: highest mean weight any head puts on the first token"
    )
    lines.append("flags: " + ("none" if not summary["flags"] else ""))
    lines.extend(f"  ! {flag}" for flag in summary["flags"])
    return "\n".join(lines)
