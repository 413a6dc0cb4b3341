"""FUNCTIONAL-CORRECTNESS: does every format still code as well as the reference? `apr eval` per format, paired.

The reference is the SafeTensors artifact (the bf16 export every certification writes) run by the engine with
the playbook's ``reference_numerics`` (``exact`` by default: float32 numerics, what transformers computes). Each
format under test runs with the engine's default numerics; its pass@1 must lie within ``tolerance`` of the
reference's on the same problems. The evidence lists the problems that flipped (passed by the reference and
failed by the format, and the other way), with McNemar's exact p-value of the discordant pairs. A problem
whose program timed out on one side and passed on the other is left out of the comparison and listed: a busy
host can time out a correct program, and an infrastructure failure must never falsify a model.

Every `apr eval` run is a real subprocess writing into ``$APR_HOME/eval/<artifact sha256>/...`` with
``--resume``: the Dagster assets (``pipelines/assets/functional.py``), `apr certify` and `apr qa` share the
results of an artifact, and an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apr.eval.results import ProblemResult, read_results, wilson_interval
from apr.qa.axes import Backend, Format
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import FunctionalCorrectnessGate
from apr.qa.infra import InfraCause
from apr.qa.procs import Ending, ProcessResult, child_env, run_process
from apr.qa.recording import Check, inconclusive, skipped, verdict

if TYPE_CHECKING:
    from apr.qa.stages import Subject

GATE = GateId.FUNCTIONAL_CORRECTNESS
REFERENCE_FORMAT = Format.SAFETENSORS
SHOWN_FLIPS = 20  # problem ids listed in a record's metrics; the full lists are in the output excerpt


@dataclass(frozen=True)
class EvalRun:
    """One `apr eval` run of one artifact: how the process ended and the per-problem records it left."""

    folder: Path
    process: ProcessResult | None
    results: dict[str, ProblemResult]
    summary: dict[str, Any] | None


def eval_folder(sha256: str, settings: FunctionalCorrectnessGate, numerics: str, chat: bool) -> Path:
    """Where the results of one artifact under one set of generation settings live (shared by every caller)."""
    from apr import settings as apr_settings

    decided_by = {
        "task": settings.task,
        "data": settings.data,
        "limit": settings.limit,
        "max_tokens": settings.max_tokens,
        "numerics": numerics,
        "chat": chat,
    }
    key = hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:12]
    return apr_settings.current().home / "eval" / sha256[:16] / f"{settings.task}-{numerics}-{key}"


def eval_argv(
    apr_argv: Sequence[str],
    artifact: Path,
    folder: Path,
    settings: FunctionalCorrectnessGate,
    numerics: str,
    chat: bool,
) -> list[str]:
    """The `apr eval` command line of one run (greedy, CPU, resumable; the chat template as the playbook says)."""
    argv = [*apr_argv, "eval", str(artifact), "--task", settings.task, "--output", str(folder), "--resume"]
    argv.append("--chat" if chat else "--no-chat")
    argv += ["--max-tokens", str(settings.max_tokens), "--batch-size", str(settings.batch_size)]
    argv += ["--numerics", numerics, "--device", "cpu", "--json"]
    if settings.data is not None:
        argv += ["--data", settings.data]
    if settings.limit is not None:
        argv += ["--limit", str(settings.limit)]
    return argv


def run_eval(
    artifact: Path,
    sha256: str,
    settings: FunctionalCorrectnessGate,
    numerics: str,
    *,
    chat: bool,
    apr_argv: Sequence[str],
) -> EvalRun:
    """`apr eval` on ``artifact`` (a subprocess), resumed in its shared folder."""
    from apr.qa.runners import json_document

    folder = eval_folder(sha256, settings, numerics, chat)
    argv = eval_argv(apr_argv, artifact, folder, settings, numerics, chat)
    process = run_process(argv, timeout_s=settings.timeout_s, env=child_env())
    summary = json_document(process.stdout) if process.ending is Ending.OK else None
    problems = folder / "problems.jsonl"
    results = read_results(problems) if summary is not None and problems.exists() else {}
    return EvalRun(folder, process, results, summary)


@dataclass(frozen=True)
class Paired:
    """The reference's and a candidate's results on the problems both ran."""

    compared: tuple[str, ...]
    reference_passed: int
    candidate_passed: int
    lost: tuple[str, ...]  # passed by the reference, failed by the candidate
    gained: tuple[str, ...]  # failed by the reference, passed by the candidate
    undecided: tuple[str, ...]  # a sandbox error, or a flip by a timeout on one side: left out (not the model)

    @property
    def n(self) -> int:
        return len(self.compared)

    @property
    def reference_rate(self) -> float:
        return self.reference_passed / self.n if self.n else 0.0

    @property
    def candidate_rate(self) -> float:
        return self.candidate_passed / self.n if self.n else 0.0

    @property
    def delta(self) -> float:
        return self.candidate_rate - self.reference_rate

    @property
    def mcnemar_p(self) -> float:
        """Two-sided exact McNemar p-value: how likely this many one-way flips are if both pass equally often."""
        discordant = len(self.lost) + len(self.gained)
        if discordant == 0:
            return 1.0
        tail = sum(math.comb(discordant, k) for k in range(min(len(self.lost), len(self.gained)) + 1))
        return min(1.0, 2 * tail / 2**discordant)


def paired_comparison(reference: dict[str, ProblemResult], candidate: dict[str, ProblemResult]) -> Paired:
    """Compare problem by problem on the problems both sides scored."""
    compared: list[str] = []
    lost: list[str] = []
    gained: list[str] = []
    undecided: list[str] = []
    for task_id in sorted(reference.keys() & candidate.keys(), key=_problem_order):
        ref, cand = reference[task_id], candidate[task_id]
        if "error" in (ref.status, cand.status) or (
            ref.passed != cand.passed and "timeout" in (ref.status, cand.status)
        ):
            undecided.append(task_id)
            continue
        compared.append(task_id)
        if ref.passed and not cand.passed:
            lost.append(task_id)
        elif cand.passed and not ref.passed:
            gained.append(task_id)
    return Paired(
        compared=tuple(compared),
        reference_passed=sum(reference[t].passed for t in compared),
        candidate_passed=sum(candidate[t].passed for t in compared),
        lost=tuple(lost),
        gained=tuple(gained),
        undecided=tuple(undecided),
    )


def _problem_order(task_id: str) -> tuple[str, int]:
    prefix, _, number = task_id.rpartition("/")
    return (prefix, int(number)) if number.isdigit() else (task_id, 0)


def functional_check(fmt: Format, paired: Paired, settings: FunctionalCorrectnessGate) -> Check:
    """The verdict on one format: |pass@1(format) - pass@1(reference)| <= tolerance over the paired problems."""
    name = f"pass@1:{fmt}/cpu"
    fields: dict[str, Any] = {"format": fmt, "backend": Backend.CPU, "threshold": settings.tolerance, "unit": "Δpass@1"}
    if paired.n == 0:
        return skipped(GATE, name, f"no {settings.task} problem was scored by both the reference and {fmt}", **fields)
    ref_low, ref_high = wilson_interval(paired.reference_passed, paired.n)
    low, high = wilson_interval(paired.candidate_passed, paired.n)
    metrics: dict[str, Any] = {
        "task": settings.task,
        "problems": paired.n,
        "reference_pass_at_1": round(paired.reference_rate, 6),
        "reference_ci95_low": round(ref_low, 6),
        "reference_ci95_high": round(ref_high, 6),
        "pass_at_1": round(paired.candidate_rate, 6),
        "ci95_low": round(low, 6),
        "ci95_high": round(high, 6),
        "lost": len(paired.lost),
        "gained": len(paired.gained),
        "lost_ids": ",".join(paired.lost[:SHOWN_FLIPS]),
        "gained_ids": ",".join(paired.gained[:SHOWN_FLIPS]),
        "undecided_ids": ",".join(paired.undecided[:SHOWN_FLIPS]),
        "mcnemar_p": round(paired.mcnemar_p, 6),
        "reference_numerics": settings.reference_numerics,
    }
    reason = (
        f"{settings.task} pass@1 {100 * paired.candidate_rate:.1f}% vs reference {100 * paired.reference_rate:.1f}% "
        f"on {paired.n} problems (Δ {100 * paired.delta:+.1f} points, tolerance ±{100 * settings.tolerance:.1f}); "
        f"flipped: {len(paired.lost)} lost, {len(paired.gained)} gained (McNemar p={paired.mcnemar_p:.3g})"
        + (f"; {len(paired.undecided)} timeout flip(s) left out" if paired.undecided else "")
    )
    output = json.dumps({"lost": paired.lost, "gained": paired.gained, "undecided": paired.undecided})
    return verdict(
        GATE,
        name,
        abs(paired.delta) <= settings.tolerance + 1e-12,
        reason,
        paired.n,
        measured=round(paired.delta, 6),
        metrics=metrics,
        output=output,
        **fields,
    )


def run_failure(fmt: Format, run: EvalRun, role: str, settings: FunctionalCorrectnessGate) -> Check | None:
    """The check a failed `apr eval` run stands for: a timeout or crash is infrastructure (never falsified); a
    refusal (bad data file, a format the engine cannot load) is skipped with its one-line error."""
    name = f"pass@1:{fmt}/cpu"
    fields: dict[str, Any] = {"format": fmt, "backend": Backend.CPU, "threshold": settings.tolerance}
    process = run.process
    if process is None or run.summary is not None:
        return None
    ending = process.ending
    reason = f"apr eval of the {role}: {process.reason()} (results so far kept in {run.folder}; rerun resumes)"
    if ending in (Ending.TIMEOUT, Ending.INFRASTRUCTURE):
        # The machine stopped the run (deadline, OOM, a kill from outside): never a falsification of the model.
        cause = process.infra_cause or InfraCause.DEADLINE
        return inconclusive(GATE, name, cause, reason, output=process.stderr_tail(), **fields)
    if ending is Ending.CRASHED:
        return Check(GATE, name, Outcome.CRASHED, reason, n_compared=1, output=process.stderr_tail(), **fields)
    return skipped(GATE, name, f"apr eval of the {role} did not run: {process.reason()}", **fields)


def functional_checks(subject: Subject) -> list[Check]:
    """One check per format under test, each paired with the reference run."""
    settings = subject.gates.functional_correctness
    assert settings is not None  # the caller checked
    apr_argv = list(subject.plan().apr_argv)
    formats = list(subject.formats)
    reference_path = subject.artifacts.paths.get(REFERENCE_FORMAT)
    if reference_path is None:
        reason = "no SafeTensors artifact: the reference (the bf16 export) is missing"
        return [skipped(GATE, f"pass@1:{fmt}/cpu", reason, format=fmt, backend=Backend.CPU) for fmt in formats]
    reference = run_eval(
        reference_path,
        subject.artifacts.digests[REFERENCE_FORMAT],
        settings,
        settings.reference_numerics,
        chat=subject.chat,
        apr_argv=apr_argv,
    )
    checks: list[Check] = []
    for fmt in formats:
        failed = run_failure(fmt, reference, "reference", settings)
        if failed is not None:
            checks.append(failed)
            continue
        if fmt not in subject.artifacts.paths:
            checks.append(skipped(GATE, f"pass@1:{fmt}/cpu", f"no {fmt} artifact", format=fmt, backend=Backend.CPU))
            continue
        candidate = run_eval(
            subject.artifacts.paths[fmt],
            subject.artifacts.digests[fmt],
            settings,
            "fast",
            chat=subject.chat,
            apr_argv=apr_argv,
        )
        failed = run_failure(fmt, candidate, fmt.value, settings)
        checks.append(
            failed or functional_check(fmt, paired_comparison(reference.results, candidate.results), settings)
        )
    return checks
