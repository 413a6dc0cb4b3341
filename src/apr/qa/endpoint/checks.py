"""An endpoint's answers as gate checks: G2/G3/G4 per scenario prompt, golden output, stop behaviour, determinism,
throughput and TTFT from the client, G1 (the served model answers), and the gates an endpoint cannot be judged by
(recorded not applicable: never a pass, never planned)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from apr.qa.axes import Modality
from apr.qa.endpoint.client import Answer, Listing, Malformed, Refusal, Reply, Unanswered
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import CATALOG, ENDPOINT_GATES, GateId, Needs
from apr.qa.gates.cell import oracle_checks
from apr.qa.recording import Check, corroborated, falsified, inconclusive, skipped, verdict
from apr.qa.scenarios import Prompt

G1, G2, G3, G4 = GateId.G1_LOAD, GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY
LOAD_CHECK = "serves"
THROUGHPUT_CHECK = "decode:endpoint"
_WHAT_IS_MISSING = {
    Needs.FILES: "the checkpoint's files (bytes, tensors, metadata, tokenizer)",
    Needs.ENGINE: "apr's own engine on the files (logits, attention, numerics modes, formats, backends)",
}


def not_applicable(gate: GateId, check: str = "endpoint", why: str | None = None) -> Check:
    """A check an endpoint cannot be judged by: recorded so a reader sees it was not forgotten; never scored."""
    reason = why or f"needs {_WHAT_IS_MISSING[CATALOG[gate].needs]}; an endpoint exposes only its API"
    return Check(gate, check, Outcome.NOT_APPLICABLE, f"not applicable to an endpoint: {reason}")


def not_applicable_checks(enabled: Sequence[GateId]) -> list[Check]:
    """One not-applicable record per gate the plan enables that needs more than the API (G0 always), plus the
    static halves of STOP-BEHAVIOR (the eos ids and the chat template live in the files)."""
    checks = [not_applicable(gate) for gate in enabled if gate not in ENDPOINT_GATES]
    if GateId.STOP_BEHAVIOR in enabled:
        why = "the eos ids and the chat template's end of turn live in the checkpoint's files"
        checks += [not_applicable(GateId.STOP_BEHAVIOR, name, why) for name in ("eos-ids", "end-of-turn")]
    return checks


def prompt_fields(prompt: Prompt, seed: int) -> dict[str, Any]:
    return {"modality": Modality.SERVE, "prompt_id": prompt.id, "prompt": prompt.text, "seed": seed}


def cell_checks(prompt: Prompt, seed: int, answer: Answer) -> list[Check]:
    """G2 (a reply, or a clean refusal where the prompt allows one), G4 (the prompt's oracles), then G3 (the endpoint
    answered in protocol). Unanswered: every check inconclusive with its cause, never against the model."""
    fields = prompt_fields(prompt, seed)
    names = prompt.oracle_names
    if isinstance(answer, Unanswered):
        reason = f"no answer after {answer.attempts} attempt(s): {answer.reason} — {answer.cause.advice}"
        return [
            inconclusive(G2, "reply", answer.cause, reason, **fields),
            *(inconclusive(G4, f"oracle:{name}", answer.cause, reason, **fields) for name in names),
            inconclusive(G3, "process", answer.cause, reason, **fields),
        ]
    if isinstance(answer, Malformed):
        reason = f"HTTP 200 but {answer.reason}"
        return [
            falsified(G2, "reply", reason, **fields),
            *(skipped(G4, f"oracle:{name}", f"no reply to judge: {reason}", **fields) for name in names),
            falsified(G3, "process", f"the endpoint broke the OpenAI protocol: {answer.reason}", **fields),
        ]
    stable = corroborated(G3, "process", "the endpoint answered in protocol (HTTP, stream, finish_reason)", 1, **fields)
    if isinstance(answer, Refusal):
        said = f"HTTP {answer.status}: {answer.message}"
        g2 = (
            corroborated(G2, "reply", f"refused cleanly ({said}), which this prompt allows", 1, **fields)
            if prompt.allows_refusal
            else falsified(G2, "reply", f"refused the request: {said}", **fields)
        )
        g4 = [skipped(G4, f"oracle:{name}", f"no reply to judge: {said}", **fields) for name in names]
        return [g2, *g4, stable]
    metrics = answer.metrics()
    if answer.text.strip() or prompt.allows_refusal:
        g2 = corroborated(
            G2,
            "reply",
            f"replied with {len(answer.text)} characters"
            if answer.text.strip()
            else "an empty reply, which this prompt allows",
            1,
            metrics=metrics,
            output=answer.text,
            **fields,
        )
    else:
        g2 = falsified(G2, "reply", "HTTP 200 but the reply is empty", metrics=metrics, **fields)
    g4 = oracle_checks(prompt, answer.text, answer.finish_reason, answer.completion_tokens, fields)
    return [g2, *g4, replace(stable, metrics=metrics)]


def load_check(answers: Sequence[Answer], listed: Listing, served_model: str) -> Check:
    """G1 for an endpoint: the served model answers (a 200 reply to at least one request)."""
    replies = [a for a in answers if isinstance(a, Reply)]
    listing = listed.note
    named = listed.models is not None and served_model in listed.models
    metrics: dict[str, Any] = {"replies": len(replies), "requests": len(answers), "listed": named}
    if replies:
        return corroborated(
            G1,
            LOAD_CHECK,
            f"{served_model!r} answered {len(replies)} of {len(answers)} requests; {listing}",
            len(replies),
            metrics=metrics,
        )
    stopped = [a for a in answers if isinstance(a, Unanswered)]
    if stopped:
        return inconclusive(
            G1, LOAD_CHECK, stopped[0].cause, f"no reply from {served_model!r}: {stopped[0].reason}", metrics=metrics
        )
    return falsified(
        G1,
        LOAD_CHECK,
        f"{served_model!r} answered none of {len(answers)} requests with a reply; {listing}",
        max(1, len(answers)),
        metrics=metrics,
    )


def rerun_check(prompt: Prompt, seed: int, first: Reply, again: Answer) -> Check:
    """DETERMINISM: the same greedy request, asked again, gives the same text."""
    fields = prompt_fields(prompt, seed)
    name = f"rerun:{prompt.id}"
    if isinstance(again, Unanswered):
        return inconclusive(GateId.DETERMINISM, name, again.cause, f"the rerun got no answer: {again.reason}", **fields)
    if not isinstance(again, Reply):
        why = f"HTTP {again.status}: {again.message}" if isinstance(again, Refusal) else again.reason
        return falsified(GateId.DETERMINISM, name, f"the first request got a reply, the rerun none: {why}", **fields)
    same = again.text == first.text
    reason = (
        f"the rerun gave the same {len(first.text)} characters"
        if same
        else f"the rerun differs: {first.text[:80]!r} then {again.text[:80]!r}"
    )
    return verdict(GateId.DETERMINISM, name, same, reason, 1, output=again.text, **fields)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def throughput_check(
    runs: Sequence[Answer], burst: Sequence[Answer], burst_s: float | None, minimum: float, concurrency: int
) -> Check:
    """THROUGHPUT from the client: the median decode tok/s of single streams (after a warmup) against ``minimum``;
    TTFT median and p90, and with ``concurrency`` > 1 the tokens per second of that many streams at once."""
    name = THROUGHPUT_CHECK
    fields: dict[str, Any] = {"threshold": minimum, "unit": "tok/s"}
    stopped = [a for a in runs if isinstance(a, Unanswered)]
    if stopped:
        why = f"{len(stopped)} of {len(runs)} timed request(s) got no answer: {stopped[0].reason}"
        return inconclusive(GateId.THROUGHPUT, name, stopped[0].cause, why, **fields)
    replies = [a for a in runs if isinstance(a, Reply)]
    speeds = [s for a in replies if (s := a.decode_tok_s) is not None]
    ttfts = [a.ttft_s for a in replies if a.ttft_s is not None]
    metrics: dict[str, Any] = {
        "reps": len(runs),
        "p90_tok_s": _round(_p90(speeds)),
        "ttft_s": _round(_median(ttfts)),
        "ttft_p90_s": _round(_p90(ttfts)),
        "tokens_from": replies[0].tokens_from if replies else None,
        "concurrency": concurrency,
    }
    burst_replies = [a for a in burst if isinstance(a, Reply)]
    if burst_s and burst_replies:
        metrics["aggregate_tok_s"] = _round(sum(a.completion_tokens for a in burst_replies) / burst_s)
        metrics["aggregate_streams"] = len(burst_replies)
    if len(speeds) < len(runs):
        return skipped(
            GateId.THROUGHPUT,
            name,
            f"only {len(speeds)} of {len(runs)} timed replies had two or more tokens to time: nothing to compare",
            metrics=metrics,
            **fields,
        )
    speed = statistics.median(speeds)
    ok = speed >= minimum
    reason = (
        f"median decode {speed:.1f} tok/s over {len(speeds)} streams (TTFT {metrics['ttft_s']}s), "
        + ("at or above" if ok else "below")
        + f" the {minimum:g} tok/s floor"
    )
    return verdict(
        GateId.THROUGHPUT, name, ok, reason, len(speeds), measured=round(speed, 3), metrics=metrics, **fields
    )


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
