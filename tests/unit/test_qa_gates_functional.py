"""FUNCTIONAL-CORRECTNESS on constructed paired results: tolerance, flipped problems, timeouts, no evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from apr.eval.results import ProblemResult
from apr.qa.axes import Format
from apr.qa.evidence import Outcome
from apr.qa.gates.functional import EvalRun, eval_argv, functional_check, paired_comparison, run_failure
from apr.qa.gates.thresholds import FunctionalCorrectnessGate
from apr.qa.infra import InfraCause
from apr.qa.procs import ProcessResult

SETTINGS = FunctionalCorrectnessGate(task="humaneval", tolerance=0.10)


def _result(number: int, passed: bool, status: str | None = None) -> ProblemResult:
    return ProblemResult(
        task_id=f"HumanEval/{number}", prompt_sha256="0" * 64, completion="", passed=passed,
        status=status or ("passed" if passed else "failed"), error="", finish_reason="stop", prompt_tokens=1,
        completion_tokens=1, generate_s=0.0, exec_s=0.0, isolation="namespaces+cgroup",
    )  # fmt: skip


def _results(passed: list[bool], statuses: dict[int, str] | None = None) -> dict[str, ProblemResult]:
    statuses = statuses or {}
    return {f"HumanEval/{i}": _result(i, ok, statuses.get(i)) for i, ok in enumerate(passed)}


def test_within_tolerance_passes_and_lists_the_flips_both_ways():
    reference = _results([True] * 6 + [False] * 4)
    candidate = _results([True] * 5 + [False, True] + [False] * 3)  # lost 5, gained 6
    paired = paired_comparison(reference, candidate)
    assert paired.lost == ("HumanEval/5",) and paired.gained == ("HumanEval/6",)
    check = functional_check(Format.GGUF, paired, SETTINGS)
    assert check.outcome is Outcome.CORROBORATED and check.n_compared == 10
    assert check.metrics["lost_ids"] == "HumanEval/5" and check.metrics["gained_ids"] == "HumanEval/6"
    assert check.metrics["pass_at_1"] == check.metrics["reference_pass_at_1"] == 0.6
    assert check.metrics["mcnemar_p"] == 1.0 and check.measured == 0.0


def test_a_drop_beyond_the_tolerance_is_falsified():
    reference = _results([True] * 8 + [False] * 2)
    candidate = _results([True] * 6 + [False] * 4)  # 80% -> 60%: 20 points, tolerance 10
    check = functional_check(Format.APR, paired_comparison(reference, candidate), SETTINGS)
    assert check.outcome is Outcome.FALSIFIED
    assert check.measured == pytest.approx(-0.2) and check.metrics["lost"] == 2 and check.metrics["gained"] == 0
    assert "HumanEval/6,HumanEval/7" == check.metrics["lost_ids"]
    assert check.metrics["mcnemar_p"] == pytest.approx(0.5)  # two one-way flips: 2 * (1/4)


def test_a_gain_beyond_the_tolerance_is_falsified_too():
    # "within a tolerance": a format much better than its reference computes something else.
    check = functional_check(
        Format.SAFETENSORS, paired_comparison(_results([False] * 5), _results([True] * 5)), SETTINGS
    )
    assert check.outcome is Outcome.FALSIFIED and check.measured == 1.0


def test_a_timeout_flip_is_left_out_not_counted_against_the_model():
    reference = _results([True, True, False])
    candidate = _results([True, False, False], statuses={1: "timeout"})
    paired = paired_comparison(reference, candidate)
    assert paired.undecided == ("HumanEval/1",) and paired.n == 2 and paired.lost == ()
    check = functional_check(Format.GGUF, paired, SETTINGS)
    assert check.outcome is Outcome.CORROBORATED and "HumanEval/1" in check.metrics["undecided_ids"]


def test_a_sandbox_error_on_either_side_is_left_out():
    reference = _results([True, True, True], statuses={0: "error"})
    candidate = _results([True, False, True], statuses={1: "error"})
    paired = paired_comparison(reference, candidate)
    assert paired.undecided == ("HumanEval/0", "HumanEval/1") and paired.compared == ("HumanEval/2",)


def test_only_problems_both_sides_scored_are_compared_and_none_is_never_a_pass():
    partial = paired_comparison(_results([True] * 4), {"HumanEval/2": _result(2, True)})
    assert partial.compared == ("HumanEval/2",)
    empty = functional_check(Format.GGUF, paired_comparison(_results([True] * 3), {}), SETTINGS)
    assert empty.outcome is Outcome.SKIPPED and empty.n_compared == 0


def _process(returncode: int | None, stderr: str = "", timed_out: bool = False) -> ProcessResult:
    return ProcessResult(("apr", "eval"), returncode, "", stderr, 1.0, timed_out)


def test_an_eval_run_that_timed_out_or_crashed_is_infrastructure_and_a_refusal_is_skipped(tmp_path: Path):
    timeout = run_failure(
        Format.GGUF, EvalRun(tmp_path, _process(None, timed_out=True), {}, None), "reference", SETTINGS
    )
    crashed = run_failure(
        Format.APR, EvalRun(tmp_path, _process(-9), {}, None), "apr", SETTINGS
    )  # killed by SIGKILL (the OOM killer)
    refused = run_failure(
        Format.GGUF, EvalRun(tmp_path, _process(2, "error: --task mbpp: no installable package"), {}, None), "gguf",
        SETTINGS,
    )  # fmt: skip
    # The machine stopped both (a deadline, a SIGKILL from outside): inconclusive, never against the model.
    assert timeout is not None and timeout.outcome is Outcome.INCONCLUSIVE and timeout.cause is InfraCause.DEADLINE
    assert crashed is not None and crashed.outcome is Outcome.INCONCLUSIVE and crashed.cause is not None
    assert refused is not None and refused.outcome is Outcome.SKIPPED and "no installable package" in refused.reason
    segfault = run_failure(Format.SAFETENSORS, EvalRun(tmp_path, _process(-11), {}, None), "safetensors", SETTINGS)
    assert segfault is not None and segfault.outcome is Outcome.CRASHED  # the program's own defect
    fine = EvalRun(tmp_path, _process(0), {}, {"pass@1": 0.5})
    assert run_failure(Format.GGUF, fine, "gguf", SETTINGS) is None


def test_the_eval_command_is_resumable_greedy_cpu_and_carries_the_playbook_settings(tmp_path: Path):
    settings = FunctionalCorrectnessGate(task="mbpp", data="/data/mbpp.jsonl", limit=50, max_tokens=300)
    argv = eval_argv(["apr"], tmp_path / "m.gguf", tmp_path / "out", settings, "exact", chat=False)
    assert argv[:3] == ["apr", "eval", str(tmp_path / "m.gguf")]
    pairs = dict(zip(argv[3::1], argv[4::1]))
    assert pairs["--task"] == "mbpp" and pairs["--data"] == "/data/mbpp.jsonl" and pairs["--limit"] == "50"
    assert pairs["--max-tokens"] == "300" and pairs["--numerics"] == "exact" and pairs["--device"] == "cpu"
    assert "--resume" in argv and "--no-chat" in argv and "--temperature" not in argv  # greedy is the default


def _subject(paths: dict[Format, Path], settings: FunctionalCorrectnessGate):
    from apr.qa.artifacts import Artifacts
    from apr.qa.axes import Backend
    from apr.qa.gates.thresholds import GateSet
    from apr.qa.stages import Subject

    return Subject(
        ref="fixture",
        artifacts=Artifacts(source=Format.GGUF, paths=paths, digests={fmt: "ab" * 32 for fmt in paths}),
        gates=GateSet.model_validate({"FUNCTIONAL-CORRECTNESS": settings.model_dump()}),
        backends=(Backend.CPU,),
        formats=(Format.GGUF, Format.APR),
    )


def test_without_a_safetensors_reference_every_format_is_skipped(tmp_path: Path):
    from apr.qa.gates.functional import functional_checks

    checks = functional_checks(_subject({Format.GGUF: tmp_path / "m.gguf"}, SETTINGS))
    assert [c.check for c in checks] == ["pass@1:gguf/cpu", "pass@1:apr/cpu"]
    assert all(c.outcome is Outcome.SKIPPED and "reference" in c.reason for c in checks)


def test_a_task_without_its_data_is_skipped_with_apr_evals_own_error(fixture_models, tmp_path: Path):
    from apr.qa.gates.functional import functional_checks

    paths = {Format.GGUF: fixture_models["llama"]["gguf"], Format.SAFETENSORS: fixture_models["llama"]["safetensors"]}
    checks = functional_checks(_subject(paths, FunctionalCorrectnessGate(task="mbpp")))
    assert len(checks) == 2 and all(c.outcome is Outcome.SKIPPED for c in checks)
    assert all("--task mbpp: no installable package ships these problems" in c.reason for c in checks)
