"""Every oracle on good and bad replies; the registry and evaluate()."""

from __future__ import annotations

import pytest

from apr.qa.evidence import Outcome
from apr.qa.oracles import ORACLES, evaluate
from apr.qa.oracles.arithmetic import parse_question, stated_answer
from apr.qa.oracles.base import (
    ArithmeticSpec,
    CodeSpec,
    ExpectedTextSpec,
    GarbageSpec,
    Generation,
    Language,
    OracleName,
    VerdictKind,
)
from apr.qa.oracles.garbage import mojibake
from apr.qa.scenarios import Pool, Prompt


def kind(name, prompt, reply, spec=None):
    return evaluate(name, prompt, reply, spec).kind


def test_registry_has_one_check_per_oracle():
    assert set(ORACLES) == set(OracleName)


# --- arithmetic -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question, value",
    [
        ("What is 2+2?", 4),
        ("Compute 7 * 8.", 56),
        ("What is 15-7?", 8),
        ("What is 100/4?", 25),
        ("What is 12 plus 9?", 21),
        ("What is 6 times 7?", 42),
        ("What is 1,000 minus 1?", 999),
    ],
)
def test_arithmetic_parses_the_question(question, value):
    assert parse_question(question) == value


@pytest.mark.parametrize(
    "reply",
    ["4", "2 + 2 equals 4.", "The answer is 4", "2+2=4", "Four.", "2 + 2 = 4. Is there anything else?", "**4**"],
)
def test_arithmetic_accepts_the_right_stated_answer(reply):
    assert kind("arithmetic", "What is 2+2?", reply) is VerdictKind.PASS


@pytest.mark.parametrize("reply", ["14", "2 + 2 = 5", "The answer is 22.", "I don't know", "", "33 - 26 = 11"])
def test_arithmetic_rejects_wrong_or_missing_answers(reply):
    question = "What is 33 minus 26?" if "33" in reply else "What is 2+2?"
    assert kind("arithmetic", question, reply) is VerdictKind.FAIL


def test_arithmetic_without_a_question_is_inapplicable_never_a_pass():
    result = evaluate("arithmetic", "Say hello.", "4")
    assert result.kind is VerdictKind.INAPPLICABLE and result.outcome is Outcome.SKIPPED


def test_arithmetic_completion_is_judged_by_the_first_number_of_the_continuation():
    assert kind("arithmetic", "9 - 8 =", " 1\n\n10 - 7 = 3") is VerdictKind.PASS
    assert kind("arithmetic", "9 - 8 =", " 12\n\n10 - 7 = 1") is VerdictKind.FAIL


def test_arithmetic_explicit_expectation_and_tolerance():
    assert (
        kind("arithmetic", "pi to two places?", "3.14", ArithmeticSpec(expected=3.14159, tolerance=0.01))
        is VerdictKind.PASS
    )
    assert kind("arithmetic", "What is 0.1 + 0.2?", "0.3") is VerdictKind.PASS
    assert stated_answer("no numbers here") is None


# --- code -------------------------------------------------------------------------------------------------

GOOD_PY = "Here you go:\n```python\ndef add_numbers(a, b):\n    return a + b\n```\n"


def test_code_accepts_a_python_function():
    result = evaluate("code", "write add_numbers", GOOD_PY, CodeSpec(function_name="add_numbers"))
    assert result.passed and result.metrics["code_lines"] >= 2


@pytest.mark.parametrize(
    "reply, why",
    [
        ("```python\ndef add_numbers(a, b)\n    return a + b\n```", "does not parse"),
        ("```python\nx = 1 + 2\n```", "defines no function"),
        ("```python\ndef add_numbers(a, b):\n    print(a + b)\n```", "never returns"),
        ("```python\ndef other(a, b):\n    return a\n```", "no function named add_numbers"),
        ("Sorry, I cannot help with that.", "does not parse"),
        ("", "holds no code"),
    ],
)
def test_code_rejects_bad_python(reply, why):
    result = evaluate("code", "write add_numbers", reply, CodeSpec(function_name="add_numbers"))
    assert result.kind is VerdictKind.FAIL and why in result.reason


def test_code_accepts_an_unfenced_python_reply():
    assert kind("code", "p", "def f(x):\n    return x * x\n", CodeSpec()) is VerdictKind.PASS


@pytest.mark.parametrize(
    "language, good, bad",
    [
        (
            Language.JAVASCRIPT,
            "```js\nfunction isEven(n) { return n % 2 === 0; }\n```",
            "```js\nfunction isEven(n) { return n % 2 === 0; \n```",
        ),
        (Language.RUST, "```rust\nfn square(x: i64) -> i64 {\n    x * x\n}\n```", "```rust\nlet x = (1, 2;\n```"),
        (
            Language.GO,
            "```go\nfunc maxOfTwo(a, b int) int {\n\tif a > b { return a }\n\treturn b\n}\n```",
            "```go\nreturn a }\n```",
        ),
    ],
)
def test_code_structural_checks_for_other_languages(language, good, bad):
    spec = CodeSpec(language=language)
    assert kind("code", "p", good, spec) is VerdictKind.PASS
    assert kind("code", "p", bad, spec) is VerdictKind.FAIL


def test_code_brackets_inside_strings_do_not_count():
    reply = '```js\nfunction f() { return "}}}"; } // )\n```'
    assert kind("code", "p", reply, CodeSpec(language=Language.JAVASCRIPT)) is VerdictKind.PASS


# --- garbage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "2 + 2 equals 4.",
        "4",
        "你好",
        "你好，世界！很高兴见到你。",
        "Variables store values so that a program can refer to them later by name.",
        GOOD_PY,
        "Information about inference: infinite loops are bad.",
        "café, naïve, Zürich",
    ],
)
def test_garbage_accepts_clean_replies(reply):
    assert kind("garbage", "p", reply) is VerdictKind.PASS


@pytest.mark.parametrize(
    "reply, why",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("answer: \ufffd\ufffd", "U+FFFD"),
        ("ä½\xa0å¥½", "mojibake"),
        ("The cafÃ© is open", "mojibake"),
        ("hello\x1b[31m world", "control characters"),
        ("ok\x00", "control characters"),
        ("<pad><pad><pad><pad>", "flood"),
        ("Sure, the result: PAD PAD PAD PAD PAD PAD PAD PAD PAD PAD PAD PAD PAD", "'PAD' is"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "distinct characters"),
        ("I like cats. I like cats. I like cats. I like cats. I like cats. I like cats.", "repetition ratio"),
    ],
)
def test_garbage_rejects_degenerate_replies(reply, why):
    result = evaluate("garbage", "p", reply)
    assert result.kind is VerdictKind.FAIL and why in result.reason


def test_a_sentence_said_twice_passes_three_times_is_a_loop():
    sentence = "The access code for the vault is 5634."
    assert kind("garbage", "p", f"{sentence} {sentence}") is VerdictKind.PASS
    assert kind("garbage", "p", f"{sentence} {sentence} {sentence}") is VerdictKind.FAIL


def test_garbage_thresholds_come_from_the_spec():
    reply = "one two three four five six one two three four five six seven eight"
    assert kind("garbage", "p", reply, GarbageSpec(max_repetition_ratio=0.5)) is VerdictKind.PASS
    assert kind("garbage", "p", reply, GarbageSpec(max_repetition_ratio=0.1)) is VerdictKind.FAIL


def test_mojibake_detector_leaves_real_accents_alone():
    assert mojibake("naïve café über Ça") is None
    assert mojibake("Ã¼ber") == "Ã¼"


# --- expected text, stops on EOS, non-empty ----------------------------------------------------------------


def test_expected_text():
    spec = ExpectedTextSpec(any_of=("你好",))
    assert kind("expected_text", "p", "你好！", spec) is VerdictKind.PASS
    assert kind("expected_text", "p", "Hello", spec) is VerdictKind.FAIL
    assert kind("expected_text", "p", "The capital is PARIS", ExpectedTextSpec(any_of=("Paris",))) is VerdictKind.PASS
    assert (
        kind("expected_text", "p", "PARIS", ExpectedTextSpec(any_of=("Paris",), case_sensitive=True))
        is VerdictKind.FAIL
    )
    with pytest.raises(ValueError, match="needs a spec"):
        evaluate("expected_text", "p", "x")


def test_stops_on_eos():
    assert (
        kind("stops_on_eos", "p", Generation(text="4", finish_reason="stop", completion_tokens=2, max_tokens=64))
        is VerdictKind.PASS
    )
    assert (
        kind("stops_on_eos", "p", Generation(text="4 4 4", finish_reason="length", completion_tokens=64, max_tokens=64))
        is VerdictKind.FAIL
    )
    assert kind("stops_on_eos", "p", "4") is VerdictKind.INAPPLICABLE


def test_non_empty():
    assert kind("non_empty", "p", "x") is VerdictKind.PASS
    assert kind("non_empty", "p", " \n\t") is VerdictKind.FAIL


def test_evaluate_takes_the_spec_from_the_prompt():
    prompt = Prompt(id="x", pool=Pool.CUSTOM, text="Say hi in Chinese", oracles=(ExpectedTextSpec(any_of=("你好",)),))
    assert evaluate(OracleName.EXPECTED_TEXT, prompt, "你好").passed
    assert not evaluate(OracleName.EXPECTED_TEXT, prompt, "hi").passed
    with pytest.raises(ValueError, match="given to oracle"):
        evaluate("non_empty", "p", "x", ExpectedTextSpec(any_of=("a",)))
