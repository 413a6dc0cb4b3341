"""Time to first token of each turn of a multi-turn chat: continuing from the last turn's cache vs re-prefilling.

Method: a fixed five-turn coding conversation (greedy, `--max-tokens` a reply) runs `--warmup` times
untimed, then `--reps` times with a `PrefixCache` (each turn prefills only what follows the prefix it
shares with the previous turn's tokens, as `apr chat` does) and `--reps` times without (each turn
prefills the whole conversation so far), alternating. Per turn: prompt tokens, tokens taken from the
cache, and the median / p90 time to first token of both. It also checks that both generate the same
tokens every turn (the reuse is bit-identical). Last stdout line: one JSON document.

    .venv/bin/python bench/bench_chat_turns.py --model qwen2.5-coder:1.5b
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import torch
from cli_common import add_shared_options  # bench/cli_common.py, beside this script

QUESTIONS = (
    "Write a Python function that checks whether a number is prime.",
    "Now make it faster for large inputs.",
    "Add type hints and a docstring.",
    "Write three pytest tests for it.",
    "Explain the complexity in one sentence.",
)


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(
        parser,
        model="qwen2.5-coder:1.5b",
        model_help="a ref, cached name or path with a chat template",
        threads=2,
        reps=3,
        warmup=1,
    )
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    if args.reps < 1 or args.max_tokens < 1 or args.warmup < 0:
        parser.error("--reps and --max-tokens must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)

    from apr.engine import PrefixCache, SamplingParams, load_engine

    engine = load_engine(args.model, threads=args.threads, compile=False)
    tokenizer = engine.tokenizer
    if not tokenizer.has_chat_template:
        parser.error(f"{args.model} has no chat template")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)

    def conversation(reuse: bool) -> list[tuple[int, int, float, list[int]]]:
        """Per turn: (prompt tokens, tokens from the cache, time to first token, generated ids)."""
        history: list[dict[str, str]] = []
        prefix = PrefixCache() if reuse else None
        turns = []
        for question in QUESTIONS:
            history.append({"role": "user", "content": question})
            ids = tokenizer.encode(
                tokenizer.apply_chat_template(history, add_generation_prompt=True), add_special_tokens=False
            )
            result = engine.generate(ids, params, prefix)
            turns.append((len(ids), prefix.reused if prefix else 0, result.timings.ttft_s, result.token_ids))
            history.append({"role": "assistant", "content": result.text})
        return turns

    for _ in range(args.warmup):
        conversation(True)
        conversation(False)
    runs: dict[bool, list[list[tuple[int, int, float, list[int]]]]] = {True: [], False: []}
    for rep in range(args.reps):
        for reuse in (True, False):
            runs[reuse].append(conversation(reuse))
            print(
                f"  rep {rep + 1} {'reuse' if reuse else 'fresh'}: ttft "
                + " ".join(f"{turn[2]:.2f}" for turn in runs[reuse][-1]),
                file=sys.stderr,
            )
    same = all(a[3] == b[3] for run_a, run_b in zip(runs[True], runs[False]) for a, b in zip(run_a, run_b))
    rows = []
    print(f"\n{'turn':>4}{'prompt':>8}{'cached':>8}{'ttft reuse':>16}{'ttft fresh':>16}   (s, median / p90)")
    for index in range(len(QUESTIONS)):
        reused = [run[index][2] for run in runs[True]]
        fresh = [run[index][2] for run in runs[False]]
        prompt, cached = runs[True][0][index][:2]
        rows.append(
            {
                "turn": index + 1,
                "prompt_tokens": prompt,
                "cached_prompt_tokens": cached,
                "ttft_reuse_s": {"median": statistics.median(reused), "p90": p90(reused)},
                "ttft_fresh_s": {"median": statistics.median(fresh), "p90": p90(fresh)},
            }
        )
        print(
            f"{index + 1:>4}{prompt:>8}{cached:>8}{statistics.median(reused):>9.2f} / {p90(reused):.2f}"
            f"{statistics.median(fresh):>9.2f} / {p90(fresh):.2f}"
        )
    print(f"same tokens every turn: {same}")
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": args.threads,
                "max_tokens": args.max_tokens,
                "reps": args.reps,
                "turns": rows,
                "same_tokens": same,
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
