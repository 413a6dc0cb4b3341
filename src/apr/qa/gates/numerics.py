"""NUMERICS-PARITY: how far the fast kernels' log-likelihoods lie from the exact (float32 reference) mode."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from apr.formats.model import CanonicalModel
from apr.qa.axes import Backend, Format
from apr.qa.gates.catalog import GateId
from apr.qa.gates.parity import encode_prompts
from apr.qa.gates.second_opinion import ExactSecondOpinion
from apr.qa.gates.thresholds import NumericsGate
from apr.qa.recording import Check, skipped, verdict

if TYPE_CHECKING:
    from apr.engine import Engine


def token_deltas(fast: list[list[float | None]], exact: list[list[float | None]]) -> list[float]:
    """|fast − exact| for every position both modes scored (the first token of a text has no context)."""
    return [
        abs(a - b)
        for fast_text, exact_text in zip(fast, exact, strict=True)
        for a, b in zip(fast_text, exact_text, strict=True)
        if a is not None and b is not None
    ]


def numerics_checks(
    model: CanonicalModel,
    fast_engine: Engine,
    settings: NumericsGate,
    fmt: Format,
    second: ExactSecondOpinion | None = None,
) -> list[Check]:
    """Score ``settings.texts`` with ``fast_engine`` (the engine every other gate used) and with an exact one
    (``second``'s, which also brings the reply flips the golden and stop gates found; else one loaded here)."""
    ids = encode_prompts(model, settings.texts)
    fast_mode = fast_engine.describe().get("numerics", "fast")
    fast = [fast_engine.prompt_logprobs(seq) for seq in ids]
    opinion = second if second is not None else ExactSecondOpinion(model)
    try:
        exact = [opinion.engine().prompt_logprobs(seq) for seq in ids]
    finally:
        if second is None:
            opinion.close()
    return [_logprob_check(fast, exact, settings, fmt, fast_mode, fast_engine), *opinion.flip_checks()]


def _logprob_check(
    fast: list[list[float | None]],
    exact: list[list[float | None]],
    settings: NumericsGate,
    fmt: Format,
    fast_mode: str,
    fast_engine: Engine,
) -> Check:
    deltas = token_deltas(fast, exact)
    if not deltas:
        return skipped(
            GateId.NUMERICS_PARITY,
            "fast~exact",
            "no text is longer than one token: nothing to compare",
            format=fmt,
            backend=Backend.CPU,
        )
    mean, worst = statistics.fmean(deltas), max(deltas)
    ok = mean <= settings.max_mean_nats and worst <= settings.max_abs_nats
    kernels = fast_engine.describe().get("kernels", "?")
    reason = (
        f"{fast_mode} mode ({kernels}) vs exact float32: |Δ log p| mean {mean:.3f} nats (max {settings.max_mean_nats}), "
        f"worst {worst:.3f} (max {settings.max_abs_nats}) over {len(deltas)} tokens"
    )
    return verdict(
        GateId.NUMERICS_PARITY,
        "fast~exact",
        ok,
        reason,
        len(deltas),
        format=fmt,
        backend=Backend.CPU,
        measured=round(mean, 6),
        threshold=settings.max_mean_nats,
        unit="nats/token",
        metrics={
            "mean_abs_nats": round(mean, 6),
            "max_abs_nats": round(worst, 6),
            "p95_abs_nats": round(sorted(deltas)[int(0.95 * (len(deltas) - 1))], 6),
            "tokens": len(deltas),
            "mode": fast_mode,
            "kernels": kernels,
        },
    )
