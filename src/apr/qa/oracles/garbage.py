"""Garbage oracle: rejects degenerate replies — loops, floods of one token, too few distinct characters,
U+FFFD, mojibake (UTF-8 decoded as Latin-1, e.g. 'ä½\xa0å¥½' for 你好) and control characters.

An empty reply is garbage too: there is nothing to vouch for.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from apr.qa.oracles.base import GarbageSpec, Generation, OracleName, OracleVerdict, verdict

# Tokens for the repetition statistics: single CJK/kana characters, words, or single punctuation marks.
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W_]+|[^\w\s]", re.UNICODE)
_JUNK_TOKENS = re.compile(r"<pad>|\[PAD\]|<unk>|\[UNK\]|<\|endoftext\|>|<\|im_end\|>|<\|im_start\|>", re.IGNORECASE)
# Characters a Latin-1/cp1252 decoder produces from UTF-8 bytes.
_CP1252_SPECIALS = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_MOJIBAKE_RUN = re.compile(f"[\u0080-\u00ff{_CP1252_SPECIALS}]{{2,}}")
_ALLOWED_CONTROL = {"\n", "\t", "\r"}
MIN_TOKENS_FOR_STATS = 10


def _latin1_bytes(run: str) -> bytes:
    out = bytearray()
    for char in run:
        out += char.encode("cp1252") if char in _CP1252_SPECIALS else char.encode("latin-1")
    return bytes(out)


def mojibake(text: str) -> str | None:
    """The first run of characters that is really UTF-8 decoded as Latin-1/cp1252, or None."""
    for match in _MOJIBAKE_RUN.finditer(text):
        data = _latin1_bytes(match.group(0))
        # A UTF-8 lead byte followed by the right number of continuation bytes.
        if re.search(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}", data):
            return match.group(0)
    return None


def repetition_ratio(tokens: list[str]) -> float:
    """1 − unique/total over token trigrams: 0 for varied text, near 1 for a loop."""
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def check(prompt: str, output: Generation, spec: GarbageSpec) -> OracleVerdict:
    text = output.text
    name = OracleName.GARBAGE
    if not text.strip():
        return verdict(name, False, "reply is empty: nothing to vouch for", chars=len(text))
    if "\ufffd" in text:
        return verdict(name, False, f"reply contains U+FFFD replacement characters ({text.count(chr(0xFFFD))})")
    controls = [c for c in text if unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROL]
    if controls:
        return verdict(
            name,
            False,
            f"reply contains control characters, first U+{ord(controls[0]):04X}",
            control_chars=len(controls),
        )
    bad = mojibake(text)
    if bad is not None:
        return verdict(name, False, f"mojibake (UTF-8 read as Latin-1): {bad!r}")
    junk = _JUNK_TOKENS.findall(text)
    if len(junk) >= 3:
        return verdict(name, False, f"special-token flood: {junk[0]!r} ×{len(junk)}", junk_tokens=len(junk))
    unique_chars = len(set(text.strip()))
    if len(text.strip()) >= 3 * spec.min_unique_chars and unique_chars < spec.min_unique_chars:
        return verdict(
            name, False, f"only {unique_chars} distinct characters in {len(text.strip())}", unique_chars=unique_chars
        )
    tokens = _TOKEN.findall(text)
    metrics: dict[str, float] = {"tokens": len(tokens), "unique_chars": unique_chars}
    if len(tokens) >= MIN_TOKENS_FOR_STATS:
        top, top_count = Counter(tokens).most_common(1)[0]
        share = top_count / len(tokens)
        ratio = repetition_ratio(tokens)
        metrics |= {"repetition_ratio": round(ratio, 4), "top_token_share": round(share, 4)}
        if share > spec.max_token_share:
            return verdict(
                name, False, f"token {top!r} is {share:.0%} of the reply (max {spec.max_token_share:.0%})", **metrics
            )
        if ratio > spec.max_repetition_ratio:
            return verdict(
                name, False, f"repetition ratio {ratio:.2f} above {spec.max_repetition_ratio:.2f}", **metrics
            )
    return verdict(name, True, f"clean reply ({len(text)} chars, {len(tokens)} tokens)", **metrics)
