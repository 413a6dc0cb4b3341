"""Benchmark of `apr pull` on a cached model: the cost of a second pull, which re-hashes the file.

Method: the model is pulled once (a real download if the cache lacks it; not timed). Then
WARMUP untimed pulls, then at least REPEATS timed pulls and at least MIN_SECONDS of them, each
`Hub.pull(ref, progress=False)` in this process: read the manifest, stat, SHA-256 of the whole
file. A cold first pull depends on the network and is not measured here (see docs/hub.md).
Reported: median and p90 seconds per pull and the hashing throughput in GB/s; the environment;
the last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from cli_common import add_shared_options  # bench/cli_common.py, beside this script

from apr.hub import Hub


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, warmup=1, repeats=5, min_seconds=5.0)
    parser.add_argument("--ref", default="qwen2.5-coder:1.5b")
    args = parser.parse_args()

    hub = Hub.from_env()
    model = hub.pull(args.ref, progress=True)
    for _ in range(args.warmup):
        hub.pull(args.ref, progress=False)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < args.repeats or time.perf_counter() - started < args.min_seconds:
        begin = time.perf_counter()
        again = hub.pull(args.ref, progress=False)
        timings.append(time.perf_counter() - begin)
        if again.sha256 != model.sha256:
            raise SystemExit(f"sha256 changed between pulls: {model.sha256} -> {again.sha256}")
    median = statistics.median(timings)
    result = {
        "benchmark": "hub_second_pull",
        "ref": args.ref,
        "size_bytes": model.size_bytes,
        "repeats": len(timings),
        "median_s": round(median, 4),
        "p90_s": round(_p90(timings), 4),
        "median_gb_per_s": round(model.size_bytes / median / 1e9, 3),
        "env": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
    }
    print(f"second pull of {args.ref}: median {median:.3f} s, p90 {result['p90_s']:.3f} s over {len(timings)} runs")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
