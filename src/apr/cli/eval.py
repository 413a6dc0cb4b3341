"""CLI verb `apr eval`: functional correctness (HumanEval, MBPP and their EvalPlus variants) through the engine."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from apr.cli.engine import Device, DeviceOpt, KvCacheChoice, KvCacheOpt, NumericsChoice, NumericsOpt, ThreadsOpt
from apr.eval.tasks import Task


def default_output(model: str, task: Task) -> Path:
    """``.apr-work/eval/<model>/<task>`` under the work root (``APR_WORK``, else the current directory)."""
    from apr import settings

    root = settings.current().work_root or Path(".apr-work")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).exists() else model).strip("-")
    return root / "eval" / slug / task.value


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("eval")
    def eval_command(
        model: Annotated[str, typer.Argument(help="A ref (qwen2.5-coder:1.5b), cached name or path to any format.")],
        task: Annotated[Task, typer.Option("--task", help="humaneval, mbpp, humaneval+ or mbpp+.")] = Task.HUMANEVAL,
        data: Annotated[
            Path | None,
            typer.Option("--data", help="The problems file (JSON Lines, .gz allowed); needed for all but humaneval."),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Results folder (default: .apr-work/eval/<model>/<task>)."),
        ] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N problems.")] = None,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue the run in --output: skip the problems already scored.")
        ] = False,
        rescore: Annotated[
            bool,
            typer.Option(
                "--rescore",
                help="Run the programs of the completions in --output again (after a sandbox change or failure); "
                "generates nothing.",
            ),
        ] = False,
        max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per completion.")] = 512,
        temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy (default).")] = 0.0,
        seed: Annotated[int, typer.Option("--seed", help="Sampling seed (used when --temperature > 0).")] = 0,
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, help="Problems decoded together (continuous batching).")
        ] = 8,
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.1, help="Seconds each program may run before it is killed.")
        ] = 10.0,
        memory_mb: Annotated[
            int, typer.Option("--memory-mb", min=64, help="Address-space limit of each program, in MiB.")
        ] = 1024,
        chat: Annotated[
            bool | None,
            typer.Option("--chat/--no-chat", help="Use the chat template (default: when the model has one)."),
        ] = None,
        device: DeviceOpt = Device.auto,
        numerics: NumericsOpt = NumericsChoice.fast,
        kv_cache: KvCacheOpt = KvCacheChoice.f32,
        threads: ThreadsOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON document.")] = False,
    ) -> None:
        """Generate a program per problem (greedy, the authors' prompt, the model's chat template), run each in a
        sandbox against the problem's tests, and report pass@1; per-problem records in OUTPUT/problems.jsonl."""
        from apr.cli.engine_session import utf8_stdio
        from apr.eval.runner import EvalOptions
        from apr.eval.sandbox import Limits
        from apr.eval.session import EvalRequest, run_eval

        utf8_stdio()
        folder = output or default_output(model, task)
        request = EvalRequest(
            model=model,
            task=task,
            output=folder,
            data=data,
            limit=limit,
            resume=resume,
            options=EvalOptions(
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                batch_size=batch_size,
                chat=chat,
                limits=Limits(timeout_s=timeout, memory_bytes=memory_mb << 20),
            ),
            device=device.value,
            numerics=numerics.value,
            kv_cache=kv_cache.value,
            threads=threads,
            rescore=rescore,
        )
        summary = run_eval(request, progress=sys.stderr.isatty())
        if as_json:
            typer.echo(json.dumps(summary, ensure_ascii=False))
            return
        low, high = summary["ci95"]
        state = "" if summary["complete"] else f" (partial: {summary['total']}/{summary['selected']} problems)"
        typer.echo(
            f"{summary['task']} pass@1 {100 * summary['pass@1']:.1f}% ({summary['passed']}/{summary['total']}, "
            f"95% CI {100 * low:.1f}-{100 * high:.1f}){state} · {summary['tok_s']:.1f} tok/s · "
            f"wall {summary['wall_s']:.0f} s"
        )
        if "rescored" in summary:
            typer.echo(f"re-ran the programs of {summary['rescored']} stored completions")
        if summary["statuses"].get("error"):
            typer.echo(f"{summary['statuses']['error']} sandbox error(s): no verdict; --resume runs them again")
        typer.echo(f"wrote {folder / 'problems.jsonl'}, {folder / 'summary.json'}")
