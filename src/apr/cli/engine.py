"""CLI verbs of the engine group: `apr run` (one prompt), `apr chat` (REPL) and `apr bench` (speed)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from apr.cli.engine_session import EngineOptions

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="auto (default: apr's AVX2 kernels on CPU, bf16 on CUDA), "
        "bf16 (PyTorch packed kernels) or fp32 (every tensor "
        "dequantized; slow, exact).",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's).")]
CompileOpt = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile the decode step (default: off).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampling seed (sampling is seeded 0 when omitted).")]
TempOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy.")]
MaxTokOpt = Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate.")]


def _sampling(
    max_tokens: int,
    temperature: float,
    seed: int | None,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
):
    from apr.engine import SamplingParams
    from apr.errors import AprError

    try:
        return SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            max_tokens=max_tokens,
        )
    except ValueError as err:
        raise AprError(f"bad sampling option: {err}") from None


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("run")
    def run_command(
        model: Annotated[str, typer.Argument(help="A ref (qwen2.5-coder:1.5b), cached name or path to any format.")],
        prompt: Annotated[str, typer.Option("--prompt", "-p", help="The user message (or raw text with --raw).")],
        max_tokens: MaxTokOpt = 256,
        raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of streaming.")] = False,
        benchmark: Annotated[bool, typer.Option("--benchmark", help="Print timings to stderr.")] = False,
        seed: SeedOpt = None,
        temperature: TempOpt = 0.0,
        top_k: Annotated[int, typer.Option("--top-k")] = 0,
        top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
        repetition_penalty: Annotated[float, typer.Option("--repetition-penalty")] = 1.0,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = None,
        threads: ThreadsOpt = None,
        compile: CompileOpt = None,
    ) -> None:
        """Generate one reply to --prompt and exit."""
        from apr.cli.engine_session import (
            argv_text,
            model_json,
            open_engine,
            prompt_ids,
            result_json,
            stream_to_stdout,
            timing_line,
        )

        prompt = argv_text(prompt)

        params = _sampling(max_tokens, temperature, seed, top_k, top_p, repetition_penalty)
        engine, load_s = open_engine(model, EngineOptions(device, dtype, threads, compile))
        templated = not raw and engine.tokenizer.has_chat_template
        if not raw and not templated:
            print("note: this model has no chat template; running the prompt raw", file=sys.stderr)
        ids = prompt_ids(engine, [{"role": "user", "content": prompt}], None if templated else prompt)
        if as_json:
            result = engine.generate(ids, params)
            doc = {**result_json(result, load_s), "model": model_json(engine), "device": str(engine.device)}
            sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        else:
            result = stream_to_stdout(engine, ids, params)
        if benchmark:
            print(timing_line(result, load_s), file=sys.stderr)

    @app.command("chat")
    def chat_command(
        model: Annotated[str, typer.Argument(help="A ref, cached name or path to any format.")],
        max_tokens: MaxTokOpt = 512,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON line per reply.")] = False,
        system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
        seed: SeedOpt = None,
        temperature: TempOpt = 0.0,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = None,
        threads: ThreadsOpt = None,
        compile: CompileOpt = None,
    ) -> None:
        """Talk to the model: each line is a user turn; /reset forgets the history, /exit (or Ctrl-D) leaves."""
        from apr.cli.engine_chat import chat_loop
        from apr.cli.engine_session import argv_text, open_engine

        system = None if system is None else argv_text(system)

        params = _sampling(max_tokens, temperature, seed)
        engine, load_s = open_engine(model, EngineOptions(device, dtype, threads, compile))
        chat_loop(engine, params, as_json=as_json, system=system, load_s=load_s)

    @app.command("bench")
    def bench_command(
        model: Annotated[str, typer.Argument(help="A ref, cached name or path to any format.")],
        prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Prompt length for prefill.")] = 128,
        decode_tokens: Annotated[int, typer.Option("--decode-tokens", help="Tokens per decode repetition.")] = 64,
        min_reps: Annotated[int, typer.Option("--min-reps")] = 5,
        min_seconds: Annotated[float, typer.Option("--min-seconds")] = 10.0,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed repetitions first.")] = 1,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = None,
        threads: ThreadsOpt = None,
        compile: CompileOpt = None,
        dense_prefill: Annotated[
            bool | None, typer.Option("--dense-prefill/--no-dense-prefill", help="Keep dense bf16 copies for prompts.")
        ] = None,
    ) -> None:
        """Measure prefill and decode speed: warmup, then repeat until both --min-reps and --min-seconds."""
        from apr.cli.engine_session import open_engine
        from apr.engine.bench import BenchPlan, run_bench

        engine, load_s = open_engine(model, EngineOptions(device, dtype, threads, compile, dense_prefill))
        plan = BenchPlan(prompt_tokens, decode_tokens, min_reps, min_seconds, warmup)
        report = run_bench(engine, plan, load_s=load_s, progress=lambda line: print(line, file=sys.stderr))
        for line in report.summary_lines():
            print(line)
        print(json.dumps(report.to_json(), sort_keys=True))
