"""The fixed cases of the serve-feature gates (FIM, TOOL-CALLS, JSON-MODE, EMBEDDINGS), each with what judges it.

Fixed lists rather than seeded draws: every case is written by hand with its answer (a FIM hole and its
assertion, the function a request must call, a schema, a paraphrase), so a certification always asks the
same things and two runs compare case by case. A gate's ``cases: N`` takes the first N.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def case_id(kind: str, index: int, text: str) -> str:
    """Stable id of one case, in the shape of the scenario prompts' ids (kind-index-sha8)."""
    return f"{kind}-{index}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class FimCase:
    """Python code with a hole: ``prefix`` + the model's middle + ``suffix`` must parse, and then pass ``test``
    (statements run after the program in the eval sandbox; empty: parsing is the whole check)."""

    prefix: str
    suffix: str
    test: str = ""


FIM_CASES: tuple[FimCase, ...] = (
    FimCase(
        prefix='def add(a, b):\n    """Return the sum of a and b."""\n    return ',
        suffix="\n\n\nprint(add(1, 2))\n",
        test="assert add(2, 3) == 5",
    ),
    FimCase(
        prefix='def is_even(n: int) -> bool:\n    """True when n is even."""\n',
        suffix="\n\n\nassert isinstance(is_even(2), bool)\n",
        test="assert is_even(4) and not is_even(7)",
    ),
    FimCase(
        prefix="def factorial(n):\n    if n == 0:\n        return 1\n",
        suffix="\n\n\nprint(factorial(5))\n",
        test="assert factorial(5) == 120",
    ),
    FimCase(
        prefix="class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
        suffix="\n\n    def pop(self):\n        return self.items.pop()\n",
        test="s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2",
    ),
    FimCase(
        prefix="def largest(values):\n    best = values[0]\n    for value in values[1:]:\n",
        suffix="    return best\n",
        test="assert largest([3, 9, 2]) == 9",
    ),
)


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


# One tools list for every request: choosing among them is part of the check.
TOOLS: tuple[dict[str, Any], ...] = (
    _function(
        "get_weather",
        "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city"],
    ),
    _function(
        "get_time",
        "Current local time in an IANA time zone such as Europe/Paris.",
        {"timezone": {"type": "string"}},
        ["timezone"],
    ),
    _function(
        "convert_currency",
        "Convert an amount of money from one currency to another (ISO 4217 codes).",
        {
            "amount": {"type": "number"},
            "from_currency": {"type": "string"},
            "to_currency": {"type": "string"},
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _function(
        "search_code",
        "Search the code base for a symbol or text.",
        {"query": {"type": "string"}},
        ["query"],
    ),
)


@dataclass(frozen=True)
class ToolCase:
    """A user request that one of ``TOOLS`` answers: the call must name ``function`` and its arguments must
    match that function's schema; ``argument_contains`` names arguments whose text must contain a value
    (case-insensitive), so that a call about the wrong city is not a pass."""

    request: str
    function: str
    argument_contains: dict[str, str] = field(default_factory=dict)


TOOL_CASES: tuple[ToolCase, ...] = (
    ToolCase("What is the weather in Paris right now?", "get_weather", {"city": "paris"}),
    ToolCase("What time is it in Tokyo at the moment?", "get_time", {"timezone": "tokyo"}),
    ToolCase("Convert 100 US dollars to euros.", "convert_currency", {"amount": "100"}),
    ToolCase("Find where the function parse_config is defined in our code.", "search_code", {"query": "parse_config"}),
)


def tool_schema(name: str) -> dict[str, Any] | None:
    """The parameters schema of one of ``TOOLS``, or None for a name that is not among them."""
    for tool in TOOLS:
        if tool["function"]["name"] == name:
            return tool["function"]["parameters"]
    return None


@dataclass(frozen=True)
class JsonCase:
    """A request answered under ``response_format`` ``json_schema``: the reply must parse and match ``schema``."""

    request: str
    name: str
    schema: dict[str, Any]


JSON_CASES: tuple[JsonCase, ...] = (
    JsonCase(
        "Describe a person named Alice who is 30 years old as JSON.",
        "person",
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    ),
    JsonCase(
        "List three programming languages as JSON.",
        "languages",
        {
            "type": "object",
            "properties": {"languages": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}},
            "required": ["languages"],
            "additionalProperties": False,
        },
    ),
    JsonCase(
        "Describe the Python function `def add(a: int, b: int) -> int` as JSON.",
        "signature",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "parameters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
                        "required": ["name", "type"],
                        "additionalProperties": False,
                    },
                },
                "returns": {"type": "string"},
            },
            "required": ["name", "parameters", "returns"],
            "additionalProperties": False,
        },
    ),
    JsonCase(
        "Classify the sentiment of this review as JSON: 'I love this library, it saved me hours!'",
        "sentiment",
        {
            "type": "object",
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["sentiment", "confidence"],
            "additionalProperties": False,
        },
    ),
)


@dataclass(frozen=True)
class EmbeddingTriple:
    """``paraphrase`` says what ``anchor`` says in other words; ``unrelated`` is about something else."""

    anchor: str
    paraphrase: str
    unrelated: str


EMBEDDING_TRIPLES: tuple[EmbeddingTriple, ...] = (
    EmbeddingTriple(
        "How do I reverse a list in Python?",
        "What is the way to reverse a Python list?",
        "The weather in Paris is sunny today.",
    ),
    EmbeddingTriple(
        "def add(a, b): return a + b",
        "def sum_two(x, y): return x + y",
        "The cat slept on the warm windowsill all afternoon.",
    ),
    EmbeddingTriple(
        "The server returned a 404 error.",
        "The server answered with 404 Not Found.",
        "Bake the bread for forty minutes in a hot oven.",
    ),
    EmbeddingTriple(
        "Sort the numbers in ascending order.",
        "Arrange the numbers from smallest to largest.",
        "My grandmother grew tomatoes in her garden.",
    ),
    EmbeddingTriple(
        "A function that reads a JSON file.",
        "Code that loads a JSON file from disk.",
        "The football match ended in a draw.",
    ),
)
