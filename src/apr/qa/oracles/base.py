"""Types shared by the oracles: what they judge (a generation), how they are configured, and their verdict."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from apr.qa.evidence import MetricValue, Outcome


class OracleName(StrEnum):
    ARITHMETIC = "arithmetic"
    CODE = "code"
    GARBAGE = "garbage"
    EXPECTED_TEXT = "expected_text"
    STOPS_ON_EOS = "stops_on_eos"
    NON_EMPTY = "non_empty"


class Language(StrEnum):
    """Languages the code oracle understands: Python is parsed with ``ast``; the others are checked structurally."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    RUST = "rust"
    GO = "go"


class Generation(BaseModel):
    """The model's reply as the runner saw it."""

    model_config = ConfigDict(frozen=True)

    text: str
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length" (hit max_tokens)
    completion_tokens: int | None = None
    max_tokens: int | None = None


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArithmeticSpec(_Spec):
    """The number stated as the answer must equal ``expected`` (parsed from the question when None)."""

    name: Literal[OracleName.ARITHMETIC] = OracleName.ARITHMETIC
    expected: float | None = None
    tolerance: float = Field(0.0, ge=0)


class CodeSpec(_Spec):
    """A fenced code block (or a bare code reply) in ``language``; Python must pass ``ast.parse``."""

    name: Literal[OracleName.CODE] = OracleName.CODE
    language: Language = Language.PYTHON
    function_name: str | None = None  # the function the prompt asked for, if any
    require_def: bool = True
    require_return: bool = True


class GarbageSpec(_Spec):
    """Rejects degenerate text. Thresholds come from the playbook's G4-QUALITY gate."""

    name: Literal[OracleName.GARBAGE] = OracleName.GARBAGE
    # 1 - unique/total token trigrams: a reply said twice is ~0.45, three times ~0.65, a loop ~0.9
    max_repetition_ratio: float = Field(0.5, ge=0, le=1)
    min_unique_chars: int = Field(10, ge=1)  # judged only on replies of at least 3x this many characters
    max_token_share: float = Field(0.5, gt=0, le=1)  # share of the most frequent token (floods such as PAD)


class ExpectedTextSpec(_Spec):
    """At least one of ``any_of`` must occur in the reply (Unicode NFKC-normalized)."""

    name: Literal[OracleName.EXPECTED_TEXT] = OracleName.EXPECTED_TEXT
    any_of: tuple[str, ...] = Field(min_length=1)
    case_sensitive: bool = False


class StopsOnEosSpec(_Spec):
    """A short answer must end on its own (finish_reason ``stop``), not by hitting max_tokens."""

    name: Literal[OracleName.STOPS_ON_EOS] = OracleName.STOPS_ON_EOS


class NonEmptySpec(_Spec):
    """The reply must contain something other than whitespace."""

    name: Literal[OracleName.NON_EMPTY] = OracleName.NON_EMPTY


OracleSpec = Annotated[
    ArithmeticSpec | CodeSpec | GarbageSpec | ExpectedTextSpec | StopsOnEosSpec | NonEmptySpec,
    Field(discriminator="name"),
]


class VerdictKind(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INAPPLICABLE = "inapplicable"  # the oracle could not judge (e.g. no question found): never a pass


class OracleVerdict(BaseModel):
    """What one oracle concluded about one reply."""

    model_config = ConfigDict(frozen=True)

    oracle: OracleName
    kind: VerdictKind
    reason: str
    metrics: dict[str, MetricValue] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.kind is VerdictKind.PASS

    @property
    def outcome(self) -> Outcome:
        """The evidence outcome this verdict maps to (inapplicable → skipped, which earns nothing)."""
        return {
            VerdictKind.PASS: Outcome.CORROBORATED,
            VerdictKind.FAIL: Outcome.FALSIFIED,
            VerdictKind.INAPPLICABLE: Outcome.SKIPPED,
        }[self.kind]


def verdict(oracle: OracleName, passed: bool, reason: str, **metrics: MetricValue) -> OracleVerdict:
    return OracleVerdict(
        oracle=oracle, kind=VerdictKind.PASS if passed else VerdictKind.FAIL, reason=reason, metrics=metrics
    )


def inapplicable(oracle: OracleName, reason: str) -> OracleVerdict:
    return OracleVerdict(oracle=oracle, kind=VerdictKind.INAPPLICABLE, reason=reason)
