"""Run every cell of the matrix through the real CLI: worker threads, per-cell deadlines, resume, stop-on-P0."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from apr.qa.axes import Backend, Format
from apr.qa.evidence import EvidenceRecord, EvidenceWriter, Outcome
from apr.qa.gates.catalog import CATALOG
from apr.qa.gates.cell import cell_checks, skipped_cell_checks
from apr.qa.invocation import Invocation
from apr.qa.matrix import Cell
from apr.qa.playbook import FailurePolicy
from apr.qa.procs import Children, apr_command
from apr.qa.recording import Check, Recorder, Timer, stamp_all
from apr.qa.runners import CellRun, run_cell

NO_CUDA_REASON = "no CUDA device on this host (torch.cuda.is_available() is False): GPU cell not run"


@dataclass(frozen=True)
class ExecutionPlan:
    """The cells to run and how: artifacts per format, deadline, workers, failure policy, CUDA presence."""

    cells: tuple[Cell, ...]
    artifacts: dict[Format, Path]
    timeout_s: float
    workers: int = 1
    failure_policy: FailurePolicy = FailurePolicy.COLLECT_ALL
    use_chat_template: bool = True
    cuda_available: bool = False
    apr_argv: tuple[str, ...] = field(default_factory=lambda: tuple(apr_command()))
    missing_artifacts: dict[Format, str] = field(default_factory=dict)  # format -> why it has no artifact

    def runnable(self, cell: Cell) -> Invocation:
        return Invocation(
            model_path=self.artifacts[cell.format],
            format=cell.format,
            backend=cell.backend,
            modality=cell.modality,
            scenario_id=cell.prompt.id,
            prompt=cell.prompt.text,
            seed=cell.seed,
            max_tokens=cell.prompt.max_tokens,
            timeout_s=self.timeout_s,
            use_chat_template=self.use_chat_template,
        )


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


class CellExecutor:
    """Drives the plan; every record goes through one thread-safe writer the moment its cell ends."""

    def __init__(
        self,
        plan: ExecutionPlan,
        recorder: Recorder,
        writer: EvidenceWriter,
        done_keys: frozenset[str] = frozenset(),
        on_cell_done: Callable[[Cell, str], None] | None = None,
    ):
        self.plan = plan
        self.recorder = recorder
        self.writer = writer
        self.done_keys = done_keys
        self.on_cell_done = on_cell_done
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
        run = run_cell(self.plan.runnable(cell), list(self.plan.apr_argv), self.children)
        return cell_checks(cell, run), run

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
        self._notify(cell, records[-1].outcome.value if records else "resumed")

    def _notify(self, cell: Cell, status: str) -> None:
        if self.on_cell_done is not None:
            self.on_cell_done(cell, status)

    def run(self) -> ExecutionSummary:
        pool = ThreadPoolExecutor(max_workers=max(1, self.plan.workers), thread_name_prefix="apr-cell")
        try:
            for future in [pool.submit(self._run_one, cell) for cell in self.plan.cells]:
                future.result()
        except KeyboardInterrupt:
            self._stop.set()
            self.children.kill_all()  # they run in their own sessions: Ctrl-C never reached them
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
    progress: bool = True,
) -> ExecutionSummary:
    """Run the plan with a live progress bar on stderr (or silently)."""
    if not progress:
        return CellExecutor(plan, recorder, writer, done_keys).run()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]cells"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("", total=len(plan.cells))

        def advance(cell: Cell, status: str) -> None:
            bar.update(task, advance=1, description=f"{cell.key}: {status}")

        return CellExecutor(plan, recorder, writer, done_keys, on_cell_done=advance).run()
