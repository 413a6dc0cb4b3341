"""MQS: the documented formula, the gateway rule, grades, statuses, and that skipped/missing never count as passes."""

from __future__ import annotations

import math

import pytest
from qa_core_factory import all_gates_pass, record

from apr.qa.axes import Backend, Tier
from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import CATALOG, CATEGORY_WEIGHTS, GATEWAYS, Category, GateId, gates_in
from apr.qa.infra import InfraCause
from apr.qa.score import CERTIFIED_MIN, GatewayState, Status, compute_mqs, grade_for


def test_catalog_weights_add_up_to_1000_and_every_category_has_gates():
    assert sum(CATEGORY_WEIGHTS.values()) == 1000
    assert all(gates_in(category) for category in Category)
    assert GATEWAYS == (
        GateId.G0_INTEGRITY,
        GateId.G1_LOAD,
        GateId.G2_INFERENCE,
        GateId.G3_STABILITY,
        GateId.G4_QUALITY,
    )


def test_everything_corroborated_is_1000_a_plus_certified():
    result = compute_mqs(all_gates_pass())
    assert (result.score, result.grade, result.status) == (1000, "A+", Status.CERTIFIED)
    assert result.gateways_passed and not result.blockers


def test_no_evidence_is_zero_and_blocked():
    result = compute_mqs([])
    assert (result.score, result.raw, result.status) == (0, 0, Status.BLOCKED)
    assert set(result.gateways.values()) == {GatewayState.UNVERIFIED}


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_any_gateway_failure_zeroes_the_score(gateway):
    records = all_gates_pass() + [record(gateway, Outcome.FALSIFIED, check="bad", n_compared=1)]
    result = compute_mqs(records)
    assert result.score == 0 and result.raw > 900
    assert result.gateways[gateway] is GatewayState.FAILED and result.status is Status.BLOCKED


def test_a_gateway_with_only_skipped_records_is_unverified_not_passed():
    records = [r for r in all_gates_pass() if r.gate is not GateId.G1_LOAD]
    records.append(record(GateId.G1_LOAD, Outcome.SKIPPED, n_compared=0, reason="no CUDA"))
    result = compute_mqs(records)
    assert result.gateways[GateId.G1_LOAD] is GatewayState.UNVERIFIED
    assert result.score == 0 and result.status is Status.BLOCKED


def test_a_crash_in_any_gate_fails_the_stability_gateway():
    result = compute_mqs(all_gates_pass() + [record(GateId.THROUGHPUT, Outcome.CRASHED, n_compared=0)])
    assert result.gateways[GateId.G3_STABILITY] is GatewayState.FAILED and result.score == 0
    assert result.status is Status.BLOCKED


def test_what_the_machine_stopped_is_inconclusive_never_blocked_and_costs_the_model_nothing():
    # A cell killed at its deadline (new records) or an older "timeout" record: neither is evidence.
    quiet = compute_mqs(all_gates_pass())
    for stopped in (
        record(GateId.G3_STABILITY, Outcome.INCONCLUSIVE, check="cell", n_compared=0, cause=InfraCause.DEADLINE),
        record(GateId.G3_STABILITY, Outcome.TIMEOUT, check="cell", n_compared=0),
    ):
        result = compute_mqs(all_gates_pass() + [stopped])
        assert result.status is Status.INCONCLUSIVE and not result.blockers
        assert result.gateways[GateId.G3_STABILITY] is GatewayState.INCONCLUSIVE
        assert result.score == quiet.score == 1000  # left out of the fractions: for nor against the model
        assert result.grade == "I" and "deadline" in result.inconclusive[0]


def test_evidence_against_the_model_blocks_even_beside_inconclusive_records():
    records = all_gates_pass() + [
        record(GateId.G2_INFERENCE, Outcome.INCONCLUSIVE, check="slow", n_compared=0, cause=InfraCause.OOM),
        record(GateId.G4_QUALITY, Outcome.FALSIFIED, check="oracle:arithmetic"),
    ]
    result = compute_mqs(records)
    assert result.status is Status.BLOCKED and result.score == 0 and result.grade == "F"


def test_a_gateway_with_only_inconclusive_records_does_not_zero_the_score():
    records = [r for r in all_gates_pass() if r.gate is not GateId.G2_INFERENCE] + [
        record(GateId.G2_INFERENCE, Outcome.INCONCLUSIVE, check="c", n_compared=0, cause=InfraCause.DEADLINE)
    ]
    result = compute_mqs(records)
    assert result.gateways[GateId.G2_INFERENCE] is GatewayState.INCONCLUSIVE
    assert result.status is Status.INCONCLUSIVE and result.score == result.raw > 0


def test_skipped_records_earn_nothing_and_lower_the_gate_fraction():
    # Half of the G2 cells skipped (GPU without CUDA): execution loses 1/3 of half its weight.
    records = all_gates_pass() + [
        record(GateId.G2_INFERENCE, Outcome.SKIPPED, check="gpu", n_compared=0, backend=Backend.GPU, reason="no CUDA")
    ]
    result = compute_mqs(records)
    execution = next(c for c in result.categories if c.category is Category.EXECUTION)
    assert execution.points == pytest.approx(200 * (1 + 0.5 + 1) / 3)
    assert result.raw == 1000 - 34  # floor(1000 - 33.33...)
    assert result.status is Status.CERTIFIED and result.grade == "A+"


def test_a_missing_gate_scores_zero_in_its_category():
    records = [r for r in all_gates_pass() if r.gate is not GateId.GPU_SPEEDUP]
    result = compute_mqs(records)
    performance = next(c for c in result.categories if c.category is Category.PERFORMANCE)
    assert performance.points == 50 and result.score == 950


def test_honest_cpu_only_run_is_provisional_not_certified():
    # Every CPU check corroborated, every GPU twin skipped, GPU speedup skipped; an MVP-tier run, so
    # FUNCTIONAL-CORRECTNESS (only the models' -full playbooks run HumanEval) is not planned and costs nothing.
    records = []
    for gate in (g for g in CATALOG if g is not GateId.FUNCTIONAL_CORRECTNESS):
        records.append(record(gate, check=f"{gate}-cpu"))
        if gate in (
            GateId.G1_LOAD,
            GateId.G2_INFERENCE,
            GateId.G3_STABILITY,
            GateId.G4_QUALITY,
            GateId.THROUGHPUT,
            GateId.GPU_SPEEDUP,
            GateId.DETERMINISM,
            GateId.STOP_BEHAVIOR,  # reply and perplexity checks have a GPU twin (apr.qa.gates.model_level)
            GateId.PERPLEXITY,
        ):
            records.append(
                record(
                    gate,
                    Outcome.SKIPPED,
                    check=f"{gate}-gpu",
                    backend=Backend.GPU,
                    n_compared=0,
                    reason="no CUDA device",
                )
            )
    result = compute_mqs(records)
    assert result.gateways_passed and not result.blockers
    assert 700 <= result.score < 800 and result.status is Status.PROVISIONAL


def planned(records, gates):
    """``records`` as a plan enabling exactly ``gates`` wrote them."""
    return [
        r.model_copy(update={"provenance": r.provenance.model_copy(update={"gates": tuple(gates)})}) for r in records
    ]


def test_a_gate_the_plan_did_not_enable_costs_nothing_and_a_planned_one_without_records_costs_its_share():
    everything_but_humaneval = [r for r in all_gates_pass() if r.gate is not GateId.FUNCTIONAL_CORRECTNESS]
    plan = [gate for gate in CATALOG if gate is not GateId.FUNCTIONAL_CORRECTNESS]
    assert compute_mqs(planned(everything_but_humaneval, plan)).score == 1000
    # The same records from a plan that did enable HumanEval: its absence costs its share of quality.
    result = compute_mqs(planned(everything_but_humaneval, CATALOG))
    quality = next(c for c in result.categories if c.category is Category.QUALITY)
    share = CATEGORY_WEIGHTS[Category.QUALITY] / len(gates_in(Category.QUALITY))
    assert quality.points == pytest.approx(CATEGORY_WEIGHTS[Category.QUALITY] - share)
    assert result.status is Status.CERTIFIED and result.score == math.floor(1000 - share + 1e-9)


def test_a_plan_that_leaves_out_a_whole_category_cannot_certify():
    no_performance = [g for g in CATALOG if g not in gates_in(Category.PERFORMANCE)]
    records = [r for r in all_gates_pass() if r.gate in no_performance]
    result = compute_mqs(planned(records, no_performance))
    assert result.score == 1000 - CATEGORY_WEIGHTS[Category.PERFORMANCE]
    assert next(c for c in result.categories if c.category is Category.PERFORMANCE).points == 0


def test_records_that_predate_the_plan_field_are_scored_over_their_tiers_template():
    # No provenance.gates: an mvp record set is held to what mvp.yaml enables (not HumanEval) ...
    mvp = [r for r in all_gates_pass(tier=Tier.MVP) if r.gate is not GateId.FUNCTIONAL_CORRECTNESS]
    assert compute_mqs(mvp).score == 1000
    # ... a smoke run to smoke.yaml's gates, so its missing parity category scores 0, and with no tier at all,
    # to the whole catalog.
    smoke = [r for r in all_gates_pass(tier=Tier.SMOKE) if r.gate in GATEWAYS]
    assert compute_mqs(smoke).score < CERTIFIED_MIN
    untiered = [r for r in all_gates_pass(tier=None) if r.gate is not GateId.FUNCTIONAL_CORRECTNESS]
    assert compute_mqs(untiered).score < 1000


def test_evidence_is_never_scored_over_less_than_it_holds():
    # A record of a gate the plan did not list still counts: a failing extra check is not hidden.
    records = all_gates_pass() + [record(GateId.FUNCTIONAL_CORRECTNESS, Outcome.FALSIFIED, check="humaneval")]
    plan = [gate for gate in CATALOG if gate is not GateId.FUNCTIONAL_CORRECTNESS]
    assert compute_mqs(planned(records, plan)).score < 1000


def test_a_p0_non_gateway_failure_blocks_without_zeroing():
    result = compute_mqs(all_gates_pass() + [record(GateId.STRUCTURE, Outcome.FALSIFIED, check="q bias zero")])
    assert result.status is Status.BLOCKED and result.score > 900
    assert any("STRUCTURE" in line for line in result.blockers)


def test_a_p2_failure_costs_points_but_does_not_block():
    result = compute_mqs(all_gates_pass() + [record(GateId.THROUGHPUT, Outcome.FALSIFIED, check="slow")])
    assert result.status is Status.CERTIFIED and result.score == 1000 - 25


@pytest.mark.parametrize(
    "score, grade",
    [
        (1000, "A+"),
        (950, "A+"),
        (949, "A"),
        (900, "A"),
        (899, "B+"),
        (850, "B+"),
        (849, "B"),
        (800, "B"),
        (799, "C"),
        (700, "C"),
        (699, "F"),
        (0, "F"),
    ],
)
def test_grade_boundaries(score, grade):
    assert grade_for(score) == grade


def test_result_serializes_for_mqs_json():
    data = compute_mqs(all_gates_pass()).model_dump(mode="json")
    assert data["score"] == 1000 and data["gateways"]["G0-INTEGRITY"] == "passed"
