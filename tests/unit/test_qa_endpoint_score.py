"""The MQS of an endpoint's evidence: not-applicable gates are neither planned nor counted, the categories no API
can reach leave the scale, G0 is not applicable; mixed or checkpoint evidence keeps every rule it had."""

from __future__ import annotations

import math

from qa_core_factory import ENDPOINT, record

from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import ENDPOINT_GATES, GateId
from apr.qa.infra import InfraCause
from apr.qa.reports.certtable import rows_from_records
from apr.qa.reports.junit import render_junit
from apr.qa.score import GatewayState, Status, SubjectKind, compute_mqs

PLANNED = (
    GateId.G1_LOAD,
    GateId.G2_INFERENCE,
    GateId.G3_STABILITY,
    GateId.G4_QUALITY,
    GateId.GOLDEN_OUTPUT,
    GateId.DETERMINISM,
    GateId.THROUGHPUT,
)


def endpoint_record(gate: GateId, outcome: Outcome = Outcome.CORROBORATED, **fields):
    n = fields.pop("n_compared", 0 if outcome is Outcome.NOT_APPLICABLE else 1)
    return record(
        gate, outcome, endpoint=ENDPOINT, gates=PLANNED, backend=None, check=f"{gate}", n_compared=n, **fields
    )


def endpoint_evidence(**outcomes: Outcome):
    passes = [endpoint_record(gate, outcomes.get(gate.name, Outcome.CORROBORATED)) for gate in PLANNED]
    inapplicable = [
        endpoint_record(gate, Outcome.NOT_APPLICABLE)
        for gate in (GateId.G0_INTEGRITY, GateId.STRUCTURE, GateId.REFERENCE_PARITY, GateId.PERPLEXITY)
    ]
    return inapplicable + passes


def test_a_clean_endpoint_scores_over_the_550_points_that_apply():
    mqs = compute_mqs(endpoint_evidence())
    assert mqs.kind is SubjectKind.ENDPOINT and mqs.scale == 550 and mqs.score == 1000
    assert mqs.status is Status.CERTIFIED and mqs.label == "CERTIFIED (endpoint)"
    assert mqs.gateways[GateId.G0_INTEGRITY] is GatewayState.NOT_APPLICABLE and mqs.gateways_passed
    assert {c.category.value for c in mqs.categories if not c.applicable} == {"integrity", "parity"}
    counted = {g.gate for c in mqs.categories for g in c.gates}
    assert counted == set(PLANNED) and counted <= ENDPOINT_GATES  # PERPLEXITY (quality) is not averaged in


def test_not_applicable_records_never_count_and_a_failure_still_costs_as_documented():
    mqs = compute_mqs(endpoint_evidence(THROUGHPUT=Outcome.FALSIFIED))
    performance = next(c for c in mqs.categories if c.category.value == "performance")
    assert performance.points == 0.0  # THROUGHPUT is performance's only planned gate
    # 818: a P2 failure costs an endpoint 1000/550 times what it costs a checkpoint, and does not block.
    assert mqs.score == math.floor(1000 * 450 / 550) == 818 and (mqs.status, mqs.grade) == (Status.CERTIFIED, "B")
    assert mqs.outcomes[Outcome.NOT_APPLICABLE] == 4 and all(
        g.not_applicable == 0 for c in mqs.categories for g in c.gates
    )


def test_an_endpoint_that_stopped_answering_is_inconclusive_never_blocked():
    records = endpoint_evidence()
    records.append(
        endpoint_record(GateId.G2_INFERENCE, Outcome.INCONCLUSIVE, cause=InfraCause.ENDPOINT_UNREACHABLE, n_compared=0)
    )
    mqs = compute_mqs(records)
    assert mqs.status is Status.INCONCLUSIVE and mqs.grade == "I" and not mqs.blockers


def test_checkpoint_evidence_beside_an_endpoints_keeps_g0_as_a_gateway():
    mixed = endpoint_evidence() + [record(GateId.G1_LOAD)]
    mqs = compute_mqs(mixed)
    assert mqs.kind is SubjectKind.CHECKPOINT and mqs.scale == 1000
    assert mqs.gateways[GateId.G0_INTEGRITY] is GatewayState.UNVERIFIED and mqs.status is Status.BLOCKED


def test_tables_and_junit_say_it_is_an_endpoint_and_never_pass_what_did_not_apply():
    records = endpoint_evidence()
    row = rows_from_records(records, "evidence.jsonl")[0]
    assert (row.kind, row.endpoint, row.label, row.gateways_passed) == (
        "endpoint",
        ENDPOINT.url,
        "CERTIFIED (endpoint)",
        "4/4",
    )
    junit = render_junit(records)
    assert junit.count('<skipped message="not applicable:') == 4 and 'name="mqs.kind" value="endpoint"' in junit
