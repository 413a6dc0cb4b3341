"""Gates measured on the real CLI runs: determinism (a cell rerun gives the same reply), throughput and GPU speedup.

Throughput and speedup read the decode speeds the cells already recorded (G2 metrics), so they are
recomputed from evidence alone; determinism reruns one cell per modality through the real CLI.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from apr.qa.axes import Backend, Format, Modality
from apr.qa.evidence import EvidenceRecord, Outcome, excerpt
from apr.qa.gates_catalog import GateId
from apr.qa.matrix import MatrixCell
from apr.qa.playbook_gates import DeterminismGate, GpuSpeedupGate, ThroughputGate
from apr.qa.recording import Check, skipped, verdict

THROUGHPUT, SPEEDUP, DETERMINISM = GateId.THROUGHPUT, GateId.GPU_SPEEDUP, GateId.DETERMINISM
# serve replies carry only request-level timing (prefill + HTTP included), so decode speed comes from run/chat.
DECODE_MODALITIES = (Modality.RUN, Modality.CHAT)


def _replies(records: Sequence[EvidenceRecord]) -> list[EvidenceRecord]:
    return [r for r in records if r.gate is GateId.G2_INFERENCE and r.outcome is Outcome.CORROBORATED]


def decode_speeds(records: Sequence[EvidenceRecord], fmt: Format | None, backend: Backend) -> list[float]:
    """Decode tok/s of every successful run/chat cell of this format (None: any) and backend."""
    speeds = []
    for record in _replies(records):
        scenario = record.scenario
        value = record.metrics.get("decode_tok_s")
        if (scenario.backend is backend and scenario.modality in DECODE_MODALITIES
                and (fmt is None or scenario.format is fmt) and isinstance(value, (int, float)) and value > 0):
            speeds.append(float(value))
    return speeds


def throughput_checks(records: Sequence[EvidenceRecord], settings: ThroughputGate, formats: Sequence[Format],
                      backends: Sequence[Backend], cuda_available: bool) -> list[Check]:
    checks = []
    for backend in backends:
        minimum = settings.min_tok_s[backend]
        for fmt in formats:
            name = f"decode:{fmt}/{backend}"
            if backend is Backend.GPU and not cuda_available:
                checks.append(skipped(THROUGHPUT, name, "no CUDA device on this host: GPU speed not measured",
                                      format=fmt, backend=backend, threshold=minimum, unit="tok/s"))
                continue
            speeds = decode_speeds(records, fmt, backend)
            if not speeds:
                checks.append(skipped(THROUGHPUT, name, "no run/chat cell of this format and backend measured a "
                                      "decode speed (none succeeded or all replies were one token)",
                                      format=fmt, backend=backend, threshold=minimum, unit="tok/s"))
                continue
            median = statistics.median(speeds)
            checks.append(verdict(THROUGHPUT, name, median >= minimum,
                                  f"median decode {median:.1f} tok/s over {len(speeds)} cell(s) (min {minimum})",
                                  len(speeds), format=fmt, backend=backend, measured=round(median, 3),
                                  threshold=minimum, unit="tok/s",
                                  metrics={"cells": len(speeds), "min_cell_tok_s": round(min(speeds), 3)}))
    return checks


def gpu_speedup_checks(records: Sequence[EvidenceRecord], settings: GpuSpeedupGate, cuda_available: bool) -> list[Check]:
    if not cuda_available:
        return [skipped(SPEEDUP, "gpu/cpu", "no CUDA device on this host: GPU speedup not measured",
                        threshold=settings.min_speedup, unit="x")]
    cpu, gpu = decode_speeds(records, None, Backend.CPU), decode_speeds(records, None, Backend.GPU)
    if not cpu or not gpu:
        return [skipped(SPEEDUP, "gpu/cpu", f"decode speeds missing (cpu cells {len(cpu)}, gpu cells {len(gpu)})",
                        threshold=settings.min_speedup, unit="x")]
    ratio = statistics.median(gpu) / statistics.median(cpu)
    return [verdict(SPEEDUP, "gpu/cpu", ratio >= settings.min_speedup,
                    f"GPU decodes {ratio:.2f}x faster than CPU (min {settings.min_speedup}x)", len(cpu) + len(gpu),
                    measured=round(ratio, 3), threshold=settings.min_speedup, unit="x",
                    metrics={"cpu_tok_s": round(statistics.median(cpu), 3), "gpu_tok_s": round(statistics.median(gpu), 3)})]


def determinism_targets(records: Sequence[EvidenceRecord], cells: Sequence[MatrixCell], settings: DeterminismGate,
                        prefer: Format) -> list[tuple[MatrixCell, EvidenceRecord]]:
    """Per modality, the first CPU cell (preferring the source format) that gave a non-empty reply."""
    by_key = {r.scenario.cell_key: r for r in _replies(records) if r.output_excerpt.strip()}
    targets = []
    for modality in settings.modalities:
        candidates = [c for c in cells if c.modality is modality and c.backend is Backend.CPU and c.key in by_key]
        candidates.sort(key=lambda c: c.format is not prefer)
        if candidates:
            targets.append((candidates[0], by_key[candidates[0].key]))
    return targets


def determinism_check(cell: MatrixCell, first: EvidenceRecord, rerun_texts: list[str | None]) -> Check:
    """The reruns of ``cell`` (same seed, same settings) must reproduce the recorded reply exactly."""
    fields = {"format": cell.format, "backend": cell.backend, "modality": cell.modality, "prompt_id": cell.prompt.id,
              "prompt": cell.prompt.text, "seed": cell.seed}
    failed = [i for i, text in enumerate(rerun_texts) if text is None]
    differing = [i for i, text in enumerate(rerun_texts) if text is not None and excerpt(text) != first.output_excerpt]
    ok = not failed and not differing
    reason = (f"{len(rerun_texts)} rerun(s) with seed {cell.seed} reproduced the reply exactly" if ok else
              f"rerun {failed[0] + 1} gave no reply" if failed else
              f"rerun {differing[0] + 1} with the same seed gave a different reply")
    shown = next((t for t in rerun_texts if t is not None and excerpt(t) != first.output_excerpt), "")
    return verdict(DETERMINISM, f"rerun:{cell.modality}", ok, reason, len(rerun_texts), output=shown or "",
                   metrics={"reruns": len(rerun_texts), "differing": len(differing), "failed": len(failed)}, **fields)


def modality_skips(settings: DeterminismGate, covered: Sequence[Modality]) -> list[Check]:
    """Modalities asked for but without a successful CPU cell to rerun: recorded, never passed."""
    return [skipped(DETERMINISM, f"rerun:{m}", f"no successful CPU {m} cell to rerun", modality=m)
            for m in settings.modalities if m not in covered]
