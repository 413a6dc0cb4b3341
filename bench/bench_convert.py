"""Benchmark `apr convert` on a real checkpoint: GGUF->APR throughput, GGUF->SafeTensors(bf16) time, peak RSS.

Method: every repetition runs in a fresh subprocess (so peak RSS is per conversion and the page cache
is the only thing shared), after `--warmup` unmeasured runs; we report median and p90 of wall time,
CPU time and peak RSS (ru_maxrss of the child, which includes mmap-ed source pages it touched).
The JSON conversion report (which re-reads and compares every tensor) is not part of the timed
conversion. The environment (cores, load average) is printed because the machine is shared.
Last stdout line: one JSON document.

    .venv/bin/python bench/bench_convert.py [--model qwen2.5-coder:1.5b] [--repeat 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_common import add_shared_options  # bench/cli_common.py, beside this script

CHILD = r"""
import json, resource, sys, time
from apr.formats.convert import convert
src, to, out, dtype = sys.argv[1:5]
wall, cpu = time.perf_counter(), time.process_time()
report = convert(src, to, out, dtype=None if dtype == "default" else dtype, report=False)
print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "output_bytes": report.output_bytes, "source_bytes": report.source_bytes}))
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_case(src: Path, to: str, dtype: str, workdir: Path, warmup: int, repeat: int) -> dict:
    runs = []
    for index in range(warmup + repeat):
        out = workdir / (f"out-{index}.{to}" if to != "safetensors" else f"out-{index}-hf")
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), to, str(out), dtype], check=True, capture_output=True, text=True
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(out) if out.is_dir() else out.unlink()
        if index >= warmup:
            runs.append(result)
    walls = [r["wall_s"] for r in runs]
    summary = {
        "case": f"gguf->{to}" + (f" ({dtype})" if dtype != "default" else ""),
        "repeat": repeat,
        "warmup": warmup,
        "wall_s_median": round(statistics.median(walls), 2),
        "wall_s_p90": round(_percentile(walls, 0.9), 2),
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 2),
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in runs)),
        "peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in runs)),
        "output_mb": round(runs[0]["output_bytes"] / 1e6, 1),
        "source_mb": round(runs[0]["source_bytes"] / 1e6, 1),
    }
    summary["output_mb_per_s_median"] = round(summary["output_mb"] / summary["wall_s_median"], 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(parser, model="qwen2.5-coder:1.5b", model_help="a ref or a GGUF path", warmup=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="apr,safetensors:bf16", help="comma list of TARGET[:DTYPE]")
    args = parser.parse_args()
    from apr.formats import load_model
    from apr.hub import resolve_model_arg

    src = Path(args.model) if Path(args.model).exists() else resolve_model_arg(args.model, progress=False)
    model = load_model(src)
    largest = max(model.tensors.values(), key=lambda t: t.info.nbytes)
    biggest_f32 = max(4 * int(__import__("numpy").prod(t.info.shape)) for t in model.tensors.values())
    results = []
    with tempfile.TemporaryDirectory(prefix="apr-bench-convert-", dir=os.environ.get("APR_BENCH_TMP")) as tmp:
        for case in args.cases.split(","):
            to, _, dtype = case.partition(":")
            result = run_case(src, to, dtype or "default", Path(tmp), args.warmup, args.repeat)
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    document = {
        "benchmark": "convert",
        "model": str(src),
        "results": results,
        "largest_tensor": {"name": largest.info.name, "stored_mb": round(largest.info.nbytes / 1e6, 1)},
        "largest_tensor_f32_mb": round(biggest_f32 / 1e6, 1),
        "environment": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    print(json.dumps(document))


if __name__ == "__main__":
    main()
