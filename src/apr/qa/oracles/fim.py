"""FIM oracle: the middle the model wrote completes the code, i.e. prefix + middle + suffix parses as Python.

The case's assertion (run in the eval sandbox by the gate) is judged by ``check_execution``: a program that
ran and was wrong fails; a sandbox that could not run it, or a wall-clock kill on a busy host, says nothing
about the model (the gate records those inconclusive).
"""

from __future__ import annotations

import ast

from apr.eval.sandbox import Execution, Status
from apr.qa.coder_cases import FimCase
from apr.qa.oracles.feature import FeatureVerdict, failed, passed


def program(case: FimCase, middle: str) -> str:
    """The code as the editor would hold it after accepting the completion."""
    return case.prefix + middle + case.suffix


def check(case: FimCase, middle: str, finish_reason: str | None) -> FeatureVerdict:
    """The middle is not empty and prefix + middle + suffix parses (a cut-off middle usually does not)."""
    lines = middle.count("\n") + 1
    if not middle.strip():
        return failed("the middle is empty: nothing was filled in", middle_chars=len(middle))
    try:
        ast.parse(program(case, middle))
    except SyntaxError as err:
        cut = " (cut at max_tokens)" if finish_reason == "length" else ""
        return failed(
            f"prefix + middle + suffix does not parse{cut}: {err.msg} (line {err.lineno})", middle_lines=lines
        )
    return passed(f"prefix + middle + suffix parses ({lines} middle line(s))", middle_lines=lines)


def check_execution(execution: Execution) -> FeatureVerdict | None:
    """The case's assertion on the completed program: a verdict, or None when the sandbox decided nothing."""
    if execution.status is Status.PASSED:
        return passed(f"parses and its assertion passes ({execution.isolation})", seconds=round(execution.seconds, 3))
    if execution.status is Status.FAILED:
        return failed(f"parses, but its assertion fails: {execution.error[-300:]}", seconds=round(execution.seconds, 3))
    return None  # TIMEOUT or ERROR: the machine, not (provably) the model
