"""CLI verbs of the engine group: `apr run` (one prompt), `apr chat` (REPL) and `apr bench` (speed)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from apr.cli.engine_session import EngineOptions


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class NumericsChoice(str, Enum):
    fast = "fast"
    exact = "exact"


class KvCacheChoice(str, Enum):
    f32 = "f32"
    f16 = "f16"


class TraceKind(str, Enum):
    attention = "attention"
    hidden = "hidden"
    all = "all"


DeviceOpt = Annotated[Device, typer.Option("--device", help="auto, cpu or cuda.")]
DtypeOpt = Annotated[
    Precision | None,
    typer.Option(
        "--dtype",
        help="auto (default: apr's native kernels on CPU, dense bf16 on "
        "CUDA), bf16/fp16 (PyTorch packed kernels) or fp32 "
        "(every tensor dequantized; slow, exact).",
    ),
]
NumericsOpt = Annotated[
    NumericsChoice,
    typer.Option(
        "--numerics",
        help="fast (default: the quickest kernels) or exact (float32 reference numerics, what lm-eval "
        "log-likelihood tasks need; slower, more memory).",
    ),
]
KvCacheOpt = Annotated[
    KvCacheChoice,
    typer.Option(
        "--kv-cache",
        help="f32 (default) or f16: keys and values in half precision, half the KV cache memory (long contexts); "
        "apr's native CPU kernels only. Rounds attention: greedy replies may differ (docs/engine.md).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads (default: the free cores, from the load average and the CPU quota; see apr --version).",
    ),
]
CompileOpt = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile the decode step (default: off).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampling seed (sampling is seeded 0 when omitted).")]
TempOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")]
MaxTokOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens to generate.")]
LookupOpt = Annotated[
    int,
    typer.Option(
        "--lookup",
        min=0,
        max=64,
        help="Prompt-lookup decoding: draft up to N tokens a step from the prompt and reply's own n-grams and "
        "verify them in one forward pass (0: off). Greedy output is unchanged token for token; sampling keeps "
        "its distribution. CPU only, not with --compile. See docs/engine.md.",
    ),
]


def _options(
    device: Device,
    dtype: Precision | None,
    threads: int | None,
    compile: bool | None,
    dense_prefill: bool | None = None,
    numerics: NumericsChoice = NumericsChoice.fast,
    kv_cache: KvCacheChoice = KvCacheChoice.f32,
) -> EngineOptions:
    return EngineOptions(
        device.value, dtype.value if dtype else None, threads, compile, dense_prefill, numerics.value, kv_cache.value
    )


def _lookup(draft_tokens: int, compile: bool | None):
    """The LookupConfig of ``--lookup N`` (None for 0); refused with --compile before anything loads."""
    from apr.errors import AprError

    if not draft_tokens:
        return None
    if compile:
        raise AprError("--lookup verifies drafts on the eager decode step; drop --compile (or use --lookup 0)")
    from apr.engine import LookupConfig

    return LookupConfig(draft_tokens=draft_tokens)


def check_lookup(engine, lookup) -> None:
    """One-line error when the loaded engine cannot run lookup decoding (a GPU, a compiled step)."""
    from apr.errors import AprError

    reason = None if lookup is None else engine.lookup_unavailable()
    if reason is not None:
        raise AprError(f"--lookup: {reason}; use --device cpu or --lookup 0")


def _resolve_first(model: str) -> str:
    """The model's path, resolved before anything imports torch: a bad ref is refused in milliseconds."""
    from apr.hub import resolve_model_arg

    return str(resolve_model_arg(model, progress=sys.stderr.isatty()))


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
        benchmark: Annotated[
            bool,
            typer.Option(
                "--benchmark",
                help="Measure the run: tok/s (aggregate and per "
                "stream), time to first token, CPU use; a summary on stderr.",
            ),
        ] = False,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size",
                min=1,
                max=256,
                help="Generate this many copies of the prompt in one batch (reported with --benchmark).",
            ),
        ] = 1,
        trace: Annotated[
            TraceKind | None,
            typer.Option(
                "--trace",
                help="Record a trace of the whole sequence on the "
                "reference fp32 path: attention (per-layer, per-head "
                "weights), hidden (per-layer hidden-state statistics) or "
                "all; see docs/trace.md.",
            ),
        ] = None,
        trace_output: Annotated[
            Path | None,
            typer.Option("--trace-output", help="Where --trace writes its JSON lines (default: apr-trace.jsonl)."),
        ] = None,
        seed: SeedOpt = None,
        temperature: TempOpt = 0.0,
        top_k: Annotated[int, typer.Option("--top-k", min=0)] = 0,
        top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
        repetition_penalty: Annotated[float, typer.Option("--repetition-penalty")] = 1.0,
        device: DeviceOpt = Device.auto,
        dtype: DtypeOpt = None,
        threads: ThreadsOpt = None,
        compile: CompileOpt = None,
        numerics: NumericsOpt = NumericsChoice.fast,
        kv_cache: KvCacheOpt = KvCacheChoice.f32,
        lookup: LookupOpt = 0,
    ) -> None:
        """Generate one reply to --prompt and exit."""
        from apr.cli.engine_session import argv_text
        from apr.errors import AprError

        prompt = argv_text(prompt)
        if trace_output is not None and trace is None:
            raise AprError("--trace-output needs --trace attention, hidden or all")
        if trace is not None and dtype not in (None, Precision.fp32):
            raise AprError(f"--trace runs on the reference fp32 path; drop --dtype {dtype.value} or use --dtype fp32")
        if trace is not None and batch_size > 1:
            raise AprError("--trace traces one sequence; drop --batch-size")
        if trace is not None:
            dtype = Precision.fp32
        lookup_config = _lookup(lookup, compile)
        model = _resolve_first(model)
        params = _sampling(max_tokens, temperature, seed, top_k, top_p, repetition_penalty)
        _run(
            model,
            prompt,
            params,
            _options(device, dtype, threads, compile, numerics=numerics, kv_cache=kv_cache),
            lookup=lookup_config,
            raw=raw,
            as_json=as_json,
            benchmark=benchmark,
            batch_size=batch_size,
            trace=trace,
            trace_output=trace_output or Path("apr-trace.jsonl"),
        )

    @app.command("chat")
    def chat_command(
        model: Annotated[str, typer.Argument(help="A ref, cached name or path to any format.")],
        max_tokens: MaxTokOpt = 512,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON line per reply.")] = False,
        system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
        seed: SeedOpt = None,
        temperature: TempOpt = 0.0,
        device: DeviceOpt = Device.auto,
        dtype: DtypeOpt = None,
        threads: ThreadsOpt = None,
        compile: CompileOpt = None,
        numerics: NumericsOpt = NumericsChoice.fast,
        kv_cache: KvCacheOpt = KvCacheChoice.f32,
        lookup: LookupOpt = 0,
    ) -> None:
        """Talk to the model: each line is a user turn; /reset forgets the history, /exit (or Ctrl-D) leaves."""
        from apr.cli.engine_chat import chat_loop
        from apr.cli.engine_session import argv_text, open_engine

        system = None if system is None else argv_text(system)

        lookup_config = _lookup(lookup, compile)
        model = _resolve_first(model)
        params = _sampling(max_tokens, temperature, seed)
        engine, load_s = open_engine(
            model, _options(device, dtype, threads, compile, numerics=numerics, kv_cache=kv_cache), templated=True
        )
        check_lookup(engine, lookup_config)
        chat_loop(engine, params, as_json=as_json, system=system, load_s=load_s, lookup=lookup_config)

    @app.command("bench")
    def bench_command(
        model: Annotated[str, typer.Argument(help="A ref, cached name or path to any format.")],
        prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, help="Prompt length for prefill.")] = 128,
        decode_tokens: Annotated[
            int, typer.Option("--decode-tokens", min=1, help="Tokens per decode repetition.")
        ] = 64,
        min_reps: Annotated[int, typer.Option("--min-reps", min=1)] = 5,
        min_seconds: Annotated[float, typer.Option("--min-seconds", min=0.0)] = 10.0,
        warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed repetitions first.")] = 1,
        batch: Annotated[
            int,
            typer.Option(
                "--batch",
                min=1,
                max=64,
                help="Also measure the aggregate decode rate of this many "
                "sequences decoded together (1: single stream only).",
            ),
        ] = 1,
        device: DeviceOpt = Device.auto,
        dtype: DtypeOpt = None,
        threads: ThreadsOpt = None,
        compile: CompileOpt = None,
        numerics: NumericsOpt = NumericsChoice.fast,
        kv_cache: KvCacheOpt = KvCacheChoice.f32,
        dense_prefill: Annotated[
            bool | None, typer.Option("--dense-prefill/--no-dense-prefill", help="Keep dense bf16 copies for prompts.")
        ] = None,
    ) -> None:
        """Measure prefill and decode speed: warmup, then repeat until both --min-reps and --min-seconds."""
        from apr.cli.engine_session import open_engine

        model = _resolve_first(model)
        from apr.engine.bench import BenchPlan, run_bench

        engine, load_s = open_engine(
            model, _options(device, dtype, threads, compile, dense_prefill, numerics, kv_cache)
        )
        plan = BenchPlan(prompt_tokens, decode_tokens, min_reps, min_seconds, warmup, batch)
        report = run_bench(engine, plan, load_s=load_s, progress=lambda line: print(line, file=sys.stderr))
        for line in report.summary_lines():
            print(line)
        print(json.dumps(report.to_json(), sort_keys=True))


def _run(
    model: str,
    prompt: str,
    params,
    options: EngineOptions,
    *,
    lookup,
    raw: bool,
    as_json: bool,
    benchmark: bool,
    batch_size: int,
    trace: TraceKind | None,
    trace_output: Path,
) -> None:
    """`apr run` once its options are valid: load, generate (one stream or a batch), trace if asked."""
    from apr.cli.engine_session import (
        lookup_line,
        model_json,
        open_engine,
        prompt_ids,
        result_json,
        stream_to_stdout,
    )

    engine, load_s = open_engine(model, options, templated=not raw)
    check_lookup(engine, lookup)
    templated = not raw and engine.tokenizer.has_chat_template
    if not raw and not templated:
        print("note: this model has no chat template; running the prompt raw", file=sys.stderr)
    ids = prompt_ids(engine, [{"role": "user", "content": prompt}], None if templated else prompt)
    if benchmark or batch_size > 1:
        from apr.cli.engine_batch import run_batch

        measured = run_batch(engine, ids, params, batch_size, lookup)
        if as_json:
            doc = {
                "text": measured.streams[0].text,
                "model": model_json(engine),
                "device": str(engine.device),
                "kv_cache": engine.describe()["kv_cache"],
                "load_s": round(load_s, 3),
                "benchmark": measured.to_json(),
            }
            sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(measured.streams[0].text + "\n")
        if benchmark:
            print(f"load {load_s:.2f} s · " + measured.summary_line(), file=sys.stderr)
        generated = list(measured.streams[0].token_ids)
    elif as_json:
        result = engine.generate(ids, params, lookup=lookup)
        doc = {
            **result_json(result, load_s),
            "model": model_json(engine),
            "device": str(engine.device),
            "kv_cache": engine.describe()["kv_cache"],
        }
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        generated = result.token_ids
    else:
        result = stream_to_stdout(engine, ids, params, lookup=lookup)
        if result.lookup is not None:
            print(lookup_line(result), file=sys.stderr)
        generated = result.token_ids
    if trace is not None:
        _write_trace(engine, ids, generated, trace, trace_output)


def _write_trace(engine, prompt: list[int], generated: list[int], kind: TraceKind, output: Path) -> None:
    from apr.trace.record import trace_forward, trace_header, write_trace

    kinds = {"attention", "hidden"} if kind is TraceKind.all else {kind.value}
    # The last generated token was never fed back to the model; the trace covers what the model read.
    ids = [*prompt, *generated[:-1]][: engine.max_positions]
    records, _ = trace_forward(engine.transformer, ids, kinds)
    pieces = [engine.tokenizer.token_text(i) for i in ids]
    write_trace(output, trace_header(engine.model, engine.transformer, ids, pieces, len(prompt), kinds), records)
    print(
        f"trace: {len(records)} records ({', '.join(sorted(kinds))}) of {len(ids)} tokens -> {output}", file=sys.stderr
    )
