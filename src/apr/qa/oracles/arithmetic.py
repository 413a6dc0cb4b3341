"""Arithmetic oracle: parse the question, compute the answer, and check the number the reply states as its answer.

Unlike a substring test ("14" contains "4"), the reply's *stated answer* is compared: the first
number after the last answer marker (=, equals, is, answer) that is followed by a number, else
the last number in the reply. A completion prompt ending in "=" is answered by the first number of
the continuation. Number words zero–twenty count as numbers.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable

from apr.qa.oracles.base import ArithmeticSpec, Generation, OracleName, OracleVerdict, inapplicable, verdict

_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_OPERATORS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "plus": operator.add,
    "-": operator.sub,
    "−": operator.sub,
    "minus": operator.sub,
    "*": operator.mul,
    "×": operator.mul,
    "x": operator.mul,
    "times": operator.mul,
    "multiplied by": operator.mul,
    "/": operator.truediv,
    "÷": operator.truediv,
    "divided by": operator.truediv,
}
_OP_PATTERN = "|".join(re.escape(op) for op in sorted(_OPERATORS, key=len, reverse=True))
_QUESTION = re.compile(rf"({_NUMBER})\s*({_OP_PATTERN})\s*({_NUMBER})", re.IGNORECASE)
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
_WORD_VALUES = {word: float(value) for value, word in enumerate(_WORDS)}
_ANSWER_NUMBER = re.compile(rf"{_NUMBER}|\b(?:{'|'.join(_WORDS)})\b", re.IGNORECASE)
_MARKER = re.compile(r"=|\bequals?\b|\bis\b|\banswer\b|\bresult\b", re.IGNORECASE)


def _to_float(token: str) -> float:
    lowered = token.lower()
    return _WORD_VALUES[lowered] if lowered in _WORD_VALUES else float(token.replace(",", ""))


def parse_question(prompt: str) -> float | None:
    """The value of the first ``a OP b`` in the prompt, or None if there is none (or it divides by zero)."""
    match = _QUESTION.search(prompt)
    if match is None:
        return None
    left, op, right = _to_float(match.group(1)), _OPERATORS[match.group(2).lower()], _to_float(match.group(3))
    if op is operator.truediv and right == 0:
        return None
    return op(left, right)


def stated_answer(reply: str, *, first: bool = False) -> float | None:
    """The number the reply gives as its answer (see module docstring), or None if it states no number.
    ``first``: the reply continues "a OP b =", so its first number is the answer."""
    numbers = list(_ANSWER_NUMBER.finditer(reply))
    if not numbers:
        return None
    if first:
        return _to_float(numbers[0].group(0))
    for marker in reversed(list(_MARKER.finditer(reply))):
        following = [m for m in numbers if m.start() >= marker.end() and m.start() - marker.end() <= 24]
        if following:
            return _to_float(following[0].group(0))
    return _to_float(numbers[-1].group(0))


def check(prompt: str, output: Generation, spec: ArithmeticSpec) -> OracleVerdict:
    expected = spec.expected if spec.expected is not None else parse_question(prompt)
    if expected is None:
        return inapplicable(OracleName.ARITHMETIC, "no arithmetic question (a OP b) found in the prompt")
    found = stated_answer(output.text, first=prompt.rstrip().endswith("="))
    if found is None:
        return verdict(
            OracleName.ARITHMETIC,
            False,
            f"expected {expected:g} but the reply states no number",
            expected=expected,
            found=None,
        )
    ok = math.isclose(found, expected, abs_tol=max(spec.tolerance, 1e-9))
    reason = f"stated answer {found:g} {'equals' if ok else 'differs from'} expected {expected:g}"
    return verdict(OracleName.ARITHMETIC, ok, reason, expected=expected, found=found)
