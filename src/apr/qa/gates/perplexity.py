"""Perplexity: the teacher-forced mean negative log-likelihood of fixed texts stays below a limit.

Independent of the golden answers (no generation, no answer parsing): every position of ordinary English,
code and a counting list is scored. A damaged network — layers out of order, wrong rope base, swapped
projections, perturbed scales — loses the language before anything else and scores far above a working one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import PerplexityGate
from apr.qa.recording import Check, falsified, verdict

if TYPE_CHECKING:
    from apr.engine import Engine

PPL = GateId.PERPLEXITY


def text_ids(engine: Engine, text: str) -> list[int]:
    """The text's ids with the bos a prompt would start with (the first position is context, not scored)."""
    tok = engine.tokenizer
    bos = [tok.bos_token_id] if engine.config.add_bos_token and tok.bos_token_id is not None else []
    return bos + tok.encode(text)


def mean_nll(engine: Engine, ids: list[int]) -> float:
    import torch

    logits = engine.logits(ids)
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(-picked.mean())


def perplexity_checks(engine: Engine, settings: PerplexityGate, fmt: Format) -> list[Check]:
    checks = []
    for index, text in enumerate(settings.texts):
        ids = text_ids(engine, text)
        if len(ids) < 2:
            checks.append(falsified(PPL, f"nll:{index}", "the text encodes to fewer than 2 tokens", format=fmt))
            continue
        nll = mean_nll(engine, ids)
        finite = math.isfinite(nll)
        ok = finite and nll <= settings.max_mean_nll
        reason = (
            f"mean NLL {nll:.3f} nats/token (perplexity {math.exp(nll):.1f}) over {len(ids) - 1} tokens"
            if ok
            else f"mean NLL {nll} is not finite: the logits hold NaN/Inf"
            if not finite
            else f"mean NLL {nll:.3f} nats/token (perplexity {math.exp(min(nll, 50)):.3g}) above the limit "
            f"{settings.max_mean_nll:g}: the model no longer predicts ordinary text"
        )
        checks.append(
            verdict(
                PPL,
                f"nll:{index}",
                ok,
                reason,
                len(ids) - 1,
                format=fmt,
                prompt=text,
                measured=nll if finite else None,
                threshold=settings.max_mean_nll,
                unit="nats/token",
                metrics={"tokens": len(ids) - 1},
            )
        )
    return checks
