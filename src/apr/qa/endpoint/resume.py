"""`apr certify --endpoint … --resume`: which of a previous run's records carry over, and which work is left.

An endpoint run is a sequence of requests, grouped into units that are redone whole: one scenario prompt (its G2,
G4 oracles and G3), one golden case, one stop prompt, the determinism reruns, the throughput measurement, G1 and
each not-applicable record. A unit whose every record is conclusive carries over; a unit with an inconclusive
record (the endpoint stopped answering, a timeout) is dropped and asked again. The previous evidence file is kept
in ``runs/`` as the first run left it; the new one starts with the carried-over records, unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from apr.errors import AprError
from apr.qa.evidence import EvidenceRecord, Outcome, read_evidence
from apr.qa.gates.catalog import GateId

CELL_GATES = (GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY)
NOT_CONCLUSIVE = (Outcome.INCONCLUSIVE, Outcome.TIMEOUT)
Unit = tuple[str, str]


def unit_of(gate: GateId, check: str, prompt_id: str | None) -> Unit:
    """The unit of work a record belongs to (what a resume redoes whole)."""
    if gate in CELL_GATES and prompt_id is not None:
        return ("cell", prompt_id)
    if gate is GateId.DETERMINISM:
        return (str(gate), "reruns")  # several reruns share a check name: the family is one unit
    return (str(gate), check)


def record_unit(record: EvidenceRecord) -> Unit:
    return unit_of(record.gate, record.check, record.scenario.prompt_id)


@dataclass(frozen=True)
class Carried:
    """What a resumed endpoint run starts from."""

    records: tuple[EvidenceRecord, ...]  # the previous run's records of the units that carry over, in its order
    units: frozenset[Unit]
    dropped: int  # records of units asked again
    dropped_units: frozenset[Unit] = frozenset()

    def done(self, unit: Unit) -> bool:
        return unit in self.units

    def finished_gate(self, gate: GateId) -> bool:
        """True when the gate's records all carried over (none of its units is asked again)."""
        name = str(gate)
        return any(u[0] == name for u in self.units) and not any(u[0] == name for u in self.dropped_units)

    def replied(self) -> list[str]:
        """Prompt ids whose carried-over G2 holds a non-empty reply (candidates for the determinism reruns)."""
        return [
            record.scenario.prompt_id
            for record in self.records
            if record.gate is GateId.G2_INFERENCE
            and record.outcome is Outcome.CORROBORATED
            and record.scenario.prompt_id is not None
            and record.output_excerpt.strip()
        ]


NOTHING = Carried((), frozenset(), 0)


def carried_over(evidence: Path, served_model: str, playbook: str) -> Carried:
    """The conclusive units of the run in ``evidence`` (nothing when there is no file); AprError (one line) when that
    run certified another model or ran another playbook: resuming it would mix two certifications."""
    if not evidence.exists():
        return NOTHING
    records = read_evidence(evidence).records
    for record in records:
        if record.provenance.endpoint is None:
            raise AprError(f"{evidence}: --resume: this folder holds a local certification, not an endpoint's")
        if record.scenario.model != served_model or record.provenance.playbook != playbook:
            raise AprError(
                f"{evidence}: --resume: that run certified {record.scenario.model!r} with playbook "
                f"{record.provenance.playbook!r}, not {served_model!r} with {playbook!r}; rerun without --resume"
            )
    return select(records)


def select(records: Iterable[EvidenceRecord]) -> Carried:
    """Keep the units whose every record is conclusive."""
    records = tuple(records)
    by_unit: dict[Unit, list[EvidenceRecord]] = defaultdict(list)
    for record in records:
        by_unit[record_unit(record)].append(record)
    kept_units = {unit for unit, group in by_unit.items() if all(r.outcome not in NOT_CONCLUSIVE for r in group)}
    ordered = tuple(record for record in records if record_unit(record) in kept_units)
    dropped = sum(len(group) for unit, group in by_unit.items() if unit not in kept_units)
    return Carried(ordered, frozenset(kept_units), dropped, frozenset(by_unit) - frozenset(kept_units))
