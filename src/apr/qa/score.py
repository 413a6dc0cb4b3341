"""MQS: the 0–1000 model qualification score, its grade and the certification status, computed from evidence alone.

Formula (every number here is also in docs/qa.md):

1. Records are grouped by gate (``apr.qa.gates.catalog``). For each gate,
   ``fraction = corroborated / conclusive records of the gate``. Skipped, falsified and crashed
   records are in the denominator and earn nothing. Inconclusive records (the machine stopped the
   check: deadline, OOM, killed from outside, full disk; older ``timeout`` records count as these)
   are left out of it: they say nothing about the model, for or against. ``not_applicable`` records
   (the model lacks the feature the check exercises: FIM without FIM tokens, tools with a template
   that does not render them) are left out of it too. A gate with no conclusive records has fraction
   0 ("no evidence is not a pass").
2. Each category's points = ``weight × mean(fraction of every *planned* gate in the category)``,
   weights integrity 200, execution 200, quality 200, parity 250, consistency 50, performance 100.
   The planned gates are those the playbook enabled, kept in every record's ``provenance.gates``
   (records written before it was kept: the gates their tier's template enables today; no tier: the
   whole catalog). So a gate the tier does not run (HumanEval in ``mvp``) costs nothing, while a
   planned gate that left no record costs its full share. A planned gate whose every record is
   ``not_applicable`` (never a gateway) leaves the plan: it neither earns nor costs; one applicable
   record (even skipped) keeps it in. A category with no planned gate, or no
   evidence, scores 0: a tier that skips a whole category cannot be certified.
3. ``raw = floor(sum of category points)`` (floor: a score never rounds up into a better grade).
4. Gateways G0–G4: a gateway *fails* on a falsified or crashed record (G3, stability, on a crashed
   record of ANY gate); it is *inconclusive* when it has inconclusive records and no failure; it
   *passes* with at least one corroborated record, no failure and nothing inconclusive; otherwise it
   is *unverified*. A failed or unverified gateway → MQS 0 (an inconclusive one does not zero it).
5. Grade: A+ ≥ 950, A ≥ 900, B+ ≥ 850, B ≥ 800, C ≥ 700, F below; ``I`` (incomplete) whenever the
   status is INCONCLUSIVE: a machine that could not run the checks never earns a model an F.
6. Status: BLOCKED if a gateway failed or is unverified, or any P0 gate has a falsified/crashed
   record (only evidence about the model blocks); otherwise INCONCLUSIVE if any record is
   inconclusive (the machine could not run every check: re-run elsewhere, ``mqs.inconclusive`` says
   why); otherwise CERTIFIED if MQS ≥ 800, else PROVISIONAL (no defect found in a P0 gate, but the
   evidence is incomplete — skipped cells such as GPU on a CPU-only host, missing gates — or
   non-blocking gates failed).
7. An endpoint's evidence (every record has ``provenance.endpoint``: ``apr certify --endpoint``) is its own kind of
   verdict. Only the gates an OpenAI-compatible API can reach apply (``catalog.ENDPOINT_GATES``); the others are
   recorded ``not_applicable`` and are neither planned nor counted, G0 (the file's integrity) included. Whole
   categories cannot apply — integrity (200) and parity (250) need the checkpoint's files and apr's engine — so the
   MQS is ``floor(1000 × sum of points / sum of the weights of the categories that apply)`` (550: execution,
   quality, consistency, performance), graded and given a status by the same rules, and labelled ``endpoint``
   wherever it is shown: it certifies how the endpoint behaves, never what its weights are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.gates.catalog import CATALOG, CATEGORY_WEIGHTS, ENDPOINT_GATES, GATEWAYS, Category, GateId, gates_in

CERTIFIED_MIN = 800
INCOMPLETE_GRADE = "I"
GRADE_FLOORS: tuple[tuple[int, str], ...] = ((950, "A+"), (900, "A"), (850, "B+"), (800, "B"), (700, "C"))


class Status(StrEnum):
    CERTIFIED = "CERTIFIED"
    PROVISIONAL = "PROVISIONAL"
    INCONCLUSIVE = "INCONCLUSIVE"  # no evidence against the model, but the machine could not run every check
    BLOCKED = "BLOCKED"


class SubjectKind(StrEnum):
    """What the evidence certifies: a checkpoint (its files, through apr's engine) or a remote endpoint's behaviour."""

    CHECKPOINT = "checkpoint"
    ENDPOINT = "endpoint"


class GatewayState(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    UNVERIFIED = "unverified"  # no failure, but nothing corroborated either: not a pass
    INCONCLUSIVE = "inconclusive"  # no failure, but the machine stopped some of its checks
    NOT_APPLICABLE = "not_applicable"  # an endpoint cannot be judged by it (G0: the file's integrity)


class GateScore(BaseModel):
    """Outcome counts of one gate and the fraction of its records that were corroborated."""

    model_config = ConfigDict(frozen=True)

    gate: GateId
    corroborated: int = 0
    falsified: int = 0
    crashed: int = 0
    skipped: int = 0
    inconclusive: int = 0  # includes older ``timeout`` records
    not_applicable: int = 0  # the check cannot judge this subject (feature absent, endpoint): never counted

    @property
    def total(self) -> int:
        return self.conclusive + self.inconclusive + self.not_applicable

    @property
    def inapplicable(self) -> bool:
        """Every record of the gate says the model lacks its feature (and there is at least one)."""
        return self.not_applicable > 0 and self.conclusive + self.inconclusive == 0

    @property
    def conclusive(self) -> int:
        """Records that say something about the model (everything but what the machine stopped)."""
        return self.corroborated + self.falsified + self.crashed + self.skipped

    @property
    def failures(self) -> int:
        return self.falsified + self.crashed

    @property
    def fraction(self) -> float:
        return self.corroborated / self.conclusive if self.conclusive else 0.0


class CategoryScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    category: Category
    weight: int
    points: float
    gates: tuple[GateScore, ...]
    applicable: bool = True  # False: no gate of it can judge an endpoint; its weight leaves the scale


class MqsResult(BaseModel):
    """The score and everything needed to explain it."""

    model_config = ConfigDict(frozen=True)

    score: int  # 0–1000 after the gateway rule
    raw: int  # before the gateway rule
    grade: str
    status: Status
    gateways: dict[GateId, GatewayState]
    categories: tuple[CategoryScore, ...]
    blockers: tuple[str, ...]  # one line per reason for BLOCKED
    outcomes: dict[Outcome, int]
    inconclusive: tuple[str, ...] = ()  # one line per gate and machine cause that left checks inconclusive
    total_records: int
    kind: SubjectKind = SubjectKind.CHECKPOINT
    scale: int = 1000  # the category weights the score is over (an endpoint: those of the categories that apply)

    @property
    def gateways_passed(self) -> bool:
        return all(state in (GatewayState.PASSED, GatewayState.NOT_APPLICABLE) for state in self.gateways.values())

    @property
    def label(self) -> str:
        """The status as every rendering shows it: an endpoint's verdict says it is one."""
        return self.status.value if self.kind is SubjectKind.CHECKPOINT else f"{self.status.value} (endpoint)"


def grade_for(score: int) -> str:
    """A+ ≥ 950, A ≥ 900, B+ ≥ 850, B ≥ 800, C ≥ 700, F below."""
    for floor, grade in GRADE_FLOORS:
        if score >= floor:
            return grade
    return "F"


def _gate_scores(records: Iterable[EvidenceRecord]) -> dict[GateId, GateScore]:
    counts: dict[GateId, Counter[str]] = {gate: Counter() for gate in CATALOG}
    for record in records:
        outcome = record.outcome
        key = "inconclusive" if outcome.is_infrastructure else outcome.name.lower()
        counts[record.gate][key] += 1
    return {gate: GateScore(gate=gate, **dict(c)) for gate, c in counts.items()}


def subject_kind(records: Iterable[EvidenceRecord]) -> SubjectKind:
    """ENDPOINT when every record ran against a remote endpoint; CHECKPOINT otherwise (mixed evidence is scored as a
    checkpoint's: G0 then stays a gateway that no endpoint record can pass)."""
    records = list(records)
    remote = bool(records) and all(record.provenance.endpoint is not None for record in records)
    return SubjectKind.ENDPOINT if remote else SubjectKind.CHECKPOINT


def _gateway_state(gate: GateId, score: GateScore, any_crash: bool, kind: SubjectKind) -> GatewayState:
    if kind is SubjectKind.ENDPOINT and gate not in ENDPOINT_GATES:
        return GatewayState.NOT_APPLICABLE
    if score.failures or (gate is GateId.G3_STABILITY and any_crash):
        return GatewayState.FAILED
    if score.inconclusive:
        return GatewayState.INCONCLUSIVE
    return GatewayState.PASSED if score.corroborated else GatewayState.UNVERIFIED


def inconclusive_lines(records: Iterable[EvidenceRecord]) -> list[str]:
    """One line per gate and machine cause: how many checks the machine stopped, and the first one's reason."""
    groups: dict[tuple[GateId, str], list[EvidenceRecord]] = {}
    for record in records:
        cause = record.infra_cause
        if cause is not None:
            groups.setdefault((record.gate, cause.value), []).append(record)
    return [
        f"{gate} {len(group)} check(s) inconclusive ({cause}), e.g. {group[0].scenario.cell_key}: {group[0].reason}"
        for (gate, cause), group in groups.items()
    ]


def planned_gates(records: Iterable[EvidenceRecord]) -> frozenset[GateId]:
    """The gates the evidence's plan enabled: the union of the records' ``provenance.gates``; for older records
    without it, what their (single) tier's template enables now; failing that, the whole catalog. Gateways and
    any gate that left an applicable record always count, so evidence can never be scored over less than it
    holds; a gate whose every record is ``not_applicable`` (the model lacks its feature) is left out. For an
    endpoint's evidence, only gates an endpoint can be judged by (``ENDPOINT_GATES``)."""
    records = list(records)
    if subject_kind(records) is SubjectKind.ENDPOINT:
        return _planned(records, ENDPOINT_GATES) & ENDPOINT_GATES
    return _planned(records, frozenset(CATALOG))


def _planned(records: list[EvidenceRecord], everything: frozenset[GateId]) -> frozenset[GateId]:
    kept = [record.provenance.gates for record in records if record.provenance.gates is not None]
    present = {record.gate for record in records} | set(GATEWAYS)
    inapplicable = frozenset(
        gate for gate, score in _gate_scores(records).items() if score.inapplicable and gate not in GATEWAYS
    )
    if kept:
        return (frozenset(gate for gates in kept for gate in gates) | present) - inapplicable
    tiers = {record.provenance.tier for record in records}
    if len(tiers) == 1 and (tier := tiers.pop()) is not None:
        from apr.qa.certify import TEMPLATES  # the templates: read only for records that predate the field
        from apr.qa.playbook import load_template

        return (frozenset(load_template(TEMPLATES / f"{tier.value}.yaml").gates.enabled()) | present) - inapplicable
    return everything - inapplicable


def compute_mqs(records: Iterable[EvidenceRecord]) -> MqsResult:
    """Score a set of evidence records (see the module docstring for the formula)."""
    records = list(records)
    outcomes = Counter(record.outcome for record in records)
    per_gate = _gate_scores(records)
    kind = subject_kind(records)
    planned = planned_gates(records)
    categories = []
    for category, weight in CATEGORY_WEIGHTS.items():
        gates = tuple(per_gate[gate] for gate in gates_in(category) if gate in planned)
        points = weight * sum(g.fraction for g in gates) / len(gates) if gates else 0.0
        applicable = kind is SubjectKind.CHECKPOINT or any(gate in ENDPOINT_GATES for gate in gates_in(category))
        categories.append(
            CategoryScore(category=category, weight=weight, points=points, gates=gates, applicable=applicable)
        )
    scale = sum(c.weight for c in categories if c.applicable)
    raw = math.floor(sum(c.points for c in categories) * 1000 / scale + 1e-9)

    crashed = bool(outcomes[Outcome.CRASHED])
    gateways = {gate: _gateway_state(gate, per_gate[gate], crashed, kind) for gate in GATEWAYS}
    blockers = [
        f"gateway {gate} {state}" + ("" if state is GatewayState.FAILED else " (no corroborated evidence)")
        for gate, state in gateways.items()
        if state in (GatewayState.FAILED, GatewayState.UNVERIFIED)
    ]
    blockers += [
        f"{gate} (P0) has {s.failures} failing record(s)"
        for gate, s in per_gate.items()
        if CATALOG[gate].blocking and not CATALOG[gate].gateway and s.failures
    ]

    counting = (GatewayState.PASSED, GatewayState.INCONCLUSIVE, GatewayState.NOT_APPLICABLE)
    score = raw if all(state in counting for state in gateways.values()) else 0
    inconclusive = inconclusive_lines(records)
    if blockers:
        status = Status.BLOCKED
    elif inconclusive:
        status = Status.INCONCLUSIVE
    else:
        status = Status.CERTIFIED if score >= CERTIFIED_MIN else Status.PROVISIONAL
    return MqsResult(
        score=score,
        raw=raw,
        grade=INCOMPLETE_GRADE if status is Status.INCONCLUSIVE else grade_for(score),
        status=status,
        gateways=gateways,
        categories=tuple(categories),
        blockers=tuple(blockers),
        outcomes={outcome: outcomes[outcome] for outcome in Outcome},
        total_records=len(records),
        inconclusive=tuple(inconclusive),
        kind=kind,
        scale=scale,
    )


__all__ = [
    "CERTIFIED_MIN",
    "CategoryScore",
    "GateScore",
    "GatewayState",
    "MqsResult",
    "Status",
    "SubjectKind",
    "compute_mqs",
    "grade_for",
    "planned_gates",
    "subject_kind",
]
