"""Gates measured with the real CLI: determinism (a cell rerun gives the same reply), throughput (`apr bench`,
warmup then repetitions, per format and backend) and GPU speedup (from the throughput records).

The cells' own decode speeds are not used for throughput: a one-shot `apr run` of a short reply measures
its first decode steps, compile and cold caches included, which says little about decode speed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from apr.qa.axes import Backend, Format, Modality
from apr.qa.calibration import Floor
from apr.qa.evidence import EvidenceRecord, Outcome, excerpt
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import DeterminismGate, GpuSpeedupGate
from apr.qa.matrix import Cell
from apr.qa.procs import Ending, ProcessResult
from apr.qa.recording import Check, falsified, inconclusive, skipped, verdict

THROUGHPUT, SPEEDUP, DETERMINISM = GateId.THROUGHPUT, GateId.GPU_SPEEDUP, GateId.DETERMINISM


def _replies(records: Sequence[EvidenceRecord]) -> list[EvidenceRecord]:
    return [r for r in records if r.gate is GateId.G2_INFERENCE and r.outcome is Outcome.CORROBORATED]


def throughput_check(
    fmt: Format,
    backend: Backend,
    minimum: float,
    process: ProcessResult | None,
    bench: dict | None,
    skip_reason: str | None = None,
    *,
    floor: Floor | None = None,
) -> Check:
    """One `apr bench` result (``apr.qa.measure.measure_speed``) against the playbook's minimum decode tok/s for
    the backend — or against the lower ``floor`` the machine measured in the same run allows (the record says
    which, and why). A bench the machine stopped is inconclusive, never a falsification."""
    name = f"decode:{fmt}/{backend}"
    applied = floor.applied if floor is not None else minimum
    fields: dict[str, Any] = {"format": fmt, "backend": backend, "threshold": round(applied, 3), "unit": "tok/s"}
    if skip_reason is not None or process is None:
        return skipped(THROUGHPUT, name, skip_reason or "not measured", **fields)
    cause = process.infra_cause
    if cause is not None:
        why = f"apr bench: {process.reason()} — {cause.advice}"
        return inconclusive(THROUGHPUT, name, cause, why, output=process.stderr_tail(), **fields)
    if process.ending is Ending.CRASHED:
        return Check(
            THROUGHPUT,
            name,
            Outcome.CRASHED,
            f"apr bench: {process.reason()}",
            n_compared=1,
            output=process.stderr_tail(),
            **fields,
        )
    speed = ((bench or {}).get("decode_tok_s") or {}).get("median")
    if bench is None or not isinstance(speed, (int, float)) or speed <= 0:
        return falsified(
            THROUGHPUT,
            name,
            f"apr bench gave no decode speed: {process.reason()}",
            output=process.stderr_tail(),
            **fields,
        )
    metrics = {
        "p90_tok_s": bench["decode_tok_s"].get("p90"),
        "reps": bench.get("reps"),
        "prefill_tok_s": (bench.get("prefill_tok_s") or {}).get("median"),
        "ttft_s": (bench.get("ttft_s") or {}).get("median"),
        "load_s": bench.get("load_s"),
        "floor_written_tok_s": minimum,
        "bytes_per_token": bench.get("bytes_per_token"),
        "achieved_gb_s": bench.get("achieved_gb_s"),
    }
    if floor is not None and floor.ceiling_tok_s is not None:
        metrics["machine_ceiling_tok_s"] = round(floor.ceiling_tok_s, 3)
    judged = f"min {applied:.2f}: {floor.note}" if floor is not None else f"min {minimum}"
    return verdict(
        THROUGHPUT,
        name,
        speed >= applied,
        f"apr bench: median decode {speed:.1f} tok/s over {bench.get('reps')} repetitions after warmup ({judged})",
        int(bench.get("reps") or 1),
        measured=round(float(speed), 3),
        metrics=metrics,
        **fields,
    )


def _bench_speeds(records: Sequence[EvidenceRecord], backend: Backend) -> list[float]:
    return [
        r.measured
        for r in records
        if r.gate is THROUGHPUT
        and r.scenario.backend is backend
        and r.measured is not None
        and r.outcome in (Outcome.CORROBORATED, Outcome.FALSIFIED)
    ]


def gpu_speedup_checks(
    records: Sequence[EvidenceRecord], settings: GpuSpeedupGate, cuda_available: bool
) -> list[Check]:
    """GPU over CPU decode speed, from the THROUGHPUT records (medians over formats)."""
    if not cuda_available:
        return [
            skipped(
                SPEEDUP,
                "gpu/cpu",
                "no CUDA device on this host: GPU speedup not measured",
                threshold=settings.min_speedup,
                unit="x",
            )
        ]
    cpu, gpu = _bench_speeds(records, Backend.CPU), _bench_speeds(records, Backend.GPU)
    if not cpu or not gpu:
        return [
            skipped(
                SPEEDUP,
                "gpu/cpu",
                f"decode speeds missing (cpu cells {len(cpu)}, gpu cells {len(gpu)})",
                threshold=settings.min_speedup,
                unit="x",
            )
        ]
    ratio = statistics.median(gpu) / statistics.median(cpu)
    return [
        verdict(
            SPEEDUP,
            "gpu/cpu",
            ratio >= settings.min_speedup,
            f"GPU decodes {ratio:.2f}x faster than CPU (min {settings.min_speedup}x)",
            len(cpu) + len(gpu),
            measured=round(ratio, 3),
            threshold=settings.min_speedup,
            unit="x",
            metrics={"cpu_tok_s": round(statistics.median(cpu), 3), "gpu_tok_s": round(statistics.median(gpu), 3)},
        )
    ]


def determinism_targets(
    records: Sequence[EvidenceRecord], cells: Sequence[Cell], settings: DeterminismGate, prefer: Format
) -> list[tuple[Cell, EvidenceRecord]]:
    """Per modality, the first CPU cell (preferring the source format) that gave a non-empty reply."""
    by_key = {r.scenario.cell_key: r for r in _replies(records) if r.output_excerpt.strip()}
    targets = []
    for modality in settings.modalities:
        candidates = [c for c in cells if c.modality is modality and c.backend is Backend.CPU and c.key in by_key]
        candidates.sort(key=lambda c: c.format is not prefer)
        if candidates:
            targets.append((candidates[0], by_key[candidates[0].key]))
    return targets


def determinism_check(cell: Cell, first: EvidenceRecord, rerun_texts: list[str | None]) -> Check:
    """The reruns of ``cell`` (same seed, same settings) must reproduce the recorded reply exactly."""
    fields = {
        "format": cell.format,
        "backend": cell.backend,
        "modality": cell.modality,
        "prompt_id": cell.prompt.id,
        "prompt": cell.prompt.text,
        "seed": cell.seed,
    }
    failed = [i for i, text in enumerate(rerun_texts) if text is None]
    differing = [i for i, text in enumerate(rerun_texts) if text is not None and excerpt(text) != first.output_excerpt]
    ok = not failed and not differing
    reason = (
        f"{len(rerun_texts)} rerun(s) with seed {cell.seed} reproduced the reply exactly"
        if ok
        else f"rerun {failed[0] + 1} gave no reply"
        if failed
        else f"rerun {differing[0] + 1} with the same seed gave a different reply"
    )
    shown = next((t for t in rerun_texts if t is not None and excerpt(t) != first.output_excerpt), "")
    return verdict(
        DETERMINISM,
        f"rerun:{cell.modality}",
        ok,
        reason,
        len(rerun_texts),
        output=shown or "",
        metrics={"reruns": len(rerun_texts), "differing": len(differing), "failed": len(failed)},
        **fields,
    )


def modality_skips(settings: DeterminismGate, covered: Sequence[Modality]) -> list[Check]:
    """Modalities asked for but without a successful CPU cell to rerun: recorded, never passed."""
    return [
        skipped(DETERMINISM, f"rerun:{m}", f"no successful CPU {m} cell to rerun", modality=m)
        for m in settings.modalities
        if m not in covered
    ]
