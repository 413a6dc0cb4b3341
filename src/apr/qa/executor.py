"""Run every cell of the matrix through the real CLI: worker threads, calibrated per-cell deadlines, a bounded
retry of cells the machine stopped, resume, stop-on-P0."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from apr.qa.axes import Backend, Format
from apr.qa.calibration import attempt_deadline, cell_budget, prompt_tokens
from apr.qa.evidence import Calibration, EvidenceRecord, EvidenceWriter, Outcome
from apr.qa.gates.catalog import CATALOG, GateId
from apr.qa.gates.cell import cell_checks, skipped_cell_checks
from apr.qa.gates.second_opinion import judge_cell
from apr.qa.invocation import Invocation, Numerics
from apr.qa.matrix import Cell
from apr.qa.playbook import FailurePolicy
from apr.qa.procs import Children, apr_command
from apr.qa.progress import RunProgress
from apr.qa.recording import Check, Recorder, Timer, stamp_all
from apr.qa.runners import CellRun, run_cell

NO_CUDA_REASON = "no CUDA device on this host (torch.cuda.is_available() is False): GPU cell not run"
RETRIES = 1  # a cell the machine stopped runs once more, with a longer deadline, before it is inconclusive
# The exact engine reads every weight as float32 (~6x the bytes of a Q4_K_M file per token) and dequantizes them
# all at load: its second opinion gets this many times the cell's deadline.
EXACT_DEADLINE_FACTOR = 8.0


@dataclass(frozen=True)
class ExecutionPlan:
    """The cells to run and how: artifacts per format, deadlines, workers, failure policy, CUDA presence.

    ``timeout_s`` is the playbook's deadline; with a ``calibration`` a cell gets more when this machine needs
    more (``apr.qa.calibration.cell_budget``, from the model's size), and its programs the calibrated threads.
    """

    cells: tuple[Cell, ...]
    artifacts: dict[Format, Path]
    timeout_s: float
    workers: int = 1
    failure_policy: FailurePolicy = FailurePolicy.COLLECT_ALL
    use_chat_template: bool = True
    cuda_available: bool = False
    apr_argv: tuple[str, ...] = field(default_factory=lambda: tuple(apr_command()))
    missing_artifacts: dict[Format, str] = field(default_factory=dict)  # format -> why it has no artifact
    calibration: Calibration | None = None
    model_bytes: dict[Format, int] = field(default_factory=dict)
    retries: int = RETRIES
    # A CPU cell whose oracle failed runs again with --numerics exact and the exact verdict stands
    # (apr.qa.gates.second_opinion); False judges on the fast run alone.
    second_opinion: bool = True
    exact_deadline_factor: float = EXACT_DEADLINE_FACTOR

    def budget(self, cell: Cell) -> float:
        """The cell's first deadline on this machine."""
        size = self.model_bytes.get(cell.format, 0)
        return cell_budget(
            self.calibration, size, prompt_tokens(cell.prompt.text), cell.prompt.max_tokens, self.timeout_s
        )

    def runnable(self, cell: Cell, attempt: int = 0, numerics: Numerics = "fast") -> Invocation:
        deadline = attempt_deadline(self.budget(cell), attempt)
        return Invocation(
            model_path=self.artifacts[cell.format],
            format=cell.format,
            backend=cell.backend,
            modality=cell.modality,
            scenario_id=cell.prompt.id,
            prompt=cell.prompt.text,
            seed=cell.seed,
            max_tokens=cell.prompt.max_tokens,
            timeout_s=deadline * (self.exact_deadline_factor if numerics == "exact" else 1.0),
            use_chat_template=self.use_chat_template,
            threads=self.calibration.threads if self.calibration is not None and cell.backend is Backend.CPU else None,
            numerics=numerics,
        )

    def machine_note(self, cell: Cell, attempts: list[CellRun]) -> str:
        """Why the machine, not the model, is the cause: the attempts, their deadlines, what the machine delivered."""
        deadlines = ", ".join(f"{attempt_deadline(self.budget(cell), n):.0f}s" for n in range(len(attempts)))
        cause = attempts[-1].infra_cause
        note = f"{len(attempts)} attempt(s) (deadlines {deadlines})"
        if self.calibration is not None:
            size = self.model_bytes.get(cell.format, 0)
            note += f"; this machine delivered {self.calibration.line()}"
            if size:
                note += f", ~{self.calibration.decode_ceiling_tok_s(size):.1f} tok/s for {size / 1e9:.2f} GB per token"
        return note + (f": {cause.advice}" if cause is not None else "")


def run_attempts(
    plan: ExecutionPlan, cell: Cell, children: Children | None = None, numerics: Numerics = "fast"
) -> list[CellRun]:
    """Run a cell until it ends without a machine cause or its retries are spent; every attempt, in order."""
    attempts: list[CellRun] = []
    for attempt in range(plan.retries + 1):
        attempts.append(run_cell(plan.runnable(cell, attempt, numerics), list(plan.apr_argv), children))
        if attempts[-1].infra_cause is None or (children is not None and children.cancelled):
            break
    return attempts


@dataclass
class ExecutionSummary:
    """What the executor did: outcomes written, cells resumed from an earlier run, cells never run."""

    outcomes: Counter = field(default_factory=Counter)
    cells_run: int = 0
    cells_resumed: int = 0
    cells_not_run: int = 0
    stopped_by: str | None = None  # the first P0 failure that stopped the run (stop_on_first_p0)
    runs: dict[str, CellRun] = field(default_factory=dict)  # cell key -> what its subprocess produced

    def line(self) -> str:
        parts = [f"{n} {outcome}" for outcome, n in sorted(self.outcomes.items())]
        extra = [f"{self.cells_resumed} cell(s) resumed", f"{self.cells_not_run} not run"]
        return f"{self.cells_run} cell(s) run: " + ", ".join(parts + extra)


def _blocking_failure(records: list[EvidenceRecord]) -> EvidenceRecord | None:
    return next((r for r in records if r.outcome.is_failure and CATALOG[r.gate].blocking), None)


def cell_status(records: list[EvidenceRecord]) -> str:
    """One word for a finished cell: its worst outcome (with the machine cause), or ``resumed``."""
    if not records:
        return "resumed"
    order = (Outcome.CRASHED, Outcome.FALSIFIED, Outcome.INCONCLUSIVE, Outcome.SKIPPED, Outcome.CORROBORATED)
    worst = next(o for o in (*order, records[-1].outcome) if any(r.outcome is o for r in records))
    cause = next((r.cause for r in records if r.cause is not None), None)
    return f"{worst} ({cause})" if cause is not None else str(worst)


class CellExecutor:
    """Drives the plan; every record goes through one thread-safe writer the moment its cell ends."""

    def __init__(
        self,
        plan: ExecutionPlan,
        recorder: Recorder,
        writer: EvidenceWriter,
        done_keys: frozenset[str] = frozenset(),
        on_cell_done: Callable[[Cell, str], None] | None = None,
        on_cell_start: Callable[[Cell], None] | None = None,
    ):
        self.plan = plan
        self.recorder = recorder
        self.writer = writer
        self.done_keys = done_keys
        self.on_cell_done = on_cell_done
        self.on_cell_start = on_cell_start
        self.summary = ExecutionSummary()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.children = Children()

    def _checks(self, cell: Cell) -> tuple[list[Check], CellRun | None]:
        if cell.backend is Backend.GPU and not self.plan.cuda_available:
            return skipped_cell_checks(cell, NO_CUDA_REASON), None
        if cell.format in self.plan.missing_artifacts:
            why = self.plan.missing_artifacts[cell.format]
            checks = skipped_cell_checks(cell, f"no {cell.format} artifact to run: {why}")
            # No artifact is a failed inference, not merely an untested one.
            checks[0] = replace(checks[0], outcome=Outcome.FALSIFIED, n_compared=1)
            return checks, None
        attempts = run_attempts(self.plan, cell, self.children)
        run = attempts[-1]
        note = self.plan.machine_note(cell, attempts) if run.infra_cause is not None else ""
        checks = cell_checks(cell, run, attempts=len(attempts), machine_note=note)
        if self._wants_second_opinion(cell, checks):
            checks = self._second_opinion(cell, checks)
        return checks, run

    def _wants_second_opinion(self, cell: Cell, checks: list[Check]) -> bool:
        """A CPU cell an oracle failed on: the GPU's cells judge the GPU's numerics, as its model-level gates do."""
        return (
            self.plan.second_opinion
            and cell.backend is Backend.CPU
            and any(c.gate is GateId.G4_QUALITY and c.outcome is Outcome.FALSIFIED for c in checks)
            and not self.children.cancelled
        )

    def _second_opinion(self, cell: Cell, fast: list[Check]) -> list[Check]:
        attempts = run_attempts(self.plan, cell, self.children, numerics="exact")
        run = attempts[-1]
        note = self.plan.machine_note(cell, attempts) if run.infra_cause is not None else ""
        exact = cell_checks(cell, run, attempts=len(attempts), machine_note=note)
        planned = self.recorder.gates
        return judge_cell(fast, exact, record_flips=planned is None or GateId.NUMERICS_PARITY in planned)

    def _cell_finished(self, cell: Cell) -> bool:
        # G3 is written last for a cell; its key being present means every record of the cell was written.
        return f"G3-STABILITY|process|{self.recorder.model}|{cell.key}" in self.done_keys

    def _run_one(self, cell: Cell) -> None:
        if self._cell_finished(cell):
            with self._lock:
                self.summary.cells_resumed += 1
            self._notify(cell, "resumed")
            return
        if self._stop.is_set():
            with self._lock:
                self.summary.cells_not_run += 1
            self._notify(cell, "not run")
            return
        if self.on_cell_start is not None:
            self.on_cell_start(cell)
        timer = Timer()
        checks, run = self._checks(cell)
        if self.children.cancelled:
            return  # interrupted: what the killed program left behind is not evidence about the model
        records = [r for r in stamp_all(self.recorder, checks, timer) if r.key not in self.done_keys]
        for record in records:
            self.writer.append(record)
        failure = _blocking_failure(records)
        with self._lock:
            self.summary.cells_run += 1
            self.summary.outcomes.update(r.outcome.value for r in records)
            if run is not None:
                self.summary.runs[cell.key] = run
            if failure and self.plan.failure_policy is FailurePolicy.STOP_ON_FIRST_P0 and not self._stop.is_set():
                self.summary.stopped_by = f"{failure.gate} {failure.check} on {cell.key}: {failure.reason}"
                self._stop.set()
        self._notify(cell, cell_status(records))

    def _notify(self, cell: Cell, status: str) -> None:
        if self.on_cell_done is not None:
            self.on_cell_done(cell, status)

    def run(self) -> ExecutionSummary:
        pool = ThreadPoolExecutor(max_workers=max(1, self.plan.workers), thread_name_prefix="apr-cell")
        try:
            for future in [pool.submit(self._run_one, cell) for cell in self.plan.cells]:
                future.result()
        except BaseException:
            self._stop.set()
            self.children.kill_all()  # they run in their own sessions: Ctrl-C or SIGTERM never reached them
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.summary


def execute(
    plan: ExecutionPlan,
    recorder: Recorder,
    writer: EvidenceWriter,
    *,
    done_keys: frozenset[str] = frozenset(),
    progress: RunProgress | None = None,
) -> ExecutionSummary:
    """Run the plan, with a progress line (what runs, how long each cell took, ETA) when ``progress`` is given."""
    if progress is None:
        return CellExecutor(plan, recorder, writer, done_keys).run()
    phase = progress.phase("cells", len(plan.cells))
    timings: dict[str, float] = {}
    lock = threading.Lock()

    def started(cell: Cell) -> None:
        with lock:
            timings[cell.key] = time.monotonic()
        phase.start(f"{cell.key} (deadline {plan.budget(cell):.0f}s)")

    def finished(cell: Cell, status: str) -> None:
        with lock:
            began = timings.pop(cell.key, None)
        phase.finish(f"{cell.key}: {status}", seconds=time.monotonic() - began if began is not None else 0.0)

    summary = CellExecutor(plan, recorder, writer, done_keys, on_cell_done=finished, on_cell_start=started).run()
    phase.close()
    return summary
