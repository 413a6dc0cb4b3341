"""Load benchmark of `apr serve`: batching speed-up, /health latency under load, lost/garbled replies, latency.

Method (all over loopback with the official `openai` client against a real `apr serve` subprocess):
  1. warmup: WARMUP greedy requests (the first one pays compile and allocator costs).
  2. short completion: REPEATS + 2 greedy 10-token completions, wall time per request.
  3. single stream: REPEATS streamed greedy completions of MAX_TOKENS, one at a time (logprobs=0, so
     one chunk per token). decode tok/s = (tokens - 1) / (last token time - first token time);
     end-to-end tok/s = tokens / (last token time - request start).
  4. concurrent streams: CLIENTS streams started together, REPEATS times, each run right after a
     single-stream run of step 3 (alternating, so drifting machine load hits both alike).
     Aggregate decode tok/s = tokens of all streams inside the window where every stream is
     decoding (from the last first token to the first last token) / window length;
     end-to-end = all tokens / wall time.
     Per stream (what each client sees): its decode tok/s, the gaps between its tokens and its time to
     first token, over every stream of every repeat.
     Meanwhile a poller times GET /health every 20 ms.
  5. load: first every prompt once, alone, greedy (plain completion and chat) -> the reference
     texts; then CLIENTS threads each send REQUESTS greedy requests back to back (alternating plain
     and streamed, completions and chat). Every reply must arrive, finish, and equal its reference
     exactly (greedy output is batch-invariant), else it counts as lost or garbled.
Reported: median and p90 of each figure; the last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
from cli_common import add_shared_options  # bench/cli_common.py, beside this script
from serve_proc import ServeProcess  # bench/serve_proc.py, beside this script
from stats import percentile  # bench/stats.py, beside this script

PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived",
    "The history of the Roman Empire can be summarised as follows:",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "A list of ten fruits, one per line:\n1.",
    "The three laws of thermodynamics are",
    "Dear hiring manager, I am writing to apply for",
    "Recipe for pancakes. Ingredients:",
    "In computer science, a hash table is",
]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "p90": round(percentile(values, 0.9), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


@dataclass
class StreamTiming:
    """One streamed completion; `token_times` has one entry per generated token."""

    text: str
    start: float
    token_times: list[float]

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def end(self) -> float:
        return self.token_times[-1] if self.token_times else self.start


def stream_completion(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> StreamTiming:
    # logprobs=0 makes the server send one chunk per token, even while text is held back.
    start = time.perf_counter()
    times, parts = [], []
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True, logprobs=0
    ):
        if chunk.choices:
            times.append(time.perf_counter())
            parts.append(chunk.choices[0].text)
    return StreamTiming("".join(parts), start, times)


def single_stream(client, model, max_tokens: int, repeats: int) -> tuple[list[float], list[float]]:
    """Decode tok/s (after the first token) and end-to-end tok/s (prefill included) of lone streams."""
    decode, end_to_end = [], []
    for i in range(repeats):
        timing = stream_completion(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
        if timing.tokens > 1:
            decode.append((timing.tokens - 1) / (timing.end - timing.token_times[0]))
            end_to_end.append(timing.tokens / (timing.end - timing.start))
    return decode, end_to_end


def concurrent_streams(url, model, clients: int, max_tokens: int, repeats: int):
    """Aggregate decode tok/s while all streams decode together, end-to-end tok/s, /health latencies.

    The decode window runs from the moment the last stream got its first token (every sequence is
    prefilled) to the moment the first stream ended; only tokens inside it are counted.
    """
    decode: list[float] = []
    end_to_end: list[float] = []
    health_ms: list[float] = []
    per_stream: dict[str, list[float]] = {"decode_tok_s": [], "token_gap_ms": [], "ttft_s": []}
    for _ in range(repeats):
        stop = threading.Event()
        poller = threading.Thread(target=poll_health, args=(url, stop, health_ms))
        poller.start()
        with ThreadPoolExecutor(clients) as pool:
            timings = list(
                pool.map(
                    lambda i: stream_completion(make_client(url), model, PROMPTS[i % len(PROMPTS)], max_tokens),
                    range(clients),
                )
            )
        stop.set()
        poller.join()
        window_start = max(t.token_times[0] for t in timings)
        window_end = min(t.end for t in timings)
        inside = sum(1 for t in timings for at in t.token_times if window_start < at <= window_end)
        if window_end - window_start > 0 and inside > 0:
            decode.append(inside / (window_end - window_start))
        else:
            progress("no window where every stream was decoding (a stream ended early); raise --max-tokens")
        wall = max(t.end for t in timings) - min(t.start for t in timings)
        end_to_end.append(sum(t.tokens for t in timings) / wall)
        # What each client sees: its own decode rate, the gaps between its tokens, its time to first token.
        for t in timings:
            if t.tokens > 1:
                per_stream["decode_tok_s"].append((t.tokens - 1) / (t.end - t.token_times[0]))
                gaps = [1000 * (b - a) for a, b in zip(t.token_times, t.token_times[1:])]
                per_stream["token_gap_ms"] += gaps
            per_stream["ttft_s"].append(t.token_times[0] - t.start if t.token_times else 0.0)
    return decode, end_to_end, health_ms, per_stream


def poll_health(url: str, stop: threading.Event, latencies_ms: list[float]) -> None:
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            start = time.perf_counter()
            response = http.get(f"{url}/health")
            latencies_ms.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
            time.sleep(0.02)


def progress(message: str) -> None:
    print(f"[bench_serve_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)


def references(client, model, max_tokens: int) -> dict[tuple[str, str], str]:
    expected = {}
    for prompt in PROMPTS:
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0)
        expected[("completion", prompt)] = reply.choices[0].text
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0
        )
        expected[("chat", prompt)] = chat.choices[0].message.content
    return expected


def one_request(client, model, kind: str, prompt: str, stream: bool, max_tokens: int) -> tuple[str, str | None]:
    """(text, finish_reason) of one greedy request, plain or streamed."""
    if kind == "completion":
        if not stream:
            choice = client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0
            ).choices[0]
            return choice.text, choice.finish_reason
        parts, finish = [], None
        for chunk in client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True
        ):
            parts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        choice = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0
        ).choices[0]
        return choice.message.content, choice.finish_reason
    parts, finish = [], None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


def load_test(url, model, expected, clients: int, requests: int, max_tokens: int) -> dict:
    latencies, outcomes = [], []
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        client = make_client(url)
        for i in range(requests):
            kind = ("completion", "chat")[(worker_id + i) % 2]
            prompt = PROMPTS[(worker_id * requests + i) % len(PROMPTS)]
            stream = (worker_id + i // 2) % 2 == 1
            start = time.perf_counter()
            try:
                text, finish = one_request(client, model, kind, prompt, stream, max_tokens)
                outcome = "ok" if finish in ("stop", "length") and text == expected[(kind, prompt)] else "garbled"
            except Exception as exc:  # a lost reply is exactly what this test counts
                outcome = f"lost: {type(exc).__name__}"
            with lock:
                latencies.append(time.perf_counter() - start)
                outcomes.append(outcome)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(outcomes),
        "ok": outcomes.count("ok"),
        "garbled": outcomes.count("garbled"),
        "lost": sum(o.startswith("lost") for o in outcomes),
        "lost_reasons": sorted({o for o in outcomes if o.startswith("lost")}),
        "requests_per_s": round(len(outcomes) / wall, 3),
        "latency_s": summary(latencies),
    }


def short_completion(client, model, repeats: int) -> list[float]:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        reply = client.completions.create(model=model, prompt="What is 2+2?", max_tokens=10, temperature=0.0)
        walls.append(time.perf_counter() - start)
        assert reply.choices[0].finish_reason in ("stop", "length")
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_options(
        parser,
        model="qwen2.5-coder:1.5b",
        threads=None,
        threads_help="the server's CPU threads (OMP_NUM_THREADS; default: apr serve's own choice)",
        repeats=3,
        warmup=2,
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests", type=int, default=3, help="requests per client in the load test")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process inherits it

    progress(f"starting apr serve {args.model}")
    server = ServeProcess.start(args.model, "--batch-size", str(args.batch_size), "--device", args.device)
    url = server.url
    progress(f"ready at {url}; warmup")
    try:
        client = make_client(url)
        model = client.models.list().data[0].id
        for i in range(args.warmup):
            client.completions.create(model=model, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=8, temperature=0.0)
        health = httpx.get(f"{url}/health").json()
        progress("short completions")
        short = short_completion(client, model, args.repeats + 2)
        progress(f"short completion median {statistics.median(short):.2f} s; single streams")
        # Single and concurrent runs alternate, so drifting machine load hits both alike.
        single, single_e2e, multi, multi_e2e, health_ms = [], [], [], [], []
        streams: dict[str, list[float]] = {"decode_tok_s": [], "token_gap_ms": [], "ttft_s": []}
        for repeat in range(args.repeats):
            decode, end_to_end = single_stream(client, model, args.max_tokens, 1)
            single += decode
            single_e2e += end_to_end
            decode, end_to_end, latencies, per_stream = concurrent_streams(url, model, args.clients, args.max_tokens, 1)
            multi += decode
            multi_e2e += end_to_end
            health_ms += latencies
            for key, values in per_stream.items():
                streams[key] += values
            progress(f"repeat {repeat + 1}: single {single[-1:]} tok/s, {args.clients} streams {multi[-1:]} tok/s")
        progress("references for the load test")
        expected = references(client, model, args.max_tokens // 2)
        progress("load test")
        load = load_test(url, model, expected, args.clients, args.requests, args.max_tokens // 2)
    finally:
        server.stop()
    speedup = statistics.median(multi) / statistics.median(single)
    speedup_e2e = statistics.median(multi_e2e) / statistics.median(single_e2e)
    report = {
        "bench": "serve_load",
        "model": args.model,
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "device": health["device"],
            "format": health["format"],
            "batch_size": args.batch_size,
            "clients": args.clients,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": health.get("threads", args.threads),
            "kernels": health.get("kernels"),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "single_stream_decode_tok_s": summary(single),
        "concurrent_decode_tok_s": summary(multi),
        "batching_speedup": round(speedup, 3),
        "single_stream_end_to_end_tok_s": summary(single_e2e),
        "concurrent_end_to_end_tok_s": summary(multi_e2e),
        "batching_speedup_end_to_end": round(speedup_e2e, 3),
        # Each concurrent stream's own figures, over every stream of every repeat (latency a client sees).
        "concurrent_per_stream": {key: summary(values) for key, values in streams.items() if values},
        "health_ms_while_generating": summary(health_ms),
        "short_completion_10_tokens_s": summary(short),
        "load": load,
        "criteria": {
            "speedup_ge_3x": speedup >= 3.0,
            "health_p90_lt_50ms": percentile(health_ms, 0.9) < 50.0,
            "short_completion_median_lt_2s": statistics.median(short) < 2.0,
            "no_lost_or_garbled": load["lost"] == 0 and load["garbled"] == 0,
        },
    }
    gaps = streams["token_gap_ms"] or [0.0]
    print(
        f"single stream {statistics.median(single):.2f} tok/s; {args.clients} streams "
        f"{statistics.median(multi):.2f} tok/s (x{speedup:.2f}), each stream's token gap median "
        f"{statistics.median(gaps):.0f} ms, p90 {percentile(gaps, 0.9):.0f} ms; /health p90 {percentile(health_ms, 0.9):.1f} ms; "
        f"10-token completion {statistics.median(short):.2f} s; load {load['ok']}/{load['requests']} ok"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
