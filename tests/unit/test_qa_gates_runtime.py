"""Throughput, GPU speedup and determinism from recorded cells, and the per-gate table of `apr qa`."""

from __future__ import annotations

from apr.qa.axes import Backend, Format, Modality
from apr.qa.evidence import Outcome
from apr.qa.gates import runtime
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import DeterminismGate, GpuSpeedupGate
from apr.qa.infra import InfraCause
from apr.qa.matrix import Cell
from apr.qa.recording import Check, Recorder, Timer, stamp_all
from apr.qa.reports.gate_table import gate_rows
from apr.qa.scenarios import Pool, Prompt

SHA = "cd" * 32
PROMPT = Prompt(id="p1", pool=Pool.CUSTOM, text="Hi", max_tokens=8)


def reply(
    fmt: Format,
    backend: Backend,
    modality: Modality,
    tok_s: float,
    text: str = "hello there",
    outcome: Outcome = Outcome.CORROBORATED,
) -> Check:
    return Check(
        GateId.G2_INFERENCE,
        "reply",
        outcome,
        "replied",
        n_compared=1,
        format=fmt,
        backend=backend,
        modality=modality,
        prompt_id="p1",
        prompt="Hi",
        seed=1,
        output=text,
        metrics={"decode_tok_s": tok_s},
    )


def records(*checks: Check):
    recorder = Recorder(model="m", sha256={Format.GGUF: SHA, Format.APR: SHA})
    return stamp_all(recorder, list(checks), Timer())


def bench(ending_code: int | None, speed: float | None, timed_out: bool = False):
    from apr.qa.procs import ProcessResult

    process = ProcessResult(
        argv=("apr", "bench"),
        returncode=ending_code,
        stdout="",
        stderr="boom" if ending_code else "",
        duration_s=1.0,
        timed_out=timed_out,
    )
    result = (
        None
        if speed is None
        else {
            "decode_tok_s": {"median": speed, "p90": speed * 0.9},
            "reps": 3,
            "prefill_tok_s": {"median": 100.0},
            "load_s": 0.5,
        }
    )
    return process, result


def test_throughput_compares_the_bench_median_with_the_backend_minimum():
    fast = runtime.throughput_check(Format.GGUF, Backend.CPU, 5.0, *bench(0, 20.0))
    slow = runtime.throughput_check(Format.APR, Backend.CPU, 5.0, *bench(0, 2.0))
    assert (fast.outcome, fast.measured, fast.n_compared) == (Outcome.CORROBORATED, 20.0, 3)
    assert (slow.outcome, slow.measured) == (Outcome.FALSIFIED, 2.0)


def test_throughput_failures_keep_their_kind_and_skips_their_reason():
    assert runtime.throughput_check(Format.GGUF, Backend.CPU, 5.0, *bench(-11, None)).outcome is Outcome.CRASHED
    stopped = runtime.throughput_check(Format.GGUF, Backend.CPU, 5.0, *bench(None, None, True))
    assert stopped.outcome is Outcome.INCONCLUSIVE and stopped.cause is InfraCause.DEADLINE
    assert runtime.throughput_check(Format.GGUF, Backend.CPU, 5.0, *bench(0, None)).outcome is Outcome.FALSIFIED
    gpu = runtime.throughput_check(Format.GGUF, Backend.GPU, 50.0, None, None, "no CUDA device on this host")
    assert gpu.outcome is Outcome.SKIPPED and "CUDA" in gpu.reason


def test_gpu_speedup_is_measured_only_with_cuda_and_both_speeds():
    evidence = records(
        runtime.throughput_check(Format.GGUF, Backend.CPU, 1.0, *bench(0, 10.0)),
        runtime.throughput_check(Format.GGUF, Backend.GPU, 1.0, *bench(0, 15.0)),
    )
    assert runtime.gpu_speedup_checks(evidence, GpuSpeedupGate(), False)[0].outcome is Outcome.SKIPPED
    slow = runtime.gpu_speedup_checks(evidence, GpuSpeedupGate(min_speedup=2.0), True)[0]
    assert slow.outcome is Outcome.FALSIFIED and slow.measured == 1.5
    only_cpu = records(runtime.throughput_check(Format.GGUF, Backend.CPU, 1.0, *bench(0, 10.0)))
    assert runtime.gpu_speedup_checks(only_cpu, GpuSpeedupGate(), True)[0].outcome is Outcome.SKIPPED


def test_determinism_compares_reruns_with_the_recorded_reply():
    cell = Cell(format=Format.GGUF, backend=Backend.CPU, modality=Modality.RUN, prompt=PROMPT, seed=1)
    first = records(reply(Format.GGUF, Backend.CPU, Modality.RUN, 10.0, text="the same words"))
    targets = runtime.determinism_targets(first, [cell], DeterminismGate(modalities=(Modality.RUN,)), Format.GGUF)
    assert [c for c, _ in targets] == [cell]
    same = runtime.determinism_check(cell, targets[0][1], ["the same words"])
    other = runtime.determinism_check(cell, targets[0][1], ["other words"])
    gone = runtime.determinism_check(cell, targets[0][1], [None])
    assert (same.outcome, other.outcome, gone.outcome) == (Outcome.CORROBORATED, Outcome.FALSIFIED, Outcome.FALSIFIED)


def test_gate_rows_summarize_status_and_worst_measurement():
    evidence = records(
        Check(
            GateId.FORMAT_PARITY, "apr~gguf", Outcome.CORROBORATED, "ok", 3, measured=0.95, threshold=0.9, unit="top-1"
        ),
        Check(GateId.FORMAT_PARITY, "st~gguf", Outcome.FALSIFIED, "bad", 3, measured=0.5, threshold=0.9, unit="top-1"),
        Check(GateId.GPU_SPEEDUP, "gpu/cpu", Outcome.SKIPPED, "no CUDA", threshold=2.0, unit="x"),
    )
    rows = {row.gate: row for row in gate_rows(evidence)}
    assert rows["FORMAT-PARITY"].status == "failed" and rows["FORMAT-PARITY"].measured == "0.5 top-1"
    assert rows["FORMAT-PARITY"].reason.startswith("st~gguf")
    assert rows["GPU-SPEEDUP"].status == "skipped" and rows["GPU-SPEEDUP"].threshold == "2 x"
