"""Code oracle: extract the code block; Python must pass ``ast.parse`` (and define/return where asked).

JavaScript, Rust and Go are not parsed: their blocks must have balanced brackets (outside strings
and comments) and the language's function keyword where a definition is required.
"""

from __future__ import annotations

import ast
import re

from apr.qa.oracles.base import CodeSpec, Generation, Language, OracleName, OracleVerdict, verdict

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ALIASES = {
    Language.PYTHON: {"python", "py", "python3"},
    Language.JAVASCRIPT: {"javascript", "js", "node"},
    Language.RUST: {"rust", "rs"},
    Language.GO: {"go", "golang"},
}
_DEF_KEYWORD = {Language.JAVASCRIPT: r"\bfunction\b|=>", Language.RUST: r"\bfn\b", Language.GO: r"\bfunc\b"}
_PAIRS = {")": "(", "]": "[", "}": "{"}
_STRINGS_AND_COMMENTS = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|`[^`]*`|//[^\n]*|/\*.*?\*/', re.DOTALL)


def extract_code(reply: str, language: Language) -> str | None:
    """The first fenced block tagged with ``language``, else the first fenced block, else the whole reply."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(reply)]
    for tag, body in blocks:
        if tag in _ALIASES[language]:
            return body
    return blocks[0][1] if blocks else reply


def _check_python(code: str, spec: CodeSpec) -> tuple[bool, str]:
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return False, f"Python does not parse: {err.msg} (line {err.lineno})"
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if spec.require_def and not functions:
        return False, "parses, but defines no function"
    if spec.function_name and spec.function_name not in {f.name for f in functions}:
        return False, f"parses, but defines no function named {spec.function_name}"
    if spec.require_return and not any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(tree)):
        return False, "parses, but never returns a value"
    return True, f"Python parses; {len(functions)} function(s)"


def _balanced(code: str) -> bool:
    stack: list[str] = []
    for char in _STRINGS_AND_COMMENTS.sub("", code):
        if char in "([{":
            stack.append(char)
        elif char in _PAIRS:
            if not stack or stack.pop() != _PAIRS[char]:
                return False
    return not stack


def _check_structural(code: str, spec: CodeSpec) -> tuple[bool, str]:
    if not _balanced(code):
        return False, f"{spec.language} block has unbalanced brackets"
    if spec.require_def and not re.search(_DEF_KEYWORD[spec.language], code):
        return False, f"{spec.language} block defines no function"
    if spec.function_name and not re.search(rf"\b{re.escape(spec.function_name)}\b", code):
        return False, f"{spec.language} block never names {spec.function_name}"
    if spec.require_return and spec.language is not Language.RUST and not re.search(r"\breturn\b", code):
        return False, f"{spec.language} block never returns"  # Rust may return its last expression
    return True, f"{spec.language} block is balanced and defines a function"


def check(prompt: str, output: Generation, spec: CodeSpec) -> OracleVerdict:
    code = extract_code(output.text, spec.language)
    if code is None or not code.strip():
        return verdict(OracleName.CODE, False, "the reply holds no code", code_lines=0)
    checker = _check_python if spec.language is Language.PYTHON else _check_structural
    ok, reason = checker(code, spec)
    return verdict(OracleName.CODE, ok, reason, code_lines=code.count("\n") + 1, language=spec.language.value)
