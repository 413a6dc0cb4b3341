"""What `--kv-cache f16` buys and costs: cache memory, decode speed over a long context, and log-likelihood.

Method: two engines of the same file, loaded with `load_engine(kv_cache="f16")` and `kv_cache="f32"` (what
`apr run --kv-cache` does), one after the other. (1) Memory: bytes a cache position takes, read from a cache
each engine allocates, and the cache at the model's whole context. (2) Log-likelihood (the method of the
NUMERICS-PARITY gate, docs/engine.md "Numerics"): teacher-forced per-token log p of the gate's three texts
plus a long one (the bench filler text, `--long-tokens` ids; rounding keys and values matters more as the
context grows), |Δ log p| per token between the two, mean and worst. (3) Speed: greedy decode of
`--decode-tokens` after the long text (so attention streams a long cache), `--warmup` untimed then
`--reps` timed runs per engine, interleaved f16/f32 so a load change hits both; median and p90 tok/s, and
the ratio f16 / f32 of the medians. Last stdout line: one JSON document.

    .venv/bin/python bench/bench_kv_half.py --model qwen2.5-coder:1.5b --long-tokens 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

from cli_common import add_shared_options  # bench/cli_common.py, beside this script
from stats import percentile  # bench/stats.py, beside this script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, model=None, threads=2, warmup=1, reps=3)
    parser.add_argument("--long-tokens", type=int, default=1000)
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args()

    from apr.engine import SamplingParams, load_engine
    from apr.engine.bench import bench_prompt
    from apr.errors import AprError
    from apr.qa.gates.numerics import token_deltas
    from apr.qa.gates.thresholds import NumericsGate

    engines = {}
    try:
        for name in ("f16", "f32"):
            engines[name] = load_engine(args.model, device="cpu", threads=args.threads, compile=False, kv_cache=name)
    except AprError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    half = engines["f16"]
    texts = [half.tokenizer.encode(text, add_special_tokens=False) for text in NumericsGate().texts]
    long_ids = bench_prompt(half, args.long_tokens)
    texts.append(long_ids)
    scored = {name: [engine.prompt_logprobs(ids) for ids in texts] for name, engine in engines.items()}
    short = token_deltas(scored["f16"][:-1], scored["f32"][:-1])
    long = token_deltas(scored["f16"][-1:], scored["f32"][-1:])

    params = SamplingParams(max_tokens=args.decode_tokens)
    rates: dict[str, list[float]] = {"f16": [], "f32": []}
    for rep in range(args.warmup + args.reps):
        for name, engine in engines.items():
            rate = engine.generate(long_ids, params).timings.decode_tok_s
            if rep >= args.warmup:
                rates[name].append(rate)
    speed = {
        name: {"median": statistics.median(values), "p90": percentile(values, 0.9), "reps": len(values)}
        for name, values in rates.items()
    }
    context = half.max_positions
    memory = {}
    for name, engine in engines.items():
        per_position = engine.new_cache(256).nbytes // 256
        memory[name] = {
            "dtype": engine.describe()["kv_cache"],
            "bytes_per_position": per_position,
            "context_positions": context,
            "context_gib": round(per_position * context / 2**30, 3),
        }
    result = {
        "bench": "apr-kv-cache-f16",
        "model": args.model,
        "kernels": half.describe()["kernels"],
        "threads": half.describe()["threads"],
        "host": {"cpu": platform.processor() or platform.machine(), "load_1m": os.getloadavg()[0]},
        "memory": memory,
        "gate_texts": {"tokens": len(short), "mean_nats": statistics.fmean(short), "max_nats": max(short)},
        "long_text": {"tokens": len(long), "mean_nats": statistics.fmean(long), "max_nats": max(long)},
        "decode_after_long_text": {
            "context_tokens": len(long_ids),
            "decode_tokens": args.decode_tokens,
            "tok_s": speed,
            "ratio_f16_over_f32": speed["f16"]["median"] / speed["f32"]["median"],
        },
    }
    print(
        f"{args.model}: KV {memory['f16']['bytes_per_position']} vs {memory['f32']['bytes_per_position']} bytes a "
        f"position ({memory['f16']['context_gib']} vs {memory['f32']['context_gib']} GiB at {context}); "
        f"|Δ log p| gate texts mean {result['gate_texts']['mean_nats']:.2e} / max {result['gate_texts']['max_nats']:.2e}, "
        f"{len(long) + 1}-token text mean {result['long_text']['mean_nats']:.2e} / max "
        f"{result['long_text']['max_nats']:.2e}; decode after {len(long_ids)} tokens f16 "
        f"{speed['f16']['median']:.1f} / f32 {speed['f32']['median']:.1f} tok/s "
        f"(x{result['decode_after_long_text']['ratio_f16_over_f32']:.2f})",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
