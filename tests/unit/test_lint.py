"""The tree passes ruff (lint and format) and mypy with the settings in pyproject.toml: CI runs them here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("argv", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=["lint", "format"])
def test_ruff(argv: tuple[str, ...]) -> None:
    result = tool(*argv)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy() -> None:
    # Incremental after the first run (.mypy_cache): seconds; a cold run takes about half a minute.
    result = tool("mypy")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_every_module_opens_with_a_line_saying_what_it_is_for() -> None:
    import ast

    missing = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("src", "pipelines", "tests", "bench")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not missing
