"""Builders of evidence records for the QA core tests (records as the executor would write them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apr.qa.axes import Backend, Format, Modality, Tier
from apr.qa.evidence import EndpointProvenance, EvidenceRecord, Outcome, Provenance, Scenario
from apr.qa.gates.catalog import CATALOG, GateId

T0 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
SHA = "ab" * 32
ENDPOINT = EndpointProvenance(
    url="http://127.0.0.1:9/v1", served_model="demo", api="chat", server={"server": "uvicorn"}
)


def provenance(
    *,
    tier: Tier | None = Tier.MVP,
    seconds: float = 1.0,
    backend: Backend | None = Backend.CPU,
    endpoint: EndpointProvenance | None = None,
    gates: tuple[GateId, ...] | None = None,
) -> Provenance:
    return Provenance(
        model_sha256=None if endpoint else SHA,
        format=Format.GGUF,
        backend=backend,
        engine_git_sha="deadbeef",
        apr_version="0.1.0",
        torch_version="2.13.0",
        device="cpu",
        host="testhost",
        seed=42,
        playbook="demo-mvp",
        tier=tier,
        endpoint=endpoint,
        gates=gates,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=seconds),
    )


def record(
    gate: GateId,
    outcome: Outcome = Outcome.CORROBORATED,
    *,
    check: str = "c",
    model: str = "demo:1b",
    backend: Backend | None = Backend.CPU,
    modality: Modality | None = Modality.RUN,
    prompt_id: str = "p0",
    tier: Tier | None = Tier.MVP,
    reason: str = "seen",
    output: str = "2 + 2 = 4",
    endpoint: EndpointProvenance | None = None,
    gates: tuple[GateId, ...] | None = None,
    **fields,
) -> EvidenceRecord:
    scenario = Scenario(
        model=model,
        format=None if endpoint else Format.GGUF,
        backend=backend,
        modality=modality,
        prompt_id=prompt_id,
        prompt="What is 2+2?",
        seed=42,
    )
    n_compared = fields.pop("n_compared", 1)
    return EvidenceRecord(
        gate=gate,
        check=check,
        scenario=scenario,
        outcome=outcome,
        reason=reason,
        n_compared=n_compared,
        output_excerpt=output,
        duration_s=1.0,
        provenance=provenance(tier=tier, backend=backend, endpoint=endpoint, gates=gates),
        **fields,
    )


def all_gates_pass(model: str = "demo:1b", tier: Tier | None = Tier.MVP) -> list[EvidenceRecord]:
    """One corroborated record for every gate of the catalog."""
    return [record(gate, model=model, tier=tier, check=f"{gate}-ok") for gate in CATALOG]
