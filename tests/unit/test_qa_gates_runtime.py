"""Throughput, GPU speedup and determinism from recorded cells, and the per-gate table of `apr qa`."""

from __future__ import annotations

from apr.qa.axes import Backend, Format, Modality
from apr.qa.evidence import Outcome
from apr.qa.gates import runtime
from apr.qa.gate_table import gate_rows
from apr.qa.gates_catalog import GateId
from apr.qa.matrix import MatrixCell
from apr.qa.playbook_gates import DeterminismGate, GpuSpeedupGate, ThroughputGate
from apr.qa.recording import Check, Recorder, Timer, stamp_all
from apr.qa.scenarios import Pool, Prompt

SHA = "cd" * 32
PROMPT = Prompt(id="p1", pool=Pool.CUSTOM, text="Hi", max_tokens=8)


def reply(fmt: Format, backend: Backend, modality: Modality, tok_s: float, text: str = "hello there",
          outcome: Outcome = Outcome.CORROBORATED) -> Check:
    return Check(GateId.G2_INFERENCE, "reply", outcome, "replied", n_compared=1, format=fmt, backend=backend,
                 modality=modality, prompt_id="p1", prompt="Hi", seed=1, output=text,
                 metrics={"decode_tok_s": tok_s})


def records(*checks: Check):
    recorder = Recorder(model="m", sha256={Format.GGUF: SHA, Format.APR: SHA})
    return stamp_all(recorder, list(checks), Timer())


def test_throughput_uses_the_median_decode_speed_per_format_and_backend():
    evidence = records(reply(Format.GGUF, Backend.CPU, Modality.RUN, 10.0), reply(Format.GGUF, Backend.CPU, Modality.CHAT, 30.0),
                       reply(Format.GGUF, Backend.CPU, Modality.RUN, 20.0), reply(Format.APR, Backend.CPU, Modality.RUN, 2.0),
                       reply(Format.APR, Backend.CPU, Modality.SERVE, 99.0))  # serve speed includes HTTP: not used
    checks = runtime.throughput_checks(evidence, ThroughputGate(min_tok_s={Backend.CPU: 5.0}),
                                       (Format.GGUF, Format.APR), (Backend.CPU,), cuda_available=False)
    by_name = {c.check: c for c in checks}
    assert by_name["decode:gguf/cpu"].outcome is Outcome.CORROBORATED and by_name["decode:gguf/cpu"].measured == 20.0
    assert by_name["decode:apr/cpu"].outcome is Outcome.FALSIFIED and by_name["decode:apr/cpu"].measured == 2.0


def test_throughput_without_measurements_or_cuda_is_skipped():
    evidence = records(reply(Format.GGUF, Backend.CPU, Modality.RUN, 10.0, outcome=Outcome.FALSIFIED))
    checks = runtime.throughput_checks(evidence, ThroughputGate(), (Format.GGUF,), (Backend.CPU, Backend.GPU), False)
    assert [c.outcome for c in checks] == [Outcome.SKIPPED, Outcome.SKIPPED]
    assert "CUDA" in checks[1].reason


def test_gpu_speedup_is_measured_only_with_cuda_and_both_speeds():
    evidence = records(reply(Format.GGUF, Backend.CPU, Modality.RUN, 10.0), reply(Format.GGUF, Backend.GPU, Modality.RUN, 15.0))
    assert runtime.gpu_speedup_checks(evidence, GpuSpeedupGate(), False)[0].outcome is Outcome.SKIPPED
    slow = runtime.gpu_speedup_checks(evidence, GpuSpeedupGate(min_speedup=2.0), True)[0]
    assert slow.outcome is Outcome.FALSIFIED and slow.measured == 1.5


def test_determinism_compares_reruns_with_the_recorded_reply():
    cell = MatrixCell(format=Format.GGUF, backend=Backend.CPU, modality=Modality.RUN, prompt=PROMPT, seed=1)
    first = records(reply(Format.GGUF, Backend.CPU, Modality.RUN, 10.0, text="the same words"))
    targets = runtime.determinism_targets(first, [cell], DeterminismGate(modalities=(Modality.RUN,)), Format.GGUF)
    assert [c for c, _ in targets] == [cell]
    same = runtime.determinism_check(cell, targets[0][1], ["the same words"])
    other = runtime.determinism_check(cell, targets[0][1], ["other words"])
    gone = runtime.determinism_check(cell, targets[0][1], [None])
    assert (same.outcome, other.outcome, gone.outcome) == (Outcome.CORROBORATED, Outcome.FALSIFIED, Outcome.FALSIFIED)


def test_gate_rows_summarize_status_and_worst_measurement():
    evidence = records(
        Check(GateId.FORMAT_PARITY, "apr~gguf", Outcome.CORROBORATED, "ok", 3, measured=0.95, threshold=0.9, unit="top-1"),
        Check(GateId.FORMAT_PARITY, "st~gguf", Outcome.FALSIFIED, "bad", 3, measured=0.5, threshold=0.9, unit="top-1"),
        Check(GateId.GPU_SPEEDUP, "gpu/cpu", Outcome.SKIPPED, "no CUDA", threshold=2.0, unit="x"),
    )
    rows = {row.gate: row for row in gate_rows(evidence)}
    assert rows["FORMAT-PARITY"].status == "failed" and rows["FORMAT-PARITY"].measured == "0.5 top-1"
    assert rows["FORMAT-PARITY"].reason.startswith("st~gguf")
    assert rows["GPU-SPEEDUP"].status == "skipped" and rows["GPU-SPEEDUP"].threshold == "2 x"
