"""Prefill and decode with a long context already in the cache: our engine vs llama.cpp's `llama-bench -d`.

Method: for each `--depths` D, our engine prefills the first D tokens of a fixed natural-text prompt once
(untimed; reported). Each repetition then rewinds the cache to D (a position's key and value are written
before anything reads them, so nothing stale is seen), prefills the next `--prompt-tokens` tokens on top of
the context (timed: prefill tok/s at depth D) and decodes `--decode-tokens` forced greedy steps (timed:
decode tok/s at depth D). After `--warmup` untimed repetitions, repetitions continue until both
`--min-reps` and `--min-seconds` are reached; medians and p90 (slow tail). llama.cpp is measured by its own
`llama-bench -p <prompt-tokens> -n <decode-tokens> -d D` on the same GGUF and threads: its pp and tg tests
at depth D, the same quantities. `--per-operator` also times one prefill of the prompt at depth 0 through the
per-operator path (PyTorch's scaled_dot_product_attention: what prompts over 1024 tokens took before
2026-12-05). A 32K-token prompt: `--depths 0 --prompt-tokens 32000 --decode-tokens 4 --min-reps 1 --warmup 0`. The two run one after another, so on a shared machine compare ratios from
the same run only. Last stdout line: one JSON document.

    .venv/bin/python bench/bench_depth.py --model /tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
        --depths 0,1000,4000 --llama-bench .llama-bench/build/bin/llama-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from cli_common import add_shared_options  # bench/cli_common.py, beside this script


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def ours(args, depths: list[int]) -> dict[int, dict]:
    from apr.engine import load_engine
    from apr.engine.bench import bench_prompt
    from apr.engine.kv_cache import capacity_for

    engine = load_engine(args.model, device="cpu", threads=args.threads, compile=False)
    model, cfg = engine.transformer, engine.config
    results: dict[int, dict] = {}
    for depth in depths:
        text = bench_prompt(engine, depth + args.prompt_tokens)
        context, prompt = text[:depth], torch.tensor(text[depth:])
        positions = len(text) + args.decode_tokens
        if positions >= model.max_positions:
            results[depth] = {"skipped": f"{positions} positions exceed the engine's {model.max_positions}"}
            continue
        if depth and not model.can_continue_prefill(args.prompt_tokens):
            results[depth] = {"skipped": "this engine cannot prefill on top of a cache (not the native CPU path)"}
            continue
        with torch.inference_mode():
            # The engine's own cache type (fp16 on the native CPU path), as a request gets it.
            cache = model.new_cache(capacity_for(positions, model.max_positions))
            start = time.perf_counter()
            if depth:
                model.prefill(torch.tensor(context), cache)
            fill_s = time.perf_counter() - start
            print(f"  apr depth {depth}: context prefilled in {fill_s:.1f} s", file=sys.stderr)

            # Bound now: this depth's cache and prompt (the function is only called in this iteration anyway).
            def once(cache=cache, depth=depth, prompt=prompt) -> tuple[float, float]:
                cache.length = depth
                begin = time.perf_counter()
                token = model.head(model.prefill(prompt, cache)[-1:]).argmax(-1)
                first = time.perf_counter()
                for _ in range(args.decode_tokens):
                    token = engine.decode_step(token, [cache]).argmax(-1)
                return first - begin, time.perf_counter() - first

            for _ in range(args.warmup):
                once()
            prefills: list[float] = []
            decodes: list[float] = []
            started = time.perf_counter()
            while len(decodes) < args.min_reps or time.perf_counter() - started < args.min_seconds:
                prefill_s, decode_s = once()
                prefills.append(prefill_s)
                decodes.append(decode_s)
                print(
                    f"  apr depth {depth} rep {len(decodes)}: prefill {args.prompt_tokens / prefill_s:.1f} tok/s, "
                    f"decode {args.decode_tokens / decode_s:.2f} tok/s",
                    file=sys.stderr,
                )
            per_operator = (
                per_operator_prefill(args, model, cfg, engine, prompt) if args.per_operator and not depth else {}
            )
        results[depth] = {
            **per_operator,
            "reps": len(decodes),
            "context_prefill_s": round(fill_s, 2),
            "prefill_tok_s": {
                "median": args.prompt_tokens / statistics.median(prefills),
                "p90": args.prompt_tokens / p90(prefills),
            },
            "decode_tok_s": {
                "median": args.decode_tokens / statistics.median(decodes),
                "p90": args.decode_tokens / p90(decodes),
            },
        }
    return results


def per_operator_prefill(args, model, cfg, engine, prompt: torch.Tensor) -> dict:
    """The prompt once through the per-operator path (Transformer.prefill: PyTorch's scaled_dot_product_attention
    over the glue kernels), the path prompts over 1024 tokens took before the one-call layers covered any length."""
    from apr.engine.kv_cache import SequenceCache, capacity_for
    from apr.engine.model import Transformer

    # float32: the cache type of the per-operator path
    cache = SequenceCache(
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        capacity_for(len(prompt), model.max_positions),
        model.dtype,
        engine.device,
    )
    begin = time.perf_counter()
    Transformer.prefill(model, prompt, cache)
    seconds = time.perf_counter() - begin
    print(f"  apr per-operator prefill: {len(prompt) / seconds:.1f} tok/s", file=sys.stderr)
    return {"per_operator_prefill_tok_s": len(prompt) / seconds}


def llama_bench(args, depths: list[int]) -> dict[int, dict]:
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
        "-d",
        ",".join(map(str, depths)),
        "-r",
        str(args.llama_reps),
        "-o",
        "json",
    ]
    print(f"llama.cpp: {' '.join(command)}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = f"llama-bench exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        return {depth: {"skipped": reason} for depth in depths}
    results: dict[int, dict] = {depth: {} for depth in depths}
    for row in json.loads(done.stdout):
        samples = sorted(row["samples_ts"], reverse=True)
        metric = "prefill_tok_s" if row["n_prompt"] > 0 and row["n_gen"] == 0 else "decode_tok_s"
        results.setdefault(int(row["n_depth"]), {})[metric] = {
            "median": statistics.median(samples),
            "p90": samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))],
            "samples": samples,
        }
        results[int(row["n_depth"])]["reps"] = len(samples)
    return {
        depth: results[depth] if "reps" in results[depth] else {"skipped": "llama-bench reported no such depth"}
        for depth in depths
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(
        parser, model=None, model_type=Path, model_help="a GGUF file", threads=2, min_reps=3, min_seconds=5.0, warmup=1
    )
    parser.add_argument("--depths", default="0,1000,4000", help="context lengths, comma-separated")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--llama-reps", type=int, default=3, help="llama-bench's -r (repetitions of each test)")
    parser.add_argument(
        "--per-operator",
        action="store_true",
        help="at depth 0, also time one prefill of the prompt through the per-operator (SDPA) path",
    )
    parser.add_argument(
        "--llama-bench",
        type=Path,
        default=os.environ.get("LLAMA_BENCH"),
        help="llama.cpp's llama-bench binary (default $LLAMA_BENCH; see bench/build_llama_cpp.sh)",
    )
    args = parser.parse_args()
    try:
        depths = sorted({int(part) for part in args.depths.split(",")})
    except ValueError:
        parser.error(f"--depths takes comma-separated integers, got {args.depths!r}")
    if any(depth < 0 for depth in depths) or args.decode_tokens < 1 or args.prompt_tokens < 1:
        parser.error("depths must be >= 0, --prompt-tokens and --decode-tokens >= 1")
    if not args.model.is_file():
        parser.error(f"no such GGUF file: {args.model}")
    torch.set_num_threads(args.threads)

    results = {"apr": ours(args, depths)}
    if args.llama_bench:
        results["llama.cpp"] = llama_bench(args, depths)
    else:
        print(
            "llama.cpp: skipped (no --llama-bench / $LLAMA_BENCH; bench/build_llama_cpp.sh builds it)",
            file=sys.stderr,
        )
    ratios: dict[str, float] = {}
    print(f"\n{'depth':>6}{'':>2}{'metric':<9}{'apr':>14}{'llama.cpp':>16}{'ratio':>8}   (tok/s median / p90)")
    for depth in depths:
        mine, peer = results["apr"][depth], results.get("llama.cpp", {}).get(depth, {"skipped": "not run"})
        for metric, label in (("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
            cells = [
                f"{r[metric]['median']:.2f} / {r[metric]['p90']:.1f}" if metric in r else "n/a" for r in (mine, peer)
            ]
            key = f"{metric} apr/llama.cpp @ {depth}"
            if metric in mine and metric in peer:
                ratios[key] = round(mine[metric]["median"] / peer[metric]["median"], 3)
            ratio = f"{ratios[key]:.2f}x" if key in ratios else "n/a"
            print(f"{depth:>6}{'':>2}{label:<9}{cells[0]:>14}{cells[1]:>16}{ratio:>8}")
    print(
        json.dumps(
            {
                "model": str(args.model),
                "threads": args.threads,
                "prompt_tokens": args.prompt_tokens,
                "decode_tokens": args.decode_tokens,
                "results": {name: {str(d): r for d, r in per.items()} for name, per in results.items()},
                "ratios": ratios,
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
