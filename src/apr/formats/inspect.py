"""`apr inspect` content: a model's metadata and tensor table as a JSON-ready dict and as text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from apr.formats.ggml import type_name
from apr.formats.model import CanonicalModel


def describe(model: CanonicalModel) -> dict[str, Any]:
    config, tokenizer = model.config, model.tokenizer
    path = Path(model.source_path)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    tensors = [
        {"name": name, "dtype": type_name(s.info.ggml_type), "shape": list(s.info.shape), "bytes": s.info.nbytes}
        for name, s in model.tensors.items()
    ]
    return {
        "path": str(path),
        "format": model.source_format,
        "file_bytes": size,
        "architecture": config.architecture,
        "parameters": int(sum(int(np.prod(s.info.shape)) for s in model.tensors.values())),
        "tensor_bytes": sum(t["bytes"] for t in tensors),
        "dtypes": dict(Counter(t["dtype"] for t in tensors)),
        "config": {k: v for k, v in config.to_dict().items() if k != "extra"},
        "tokenizer": {
            "model": tokenizer.spec.model,
            "pre": tokenizer.spec.pre,
            "vocab_size": tokenizer.vocab_size,
            "merges": len(tokenizer.spec.merges),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_ids": list(tokenizer.eos_token_ids),
            "has_chat_template": tokenizer.has_chat_template,
        },
        "tensor_count": len(tensors),
        "tensors": tensors,
    }


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def render_text(info: dict[str, Any], structure: dict[str, Any] | None = None) -> str:
    lines = [
        f"file:          {info['path']}",
        f"format:        {info['format']}",
        f"architecture:  {info['architecture']}",
        f"parameters:    {info['parameters']:,}",
        f"size:          {_human(info['file_bytes'])} ({info['tensor_count']} tensors; "
        + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items()))
        + ")",
    ]
    lines.append("config:")
    lines.extend(f"  {k}: {v}" for k, v in info["config"].items() if v not in (None, (), [], ""))
    tok = info["tokenizer"]
    lines.append(
        f"tokenizer:     {tok['model']} ({tok['pre']}), vocab {tok['vocab_size']}, merges {tok['merges']}, "
        f"bos {tok['bos_token_id']}, eos {tok['eos_token_ids']}, chat template: "
        f"{'yes' if tok['has_chat_template'] else 'no'}"
    )
    stats = {t["name"]: t for t in (structure or {}).get("tensors", [])}
    width = max(len(t["name"]) for t in info["tensors"])
    header = f"{'NAME'.ljust(width)}  {'DTYPE':6}  {'SHAPE':16}  {'BYTES':>10}"
    if stats:
        header += f"  {'MEAN':>10} {'STD':>10} {'MIN':>10} {'MAX':>10} {'NaN':>4} {'Inf':>4}"
    lines.append(header)
    for t in info["tensors"]:
        row = f"{t['name'].ljust(width)}  {t['dtype']:6}  {str(t['shape']):16}  {_human(t['bytes']):>10}"
        if t["name"] in stats:
            s = stats[t["name"]]
            row += f"  {s['mean']:10.4g} {s['std']:10.4g} {s['min']:10.4g} {s['max']:10.4g} {s['nan_count']:4d} {s['inf_count']:4d}"
        lines.append(row)
    if structure is not None:
        lines.append(
            f"rope_theta: {structure['rope_theta']:g}   tied embeddings: {structure['tied_embeddings']}   "
            f"embedding transposed: {structure['embedding_transposed']}"
        )
        for name, mean in structure["bias_mean"].items():
            lines.append(f"bias_mean {name}: {mean:.4g}")
        lines.append("flags: " + ("none" if not structure["flags"] else ""))
        lines.extend(f"  ! {flag}" for flag in structure["flags"])
    return "\n".join(lines)
