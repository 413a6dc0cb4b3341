"""Stamp checks with scenario and provenance: the one place gates and the executor turn verdicts into evidence."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from apr.qa.axes import Backend, Format, Modality, Tier
from apr.qa.evidence import (
    Calibration,
    EndpointProvenance,
    EvidenceRecord,
    MetricValue,
    Outcome,
    Scenario,
    excerpt,
    utc_now,
)
from apr.qa.gates.catalog import GateId
from apr.qa.infra import InfraCause
from apr.qa.provenance import capture


@dataclass(frozen=True)
class Check:
    """A gate's verdict before it is stamped: what was checked, how it came out, and the numbers."""

    gate: GateId
    check: str
    outcome: Outcome
    reason: str
    n_compared: int = 0
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    measured: float | None = None
    threshold: float | None = None
    unit: str | None = None
    output: str = ""
    format: Format | None = None
    backend: Backend | None = None
    modality: Modality | None = None
    prompt_id: str | None = None
    prompt: str | None = None
    seed: int | None = None
    device: str | None = None
    cause: InfraCause | None = None  # set exactly when outcome is inconclusive
    numerics: str | None = None  # the engine's numerics when not the certification's (an exact second opinion)


def inconclusive(gate: GateId, check: str, cause: InfraCause, reason: str, **kw) -> Check:
    """The machine stopped this check (after its retries): recorded, never a pass, never against the model."""
    return Check(gate, check, Outcome.INCONCLUSIVE, reason, cause=cause, **kw)


def corroborated(gate: GateId, check: str, reason: str, n_compared: int, **kw) -> Check:
    return Check(gate, check, Outcome.CORROBORATED, reason, n_compared=n_compared, **kw)


def falsified(gate: GateId, check: str, reason: str, n_compared: int = 1, **kw) -> Check:
    return Check(gate, check, Outcome.FALSIFIED, reason, n_compared=n_compared, **kw)


def skipped(gate: GateId, check: str, reason: str, **kw) -> Check:
    return Check(gate, check, Outcome.SKIPPED, reason, **kw)


def verdict(gate: GateId, check: str, ok: bool, reason: str, n_compared: int, **kw) -> Check:
    return (corroborated if ok else falsified)(gate, check, reason, n_compared, **kw)


@dataclass
class Recorder:
    """What every record of one certification shares: the model, the playbook, the artifacts' digests."""

    model: str
    artifacts: dict[Format, Path] = field(default_factory=dict)
    sha256: dict[Format, str] = field(default_factory=dict)
    playbook: str | None = None
    tier: Tier | None = None
    gates: tuple[GateId, ...] | None = None  # the gates the plan enabled: what the MQS averages over
    default_device: str = "cpu"
    source: Format | None = None  # the checkpoint as given; model-level checks cite its digest
    # Every engine of a certification (cells and model-level gates) runs the default mode; NUMERICS-PARITY
    # measures it against the exact one.
    numerics: str = "fast"
    # ... and the default KV cache (Engine.describe()["kv_cache"]; --kv-cache f16 is no certification option).
    kv_cache: str = "float32"
    calibration: Calibration | None = None  # what the machine delivered (apr certify measures it per phase)
    endpoint: EndpointProvenance | None = None  # the remote endpoint under test (apr certify --endpoint)

    def stamp(self, check: Check, *, started_at: datetime, duration_s: float) -> EvidenceRecord:
        device = check.device or (
            "none" if check.backend is Backend.GPU and check.outcome is Outcome.SKIPPED else self.default_device
        )
        provenance = capture(
            started_at=started_at,
            finished_at=utc_now(),
            device=device,
            model_sha256=self.sha256.get(check.format) if check.format else self._source_sha(),
            format=check.format,
            backend=check.backend,
            seed=check.seed,
            playbook=self.playbook,
            tier=self.tier,
            gates=self.gates,
            numerics=check.numerics or self._default_numerics(check),
            kv_cache=self.kv_cache if self._ran_engine(check) else None,
            calibration=self.calibration,
            endpoint=self.endpoint,
        )
        scenario = Scenario(
            model=self.model,
            format=check.format,
            backend=check.backend,
            modality=check.modality,
            prompt_id=check.prompt_id,
            prompt=check.prompt,
            seed=check.seed,
        )
        return EvidenceRecord(
            gate=check.gate,
            check=check.check,
            scenario=scenario,
            outcome=check.outcome,
            reason=check.reason,
            metrics=check.metrics,
            measured=check.measured,
            threshold=check.threshold,
            unit=check.unit,
            cause=check.cause,
            n_compared=check.n_compared,
            output_excerpt=excerpt(check.output),
            duration_s=max(0.0, duration_s),
            provenance=provenance,
        )

    def _ran_engine(self, check: Check) -> bool:
        """Whether the check ran an engine of a cell or backend here (not skipped, not a remote endpoint)."""
        return check.backend is not None and check.outcome is not Outcome.SKIPPED and self.endpoint is None

    def _default_numerics(self, check: Check) -> str | None:
        """The certification's numerics for a check that ran an engine of a cell or backend; None otherwise."""
        return self.numerics if self._ran_engine(check) else None

    def _source_sha(self) -> str | None:
        if self.source is not None and self.source in self.sha256:
            return self.sha256[self.source]
        return next(iter(self.sha256.values()), None)


class Timer:
    """Start time (for provenance) and elapsed seconds (for duration) of one check."""

    def __init__(self) -> None:
        self.started_at = utc_now()
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start


def stamp_all(recorder: Recorder, checks: list[Check], timer: Timer) -> list[EvidenceRecord]:
    """Records for checks made together: they share the start time and split the elapsed time."""
    share = timer.elapsed / max(1, len(checks))
    return [recorder.stamp(check, started_at=timer.started_at, duration_s=share) for check in checks]
