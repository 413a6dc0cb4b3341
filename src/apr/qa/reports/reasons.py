"""Why a certification is not CERTIFIED, in the words of its evidence: which gate, which cell, which record.

The console summary of `apr certify` / `apr report` and the top of report.html both print these lines, most
serious first: what blocks (evidence against the model), what the machine left inconclusive, then what is
missing or only costs points (skipped checks, failed non-blocking gates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.gates.catalog import CATALOG, GateId
from apr.qa.score import GatewayState, MqsResult

LIMIT = 8  # lines shown; the rest are counted


class Kind(StrEnum):
    BLOCKS = "blocks"  # evidence against the model in a P0 gate, or a gateway without any evidence
    MACHINE = "machine"  # the machine stopped checks: inconclusive
    COSTS = "costs points"  # a failed non-blocking gate
    MISSING = "missing"  # skipped checks: the evidence is incomplete


@dataclass(frozen=True)
class Reason:
    """One reason: its kind, the gate, the cell (or ``model``), how many records like it, the evidence line."""

    kind: Kind
    gate: GateId
    cell: str
    count: int
    line: str

    def text(self) -> str:
        more = f" (+{self.count - 1} more like it)" if self.count > 1 else ""
        return f"[{self.kind}] {self.gate} {self.cell}: {self.line}{more}"


def _grouped(kind: Kind, records: Sequence[EvidenceRecord], key) -> list[Reason]:
    groups: dict[object, list[EvidenceRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return [
        Reason(kind, group[0].gate, group[0].scenario.cell_key, len(group), f"{group[0].check}: {group[0].reason}")
        for group in groups.values()
    ]


def why(records: Sequence[EvidenceRecord], mqs: MqsResult) -> list[Reason]:
    """Every reason the evidence is not a clean pass, most serious first (empty for a clean CERTIFIED run)."""
    blocking = [r for r in records if r.outcome.is_failure and CATALOG[r.gate].blocking]
    reasons = _grouped(Kind.BLOCKS, blocking, lambda r: (r.gate, r.check, r.reason))
    for gate, state in mqs.gateways.items():
        if state is GatewayState.UNVERIFIED:
            reasons.append(Reason(Kind.BLOCKS, gate, "model", 1, "gateway unverified: no corroborated record"))
    machine = [r for r in records if r.outcome.is_infrastructure]
    reasons += _grouped(Kind.MACHINE, machine, lambda r: (r.gate, r.infra_cause))
    costs = [r for r in records if r.outcome.is_failure and not CATALOG[r.gate].blocking]
    reasons += _grouped(Kind.COSTS, costs, lambda r: (r.gate, r.check))
    skipped = [r for r in records if r.outcome is Outcome.SKIPPED]
    reasons += _grouped(Kind.MISSING, skipped, lambda r: (r.gate, r.reason))
    return reasons


def summary_lines(records: Sequence[EvidenceRecord], mqs: MqsResult, limit: int = LIMIT) -> list[str]:
    """The reasons as console lines, at most ``limit`` of them plus one saying how many were left out."""
    reasons = why(records, mqs)
    lines = [reason.text() for reason in reasons[:limit]]
    if len(reasons) > limit:
        lines.append(f"... and {len(reasons) - limit} more reason(s): see report.html")
    return lines
