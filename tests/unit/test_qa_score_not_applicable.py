"""The MQS rule for not_applicable records: never a pass, and a gate made only of them leaves the plan."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from qa_core_factory import all_gates_pass, record

from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import CATALOG, CATEGORY_WEIGHTS, Category, GateId, gates_in
from apr.qa.reports.gate_table import gate_rows
from apr.qa.reports.html import render_html
from apr.qa.reports.junit import render_junit
from apr.qa.score import Status, compute_mqs, planned_gates

SERVE = (GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS)


def as_planned(records, gates=tuple(CATALOG)):
    return [
        r.model_copy(update={"provenance": r.provenance.model_copy(update={"gates": tuple(gates)})}) for r in records
    ]


def without(records, *gates):
    return [r for r in records if r.gate not in gates]


def quality_points(result) -> float:
    return next(c.points for c in result.categories if c.category is Category.QUALITY)


def test_a_gate_whose_records_are_all_not_applicable_neither_earns_nor_costs():
    records = without(all_gates_pass(), GateId.FIM) + [
        record(GateId.FIM, Outcome.NOT_APPLICABLE, modality=None, n_compared=0)
    ]
    records = as_planned(records)
    assert GateId.FIM not in planned_gates(records)
    result = compute_mqs(records)
    assert result.score == 1000 and result.status is Status.CERTIFIED
    assert all(g.gate is not GateId.FIM for c in result.categories for g in c.gates)


def test_not_applicable_is_never_a_pass():
    # The same gate recorded skipped (could not run here) stays planned and costs its share of quality.
    skipped = as_planned(without(all_gates_pass(), GateId.FIM) + [record(GateId.FIM, Outcome.SKIPPED)])
    result = compute_mqs(skipped)
    share = CATEGORY_WEIGHTS[Category.QUALITY] / len(gates_in(Category.QUALITY))
    assert quality_points(result) == pytest.approx(CATEGORY_WEIGHTS[Category.QUALITY] - share)
    # Next to applicable records, not_applicable ones count neither way: the gate is scored on the others.
    mixed = as_planned(
        without(all_gates_pass(), GateId.TOOL_CALLS)
        + [
            record(GateId.TOOL_CALLS, Outcome.NOT_APPLICABLE, check="a", n_compared=0),
            record(GateId.TOOL_CALLS, Outcome.FALSIFIED),
        ]
    )
    scores = {g.gate: g for c in compute_mqs(mixed).categories for g in c.gates}
    assert scores[GateId.TOOL_CALLS].fraction == 0.0 and scores[GateId.TOOL_CALLS].not_applicable == 1
    # A checkpoint's gateway (or any gate but a feature's) can never be left out so: the record is refused.
    with pytest.raises(ValidationError, match="cannot be not_applicable"):
        record(GateId.G4_QUALITY, Outcome.NOT_APPLICABLE, n_compared=0)


def test_a_model_without_any_serve_feature_scores_as_if_the_gates_were_never_planned():
    na = [record(gate, Outcome.NOT_APPLICABLE, modality=None, check="applicable", n_compared=0) for gate in SERVE]
    with_na = compute_mqs(as_planned(without(all_gates_pass(), *SERVE) + na))
    never = compute_mqs(as_planned(without(all_gates_pass(), *SERVE), [g for g in CATALOG if g not in SERVE]))
    assert with_na.score == never.score == 1000


def test_reports_show_not_applicable_records_as_such():
    records = [*all_gates_pass(), record(GateId.FIM, Outcome.NOT_APPLICABLE, reason="no FIM tokens", n_compared=0)]
    rows = {row.gate: row for row in gate_rows(records[-1:])}
    assert rows["FIM"].status == "not applicable"
    junit = render_junit(records)
    assert "not applicable: no FIM tokens" in junit
    html = render_html(records, compute_mqs(records), title="t")
    assert "not_applicable" in html and "no FIM tokens" in html
