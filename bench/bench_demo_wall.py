"""The demo's certification on this machine as found and beside extra busy neighbours: wall time and verdict.

    .venv/bin/python bench/bench_demo_wall.py --playbook playbooks/models/qwen2.5-coder-1.5b-mvp.playbook.yaml \\
        --loaders 0,3 --json-out bench/results/demo-wall.json

Method. For each ``--loaders`` count K, K neighbour processes are started first, each a loop of PyTorch matrix
products and large sums on ``--loader-threads`` threads (issue 21: "three other 2-thread PyTorch jobs") at the
certification's niceness (they compete with it, and leave a shared machine's other users alone), and
left ``--settle`` seconds to raise the load average; then `apr certify PLAYBOOK -o DIR --quiet` runs (nice
``--nice``) with the conversions and packed weights already cached (a first run, or `make demo`, is the
warmup), and the neighbours are stopped. One repetition per condition: a run of the 1.5B demo lasts
minutes to tens of minutes, and the figure of interest is whether the verdict holds, not a tight median.
Recorded per condition: wall time, status, MQS, grade, inconclusive lines, the load average before and
after, the calibrations found in the evidence (threads, GB/s, start), and each THROUGHPUT record with the
floor it was judged against. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOADER = """
import torch
torch.set_num_threads({threads})
a = torch.randn(768, 768)
big = torch.randn(16_000_000)
while True:
    for _ in range(8):
        a = torch.tanh(a @ a)
    float(big.sum())
"""


def start_loaders(count: int, threads: int, nice: int) -> list[subprocess.Popen]:
    """Neighbours at the certification's niceness: they compete with it, not with the machine's other users."""
    from apr.qa.procs import popen_isolated

    argv = ["nice", "-n", str(nice), sys.executable, "-c", LOADER.format(threads=threads)]
    return [popen_isolated(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    from apr.qa.procs import kill_group

    for proc in procs:
        kill_group(proc)
        proc.wait()


def summarize(folder: Path) -> dict:
    from apr.qa.evidence import read_evidence
    from apr.qa.gates.catalog import GateId

    mqs = json.loads((folder / "mqs.json").read_text())
    records = read_evidence(folder / "evidence.jsonl").records
    calibrations = {r.provenance.calibration for r in records if r.provenance.calibration is not None}
    return {
        "status": mqs["status"],
        "mqs": mqs["score"],
        "grade": mqs["grade"],
        "outcomes": {k: v for k, v in mqs["outcomes"].items() if v},
        "inconclusive": mqs.get("inconclusive", []),
        "blockers": mqs["blockers"],
        "calibrations": sorted(
            (
                {"threads": c.threads, "stream_gb_s": c.stream_gb_s, "startup_s": c.startup_s, "load1": c.load1}
                for c in calibrations
            ),
            key=lambda c: c["load1"] or 0.0,
        ),
        "throughput": [
            {
                "check": r.check,
                "outcome": str(r.outcome),
                "tok_s": r.measured,
                "floor_applied": r.threshold,
                "floor_written": r.metrics.get("floor_written_tok_s"),
            }
            for r in records
            if r.gate is GateId.THROUGHPUT and r.outcome.value != "skipped"
        ],
    }


def run_condition(args: argparse.Namespace, loaders: int) -> dict:
    out = args.out_root / f"loaders-{loaders}"
    neighbours = start_loaders(loaders, args.loader_threads, args.nice)
    try:
        if loaders:
            time.sleep(args.settle)
        load_before = os.getloadavg()
        started = time.monotonic()
        done = subprocess.run(
            [
                "nice",
                "-n",
                str(args.nice),
                sys.executable,
                "-m",
                "apr.cli.main",
                "certify",
                str(args.playbook),
                "-o",
                str(out),
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        load_after = os.getloadavg()
    finally:
        stop(neighbours)
    print(f"loaders={loaders}: {done.stdout.strip().splitlines()[0] if done.stdout.strip() else done.stderr[-300:]}")
    print(f"  wall {wall:.0f}s, load {load_before[0]:.1f} -> {load_after[0]:.1f}", file=sys.stderr)
    result = {
        "loaders": loaders,
        "loader_threads": args.loader_threads,
        "exit_code": done.returncode,
        "wall_s": round(wall, 1),
        "load1_before": round(load_before[0], 2),
        "load1_after": round(load_after[0], 2),
        "console": done.stdout.strip().splitlines()[:12],
    }
    if (out / "mqs.json").is_file():
        result.update(summarize(out))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--playbook", type=Path, default=ROOT / "playbooks/models/qwen2.5-coder-1.5b-mvp.playbook.yaml")
    parser.add_argument("--loaders", default="0,3", help="neighbour counts, one condition each")
    parser.add_argument("--loader-threads", type=int, default=2)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds the neighbours run before certify")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the certification (a shared machine)")
    parser.add_argument("--out-root", type=Path, default=ROOT / ".apr-work" / "bench-demo")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    if not args.playbook.is_file():
        print(f"error: {args.playbook}: playbook not found", file=sys.stderr)
        return 2
    results = [run_condition(args, int(count)) for count in args.loaders.split(",")]
    document = {
        "bench": "demo_wall",
        "playbook": str(args.playbook),
        "environment": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "nice": args.nice,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "results": results,
    }
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
