"""Multi-turn chat time to first token through `apr serve`, with and without the serve prefix cache.

Method (loopback, official `openai` client, two real `apr serve` subprocesses on the same model, run one
after the other so they never compete for the CPU: `--prefix-cache-mb 0` and the default):
  1. warmup: one short chat request per server.
  2. CONVERSATIONS conversations of TURNS turns each; every turn sends the whole conversation so far
     (system prompt, earlier user turns and the assistant's replies) plus a new user message, streamed
     with `include_usage`, greedy, MAX_TOKENS tokens. TTFT = time from sending the request to the first
     chunk carrying content (the role delta is sent before any compute, so it does not count).
  3. Each conversation starts with a different opening line, so a conversation can only reuse its own
     earlier turns. The replies of both servers must be equal (the cache changes no output); a
     difference is reported as a failure, not averaged away.
Reported per turn index and over turns >= 2: median and p90 TTFT for both, the speed-up, and the mean
`usage.prompt_tokens_details.cached_tokens` / `prompt_tokens`. The last stdout line is one JSON document.

    python bench/bench_serve_prefix.py [--model qwen2.5-coder:1.5b] [--conversations 3] [--turns 4] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import openai
from cli_common import add_shared_options  # bench/cli_common.py, beside this script
from serve_proc import ServeProcess  # bench/serve_proc.py, beside this script
from stats import percentile  # bench/stats.py, beside this script

SYSTEM = "You are a careful senior Python engineer. Answer briefly, with code when useful."
OPENINGS = [
    "I am writing a CLI tool that parses log files.",
    "I maintain a small web scraper.",
    "I am building a tiny key-value store.",
    "I am teaching a class about recursion.",
]
FOLLOW_UPS = [
    "Show me a function that reads the input line by line.",
    "How should I handle errors there?",
    "Add type hints to it.",
    "Write one unit test for it.",
    "How would you make it faster?",
]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 4),
        "p90_s": round(percentile(values, 0.9), 4),
        "n": len(values),
    }


def turn(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int) -> tuple[float, str, int, int]:
    """(TTFT seconds, reply text, prompt tokens, cached tokens) of one streamed greedy turn."""
    start = time.perf_counter()
    first = None
    text = ""
    usage = None
    stream = client.chat.completions.create(  # type: ignore[call-overload]
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content or choice.finish_reason:
                first = first or time.perf_counter()
                text += choice.delta.content or ""
    if usage is None:
        raise SystemExit("apr serve sent no usage chunk although include_usage was asked")
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return (first or time.perf_counter()) - start, text, usage.prompt_tokens, cached


def run_conversations(url: str, model: str, conversations: int, turns: int, max_tokens: int) -> list[list[dict]]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    turn(client, model, [{"role": "user", "content": "Hello."}], 4)  # warmup
    results = []
    for number in range(conversations):
        messages = [{"role": "system", "content": SYSTEM}]
        rows = []
        for index in range(turns):
            user = (OPENINGS[number % len(OPENINGS)] + " " if index == 0 else "") + FOLLOW_UPS[index % len(FOLLOW_UPS)]
            messages.append({"role": "user", "content": user})
            ttft, text, prompt_tokens, cached = turn(client, model, messages, max_tokens)
            messages.append({"role": "assistant", "content": text})
            rows.append(
                {
                    "turn": index + 1,
                    "ttft_s": ttft,
                    "prompt_tokens": prompt_tokens,
                    "cached_tokens": cached,
                    "text": text,
                }
            )
            print(
                f"  conversation {number + 1} turn {index + 1}: ttft {ttft:.3f}s prompt {prompt_tokens} "
                f"cached {cached}",
                file=sys.stderr,
                flush=True,
            )
        results.append(rows)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, model="qwen2.5-coder:1.5b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    runs = {}
    for label, prefix_mb in (("without_cache", 0), ("with_cache", 1024)):
        print(f"{label}: starting apr serve", file=sys.stderr, flush=True)
        server = ServeProcess.start(args.model, "--device", args.device, "--prefix-cache-mb", str(prefix_mb))
        url = server.url
        try:
            runs[label] = run_conversations(url, args.model, args.conversations, args.turns, args.max_tokens)
        finally:
            server.stop()
    mismatches = sum(
        a["text"] != b["text"]
        for conv_a, conv_b in zip(runs["without_cache"], runs["with_cache"])
        for a, b in zip(conv_a, conv_b)
    )
    report: dict = {
        "model": args.model,
        "conversations": args.conversations,
        "turns": args.turns,
        "max_tokens": args.max_tokens,
        "replies_differ": mismatches,
        "per_turn": {},
    }
    for index in range(args.turns):
        entry = {}
        for label, rows in runs.items():
            entry[label] = summary([conv[index]["ttft_s"] for conv in rows])
        entry["prompt_tokens"] = statistics.mean(conv[index]["prompt_tokens"] for conv in runs["with_cache"])
        entry["cached_tokens"] = statistics.mean(conv[index]["cached_tokens"] for conv in runs["with_cache"])
        report["per_turn"][str(index + 1)] = entry
    later = {label: summary([row["ttft_s"] for conv in rows for row in conv[1:]]) for label, rows in runs.items()}
    report["turns_2_on"] = {
        **later,
        "speedup_median": round(later["without_cache"]["median_s"] / later["with_cache"]["median_s"], 2),
    }
    report["environment"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
