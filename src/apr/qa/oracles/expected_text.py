"""Expected-text oracle: one of the expected strings (e.g. 你好) occurs in the reply."""

from __future__ import annotations

import unicodedata

from apr.qa.oracles.base import ExpectedTextSpec, Generation, OracleName, OracleVerdict, verdict


def _normalize(text: str, case_sensitive: bool) -> str:
    text = unicodedata.normalize("NFKC", text)
    return text if case_sensitive else text.casefold()


def check(prompt: str, output: Generation, spec: ExpectedTextSpec) -> OracleVerdict:
    reply = _normalize(output.text, spec.case_sensitive)
    for wanted in spec.any_of:
        if _normalize(wanted, spec.case_sensitive) in reply:
            return verdict(OracleName.EXPECTED_TEXT, True, f"found {wanted!r}", found=wanted)
    wanted = " | ".join(repr(w) for w in spec.any_of)
    return verdict(OracleName.EXPECTED_TEXT, False, f"none of {wanted} in the reply", found=None)
