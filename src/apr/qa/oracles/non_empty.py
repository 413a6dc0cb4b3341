"""Non-empty oracle: the reply must contain something other than whitespace."""

from __future__ import annotations

from apr.qa.oracles.base import Generation, NonEmptySpec, OracleName, OracleVerdict, verdict


def check(prompt: str, output: Generation, spec: NonEmptySpec) -> OracleVerdict:
    stripped = output.text.strip()
    if not stripped:
        return verdict(
            OracleName.NON_EMPTY,
            False,
            f"reply is empty or whitespace only ({len(output.text)} chars)",
            chars=len(output.text),
        )
    return verdict(OracleName.NON_EMPTY, True, f"reply has {len(stripped)} non-blank chars", chars=len(stripped))
