"""Metadata plausibility and structure: config values an architecture can really have, and weights that are really there."""

from __future__ import annotations

import numpy as np

from apr.formats.model import CanonicalModel
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.recording import Check, verdict

META, STRUCT = GateId.METADATA_PLAUSIBILITY, GateId.STRUCTURE
# Plausible rope bases by architecture. Qwen2 ships 1e6 (1e4 means its config was lost: upstream Bug 210);
# Llama-family models use 1e4..5e5; Gemma3's global layers use 1e6 (its local layers 1e4).
ROPE_THETA_BOUNDS: dict[str, tuple[float, float]] = {
    "qwen2": (1e5, 1e8),
    "llama": (1e3, 1e7),
    "gemma3": (1e5, 1e8),
}
CONTEXT_BOUNDS = (128, 2_097_152)
EPS_BOUNDS = (1e-10, 1e-2)
ZERO_ATOL = 1e-8  # "zero" for a whole tensor: its largest magnitude is below this


def rope_check(model: CanonicalModel, fmt: Format, gate: GateId = STRUCT) -> Check:
    cfg = model.config
    low, high = ROPE_THETA_BOUNDS[cfg.architecture]
    ok = low <= cfg.rope_theta <= high
    reason = (
        f"rope theta {cfg.rope_theta:g} within [{low:g}, {high:g}] for {cfg.architecture}"
        if ok
        else f"rope theta {cfg.rope_theta:g} implausible for {cfg.architecture} (expected [{low:g}, {high:g}]): "
        "positions will be encoded wrongly"
    )
    return verdict(
        gate,
        "rope-theta",
        ok,
        reason,
        1,
        format=fmt,
        measured=cfg.rope_theta,
        threshold=low,
        metrics={"rope_theta": cfg.rope_theta, "low": low, "high": high},
    )


def metadata_checks(model: CanonicalModel, fmt: Format) -> list[Check]:
    """Bounds on the config (after upstream's model-metadata-bounds contract)."""
    cfg = model.config
    problems = []
    if not CONTEXT_BOUNDS[0] <= cfg.context_length <= CONTEXT_BOUNDS[1]:
        problems.append(f"context length {cfg.context_length} outside {list(CONTEXT_BOUNDS)}")
    if not EPS_BOUNDS[0] <= cfg.rms_norm_eps <= EPS_BOUNDS[1]:
        problems.append(f"rms_norm_eps {cfg.rms_norm_eps:g} outside {list(EPS_BOUNDS)}")
    if cfg.num_heads % cfg.num_kv_heads:
        problems.append(f"{cfg.num_heads} heads not a multiple of {cfg.num_kv_heads} kv heads")
    if cfg.hidden_size > 65536 or cfg.num_layers > 256 or cfg.vocab_size > 1_000_000:
        problems.append("a dimension exceeds the plausible maximum (hidden 65536, layers 256, vocab 1M)")
    bounds = verdict(
        META,
        "config-bounds",
        not problems,
        "context length, eps, head counts and sizes within plausible bounds" if not problems else "; ".join(problems),
        5,
        format=fmt,
        metrics={"context_length": cfg.context_length, "rms_norm_eps": cfg.rms_norm_eps},
    )
    return [rope_check(model, fmt, META), bounds]


def _max_abs(model: CanonicalModel, name: str, offset: float = 0.0) -> float:
    values = model.tensors[name].dequantize().numpy()
    return float(np.max(np.abs(values + np.float32(offset)))) if values.size else 0.0


def qkv_bias_check(model: CanonicalModel, fmt: Format) -> Check | None:
    """Qwen2's q/k/v biases present and non-zero; None (no check planned) for architectures without them."""
    cfg = model.config
    if cfg.architecture != "qwen2":
        return None
    wanted = [f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(cfg.num_layers) for p in "qkv"]
    missing = [n for n in wanted if n not in model.tensors]
    zero = [n for n in wanted if n in model.tensors and _max_abs(model, n) < ZERO_ATOL]
    ok = cfg.attention_bias and not missing and not zero
    if ok:
        reason = f"all {len(wanted)} q/k/v biases present and non-zero"
    else:
        parts = (
            ([] if cfg.attention_bias else ["config says no attention bias"])
            + ([f"missing {', '.join(missing[:3])}"] if missing else [])
            + (
                [f"all-zero {', '.join(zero[:3])}" + (f" (+{len(zero) - 3} more)" if len(zero) > 3 else "")]
                if zero
                else []
            )
        )
        reason = "qwen2 needs q/k/v biases (engines that drop them produce garbage): " + "; ".join(parts)
    return verdict(
        STRUCT,
        "qkv-bias",
        ok,
        reason,
        len(wanted),
        format=fmt,
        metrics={"biases": len(wanted), "missing": len(missing), "zero": len(zero)},
    )


def norms_check(model: CanonicalModel, fmt: Format) -> Check:
    """Norm weights as the network applies them (Gemma adds 1) must not be all zero (upstream GH-189)."""
    offset = model.config.norm_weight_offset
    norms = [n for n in model.tensors if n.endswith("norm.weight")]
    zero = [n for n in norms if _max_abs(model, n, offset) < ZERO_ATOL]
    ok = bool(norms) and not zero
    reason = (
        f"all {len(norms)} norm weights non-zero"
        if ok
        else "no norm weights found"
        if not norms
        else f"{len(zero)} norm weight(s) all zero, e.g. {zero[0]}: every activation through them is wiped"
    )
    return verdict(
        STRUCT, "norms", ok, reason, max(1, len(norms)), format=fmt, metrics={"norms": len(norms), "zero": len(zero)}
    )


def embedding_check(model: CanonicalModel, fmt: Format) -> Check:
    """The embedding (and an untied lm_head) is [vocab, hidden], and the tokenizer's ids index its rows."""
    cfg = model.config
    want = (cfg.vocab_size, cfg.hidden_size)
    problems = []
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        source = model.tensors.get(name)
        if source is None:
            if name == "model.embed_tokens.weight" or not cfg.tie_word_embeddings:
                problems.append(f"{name} missing")
            continue
        shape = tuple(source.info.shape)
        if shape != want:
            flipped = " (transposed)" if shape == want[::-1] else ""
            problems.append(f"{name} is {list(shape)}{flipped}, expected [vocab, hidden] = {list(want)}")
    if model.tokenizer is not None and model.tokenizer.vocab_size > cfg.vocab_size:
        problems.append(f"tokenizer has {model.tokenizer.vocab_size} ids for {cfg.vocab_size} embedding rows")
    ok = not problems
    return verdict(
        STRUCT,
        "embedding-orientation",
        ok,
        f"embedding is [vocab, hidden] = {list(want)}" if ok else "; ".join(problems),
        1,
        format=fmt,
    )


def structure_checks(model: CanonicalModel, fmt: Format) -> list[Check]:
    checks = [rope_check(model, fmt), qkv_bias_check(model, fmt), norms_check(model, fmt), embedding_check(model, fmt)]
    return [check for check in checks if check is not None]
