"""Golden output: greedy answers to fixed prompts contain the expected text (e.g. "What is 2+2?" → 4)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import GoldenCase, GoldenOutputGate
from apr.qa.recording import Check, verdict

if TYPE_CHECKING:
    from apr.engine import Engine
    from apr.qa.gates.second_opinion import ExactSecondOpinion

GOLDEN = GateId.GOLDEN_OUTPUT
# Text that is never a real answer: replacement characters, unknown tokens, NUL (after upstream's golden gate).
POISON = ("\ufffd", "[UNK]", "\x00")


def prompt_ids(engine: Engine, prompt: str, chat: bool) -> list[int]:
    tok = engine.tokenizer
    if chat and tok.has_chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return tok.encode(text)
    bos = [tok.bos_token_id] if engine.config.add_bos_token and tok.bos_token_id is not None else []
    return bos + tok.encode(prompt)


def golden_checks(
    engine: Engine, settings: GoldenOutputGate, chat: bool, fmt, second: ExactSecondOpinion | None = None
) -> list[Check]:
    """Each golden case on ``engine``; a reply it fails is asked again of ``second``'s exact engine, whose
    verdict then stands (apr.qa.gates.second_opinion)."""
    checks = []
    for index, case in enumerate(settings.cases):
        check = golden_case_check(engine, index, case, settings.max_tokens, chat, fmt)
        if second is not None:
            again = partial(
                golden_case_check, index=index, case=case, max_tokens=settings.max_tokens, chat=chat, fmt=fmt
            )
            check = second.judge(engine, check, again)
        checks.append(check)
    return checks


def golden_case_check(engine: Engine, index: int, case: GoldenCase, max_tokens: int, chat: bool, fmt) -> Check:
    from apr.engine import SamplingParams
    from apr.engine.sampling import NonFiniteLogits

    try:
        ids = prompt_ids(engine, case.prompt, chat)
    except ValueError as err:  # a chat template that does not render is the model's defect
        return verdict(GOLDEN, f"golden:{index}", False, f"prompt not built: {err}", 1, format=fmt, prompt=case.prompt)
    try:
        result = engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    except NonFiniteLogits as err:  # NaN/Inf weights: evidence against the model, not a crash of the run
        return verdict(GOLDEN, f"golden:{index}", False, str(err), 1, format=fmt, prompt=case.prompt)
    return golden_verdict(index, case, result.text, result.completion_tokens, result.finish_reason, fmt)


def golden_verdict(
    index: int, case: GoldenCase, text: str, completion_tokens: int | None, finish_reason: str | None, fmt=None
) -> Check:
    """One golden case judged on its greedy reply (apr's engine, or an endpoint's answer)."""
    labels = {"capability": case.capability} if case.capability else {}
    found = [want for want in case.expect_any if want.lower() in text.lower()]
    poison = [p for p in POISON if p in text]
    ok = bool(text.strip()) and bool(found) and not poison
    reason = (
        f"greedy reply contains {found[0]!r}"
        if ok
        else "empty reply"
        if not text.strip()
        else f"reply contains {poison[0]!r}"
        if poison
        else f"reply lacks all of {list(case.expect_any)}"
    )
    return verdict(
        GOLDEN,
        f"golden:{index}",
        ok,
        reason,
        1,
        format=fmt,
        prompt=case.prompt,
        output=text,
        metrics={"completion_tokens": completion_tokens, "finish_reason": finish_reason, **labels},
    )
