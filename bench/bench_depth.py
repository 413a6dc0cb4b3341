"""Decode speed with a long context already in the cache: our engine vs llama.cpp's `llama-bench -d`, in one run.

Method: for each `--depths` D, our engine prefills a fixed natural-text prompt of D tokens once (untimed;
reported), then each repetition decodes `--decode-tokens` forced greedy steps from position D (the cache is
rewound to D between repetitions: a step writes its key and value before it attends, so nothing stale is
read). After `--warmup` untimed repetitions, repetitions continue until both `--min-reps` and
`--min-seconds` are reached; medians and p90 (slow tail). llama.cpp is measured by its own `llama-bench
-p 0 -n <decode-tokens> -d D` on the same GGUF and threads (its tg test at depth D: the same quantity).
The two run one after another, so on a shared machine compare ratios from the same run only. Last stdout
line: one JSON document.

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


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def ours(args, depths: list[int]) -> dict[int, dict]:
    from apr.engine import load_engine
    from apr.engine.bench import bench_prompt
    from apr.engine.kv_cache import SequenceCache, capacity_for

    engine = load_engine(args.model, device="cpu", threads=args.threads, compile=False)
    model, cfg = engine.transformer, engine.config
    results: dict[int, dict] = {}
    for depth in depths:
        prompt = bench_prompt(engine, max(depth, 1))
        if len(prompt) + args.decode_tokens >= model.max_positions:
            results[depth] = {"skipped": f"{depth} + {args.decode_tokens} positions exceed the engine's {model.max_positions}"}
            continue
        with torch.inference_mode():
            cache = SequenceCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim,
                                  capacity_for(len(prompt) + args.decode_tokens, model.max_positions),
                                  model.dtype, engine.device)
            start = time.perf_counter()
            first = model.head(model.prefill(torch.tensor(prompt), cache)[-1:]).argmax(-1)
            fill_s = time.perf_counter() - start
            print(f"  apr depth {depth}: context prefilled in {fill_s:.1f} s", file=sys.stderr)

            def once() -> float:
                cache.length = len(prompt)
                token = first
                begin = time.perf_counter()
                for _ in range(args.decode_tokens):
                    token = engine.decode_step(token, [cache]).argmax(-1)
                return time.perf_counter() - begin

            for _ in range(args.warmup):
                once()
            times: list[float] = []
            started = time.perf_counter()
            while len(times) < args.min_reps or time.perf_counter() - started < args.min_seconds:
                times.append(once())
                print(f"  apr depth {depth} rep {len(times)}: {args.decode_tokens / times[-1]:.2f} tok/s", file=sys.stderr)
        results[depth] = {"reps": len(times), "context_prefill_s": round(fill_s, 2),
                          "decode_tok_s": {"median": args.decode_tokens / statistics.median(times),
                                           "p90": args.decode_tokens / p90(times)}}
    return results


def llama_bench(args, depths: list[int]) -> dict[int, dict]:
    command = [str(args.llama_bench), "-m", str(args.model), "-t", str(args.threads), "-p", "0",
               "-n", str(args.decode_tokens), "-d", ",".join(map(str, depths)), "-r", str(max(args.min_reps, 3)),
               "-o", "json"]
    print(f"llama.cpp: {' '.join(command)}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = f"llama-bench exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        return {depth: {"skipped": reason} for depth in depths}
    results: dict[int, dict] = {}
    for row in json.loads(done.stdout):
        samples = sorted(row["samples_ts"], reverse=True)
        results[int(row["n_depth"])] = {"reps": len(samples), "decode_tok_s": {
            "median": statistics.median(samples), "p90": samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))],
            "samples": samples}}
    return {depth: results.get(depth, {"skipped": "llama-bench reported no such depth"}) for depth in depths}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a GGUF file")
    parser.add_argument("--depths", default="0,1000,4000", help="context lengths, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--min-reps", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--llama-bench", type=Path, default=os.environ.get("LLAMA_BENCH"),
                        help="llama.cpp's llama-bench binary (default $LLAMA_BENCH; see bench/build_llama_bench.sh)")
    args = parser.parse_args()
    try:
        depths = sorted({int(part) for part in args.depths.split(",")})
    except ValueError:
        parser.error(f"--depths takes comma-separated integers, got {args.depths!r}")
    if any(depth < 0 for depth in depths) or args.decode_tokens < 1:
        parser.error("depths must be >= 0 and --decode-tokens >= 1")
    if not args.model.is_file():
        parser.error(f"no such GGUF file: {args.model}")
    torch.set_num_threads(args.threads)

    results = {"apr": ours(args, depths)}
    if args.llama_bench:
        results["llama.cpp"] = llama_bench(args, depths)
    else:
        print("llama.cpp: skipped (no --llama-bench / $LLAMA_BENCH; bench/build_llama_bench.sh builds it)", file=sys.stderr)
    ratios: dict[str, float] = {}
    print(f"\n{'depth':>6}{'apr tok/s':>14}{'llama.cpp tok/s':>18}{'ratio':>8}   (decode median, p90)")
    for depth in depths:
        mine, peer = results["apr"][depth], results.get("llama.cpp", {}).get(depth, {"skipped": "not run"})
        cells = []
        for r in (mine, peer):
            cells.append(f"{r['decode_tok_s']['median']:.2f} / {r['decode_tok_s']['p90']:.1f}" if "reps" in r else "n/a")
        if "reps" in mine and "reps" in peer:
            ratios[f"decode_tok_s apr/llama.cpp @ {depth}"] = round(
                mine["decode_tok_s"]["median"] / peer["decode_tok_s"]["median"], 3)
        ratio = ratios.get(f"decode_tok_s apr/llama.cpp @ {depth}")
        print(f"{depth:>6}{cells[0]:>14}{cells[1]:>18}{(f'{ratio:.2f}x' if ratio else 'n/a'):>8}")
    print(json.dumps({"model": str(args.model), "threads": args.threads, "decode_tokens": args.decode_tokens,
                      "results": {name: {str(d): r for d, r in per.items()} for name, per in results.items()},
                      "ratios": ratios, "torch": torch.__version__, "machine": platform.machine()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
