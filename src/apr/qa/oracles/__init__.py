"""Oracles: pure functions that judge one reply to one prompt and return a typed verdict.

``ORACLES`` maps each oracle name to its check function ``check(prompt_text, generation, spec)``;
``evaluate(name, prompt, output)`` is the convenience entry: the spec comes from the prompt when it
carries one (``apr.qa.scenarios.Prompt``), else the oracle's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from apr.qa.oracles import arithmetic, code, expected_text, garbage, non_empty, stops_on_eos
from apr.qa.oracles.base import (
    ArithmeticSpec,
    CodeSpec,
    ExpectedTextSpec,
    GarbageSpec,
    Generation,
    Language,
    NonEmptySpec,
    OracleName,
    OracleSpec,
    OracleVerdict,
    StopsOnEosSpec,
    VerdictKind,
)

ORACLES: dict[OracleName, Callable[[str, Generation, Any], OracleVerdict]] = {
    OracleName.ARITHMETIC: arithmetic.check,
    OracleName.CODE: code.check,
    OracleName.GARBAGE: garbage.check,
    OracleName.EXPECTED_TEXT: expected_text.check,
    OracleName.STOPS_ON_EOS: stops_on_eos.check,
    OracleName.NON_EMPTY: non_empty.check,
}

_DEFAULT_SPECS: dict[OracleName, OracleSpec] = {
    OracleName.ARITHMETIC: ArithmeticSpec(),
    OracleName.CODE: CodeSpec(),
    OracleName.GARBAGE: GarbageSpec(),
    OracleName.STOPS_ON_EOS: StopsOnEosSpec(),
    OracleName.NON_EMPTY: NonEmptySpec(),
}


class PromptLike(Protocol):
    @property
    def text(self) -> str: ...

    def spec_for(self, oracle: OracleName) -> OracleSpec | None: ...


def evaluate(
    oracle_name: OracleName | str, prompt: PromptLike | str, output: Generation | str, spec: OracleSpec | None = None
) -> OracleVerdict:
    """Judge ``output`` against ``prompt`` with one oracle. Raises ValueError when no spec can be found
    (expected_text has no default: it needs the expected strings)."""
    name = OracleName(oracle_name)
    generation = output if isinstance(output, Generation) else Generation(text=output)
    text = prompt if isinstance(prompt, str) else prompt.text
    if spec is None and not isinstance(prompt, str):
        spec = prompt.spec_for(name)
    spec = spec if spec is not None else _DEFAULT_SPECS.get(name)
    if spec is None:
        raise ValueError(f"oracle {name} needs a spec (e.g. ExpectedTextSpec(any_of=...))")
    if spec.name is not name:
        raise ValueError(f"spec for {spec.name} given to oracle {name}")
    return ORACLES[name](text, generation, spec)


__all__ = [
    "ORACLES",
    "ArithmeticSpec",
    "CodeSpec",
    "ExpectedTextSpec",
    "GarbageSpec",
    "Generation",
    "Language",
    "NonEmptySpec",
    "OracleName",
    "OracleSpec",
    "OracleVerdict",
    "StopsOnEosSpec",
    "VerdictKind",
    "evaluate",
]
