"""Seeded, property-based prompt pools; every prompt carries the oracles that judge it and their expectations.

``generate_prompts(settings)`` is a pure function of the settings (which include the seed): the same
playbook and seed always give the same prompts, ids included. Each pool draws from its own
``random.Random(f"{seed}:{pool}")``, so changing one pool's count never changes another pool's prompts.

Two prompt styles: ``instruct`` (questions for chat-tuned models; replies should stop on EOS) and
``completion`` (text to continue, for base models without a chat template; no EOS expectation).
"""

from __future__ import annotations

import hashlib
import random
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from apr.qa.oracles.base import (
    ArithmeticSpec,
    CodeSpec,
    ExpectedTextSpec,
    GarbageSpec,
    Language,
    NonEmptySpec,
    OracleName,
    OracleSpec,
    StopsOnEosSpec,
)


class Pool(StrEnum):
    ARITHMETIC = "arithmetic"
    CODE = "code"
    UNICODE = "unicode"
    FACTS = "facts"
    LONG_CONTEXT = "long_context"
    EMPTY = "empty"
    WHITESPACE = "whitespace"
    CUSTOM = "custom"


class PromptStyle(StrEnum):
    INSTRUCT = "instruct"
    COMPLETION = "completion"


class Prompt(BaseModel):
    """One scenario prompt. ``allows_refusal``: a clean error (exit 2, one error line) is an acceptable reply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    pool: Pool
    text: str
    oracles: tuple[OracleSpec, ...] = ()
    max_tokens: int = Field(64, ge=1)
    allows_refusal: bool = False

    def spec_for(self, oracle: OracleName) -> OracleSpec | None:
        return next((spec for spec in self.oracles if spec.name is oracle), None)

    @property
    def oracle_names(self) -> tuple[OracleName, ...]:
        return tuple(spec.name for spec in self.oracles)


class CustomPrompt(BaseModel):
    """A prompt written in the playbook, with its oracles spelled out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    oracles: tuple[OracleSpec, ...] = ()
    max_tokens: int | None = Field(None, ge=1)
    allows_refusal: bool = False


class PoolCounts(BaseModel):
    """How many prompts to draw from each pool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arithmetic: int = Field(0, ge=0)
    code: int = Field(0, ge=0)
    unicode: int = Field(0, ge=0)
    facts: int = Field(0, ge=0)
    long_context: int = Field(0, ge=0)
    empty: int = Field(0, ge=0, le=1)
    whitespace: int = Field(0, ge=0, le=1)


class ScenarioSettings(BaseModel):
    """The ``scenarios:`` section of a playbook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(42, ge=0)
    style: PromptStyle = PromptStyle.INSTRUCT
    max_tokens: int = Field(64, ge=1, le=4096)
    pools: PoolCounts = PoolCounts(arithmetic=1)
    code_languages: tuple[Language, ...] = Field((Language.PYTHON,), min_length=1)
    long_context_words: int = Field(400, ge=50, le=20000)
    arithmetic_max_operand: int = Field(50, ge=2, le=10**6, description="operands of + and - are 2..this; × stays ≤ 12")
    prompts: tuple[CustomPrompt, ...] = ()
    per_cell: int | None = Field(1, ge=1, description="prompts per format×modality cell, rotating; null = every prompt")

    @model_validator(mode="after")
    def _something_to_judge(self) -> ScenarioSettings:
        judged = (
            self.pools.arithmetic
            + self.pools.code
            + self.pools.unicode
            + self.pools.facts
            + self.pools.long_context
            + sum(1 for p in self.prompts if p.oracles)
        )
        if judged == 0:
            raise ValueError("no prompt with an oracle: G4 could never be verified; set pool counts or prompts")
        return self


class _Deck:
    """Draws from a fixed list without replacement (reshuffling when exhausted): distinct prompts first."""

    def __init__(self, rng: random.Random, items: list) -> None:
        self.rng, self.items = rng, items
        self.left: list = []

    def draw(self):
        if not self.left:
            self.left = self.rng.sample(self.items, len(self.items))
        return self.left.pop()


def _prompt_id(pool: Pool, index: int, text: str) -> str:
    return f"{pool}-{index}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _common(settings: ScenarioSettings, garbage: GarbageSpec) -> tuple[OracleSpec, ...]:
    eos = (StopsOnEosSpec(),) if settings.style is PromptStyle.INSTRUCT else ()
    return (NonEmptySpec(), garbage, *eos)


def _arithmetic(
    rng: random.Random, settings: ScenarioSettings, garbage: GarbageSpec
) -> tuple[str, tuple[OracleSpec, ...]]:
    symbol, word = rng.choice([("+", "plus"), ("-", "minus"), ("*", "times")])
    top = settings.arithmetic_max_operand
    a, b = (
        (rng.randint(2, min(12, top)), rng.randint(2, min(12, top)))
        if symbol == "*"
        else (rng.randint(2, top), rng.randint(2, top))
    )
    if symbol == "-" and b > a:
        a, b = b, a
    if settings.style is PromptStyle.COMPLETION:
        text = f"{a} {symbol} {b} ="
    else:
        text = rng.choice(
            [
                f"What is {a} {symbol} {b}? Answer with just the number.",
                f"What is {a} {word} {b}? Reply with the number only.",
                f"Compute {a} {symbol} {b}. Give only the result.",
            ]
        )
    return text, (ArithmeticSpec(), *_common(settings, garbage))


_CODE_TASKS = [
    ("add_numbers", "returns the sum of its two arguments"),
    ("max_of_two", "returns the larger of its two arguments"),
    ("is_even", "returns true when its integer argument is even"),
    ("square", "returns its argument multiplied by itself"),
]
_LANGUAGE_NAMES = {
    Language.PYTHON: "Python",
    Language.JAVASCRIPT: "JavaScript",
    Language.RUST: "Rust",
    Language.GO: "Go",
}


def _code(
    deck: _Deck, settings: ScenarioSettings, garbage: GarbageSpec, index: int
) -> tuple[str, tuple[OracleSpec, ...]]:
    language = settings.code_languages[index % len(settings.code_languages)]
    name, task = deck.draw()
    text = (
        f"Write a {_LANGUAGE_NAMES[language]} function named {name} that {task}. "
        "Reply with only the code in one fenced code block."
    )
    # Code legitimately repeats tokens; the garbage oracle keeps its character checks but a looser loop limit.
    loose = garbage.model_copy(update={"max_repetition_ratio": max(garbage.max_repetition_ratio, 0.6)})
    return text, (CodeSpec(language=language, function_name=name), NonEmptySpec(), loose)


_UNICODE_INSTRUCT = [
    ("Translate 'hello' into Chinese. Reply with only the Chinese word.", ("你好",)),
    ("Repeat exactly this text: 你好，世界", ("你好",)),
    ("Repeat exactly these words: café, naïve, Zürich", ("café", "Zürich")),
    ("Write the Japanese word for 'thank you' in hiragana only.", ("ありがとう",)),
]
_UNICODE_COMPLETION = [
    ("English: hello\nChinese: 你好\nEnglish: hello\nChinese:", ("你好",)),
    ("The café in Zürich is called Café Zürich. The café in Zürich is called Café", ("Zürich",)),
]


def _expected_text(deck: _Deck, settings: ScenarioSettings, garbage: GarbageSpec) -> tuple[str, tuple[OracleSpec, ...]]:
    text, expected = deck.draw()
    return text, (ExpectedTextSpec(any_of=expected), *_common(settings, garbage))


_FACTS_INSTRUCT = [
    ("What is the capital of France? Answer in one word.", ("Paris",)),
    ("How many days are in a week? Answer with a number.", ("7", "seven")),
    ("What color is the sky on a clear day? Answer in one word.", ("blue",)),
    ("What is the opposite of 'hot'? Answer in one word.", ("cold",)),
]
_FACTS_COMPLETION = [
    ("The capital of France is", ("Paris",)),
    ("Monday, Tuesday, Wednesday, Thursday,", ("Friday",)),
    ("One, two, three, four,", ("five",)),
]


_SUBJECTS = ["The river", "An old lighthouse", "The village market", "Our garden", "The mountain trail", "The library"]
_PREDICATES = [
    "was quiet in the early morning",
    "changed with every season",
    "attracted visitors from far away",
    "needed repairs after the storm",
    "was painted a pale shade of green",
    "smelled of fresh bread",
]


def _long_context(
    rng: random.Random, settings: ScenarioSettings, garbage: GarbageSpec
) -> tuple[str, tuple[OracleSpec, ...]]:
    code = str(rng.randint(1000, 9999))
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < settings.long_context_words:
        sentences.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_PREDICATES)}.")
    sentences.insert(
        rng.randrange(len(sentences) // 4, 3 * len(sentences) // 4), f"The access code for the vault is {code}."
    )
    passage = " ".join(sentences)
    if settings.style is PromptStyle.COMPLETION:
        text = (
            f"{passage}\n\nQuestion: What is the access code for the vault?\nAnswer: The access code for the vault is"
        )
    else:
        text = f"{passage}\n\nWhat is the access code for the vault? Answer with the number only."
    return text, (ExpectedTextSpec(any_of=(code,)), NonEmptySpec(), garbage)


def generate_prompts(settings: ScenarioSettings, garbage: GarbageSpec = GarbageSpec()) -> list[Prompt]:
    """All prompts of a playbook, in a fixed pool order, reproducible from the settings (seed included).

    ``garbage`` carries the playbook's G4 thresholds to every prompt's garbage oracle."""
    prompts: list[Prompt] = []
    counts = settings.pools
    instruct = settings.style is PromptStyle.INSTRUCT
    lists = {
        Pool.CODE: _CODE_TASKS,
        Pool.UNICODE: _UNICODE_INSTRUCT if instruct else _UNICODE_COMPLETION,
        Pool.FACTS: _FACTS_INSTRUCT if instruct else _FACTS_COMPLETION,
    }
    builders = [
        (Pool.ARITHMETIC, counts.arithmetic, lambda rng, deck, i: _arithmetic(rng, settings, garbage)),
        (Pool.CODE, counts.code, lambda rng, deck, i: _code(deck, settings, garbage, i)),
        (Pool.UNICODE, counts.unicode, lambda rng, deck, i: _expected_text(deck, settings, garbage)),
        (Pool.FACTS, counts.facts, lambda rng, deck, i: _expected_text(deck, settings, garbage)),
        (Pool.LONG_CONTEXT, counts.long_context, lambda rng, deck, i: _long_context(rng, settings, garbage)),
    ]
    for pool, count, build in builders:
        rng = random.Random(f"{settings.seed}:{pool}")
        deck = _Deck(rng, lists.get(pool, []))
        for index in range(count):
            text, oracles = build(rng, deck, index)
            max_tokens = settings.max_tokens * 2 if pool is Pool.CODE else settings.max_tokens
            prompts.append(
                Prompt(id=_prompt_id(pool, index, text), pool=pool, text=text, oracles=oracles, max_tokens=max_tokens)
            )
    for pool, count, text in ((Pool.EMPTY, counts.empty, ""), (Pool.WHITESPACE, counts.whitespace, "  \n\t ")):
        if count:
            # Nothing to judge: these cells prove G1–G3 only (no crash, a reply or a clean refusal).
            prompts.append(
                Prompt(
                    id=_prompt_id(pool, 0, text),
                    pool=pool,
                    text=text,
                    max_tokens=settings.max_tokens,
                    allows_refusal=True,
                )
            )
    for index, custom in enumerate(settings.prompts):
        # A custom garbage oracle without thresholds of its own takes the playbook's G4 thresholds.
        oracles = tuple(
            garbage if spec.name is OracleName.GARBAGE and spec.model_fields_set <= {"name"} else spec
            for spec in custom.oracles
        )
        prompts.append(
            Prompt(
                id=_prompt_id(Pool.CUSTOM, index, custom.text),
                pool=Pool.CUSTOM,
                text=custom.text,
                oracles=oracles,
                max_tokens=custom.max_tokens or settings.max_tokens,
                allows_refusal=custom.allows_refusal,
            )
        )
    return prompts


def assign(prompts: list[Prompt], combo_index: int, per_cell: int | None) -> list[Prompt]:
    """The prompts of one format×modality combination: all of them, or ``per_cell`` of them rotating so that
    successive combinations cover the pool (the same prompts on every backend, so CPU and GPU compare)."""
    if per_cell is None or not prompts:
        return list(prompts)
    return [prompts[(combo_index * per_cell + j) % len(prompts)] for j in range(min(per_cell, len(prompts)))]
