"""Stop behaviour: the model ends its turn. Static checks on the eos ids and the chat template, and greedy replies
to one-line questions that must end on their own well before the token limit.

A chat model whose end-of-turn token is not an eos id never stops in runtimes that stop on the declared ids
only (a common conversion bug); a reply that runs to the token limit on "Say hello." is the symptom.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from apr.formats.model import CanonicalModel
from apr.formats.tokenizer_spec import EOG_TEXTS, TOKEN_CONTROL, TOKEN_USER_DEFINED
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import StopBehaviorGate
from apr.qa.recording import Check, falsified, verdict

if TYPE_CHECKING:
    from apr.engine import Engine
    from apr.qa.gates.second_opinion import ExactSecondOpinion

STOP = GateId.STOP_BEHAVIOR
# Texts of tokens that end a sequence or a turn: llama.cpp's end-of-generation texts plus the plain eos tokens.
END_TEXTS = frozenset({*EOG_TEXTS, "</s>", "<eos>", "<|end_of_text|>", "[EOS]", "<|eos|>"})
SPECIAL_TYPES = (TOKEN_CONTROL, TOKEN_USER_DEFINED)
PROBE_REPLY = "Hello there"  # the assistant turn rendered to find what the template writes after it


def _text(model: CanonicalModel, token_id: int) -> str | None:
    tokens = model.tokenizer.spec.tokens
    return tokens[token_id] if 0 <= token_id < len(tokens) else None


def eos_vocab_check(model: CanonicalModel, fmt: Format) -> Check:
    """Every eos id is a row of the embedding and an entry of the tokenizer, and the primary eos is an end token."""
    spec = model.tokenizer.spec
    ids = list(
        dict.fromkeys([*([spec.eos_token_id] if spec.eos_token_id is not None else []), *model.config.eos_token_ids])
    )
    problems = []
    if spec.eos_token_id is None:
        problems.append("no eos token id in the tokenizer metadata")
    for token_id in ids:
        if not 0 <= token_id < model.config.vocab_size:
            problems.append(f"eos id {token_id} outside the {model.config.vocab_size} embedding rows")
        if not 0 <= token_id < spec.vocab_size:
            problems.append(f"eos id {token_id} outside the tokenizer's {spec.vocab_size} tokens")
    primary = spec.eos_token_id
    if primary is not None and 0 <= primary < spec.vocab_size:
        text, kind = spec.tokens[primary], spec.token_types[primary]
        if kind not in SPECIAL_TYPES:
            problems.append(f"eos id {primary} is {text!r}, an ordinary text token: replies end at that word")
        elif text not in END_TEXTS:
            problems.append(f"eos id {primary} is {text!r}, a special token that does not end anything")
    ok = not problems
    reason = (
        f"eos ids {ids} exist; the primary eos {_text(model, primary or 0)!r} is an end token"
        if ok
        else "; ".join(problems)
    )
    return verdict(STOP, "eos-ids", ok, reason, max(1, len(ids)), format=fmt, metrics={"eos_ids": len(ids)})


def template_end_of_turn(model: CanonicalModel) -> int | None:
    """The id of the first special token the chat template writes after an assistant reply; None if none."""
    tok = model.tokenizer
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": PROBE_REPLY}], add_generation_prompt=False
    )
    tail = rendered[rendered.rindex(PROBE_REPLY) + len(PROBE_REPLY) :]
    spec = tok.spec
    for token_id in tok.encode(tail):
        if 0 <= token_id < spec.vocab_size and spec.token_types[token_id] in SPECIAL_TYPES:
            return token_id
    return None


def end_of_turn_check(model: CanonicalModel, fmt: Format) -> Check | None:
    """The chat template's end-of-turn token is the eos, or an eos id beside an end-type primary eos
    (Gemma: eos ``<eos>``, turns end on ``<end_of_turn>``); None (not planned) for a model without a template."""
    tok = model.tokenizer
    if not tok.has_chat_template:
        return None
    try:
        end = template_end_of_turn(model)
    except (ValueError, KeyError, IndexError) as err:  # render errors, or a template without the assistant reply
        return falsified(STOP, "end-of-turn", f"the chat template does not render a conversation: {err}", format=fmt)
    if end is None:
        return falsified(
            STOP, "end-of-turn", "the chat template writes no special token after an assistant reply", format=fmt
        )
    spec = tok.spec
    primary = spec.eos_token_id
    primary_text = _text(model, primary) if primary is not None else None
    declared = set(spec.eos_token_ids) | set(model.config.eos_token_ids)
    ok = end == primary or (end in declared and primary_text in END_TEXTS)
    end_text = spec.tokens[end]
    reason = (
        f"turns end with {end_text!r} (id {end}), an eos id"
        if ok
        else f"turns end with {end_text!r} (id {end}) but the eos is {primary_text!r} (id {primary}), eos ids "
        f"{sorted(declared)}: replies will not stop at the end of the turn"
    )
    return verdict(STOP, "end-of-turn", ok, reason, 1, format=fmt, metrics={"end_of_turn_id": end})


def stop_static_checks(model: CanonicalModel, fmt: Format) -> list[Check]:
    checks = [eos_vocab_check(model, fmt), end_of_turn_check(model, fmt)]
    return [check for check in checks if check is not None]


def stop_reply_checks(
    engine: Engine, settings: StopBehaviorGate, chat: bool, fmt: Format, second: ExactSecondOpinion | None = None
) -> list[Check]:
    """Greedy replies to one-line questions end on an eos id within ``max_fraction`` of the limit (chat models
    only: a base model continues text and is not expected to end a turn; nothing is planned for it). A reply that
    fails on ``engine`` is asked again of ``second``'s exact engine, whose verdict then stands."""
    if not (chat and engine.tokenizer.has_chat_template):
        return []
    checks = []
    for index, prompt in enumerate(settings.prompts):
        check = stop_prompt_check(engine, index, prompt, settings, chat, fmt)
        if second is not None:
            again = partial(stop_prompt_check, index=index, prompt=prompt, settings=settings, chat=chat, fmt=fmt)
            check = second.judge(engine, check, again)
        checks.append(check)
    return checks


def stop_prompt_check(
    engine: Engine, index: int, prompt: str, settings: StopBehaviorGate, chat: bool, fmt: Format
) -> Check:
    from apr.engine import SamplingParams
    from apr.engine.sampling import NonFiniteLogits
    from apr.qa.gates.golden import prompt_ids

    try:
        ids = prompt_ids(engine, prompt, chat)
    except ValueError as err:  # the chat template does not render
        return falsified(STOP, f"stops:{index}", f"prompt not built: {err}", format=fmt, prompt=prompt)
    try:
        result = engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=settings.max_tokens))
    except NonFiniteLogits as err:  # NaN/Inf weights: evidence against the model, not a crash of the run
        return falsified(STOP, f"stops:{index}", str(err), format=fmt, prompt=prompt)
    return stop_reply_verdict(index, prompt, settings, result.text, result.finish_reason, result.completion_tokens, fmt)


def stop_reply_verdict(
    index: int,
    prompt: str,
    settings: StopBehaviorGate,
    text: str,
    finish_reason: str | None,
    completion_tokens: int,
    fmt: Format | None = None,
) -> Check:
    """One greedy reply to a one-line question (apr's engine, or an endpoint's answer): it must end on its own,
    non-empty, within ``max_fraction`` of the token limit."""
    limit = int(settings.max_tokens * settings.max_fraction)
    stopped = finish_reason == "stop"
    ok = stopped and bool(text.strip()) and completion_tokens <= limit
    if ok:
        reason = f"ended on its own after {completion_tokens} tokens (limit {settings.max_tokens})"
    elif not stopped:
        reason = f"ran to the {settings.max_tokens}-token limit without an eos: the turn never ends"
    elif not text.strip():
        reason = "stopped at once with an empty reply"
    else:
        reason = f"took {completion_tokens} tokens for a one-line question (at most {limit} expected)"
    return verdict(
        STOP,
        f"stops:{index}",
        ok,
        reason,
        1,
        format=fmt,
        prompt=prompt,
        output=text,
        measured=float(completion_tokens),
        threshold=float(limit),
        unit="tokens",
        metrics={"finish_reason": finish_reason, "completion_tokens": completion_tokens},
    )
