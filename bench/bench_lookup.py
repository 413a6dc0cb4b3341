"""Lookup decoding vs plain decoding on code edits (bench/code_edit_tasks.py), in one run: effective tok/s, ratio.

Method: the model is loaded once. Each task's prompt (the chat template around "edit this function, reply
with the whole edited function") is generated greedily to its end (EOS) or `--max-tokens`, once with plain
decoding and once with lookup decoding (`--lookup` draft tokens), the two back to back and in alternating
order, so drift on a shared machine hits both alike. One repetition is every task in both modes; after
`--warmup` untimed repetitions of the first task, repetitions continue until both `--min-reps` and
`--min-seconds`. Effective decode tok/s of a repetition = the tokens after the first over the time from the
first token to the last, summed over the tasks (prefill is the same work in both modes and reported apart);
the ratio is lookup over plain of the same repetition. Reported: median and p90 (the slow tail) over the
repetitions, the acceptance rate of the drafts, tokens per forward pass, how many replies were token for
token identical in both modes (all must be: greedy output is unchanged by lookup), and how many replies
equal the task's expected function (model quality, informational). The last stdout line is one JSON
document. The machine's load average is recorded before and after: on a shared machine absolute rates
move, the ratio of the same run is the figure.

    .venv/bin/python bench/bench_lookup.py --model qwen2.5-coder:1.5b --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

from code_edit_tasks import TASKS, EditTask  # bench/, beside this script
from stats import percentile


def prompt_text(task: EditTask) -> str:
    return (
        f"{task.instruction}\n\n```python\n{task.function}```\n\n"
        "Reply with the whole edited function in one python code block, and nothing else."
    )


def code_of(reply: str) -> str:
    """The first fenced code block of a reply (the reply itself when it has none), newline-terminated."""
    found = re.search(r"```(?:python)?\n(.*?)```", reply, re.S)
    code = found.group(1) if found else reply
    return code.strip("\n") + "\n"


def generate(engine, ids: list[int], params, lookup) -> dict:
    """One greedy generation: tokens, text, time to first token and decode seconds after it."""
    start = time.perf_counter()
    first = None
    tokens: list[int] = []
    text: list[str] = []
    stats = None
    for event in engine.stream(ids, params, None, lookup):
        if first is None:
            first = time.perf_counter()
        tokens.append(event.token_id)
        text.append(event.text)
        stats = event.lookup or stats
    end = time.perf_counter()
    return {
        "tokens": tokens,
        "text": "".join(text),
        "ttft_s": (first or end) - start,
        "decode_s": end - (first or end),
        "lookup": stats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A ref (qwen2.5-coder:1.5b), cached name or path.")
    parser.add_argument("--lookup", type=int, default=10, help="Draft tokens a step (LookupConfig.draft_tokens).")
    parser.add_argument("--max-ngram", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="Use the first N tasks.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-reps", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    load_before = os.getloadavg()
    from apr.engine import LookupConfig, SamplingParams, load_engine
    from apr.errors import AprError
    from apr.hub import resolve_model_arg

    try:
        path = resolve_model_arg(args.model)
    except AprError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    engine = load_engine(path, device="cpu", threads=args.threads, compile=False)
    reason = engine.lookup_unavailable()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    lookup = LookupConfig(draft_tokens=args.lookup, max_ngram=args.max_ngram)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    tokenizer = engine.tokenizer
    tasks = TASKS[: args.tasks]
    prompts = []
    for task in tasks:
        message = [{"role": "user", "content": prompt_text(task)}]
        if tokenizer.has_chat_template:
            prompts.append(tokenizer.encode(tokenizer.apply_chat_template(message, add_generation_prompt=True)))
        else:
            prompts.append(tokenizer.encode(prompt_text(task) + "\n\n```python\n", add_special_tokens=True))

    for i in range(args.warmup):
        generate(engine, prompts[0], params, None)
        generate(engine, prompts[0], params, lookup)
        print(f"warmup {i + 1} done", file=sys.stderr)

    reps: list[dict] = []
    started = time.perf_counter()
    first_rep: dict[str, dict] = {}
    while len(reps) < args.min_reps or time.perf_counter() - started < args.min_seconds:
        rep = {"plain_s": 0.0, "lookup_s": 0.0, "plain_tokens": 0, "lookup_tokens": 0, "identical": 0}
        rep.update(steps=0, drafted=0, accepted=0, prefill_s=0.0)
        for index, (task, ids) in enumerate(zip(tasks, prompts)):
            order = ("plain", "lookup") if (index + len(reps)) % 2 == 0 else ("lookup", "plain")
            runs = {mode: generate(engine, ids, params, lookup if mode == "lookup" else None) for mode in order}
            plain, looked = runs["plain"], runs["lookup"]
            rep["plain_s"] += plain["decode_s"]
            rep["lookup_s"] += looked["decode_s"]
            rep["plain_tokens"] += len(plain["tokens"]) - 1
            rep["lookup_tokens"] += len(looked["tokens"]) - 1
            rep["prefill_s"] += plain["ttft_s"]
            rep["identical"] += plain["tokens"] == looked["tokens"]
            stats = looked["lookup"]
            rep["steps"] += stats.steps
            rep["drafted"] += stats.drafted
            rep["accepted"] += stats.accepted
            print(
                f"  {task.name}: {len(plain['tokens'])} tok, plain {plain['decode_s']:.2f} s, lookup "
                f"{looked['decode_s']:.2f} s, accepted {stats.accepted}/{stats.drafted}, "
                f"identical {plain['tokens'] == looked['tokens']}",
                file=sys.stderr,
            )
            if not reps:
                first_rep[task.name] = {
                    "tokens": len(plain["tokens"]),
                    "identical": plain["tokens"] == looked["tokens"],
                    "ratio": round(
                        (len(looked["tokens"]) - 1)
                        / max(looked["decode_s"], 1e-9)
                        / max((len(plain["tokens"]) - 1) / max(plain["decode_s"], 1e-9), 1e-9),
                        3,
                    ),
                    "acceptance": round(stats.acceptance_rate, 3),
                    "expected_plain": code_of(plain["text"]) == task.expected,
                    "expected_lookup": code_of(looked["text"]) == task.expected,
                }
        # Replies of one token have no decode time: their rates are 0, never a division by zero.
        plain_rate = rep["plain_tokens"] / rep["plain_s"] if rep["plain_s"] > 0 else 0.0
        lookup_rate = rep["lookup_tokens"] / rep["lookup_s"] if rep["lookup_s"] > 0 else 0.0
        ratio = lookup_rate / plain_rate if plain_rate > 0 else 0.0
        rep.update(plain_tok_s=plain_rate, lookup_tok_s=lookup_rate, ratio=ratio)
        reps.append(rep)
        print(
            f"rep {len(reps)}: plain {plain_rate:.2f} tok/s, lookup {lookup_rate:.2f} tok/s, "
            f"ratio {rep['ratio']:.2f}x, accepted {rep['accepted']}/{rep['drafted']}, "
            f"identical {rep['identical']}/{len(tasks)}",
            file=sys.stderr,
        )

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in reps]
        # Rates: the p90 is the slow tail, the 10th percentile of the rates.
        return {"median": round(statistics.median(values), 4), "p90": round(percentile(values, 0.1), 4)}

    drafted = sum(r["drafted"] for r in reps)
    accepted = sum(r["accepted"] for r in reps)
    steps = sum(r["steps"] for r in reps)
    lookup_tokens = sum(r["lookup_tokens"] for r in reps)
    doc = {
        "bench": "apr-lookup-code-edit",
        "model": str(path),
        "engine": {k: v for k, v in engine.describe().items() if k in ("kernels", "threads", "dtype", "numerics")},
        "tasks": len(tasks),
        "reps": len(reps),
        "warmup": args.warmup,
        "max_tokens": args.max_tokens,
        "lookup": {"draft_tokens": lookup.draft_tokens, "max_ngram": lookup.max_ngram, "min_ngram": lookup.min_ngram},
        "plain_tok_s": summary("plain_tok_s"),
        "lookup_tok_s": summary("lookup_tok_s"),
        "ratio": summary("ratio"),
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "tokens_per_step": round(lookup_tokens / steps, 4) if steps else 0.0,
        "identical": {"replies": sum(r["identical"] for r in reps), "of": len(reps) * len(tasks)},
        "expected_match": {
            "plain": sum(t["expected_plain"] for t in first_rep.values()),
            "lookup": sum(t["expected_lookup"] for t in first_rep.values()),
            "of": len(tasks),
        },
        # The ratio per task (first repetition): how it spreads over the edits, p10 the slow tail.
        "task_ratio": {
            "median": round(statistics.median(t["ratio"] for t in first_rep.values()), 4),
            "p10": round(percentile([t["ratio"] for t in first_rep.values()], 0.1), 4),
            "min": min(t["ratio"] for t in first_rep.values()),
        },
        "prefill_s_per_rep": round(statistics.median(r["prefill_s"] for r in reps), 3),
        "per_task_first_rep": first_rep,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    print(
        f"lookup {doc['lookup_tok_s']['median']:.2f} tok/s vs plain {doc['plain_tok_s']['median']:.2f} tok/s: "
        f"{doc['ratio']['median']:.2f}x (median of {len(reps)} reps), acceptance {doc['acceptance_rate']:.1%}, "
        f"{doc['tokens_per_step']:.2f} tokens per forward pass, identical {doc['identical']['replies']}/"
        f"{doc['identical']['of']}"
    )
    print(json.dumps(doc, sort_keys=True))
    return 0 if doc["identical"]["replies"] == doc["identical"]["of"] else 1


if __name__ == "__main__":
    sys.exit(main())
