"""One evaluation: every problem through the engine's continuous batching, each reply scored in the sandbox
as soon as it ends, and its record appended at once (so ``--resume`` loses at most the problems in flight)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from apr.eval.prompts import Request, build_request, program_of
from apr.eval.results import ProblemResult, ResultsFolder, RunConfig, pass_rate
from apr.eval.sandbox import Execution, Limits, Sandbox
from apr.eval.tasks import Problem

if TYPE_CHECKING:
    from apr.engine import Engine


@dataclass(frozen=True)
class EvalOptions:
    """How the problems are generated and run."""

    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8
    chat: bool | None = None  # None: the chat template when the model has one
    limits: Limits = field(default_factory=Limits)
    exec_workers: int = 1  # sandboxes running at once, beside the decoding


@dataclass
class _InFlight:
    problem: Problem
    request: Request
    prompt_tokens: int
    started: float
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0


@dataclass(frozen=True)
class RunStats:
    """What this invocation did (a resumed evaluation adds one of these per invocation)."""

    problems: int
    completion_tokens: int
    generate_wall_s: float
    wall_s: float
    finished: bool = True  # False: a checkpoint of a run still going (or killed before it ended)

    @property
    def tok_s(self) -> float:
        return self.completion_tokens / self.generate_wall_s if self.generate_wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "problems": self.problems,
            "completion_tokens": self.completion_tokens,
            "generate_wall_s": round(self.generate_wall_s, 3),
            "wall_s": round(self.wall_s, 3),
            "tok_s": round(self.tok_s, 3),
            "finished": self.finished,
        }


def evaluate(
    engine: Engine,
    problems: Sequence[Problem],
    family: str,
    folder: ResultsFolder,
    done: dict[str, ProblemResult],
    options: EvalOptions,
    *,
    progress: bool = False,
    checkpoint: Callable[[RunStats], object] | None = None,
) -> RunStats:
    """Generate and score every problem of ``problems`` not already in ``done``; records go to ``folder``.
    ``checkpoint`` receives this run's statistics so far each time problems were recorded (a killed run leaves
    a summary of what it reached)."""
    from apr.engine import SamplingParams

    start = time.perf_counter()
    sandbox = Sandbox(options.limits)
    requests = {p.task_id: build_request(p, family, engine.tokenizer, chat=options.chat) for p in problems}
    todo = [p for p in problems if _needs_run(p, requests[p.task_id], done)]
    bar = _progress_bar(len(problems), len(problems) - len(todo), progress)
    decoder = engine.new_batch(options.batch_size)
    flights: dict[str, _InFlight] = {}
    for problem in todo:
        request = requests[problem.task_id]
        ids = engine.tokenizer.encode(request.text, add_special_tokens=not request.chat)
        params = SamplingParams(
            temperature=options.temperature,
            seed=options.seed,
            max_tokens=options.max_tokens,
            stop=request.stops,
        )
        flights[problem.task_id] = _InFlight(problem, request, len(ids), 0.0)
        if len(ids) < engine.max_positions:
            decoder.add(problem.task_id, ids, params)
    tokens = recorded = 0
    scored: list[tuple[Future[Execution], ProblemResult]] = []
    with ThreadPoolExecutor(max_workers=options.exec_workers) as pool:
        for flight in flights.values():
            if flight.prompt_tokens >= engine.max_positions:  # a model whose context cannot hold the task fails it
                too_long = f"the prompt's {flight.prompt_tokens} tokens do not fit the model's {engine.max_positions}"
                scored.append(_submit(pool, _Refusal(too_long), flight, "length"))
        generate_start = time.perf_counter()
        while decoder.active:
            step_start = time.perf_counter()
            for event in decoder.step():
                flight = flights[event.request_id]
                flight.started = flight.started or step_start
                flight.pieces.append(event.text)
                flight.tokens += 1
                tokens += 1
                if event.finish_reason is not None:
                    scored.append(_submit(pool, sandbox, flight, event.finish_reason))
            waiting = _record_finished(scored, folder, bar)
            if checkpoint is not None and len(waiting) < len(scored):
                recorded += len(scored) - len(waiting)
                now = time.perf_counter()
                checkpoint(RunStats(recorded, tokens, now - generate_start, now - start, finished=False))
            scored = waiting
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - generate_start, 1e-9):.1f} tok/s", refresh=False)
        generate_wall = time.perf_counter() - generate_start
        for future, _ in scored:
            future.result()  # wait for the last sandboxes
        _record_finished(scored, folder, bar)
    bar.close()
    return RunStats(len(todo), tokens, generate_wall, time.perf_counter() - start)


@dataclass(frozen=True)
class _Refusal:
    """Stands in for the sandbox for a problem that was never generated: it failed, for ``reason``."""

    reason: str

    def run(self, program: str, test: str) -> Execution:
        from apr.eval.sandbox import Status

        return Execution(Status.FAILED, self.reason, 0.0, "not run")


def pending(
    problems: Sequence[Problem], family: str, tokenizer: Any, done: dict[str, ProblemResult], chat: bool | None
) -> list[Problem]:
    """The problems ``done`` does not hold with the same prompt (what a resumed run still has to generate)."""
    return [p for p in problems if _needs_run(p, build_request(p, family, tokenizer, chat=chat), done)]


def _needs_run(problem: Problem, request: Request, done: dict[str, ProblemResult]) -> bool:
    earlier = done.get(problem.task_id)
    # A sandbox error is no verdict: such a problem is generated and run again.
    return earlier is None or earlier.prompt_sha256 != request.sha256 or earlier.status == "error"


def _submit(
    pool: ThreadPoolExecutor, sandbox: Sandbox | _Refusal, flight: _InFlight, finish_reason: str
) -> tuple[Future[Execution], ProblemResult]:
    completion = "".join(flight.pieces)
    program = program_of(flight.problem, completion, flight.request)
    future = pool.submit(sandbox.run, program, flight.problem.test)
    partial = ProblemResult(
        task_id=flight.problem.task_id,
        prompt_sha256=flight.request.sha256,
        completion=completion,
        passed=False,
        status="",
        error="",
        finish_reason=finish_reason,
        prompt_tokens=flight.prompt_tokens,
        completion_tokens=flight.tokens,
        generate_s=round(time.perf_counter() - flight.started, 3),
        exec_s=0.0,
        isolation="",
    )
    return future, partial


def _record_finished(
    scored: list[tuple[Future[Execution], ProblemResult]], folder: ResultsFolder, bar: Any
) -> list[tuple[Future[Execution], ProblemResult]]:
    """Append the records of the executions that ended; return those still running."""
    waiting = []
    for future, partial in scored:
        if not future.done():
            waiting.append((future, partial))
            continue
        execution = future.result()
        folder.append(
            replace(
                partial,
                passed=execution.passed,
                status=str(execution.status),
                error=execution.error,
                exec_s=round(execution.seconds, 3),
                isolation=execution.isolation,
            )
        )
        bar.update(1)
    return waiting


def _progress_bar(total: int, already: int, enabled: bool) -> Any:
    from tqdm import tqdm

    # stderr, with an ETA from the problems scored in this run (the resumed ones count as done, not as pace).
    bar = tqdm(total=total, initial=already, file=sys.stderr, disable=not enabled, unit="problem", smoothing=0.1)
    return bar


def summarize(
    config: RunConfig, problems: Sequence[Problem], folder: ResultsFolder, runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The summary of every selected problem scored so far (this run and any it resumed); ``runs`` are the
    statistics of every invocation, this one last."""
    from apr.eval.results import read_results

    results = read_results(folder.problems_path) if folder.problems_path.exists() else {}
    scored = [results[p.task_id] for p in problems if p.task_id in results]
    selected = [r for r in scored if r.status != "error"]  # a sandbox error is no verdict on the model
    rate = pass_rate(selected)
    statuses = {s: sum(r.status == s for r in scored) for s in ("passed", "failed", "timeout", "error")}
    generate_wall = sum(run["generate_wall_s"] for run in runs)
    return {
        "task": config.task,
        "model": config.model,
        "format": config.model_format,
        "model_sha256": config.model_sha256,
        **rate.to_json(),
        "complete": len(selected) == len(problems),
        "selected": len(problems),
        "statuses": statuses,
        "truncated": sum(r.finish_reason == "length" for r in selected),
        "isolation": sorted({r.isolation for r in selected}),
        "completion_tokens": sum(r.completion_tokens for r in selected),
        "wall_s": round(sum(run["wall_s"] for run in runs), 3),
        "tok_s": round(sum(run["completion_tokens"] for run in runs) / generate_wall, 3) if generate_wall else 0.0,
        "runs": list(runs),
        "config": asdict(config),
    }


def earlier_runs(folder: ResultsFolder) -> list[dict[str, Any]]:
    """The statistics of the invocations an earlier summary recorded (finished or checkpointed)."""
    import json

    from apr.eval.results import SUMMARY_FILE

    path = folder.folder / SUMMARY_FILE
    return list(json.loads(path.read_text(encoding="utf-8")).get("runs", [])) if path.exists() else []


def rescore(
    problems: Sequence[Problem], family: str, tokenizer: Any, folder: ResultsFolder, chat: bool, limits: Limits
) -> int:
    """Run every stored completion's program again in the sandbox (no generation) and rewrite its record; a
    record whose prompt no longer matches is left for a resumed run. Returns how many were re-executed."""
    from apr.eval.results import read_results

    results = read_results(folder.problems_path) if folder.problems_path.exists() else {}
    sandbox = Sandbox(limits)
    by_id = {p.task_id: p for p in problems}
    count = 0
    updated: list[ProblemResult] = []
    for task_id, record in results.items():
        problem = by_id.get(task_id)
        request = build_request(problem, family, tokenizer, chat=chat) if problem else None
        if problem is None or request is None or request.sha256 != record.prompt_sha256:
            updated.append(record)
            continue
        execution = sandbox.run(program_of(problem, record.completion, request), problem.test)
        updated.append(
            replace(
                record,
                passed=execution.passed,
                status=str(execution.status),
                error=execution.error,
                exec_s=round(execution.seconds, 3),
                isolation=execution.isolation,
            )
        )
        count += 1
    folder.rewrite(updated)
    return count
