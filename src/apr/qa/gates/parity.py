"""Format parity (logits of the same prompts in every format) and tokenizer parity (same ids in every format)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apr.formats.model import CanonicalModel
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.measure import LogitComparison
from apr.qa.recording import Check, skipped, verdict

if TYPE_CHECKING:
    import torch

    from apr.engine import Engine

__all__ = [
    "LogitComparison",
    "comparison_check",
    "encode_prompts",
    "format_parity_checks",
    "prompt_logits",
    "tokenizer_parity_checks",
]

FORMAT_PARITY, TOKENIZER_PARITY = GateId.FORMAT_PARITY, GateId.TOKENIZER_PARITY


def encode_prompts(model: CanonicalModel, prompts: tuple[str, ...]) -> list[list[int]]:
    """Token ids of each prompt, with BOS when the model wants one (the same ids go to every format)."""
    tok = model.tokenizer
    bos = [tok.bos_token_id] if model.config.add_bos_token and tok.bos_token_id is not None else []
    return [bos + tok.encode(prompt) for prompt in prompts if bos + tok.encode(prompt)]


def prompt_logits(engine: Engine, ids: list[list[int]]) -> list[torch.Tensor]:
    return [engine.logits(seq) for seq in ids]


def comparison_check(
    gate: GateId,
    check: str,
    comparison: LogitComparison,
    min_top1: float,
    max_kl: float,
    what: str,
    fmt: Format | None = None,
) -> Check:
    ok = comparison.top1_agreement >= min_top1 and comparison.mean_kl <= max_kl
    reason = (
        f"{what}: top-1 agreement {comparison.top1_agreement:.3f} (min {min_top1}), mean KL "
        f"{comparison.mean_kl:.4f} nats (max {max_kl}), max |Δlogit| {comparison.max_abs_diff:.3f} "
        f"over {comparison.positions} positions"
    )
    return verdict(
        gate,
        check,
        ok,
        reason,
        comparison.positions,
        format=fmt,
        measured=comparison.top1_agreement,
        threshold=min_top1,
        unit="top-1",
        metrics={
            "top1_agreement": round(comparison.top1_agreement, 5),
            "mean_kl": round(comparison.mean_kl, 6),
            "max_abs_logit_diff": round(comparison.max_abs_diff, 5),
            "max_kl": max_kl,
        },
    )


def format_parity_checks(
    logits: dict[Format, list[torch.Tensor]],
    reference: Format,
    min_top1: float,
    max_kl: float,
    expected: tuple[Format, ...],
) -> list[Check]:
    """Each other format against the reference format; a format whose logits are missing cannot pass."""
    checks = []
    if reference not in logits:
        return [
            skipped(FORMAT_PARITY, f"{fmt}~{reference}", f"no logits from the reference format {reference}")
            for fmt in expected
            if fmt is not reference
        ]
    for fmt in expected:
        if fmt is reference:
            continue
        if fmt not in logits:
            checks.append(
                skipped(FORMAT_PARITY, f"{fmt}~{reference}", f"{fmt} did not load: no logits to compare", format=fmt)
            )
            continue
        comparison = LogitComparison.of(logits[reference], logits[fmt])
        checks.append(
            comparison_check(
                FORMAT_PARITY, f"{fmt}~{reference}", comparison, min_top1, max_kl, f"{fmt} vs {reference}", fmt
            )
        )
    return checks


def tokenizer_parity_checks(
    models: dict[Format, CanonicalModel], reference: Format, corpus: tuple[str, ...], expected: tuple[Format, ...]
) -> list[Check]:
    """Identical ids for every corpus text, and identical text decoded from them, in every format."""
    checks = []
    if reference not in models:
        return [
            skipped(TOKENIZER_PARITY, f"{fmt}~{reference}", f"reference format {reference} did not load")
            for fmt in expected
            if fmt is not reference
        ]
    ref_tok = models[reference].tokenizer
    ref_ids = [ref_tok.encode(text) for text in corpus]
    for fmt in expected:
        if fmt is reference:
            continue
        if fmt not in models:
            checks.append(skipped(TOKENIZER_PARITY, f"{fmt}~{reference}", f"{fmt} did not load", format=fmt))
            continue
        tok = models[fmt].tokenizer
        differing = [text for text, ids in zip(corpus, ref_ids) if tok.encode(text) != ids]
        # Decoding must agree too (whether it restores the text exactly is the tokenizer's own business).
        decoded_differently = [
            text
            for text, ids in zip(corpus, ref_ids)
            if tok.decode(ids, skip_special_tokens=False) != ref_tok.decode(ids, skip_special_tokens=False)
        ]
        tokens = sum(len(ids) for ids in ref_ids)
        ok = not differing and not decoded_differently
        reason = (
            f"{fmt} encodes all {len(corpus)} corpus texts ({tokens} tokens) to the same ids as {reference}"
            " and decodes them alike"
            if ok
            else "; ".join(
                ([f"different ids for {len(differing)} text(s), e.g. {differing[0]!r}"] if differing else [])
                + ([f"decodes the ids of {decoded_differently[0]!r} differently"] if decoded_differently else [])
            )
        )
        checks.append(
            verdict(
                TOKENIZER_PARITY,
                f"{fmt}~{reference}",
                ok,
                reason,
                max(1, tokens),
                format=fmt,
                metrics={"texts": len(corpus), "tokens": tokens, "differing": len(differing)},
            )
        )
    return checks
