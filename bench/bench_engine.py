"""Our engine vs transformers vs llama.cpp on the same GGUF, in one run: prefill tok/s, decode tok/s, ratios.

Method: each engine is loaded once (load time reported), then runs `--warmup` untimed repetitions and
timed ones until both `--min-reps` and `--min-seconds` are reached. One repetition = prefill of a fixed
`--prompt-tokens` prompt (time to first token) + `--decode-tokens` forced greedy steps (no EOS stop).
Figures are medians with p90 (slow tail). Engines run one after another, so on a shared machine drift
between them is possible: compare ratios from the same run only. Last stdout line: one JSON document.

llama.cpp is measured by its own `llama-bench` (`--llama-bench PATH`, or $LLAMA_BENCH; build it with
bench/build_llama_cpp.sh) on the same GGUF, threads, prompt and decode lengths; where that binary is
absent, through `llama-cpp-python` if installed; otherwise it is skipped with a message.

    .venv/bin/python bench/bench_engine.py --model /tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --threads 2 \
        --llama-bench .llama-cpp/build/bin/llama-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from apr.cpu import cpu_model
from apr.settings import Settings, export_omp_waits, omp_waits

# apr's engine runs here as the CLI runs it (OpenMP threads spin briefly, then sleep); the variable must be set
# before torch loads libgomp. llama.cpp keeps its own default unless the caller set one (PEER_ENV).
PEER_ENV = dict(os.environ)
OMP_WAITS = export_omp_waits()

import torch  # noqa: E402
from cli_common import add_shared_options  # noqa: E402  (bench/cli_common.py, beside this script)


def measure(
    name: str, once: Callable[[], tuple[float, float]], args, batch_once: Callable[[], float] | None = None
) -> dict:
    for _ in range(args.warmup):
        once()
    ttft: list[float] = []
    decode: list[float] = []
    started = time.perf_counter()
    while len(ttft) < args.min_reps or time.perf_counter() - started < args.min_seconds:
        t, d = once()
        ttft.append(t)
        decode.append(d)
        print(
            f"  {name} rep {len(ttft)}: prefill {args.prompt_tokens / t:.1f} tok/s, "
            f"decode {(args.decode_tokens - 1) / d:.2f} tok/s",
            file=sys.stderr,
        )

    def p90(values):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    n = args.decode_tokens - 1
    result = {
        "reps": len(ttft),
        "prefill_tok_s": {
            "median": args.prompt_tokens / statistics.median(ttft),
            "p90": args.prompt_tokens / p90(ttft),
        },
        "decode_tok_s": {"median": n / statistics.median(decode), "p90": n / p90(decode)},
        "ttft_s": {"median": statistics.median(ttft), "p90": p90(ttft)},
    }
    if batch_once is not None:  # aggregate decode of --batch sequences together (prefills untimed)
        for _ in range(args.warmup):
            batch_once()
        seconds: list[float] = []
        started = time.perf_counter()
        while len(seconds) < args.min_reps or time.perf_counter() - started < args.min_seconds:
            seconds.append(batch_once())
            print(
                f"  {name} batch {args.batch} rep {len(seconds)}: {args.batch * n / seconds[-1]:.1f} tok/s",
                file=sys.stderr,
            )
        result["batch_decode_tok_s"] = {
            "median": args.batch * n / statistics.median(seconds),
            "p90": args.batch * n / p90(seconds),
        }
    return result


def ours(args, prompt: list[int]):
    from apr.engine import load_engine
    from apr.engine.bench import run_batch_once, run_once, weight_bytes_per_token

    start = time.perf_counter()
    engine = load_engine(
        args.model, device=args.device, threads=args.threads, compile=args.compile, dense_prefill=args.dense_prefill
    )
    load_s = time.perf_counter() - start
    batch_once = (lambda: run_batch_once(engine, prompt, args.decode_tokens, args.batch)) if args.batch > 1 else None
    info = {**engine.describe(), "weight_bytes_per_token": weight_bytes_per_token(engine)}
    return load_s, lambda: run_once(engine, prompt, args.decode_tokens), info, batch_once


def memory_read_gb_s(threads: int, gib: float = 1.0, reps: int = 5) -> dict:
    """What this machine reads from memory now, on ``threads`` threads: a float32 array of ``gib`` GiB (beyond
    any cache) summed by torch, the median of ``reps`` after one warmup. The decode roofline is this over the
    bytes a decode token reads: a step cannot stream its weights faster than plain loads do."""
    values = torch.ones(int(gib * 2**30) // 4)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values.sum()
        seconds = []
        for _ in range(reps):
            start = time.perf_counter()
            values.sum()
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {"gb_s": round(values.numel() * 4 / statistics.median(seconds) / 1e9, 2), "gib": gib, "reps": reps}


def transformers_bf16(args, prompt: list[int]):
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    source = (
        {"pretrained_model_name_or_path": args.hf_dir}
        if args.hf_dir
        else {"pretrained_model_name_or_path": args.model.parent, "gguf_file": args.model.name}
    )
    model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.bfloat16).to(args.device).eval()
    load_s = time.perf_counter() - start
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    @torch.inference_mode()
    def run(rows: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        out = model(torch.tensor([prompt] * rows, device=args.device), use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        sync()
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(args.decode_tokens - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        return t1 - t0, time.perf_counter() - t1

    batch_once = (lambda: run(args.batch)[1]) if args.batch > 1 else None
    return (
        load_s,
        lambda: run(1),
        {
            "dtype": "bfloat16",
            "device": args.device,
            "weights": f"dense bf16 from {args.hf_dir}" if args.hf_dir else "the GGUF's",
        },
        batch_once,
    )


def llama_cpp_python(args, prompt: list[int]):
    import numpy as np
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(
        model_path=str(args.model),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=args.prompt_tokens + args.decode_tokens + 16,
        n_batch=512,
        verbose=False,
        logits_all=False,
    )
    load_s = time.perf_counter() - start

    def once():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t1 = time.perf_counter()
        for _ in range(args.decode_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return t1 - t0, time.perf_counter() - t1

    return load_s, once, {"llama_cpp_python": __import__("llama_cpp").__version__}, None


def llama_bench(args) -> dict:
    """llama.cpp's own benchmark: pp<prompt> and tg<decode> rates (mean and sd over --min-reps runs)."""
    import subprocess

    command = [
        str(args.llama_bench),
        "-m",
        str(args.model),
        "-t",
        str(args.threads),
        "-p",
        str(args.prompt_tokens),
        "-n",
        str(args.decode_tokens),
        "-r",
        str(max(args.min_reps, 3)),
        "-o",
        "json",
        *shlex.split(args.llama_args),
    ]
    print(f"llama.cpp: {' '.join(command)}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=PEER_ENV)
    if done.returncode != 0:
        return {"skipped": f"llama-bench exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    rows = json.loads(done.stdout)
    prefill = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    decode = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)

    def rates(row: dict) -> dict:
        # From llama-bench's per-repetition rates: the same median and slow-tail p90 as our figures.
        samples = sorted(row["samples_ts"], reverse=True)
        return {
            "median": statistics.median(samples),
            "p90": samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))],
            "samples": samples,
        }

    # llama-bench does not report its load time; its prompt is random ids of the same length as ours.
    return {
        "reps": len(prefill["samples_ts"]),
        "tool": "llama-bench",
        "load_s": None,
        "prefill_tok_s": rates(prefill),
        "decode_tok_s": rates(decode),
        "info": {
            "build": f"{prefill.get('build_commit')} ({prefill.get('build_number')})",
            "cpu": prefill.get("cpu_info"),
            "type": prefill.get("model_type"),
            "binary": str(args.llama_bench),
            "extra_args": args.llama_args,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(
        parser, model=None, model_type=Path, model_help="a GGUF file", threads=2, min_reps=5, min_seconds=10.0, warmup=1
    )
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="torch.compile our decode step")
    parser.add_argument("--dense-prefill", action="store_true", help="keep dense bf16 copies for prompts")
    parser.add_argument(
        "--llama-args",
        default="",
        help="more llama-bench options, e.g. '--repack 0' (its own kernels for the GGUF's layout instead of the "
        "repacked ones, faster on some CPUs); recorded in the JSON",
    )
    parser.add_argument("--engines", default="apr,transformers,llama.cpp")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where apr and transformers run (llama.cpp: CPU only here)",
    )
    parser.add_argument(
        "--hf-dir",
        type=Path,
        help="transformers loads this dense bf16 checkpoint (`apr convert "
        "MODEL --to safetensors --dtype bf16`) instead of the GGUF",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="above 1: also the aggregate decode rate of this many sequences decoded together",
    )
    parser.add_argument(
        "--roofline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the memory read rate in the same run and the decode roofline it allows (CPU; default on)",
    )
    parser.add_argument(
        "--llama-bench",
        type=Path,
        default=os.environ.get("LLAMA_BENCH"),
        help="llama.cpp's llama-bench binary (default $LLAMA_BENCH; see bench/build_llama_cpp.sh)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from apr.engine.bench import FILLER
    from apr.formats import load_model

    tokenizer = load_model(args.model).tokenizer
    prompt: list[int] = []
    while len(prompt) < args.prompt_tokens:
        prompt += tokenizer.encode(FILLER, add_special_tokens=False)
    prompt = prompt[: args.prompt_tokens]

    runners = {"apr": ours, "transformers": transformers_bf16, "llama.cpp": llama_cpp_python}
    results: dict[str, dict] = {}
    for name in args.engines.split(","):
        if name == "llama.cpp" and args.llama_bench:
            results[name] = llama_bench(args)
            continue
        if name == "llama.cpp":
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                print(
                    "llama.cpp: skipped (no --llama-bench / $LLAMA_BENCH, and llama-cpp-python is not installed; "
                    "bench/build_llama_cpp.sh builds llama-bench)",
                    file=sys.stderr,
                )
                results[name] = {"skipped": "llama-cpp-python not installed"}
                continue
        print(f"{name}: loading", file=sys.stderr)
        load_s, once, info, batch_once = runners[name](args, prompt)
        results[name] = {"load_s": round(load_s, 2), **measure(name, once, args, batch_once), "info": info}

    print(f"\n{'engine':<14}{'load s':>8}{'prefill tok/s':>16}{'decode tok/s':>15}   (median, p90)")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<14}  skipped: {r['skipped']}")
            continue
        load = f"{r['load_s']:>8.1f}" if r.get("load_s") is not None else f"{'n/a':>8}"
        print(
            f"{name:<14}{load}{r['prefill_tok_s']['median']:>10.1f} /{r['prefill_tok_s']['p90']:>5.0f}"
            f"{r['decode_tok_s']['median']:>9.2f} /{r['decode_tok_s']['p90']:>5.1f}"
        )
    ratios = {}
    if "apr" in results and "reps" in results["apr"]:
        for other in ("transformers", "llama.cpp"):
            if "reps" in results.get(other, {}):
                for metric in ("prefill_tok_s", "decode_tok_s", "batch_decode_tok_s"):
                    if metric not in results["apr"] or metric not in results[other]:
                        continue
                    ratios[f"{metric} apr/{other}"] = round(
                        results["apr"][metric]["median"] / results[other][metric]["median"], 3
                    )
    apr_result = results.get("apr", {})
    if "reps" in apr_result and "batch_decode_tok_s" in apr_result:
        # The batching figures: aggregate over one stream, and what each of the streams gets (rate, step time).
        aggregate = apr_result["batch_decode_tok_s"]["median"]
        apr_result["batch"] = {
            "speedup_over_one_stream": round(aggregate / apr_result["decode_tok_s"]["median"], 3),
            "per_stream_tok_s": round(aggregate / args.batch, 2),
            "per_stream_token_latency_ms": round(1000 * args.batch / aggregate, 1),
        }
        ratios["batch_decode apr/apr single stream"] = apr_result["batch"]["speedup_over_one_stream"]
    if args.roofline and "reps" in apr_result and args.device == "cpu":
        memory = memory_read_gb_s(args.threads)
        per_token = apr_result["info"]["weight_bytes_per_token"]
        roofline = memory["gb_s"] * 1e9 / per_token
        apr_result["roofline"] = {**memory, "weight_bytes_per_token": per_token, "decode_tok_s": round(roofline, 2)}
        ratios["decode_tok_s apr/roofline"] = round(apr_result["decode_tok_s"]["median"] / roofline, 3)
        if "reps" in results.get("llama.cpp", {}):
            ratios["decode_tok_s llama.cpp/roofline"] = round(
                results["llama.cpp"]["decode_tok_s"]["median"] / roofline, 3
            )
        print(
            f"memory read {memory['gb_s']:.1f} GB/s: decode roofline {roofline:.1f} tok/s ({per_token / 1e9:.3f} GB/token)"
        )
    for key, value in ratios.items():
        print(f"ratio {key}: {value:.2f}x")
    for name, r in results.items():
        if "batch_decode_tok_s" in r:
            print(
                f"{name:<14}batch {args.batch} decode {r['batch_decode_tok_s']['median']:.1f} tok/s aggregate (median)"
            )
    if args.device == "cuda":
        doc_gpu = torch.cuda.get_device_name()
        print(f"gpu: {doc_gpu}")
    doc = {
        "bench": "bench_engine",
        "model": str(args.model),
        "threads": args.threads,
        "device": args.device,
        "batch": args.batch,
        **({"gpu": torch.cuda.get_device_name()} if args.device == "cuda" else {}),
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "results": results,
        "ratios": ratios,
        "torch": torch.__version__,
        "omp_waits": {"apr": OMP_WAITS, "llama.cpp": omp_waits(Settings.from_environ(PEER_ENV))},
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(doc, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
