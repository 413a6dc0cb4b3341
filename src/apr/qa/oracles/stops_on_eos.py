"""Stops-on-EOS oracle: a short answer ends on its own (finish_reason stop) before max_tokens."""

from __future__ import annotations

from apr.qa.oracles.base import Generation, OracleName, OracleVerdict, StopsOnEosSpec, inapplicable, verdict


def check(prompt: str, output: Generation, spec: StopsOnEosSpec) -> OracleVerdict:
    tokens = output.completion_tokens
    if output.finish_reason is None:
        return inapplicable(OracleName.STOPS_ON_EOS, "the runner reported no finish_reason; cannot tell")
    if output.finish_reason == "stop":
        return verdict(
            OracleName.STOPS_ON_EOS,
            True,
            f"stopped on its own after {tokens} tokens",
            completion_tokens=tokens,
            max_tokens=output.max_tokens,
        )
    return verdict(
        OracleName.STOPS_ON_EOS,
        False,
        f"finish_reason {output.finish_reason!r} after {tokens} of {output.max_tokens} tokens: "
        "the reply never emitted EOS",
        completion_tokens=tokens,
        max_tokens=output.max_tokens,
    )
