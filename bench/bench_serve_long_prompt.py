"""Inter-token latency of concurrent streams while `apr serve` scores (or prefills) one long prompt.

Method (loopback HTTP against real `apr serve` subprocesses, one model):
  Two servers run side by side, identical but for --prefill-chunk: "before" takes a prompt in one engine
  call (a chunk larger than any prompt: the behaviour before long prefills were chunked), "after" uses
  the given chunk. Repetitions alternate between them, so drifting machine load hits both alike.
  One repetition: STREAMS greedy streamed completions start together; once every stream has produced
  tokens, one request of PROMPT_TOKENS token ids is sent: `echo` + `logprobs` + max_tokens 0 (scoring,
  as lm-eval does) or max_tokens 1 (a plain long prefill). The gaps between consecutive tokens of each
  stream are collected while that request is in flight (its window); the streams are closed after it.
  Warmup: one short run per server first. Reported per server and scenario: p50, p99 and max inter-token
  gap inside the window (all repetitions pooled), the long request's wall time (median), and the
  before/after ratios. The machine is shared and loaded: absolute figures vary, ratios are the result.
The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
from cli_common import add_shared_options  # bench/cli_common.py, beside this script
from serve_proc import ServeProcess  # bench/serve_proc.py, beside this script
from stats import percentile  # bench/stats.py, beside this script

PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived",
    "The history of the Roman Empire can be summarised as follows:",
    "A list of ten fruits, one per line:\n1.",
    "The three laws of thermodynamics are",
    "Dear hiring manager, I am writing to apply for",
    "Recipe for pancakes. Ingredients:",
    "In computer science, a hash table is",
    "The best way to learn a new language is",
]
WHOLE_PROMPT_CHUNK = 1_000_000


@dataclass
class Server:
    name: str
    process: ServeProcess

    @property
    def url(self) -> str:
        return self.process.url

    @classmethod
    def start(cls, name: str, model: str, chunk: int, batch: int) -> Server:
        options = ("--batch-size", str(batch), "--prefill-chunk", str(chunk), "--prefix-cache-mb", "0")
        return cls(name, ServeProcess.start(model, *options))

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Stream:
    arrivals: list[float] = field(default_factory=list)


def run_stream(
    url: str, model: str, prompt: str, seed: int, max_tokens: int, stream: Stream, stop: threading.Event
) -> None:
    # Seeded sampling: a greedy reply of a small model soon ends at EOS, and a stream that ended measures nothing.
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed}
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=1800) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"text"' in line:
                # Recorded before the stop check: the first token after a stall closes the gap that measures it.
                stream.arrivals.append(time.monotonic())
            if stop.is_set():
                return


def one_run(server: Server, model: str, args: argparse.Namespace, long_ids: list[int], scenario: str) -> dict:
    stop = threading.Event()
    streams = [Stream() for _ in range(args.streams)]
    threads = [
        threading.Thread(
            target=run_stream, args=(server.url, model, PROMPTS[i % len(PROMPTS)], i, args.stream_tokens, s, stop)
        )
        for i, s in enumerate(streams)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    while any(len(s.arrivals) < 3 for s in streams):
        if time.monotonic() > deadline:
            raise RuntimeError("the streams did not start")
        time.sleep(0.01)
    body: dict = {"model": model, "prompt": long_ids, "max_tokens": 1}
    if scenario == "score":
        body = {"model": model, "prompt": long_ids, "max_tokens": 0, "echo": True, "logprobs": 1}
    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=1800)
    ended = time.monotonic()
    response.raise_for_status()
    stop.set()
    for thread in threads:
        thread.join(600)
    gaps = []
    for s in streams:
        times = s.arrivals
        # Gaps ending inside the window, and the gap that spans its end (a stream starved until then).
        gaps += [b - a for a, b in zip(times, times[1:]) if b > started and a < ended]
    finished_early = sum(1 for s in streams if s.arrivals and s.arrivals[-1] < ended)
    return {"gaps": gaps, "long_s": ended - started, "streams_done_early": finished_early}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_options(parser, model="smollm2:135m", repeats=2)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--stream-tokens", type=int, default=2000)
    parser.add_argument("--scenarios", default="score,prefill")
    args = parser.parse_args()

    rng = random.Random(0)
    long_ids = [rng.randrange(100, 30_000) for _ in range(args.prompt_tokens)]
    servers = [
        Server.start("before", args.model, WHOLE_PROMPT_CHUNK, args.streams + 1),
        Server.start("after", args.model, args.chunk, args.streams + 1),
    ]
    try:
        model = httpx.get(f"{servers[0].url}/v1/models", timeout=30).json()["data"][0]["id"]
        for server in servers:  # warmup: allocators, first-call costs
            one_run(server, model, argparse.Namespace(**{**vars(args), "stream_tokens": 64}), long_ids[:256], "prefill")
        results: dict = {}
        for scenario in args.scenarios.split(","):
            runs: dict[str, list[dict]] = {server.name: [] for server in servers}
            for repeat in range(args.repeats):
                for server in servers if repeat % 2 == 0 else reversed(servers):
                    runs[server.name].append(one_run(server, model, args, long_ids, scenario))
                    print(
                        f"{scenario} {server.name} repeat {repeat}: {runs[server.name][-1]['long_s']:.1f} s",
                        file=sys.stderr,
                    )
            summary = {}
            for name, done in runs.items():
                gaps = [gap for run in done for gap in run["gaps"]]
                summary[name] = {
                    "itl_p50_ms": round(1000 * percentile(gaps, 0.5), 1),
                    "itl_p99_ms": round(1000 * percentile(gaps, 0.99), 1),
                    "itl_max_ms": round(1000 * max(gaps), 1),
                    "gaps": len(gaps),
                    "long_request_s_median": round(statistics.median(run["long_s"] for run in done), 2),
                    "streams_done_early": sum(run["streams_done_early"] for run in done),
                }
            summary["ratio_p99_before_over_after"] = round(
                summary["before"]["itl_p99_ms"] / summary["after"]["itl_p99_ms"], 2
            )
            summary["ratio_long_request_after_over_before"] = round(
                summary["after"]["long_request_s_median"] / summary["before"]["long_request_s_median"], 2
            )
            results[scenario] = summary
            print(f"{scenario}: {json.dumps(summary)}", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
    doc = {
        "bench": "serve_long_prompt",
        "model": args.model,
        "streams": args.streams,
        "prompt_tokens": args.prompt_tokens,
        "chunk": args.chunk,
        "repeats": args.repeats,
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "note": "shared, loaded machine: absolute figures vary, compare the ratios",
        },
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
