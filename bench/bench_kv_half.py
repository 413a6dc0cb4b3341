"""What the fp16 KV cache costs in log-likelihood: per-token log p with the cache in fp16 vs float32, same engine.

Method (the one of the NUMERICS-PARITY gate, docs/engine.md "Numerics"): teacher-forced per-token log-likelihoods
of texts, |Δ log p| per token between the two cache types, mean and worst. The texts are the gate's three plus
a long one (the bench filler text, `--long-tokens` ids), since rounding keys and values matters more as the
context grows. Only the cache type changes between the two passes (NativeTransformer.kv_dtype). Last stdout
line: one JSON document.

    .venv/bin/python bench/bench_kv_half.py --model qwen2.5-coder:1.5b --long-tokens 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model ref or path")
    parser.add_argument("--long-tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from apr.engine import load_engine
    from apr.engine.bench import bench_prompt
    from apr.engine.native_model import NativeTransformer
    from apr.qa.gates.numerics import token_deltas
    from apr.qa.gates.thresholds import NumericsGate

    engine = load_engine(args.model, device="cpu", threads=args.threads, compile=False)
    model = engine.transformer
    if not isinstance(model, NativeTransformer) or model.native_stack is None:
        print(f"{args.model}: not on the native one-call layers here; no fp16 cache to measure", file=sys.stderr)
        return 1
    texts = [engine.tokenizer.encode(text, add_special_tokens=False) for text in NumericsGate().texts]
    texts.append(bench_prompt(engine, args.long_tokens))
    scored: dict[str, list[list[float | None]]] = {}
    for name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        model.kv_dtype = dtype
        scored[name] = [engine.prompt_logprobs(ids) for ids in texts]
    short = token_deltas(scored["fp16"][:-1], scored["fp32"][:-1])
    long = token_deltas(scored["fp16"][-1:], scored["fp32"][-1:])
    result = {
        "model": args.model,
        "kernels": engine.describe()["kernels"],
        "gate_texts": {"tokens": len(short), "mean_nats": statistics.fmean(short), "max_nats": max(short)},
        "long_text": {"tokens": len(long), "mean_nats": statistics.fmean(long), "max_nats": max(long)},
    }
    print(
        f"{args.model}: |Δ log p| fp16 vs float32 KV — gate texts mean {result['gate_texts']['mean_nats']:.2e} / "
        f"max {result['gate_texts']['max_nats']:.2e}; {len(long) + 1}-token text mean "
        f"{result['long_text']['mean_nats']:.2e} / max {result['long_text']['max_nats']:.2e}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
