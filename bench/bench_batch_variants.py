"""Batched decode and prefill per native kernel variant, in CPU time as well as wall time.

Why CPU time: on a shared machine a process's wall time measures its neighbours as much as itself, while
the CPU seconds a step costs (at one thread, where no OpenMP thread spins waiting for another) move far
less. Both are reported; ratios are taken within one variant's run (batch against single stream) and
between variants' CPU figures.

Method: for each variant (APR_NATIVE_VARIANT, each in a process of its own, so each builds and loads its
own kernels), load the engine, then REPS times, alternating: prefill of a PROMPT-token prompt; DECODE forced
greedy steps of one sequence; DECODE steps of BATCH sequences decoded together. Medians over the
repetitions; each figure is per token (prefill: per prompt token). The last stdout line is one JSON document.

    .venv/bin/python bench/bench_batch_variants.py --model qwen2.5-coder:1.5b --threads 1 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cli_common import add_shared_options  # bench/cli_common.py, beside this script

T = TypeVar("T")


def timed(action: Callable[..., T], *args: Any) -> tuple[tuple[float, float], T]:
    """((wall seconds, CPU seconds of the process), what ``action(*args)`` returned)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = action(*args)
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def decode(step: Callable[..., Any], tokens: Any, caches: list[Any], steps: int) -> None:
    """``steps`` forced greedy decode steps of the sequences in ``caches``."""
    for _ in range(steps):
        tokens = step(tokens, caches).argmax(-1)


def measure(args: argparse.Namespace) -> dict:
    """One variant's figures (this process's build)."""
    import torch

    from apr.cpu import cpu_model
    from apr.engine import load_engine, native
    from apr.engine.bench import bench_prompt
    from apr.engine.kv_cache import capacity_for

    engine = load_engine(args.model, threads=args.threads)
    model, step = engine.transformer, engine.decode_step
    prompt = torch.tensor(bench_prompt(engine, args.prompt_tokens))
    capacity = capacity_for(args.prompt_tokens + args.decode_tokens + 1, model.max_positions)
    figures: dict[str, list[tuple[float, float]]] = {"prefill": [], "decode": [], "batch": []}

    with torch.inference_mode():
        for rep in range(args.reps + 1):  # the first round is warmup
            caches = [engine.new_cache(capacity) for _ in range(args.batch)]
            prefill, hidden = timed(model.prefill, prompt, caches[0])
            for cache in caches[1:]:  # the batch's other sequences hold the same prompt (copied, untimed)
                cache.k.copy_(caches[0].k)
                cache.v.copy_(caches[0].v)
                cache.length = caches[0].length
            first = model.head(hidden[-1:]).argmax(-1)
            one, _ = timed(decode, step, first, caches[:1], args.decode_tokens)
            caches[0].length = args.prompt_tokens  # the batch decodes the positions the single stream did
            batch, _ = timed(decode, step, first.repeat(args.batch), caches, args.decode_tokens)
            if rep:
                figures["prefill"].append(prefill)
                figures["decode"].append(one)
                figures["batch"].append(batch)
            print(
                f"  {native.variant()} rep {rep}{' (warmup)' if not rep else ''}: prefill {prefill[0]:.2f} s "
                f"(cpu {prefill[1]:.2f}), decode {one[0]:.2f} s (cpu {one[1]:.2f}), "
                f"batch {args.batch} {batch[0]:.2f} s (cpu {batch[1]:.2f})",
                file=sys.stderr,
            )

    def per_token(key: str, tokens: int) -> dict:
        walls, cpus = zip(*figures[key])
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        return {"tok_s": round(tokens / wall, 2), "cpu_tok_s": round(tokens / cpu, 2), "wall_s": wall, "cpu_s": cpu}

    return {
        "variant": native.variant(),
        "kernels": engine.describe()["kernels"],
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "prefill": per_token("prefill", args.prompt_tokens),
        "decode": per_token("decode", args.decode_tokens),
        "batch_decode": per_token("batch", args.batch * args.decode_tokens),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, model="qwen2.5-coder:1.5b", threads=1, reps=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--variants", default="", help="comma-separated (default: every variant this CPU runs)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: measure this build
    args = parser.parse_args()
    if args.batch < 2 or args.reps < 1 or args.decode_tokens < 1 or args.prompt_tokens < 1:
        print("bench_batch_variants: --batch >= 2, --reps, --decode-tokens, --prompt-tokens >= 1", file=sys.stderr)
        return 2
    if args.one:
        print(json.dumps(measure(args)))
        return 0

    from apr.cpu import supported_variants

    variants = args.variants.split(",") if args.variants else [v.name for v in supported_variants()]
    load_before = os.getloadavg()
    results = []
    for variant in variants:
        print(f"{variant}:", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, __file__, "--one", *sys.argv[1:]],
            env={**os.environ, "APR_NATIVE_VARIANT": variant},
            stdout=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            print(f"{variant}: the measuring process exited {done.returncode}", file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\n{'variant':<12}{'prefill tok/s':>16}{'decode tok/s':>16}{f'batch {args.batch} tok/s':>18}{'batch/1':>9}")
    for r in results:
        speedup = r["batch_decode"]["tok_s"] / r["decode"]["tok_s"]
        cpu_speedup = r["batch_decode"]["cpu_tok_s"] / r["decode"]["cpu_tok_s"]
        r["batch_speedup"], r["batch_speedup_cpu"] = round(speedup, 3), round(cpu_speedup, 3)
        r["per_stream_token_latency_ms"] = round(1000 * r["batch_decode"]["wall_s"] / args.decode_tokens, 1)
        print(
            f"{r['variant']:<12}"
            + "".join(
                f"{r[key]['tok_s']:>8.1f} ({r[key]['cpu_tok_s']:>5.1f})"
                for key in ("prefill", "decode", "batch_decode")
            )
            + f"{speedup:>6.2f}x ({cpu_speedup:.2f}x)"
        )
    print("(wall-time rates; in parentheses: per CPU second)")
    doc = {
        "bench": "batch_variants",
        "model": args.model,
        "threads": args.threads,
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "reps": args.reps,
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
        "results": results,
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
