"""What this machine delivers right now, and the deadlines and speed floors derived from it.

A certification's verdict must not depend on how busy the machine is. `apr certify` therefore measures the
machine at the start of the run and again before each phase, in a fresh subprocess like a cell's:

* the thread count: the free cores (``apr.machine.choose_threads``), confirmed by measuring one thread
  against that many (on an oversubscribed box one thread often streams faster: OpenMP threads spin at
  barriers while a neighbour holds the other core);
* ``stream_gb_s``: how fast a decode-like workload streams weights: float32 matrix-vector products over
  64 MB of matrices in 32 pieces (each piece one parallel region, as the projections of a decode step);
* ``startup_s``: how long a fresh Python process takes to import torch (every cell pays it, and more).

Cell deadlines grow from these figures and the model's size (``cell_budget``), and a throughput floor is
judged against the decode ceiling the measured stream allows (``throughput_floor``). The calibration is
recorded in every evidence record's provenance.

Run as ``python -m apr.qa.calibration --threads 1,2``: the measuring child, which prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from apr.machine import ThreadChoice, choose_threads
from apr.qa.evidence import Calibration, utc_now
from apr.qa.procs import child_env, run_process

STREAM_MB = 64  # more than the last-level cache of the machines apr runs on: a read from memory, as decode's
PIECES = 32
PASSES = 7
CALIBRATION_TIMEOUT_S = 600.0  # a machine that cannot import torch in 10 minutes cannot certify anything
# Fewer threads win a near tie: they leave a core to the neighbours and suffer less when the load rises.
TIE = 0.9

# How a cell's deadline grows from the calibration (see cell_budget). Deliberately generous: a deadline only
# has to catch a process that would never finish, and a killed cell is retried with RETRY_GROWTH more time.
STARTUP_MULTIPLE = 4.0  # apr imports torch, tokenizers and its engine, and loads the packed weights' index
LOAD_PASSES = 4.0  # reading the packed weights from the page cache and touching them, in weight-bytes
DECODE_EFFICIENCY = 0.5  # share of the stream figure a decode step reaches (it also computes)
PREFILL_GAIN = 4.0  # a prompt token costs this many times less than a generated one (batched)
TEMPLATE_TOKENS = 64  # chat template and special tokens around the prompt
SAFETY = 3.0
RETRY_GROWTH = 2.0
MAX_CELL_S = 3600.0
# A throughput floor is lowered to this share of the decode ceiling the machine's stream allows, when that
# is lower: a busy machine is no evidence against the model, but an engine reaching a quarter of what the
# machine streams is (a 30x slower path, such as float32 activations, still falls far below it).
FLOOR_SHARE_OF_CEILING = 0.25


def model_bytes(path: Path) -> int:
    """Bytes of an artifact (a file, or a SafeTensors folder's files): what a decode step reads, about."""
    if path.is_dir():
        return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())
    return path.stat().st_size if path.exists() else 0


def prompt_tokens(text: str) -> int:
    """A generous estimate of a prompt's tokens (about three characters a token) with its template."""
    return len(text) // 3 + TEMPLATE_TOKENS


def cell_budget(calibration: Calibration | None, size: int, prompt: int, new_tokens: int, floor_s: float) -> float:
    """A cell's deadline: the playbook's ``floor_s``, or more when this machine needs more.

    Estimate = STARTUP_MULTIPLE × startup + LOAD_PASSES × size / stream + (new + prompt / PREFILL_GAIN) ×
    size / (stream × DECODE_EFFICIENCY); the deadline is SAFETY × that, at most MAX_CELL_S.
    """
    if calibration is None:
        return floor_s
    per_weight_pass = size / (calibration.stream_gb_s * 1e9)
    estimate = (
        STARTUP_MULTIPLE * calibration.startup_s
        + LOAD_PASSES * per_weight_pass
        + (new_tokens + prompt / PREFILL_GAIN) * per_weight_pass / DECODE_EFFICIENCY
    )
    return max(floor_s, min(MAX_CELL_S, SAFETY * estimate))


def attempt_deadline(budget_s: float, attempt: int) -> float:
    """The deadline of a retry: each attempt gets RETRY_GROWTH times the one before."""
    return min(MAX_CELL_S * RETRY_GROWTH, budget_s * RETRY_GROWTH**attempt)


@dataclass(frozen=True)
class Floor:
    """The speed floor a throughput record is judged against, and why that one."""

    applied: float
    written: float
    ceiling_tok_s: float | None
    note: str


def throughput_floor(written: float, calibration: Calibration | None, size: int) -> Floor:
    """The playbook's floor, lowered to FLOOR_SHARE_OF_CEILING of what this machine allows when that is lower."""
    if calibration is None or size <= 0:
        return Floor(written, written, None, "no calibration in this run: the floor as written")
    ceiling = calibration.decode_ceiling_tok_s(size)
    scaled = FLOOR_SHARE_OF_CEILING * ceiling
    if scaled >= written:
        return Floor(
            written, written, ceiling, f"floor as written; this machine allows ~{ceiling:.1f} tok/s ({_of(size)})"
        )
    return Floor(
        scaled,
        written,
        ceiling,
        f"floor {written:g} lowered to {scaled:.2f} tok/s: {FLOOR_SHARE_OF_CEILING:.0%} of the ~{ceiling:.1f} tok/s "
        f"this machine's measured {calibration.stream_gb_s:.1f} GB/s allows for {_of(size)} (same run)",
    )


def _of(size: int) -> str:
    return f"{size / 1e9:.2f} GB per token"


# ---- measuring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """What the measuring child printed."""

    import_s: float
    gb_s: dict[int, float]  # threads -> GB/s


def measure(threads: tuple[int, ...], python: str = sys.executable, timeout_s: float = CALIBRATION_TIMEOUT_S):
    """Run the measuring child; the measurement, or the one line saying why there is none."""
    argv = [python, "-m", "apr.qa.calibration", "--threads", ",".join(str(n) for n in threads)]
    result = run_process(argv, timeout_s=timeout_s, env=child_env())
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return f"calibration child failed: {result.reason()}"
    document = json.loads(lines[-1])
    return Measurement(float(document["import_s"]), {int(n): float(v) for n, v in document["gb_s"].items()})


def measure_here(threads: tuple[int, ...], import_s: float) -> Measurement:
    """The stream figures measured in this process (torch already imported; its thread count is restored)."""
    import torch

    before = torch.get_num_threads()
    try:
        return Measurement(import_s, {n: _stream_gb_s(torch, n) for n in threads})
    finally:
        torch.set_num_threads(before)


def calibrate(
    threads: int | None = None, python: str = sys.executable, *, startup_s: float | None = None
) -> tuple[Calibration | None, str]:
    """Measure the machine now: (the calibration, one line saying what was chosen) or (None, why not).

    ``threads`` forces the thread count (``--threads``); otherwise the free cores are measured against one.
    The first calibration of a run measures in a fresh child (its Python start is part of the figure); with
    ``startup_s`` known, a later one measures the stream in this process, which costs a second, not a start.
    """
    choice: ThreadChoice = choose_threads()
    candidates = (threads,) if threads else tuple(sorted({1, choice.threads}))
    measured = measure(candidates, python) if startup_s is None else measure_here(candidates, startup_s)
    if isinstance(measured, str):
        return None, measured
    best = min(candidates)
    for count in candidates:
        if measured.gb_s[count] * TIE > measured.gb_s[best]:
            best = count
    if threads:
        reason = f"--threads {threads}"
    elif len(candidates) == 1:
        reason = choice.reason
    else:
        figures = ", ".join(f"{n} thread(s) {measured.gb_s[n]:.1f} GB/s" for n in candidates)
        reason = f"{choice.reason}; measured {figures}"
    calibration = Calibration(
        threads=best,
        threads_reason=reason,
        stream_gb_s=round(measured.gb_s[best], 3),
        startup_s=round(measured.import_s, 3),
        load1=choice.load1,
        measured_at=utc_now(),
    )
    return calibration, f"machine: {calibration.line()} ({reason})"


def _stream_gb_s(torch, threads: int) -> float:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    cols = 512
    rows = STREAM_MB * 2**20 // (4 * cols * PIECES)
    pieces = [torch.rand(rows, cols, generator=generator) for _ in range(PIECES)]
    vector = torch.rand(cols, generator=generator)
    times = []
    for _ in range(PASSES + 1):  # the first pass warms the threads and pages in the matrices
        started = time.perf_counter()
        for piece in pieces:
            torch.mv(piece, vector)
        times.append(time.perf_counter() - started)
    return STREAM_MB * 2**20 / statistics.median(times[1:]) / 1e9


def main(argv: list[str] | None = None) -> int:
    """The measuring child: import torch (timed), then the stream figure per thread count; one JSON line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m apr.qa.calibration")
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import torch

    import_s = time.perf_counter() - started
    counts = [int(n) for n in args.threads.split(",") if n.strip()]
    gb_s = {n: _stream_gb_s(torch, n) for n in counts}
    print(json.dumps({"import_s": round(import_s, 3), "gb_s": {str(n): round(v, 3) for n, v in gb_s.items()}}))
    return 0


__all__ = ["Floor", "attempt_deadline", "calibrate", "cell_budget", "model_bytes", "throughput_floor"]

if __name__ == "__main__":
    sys.exit(main())
