"""The evidence record: schema invariants, atomic append-only JSONL, strict reading, torn-tail handling."""

from __future__ import annotations

import json
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from qa_core_factory import ENDPOINT, T0, provenance, record

from apr.errors import AprError
from apr.qa.axes import Backend
from apr.qa.evidence import EvidenceRecord, EvidenceWriter, Outcome, excerpt, finished_keys, read_evidence
from apr.qa.gates.catalog import GateId
from apr.qa.infra import InfraCause


def test_a_corroborated_record_that_compared_nothing_cannot_exist():
    with pytest.raises(ValidationError, match="n_compared"):
        record(GateId.G4_QUALITY, Outcome.CORROBORATED, n_compared=0)


def test_a_skipped_record_needs_no_comparison_but_a_reason():
    skipped = record(GateId.G1_LOAD, Outcome.SKIPPED, n_compared=0, reason="no CUDA device on this host")
    assert skipped.outcome is Outcome.SKIPPED and not skipped.outcome.is_failure
    with pytest.raises(ValidationError, match="reason"):
        record(GateId.G1_LOAD, Outcome.SKIPPED, n_compared=0, reason="")


def test_unknown_fields_and_naive_timestamps_are_rejected():
    data = json.loads(record(GateId.G1_LOAD).model_dump_json())
    EvidenceRecord.model_validate(data)
    with pytest.raises(ValidationError, match="surprise"):
        EvidenceRecord.model_validate({**data, "surprise": 1})
    naive = {**data, "provenance": {**data["provenance"], "started_at": "2026-11-23T18:00:00"}}
    with pytest.raises(ValidationError, match="timezone"):
        EvidenceRecord.model_validate(naive)


def test_finished_before_started_is_rejected():
    with pytest.raises(ValidationError, match="before"):
        provenance(seconds=-1)


def test_written_records_read_back_identically(tmp_path):
    path = tmp_path / "sub" / "evidence.jsonl"
    records = [record(GateId.G2_INFERENCE, check=f"c{i}", output="你好 ✓") for i in range(3)]
    with EvidenceWriter(path) as writer:
        for item in records:
            writer.append(item)
    log = read_evidence(path)
    assert log.records == tuple(records) and log.torn_tail is None
    assert path.read_text(encoding="utf-8").count("\n") == 3


def test_appending_reopens_without_losing_records(tmp_path):
    path = tmp_path / "evidence.jsonl"
    with EvidenceWriter(path) as writer:
        writer.append(record(GateId.G1_LOAD, check="a"))
    with EvidenceWriter(path) as writer:
        writer.append(record(GateId.G1_LOAD, check="b"))
    assert [r.check for r in read_evidence(path).records] == ["a", "b"]
    assert len(finished_keys(path)) == 2 and finished_keys(tmp_path / "none.jsonl") == frozenset()


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "evidence.jsonl"
    with EvidenceWriter(path) as writer:

        def work(worker: int) -> None:
            for i in range(20):
                writer.append(record(GateId.G2_INFERENCE, check=f"w{worker}-{i}", output="x" * 1500))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len({r.check for r in read_evidence(path).records}) == 80


def test_a_torn_last_line_is_reported_not_counted_and_cut_before_appending(tmp_path):
    path = tmp_path / "evidence.jsonl"
    with EvidenceWriter(path) as writer:
        writer.append(record(GateId.G1_LOAD, check="whole"))
    full_line = record(GateId.G1_LOAD, check="torn").model_dump_json()
    with path.open("a", encoding="utf-8") as handle:
        handle.write(full_line[:57])
    log = read_evidence(path)
    assert [r.check for r in log.records] == ["whole"]
    assert log.torn_tail == full_line[:57] and "incomplete" in log.warning()
    with EvidenceWriter(path) as writer:
        assert writer.repaired_tail == 57
        writer.append(record(GateId.G1_LOAD, check="after"))
    assert [r.check for r in read_evidence(path).records] == ["whole", "after"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json\n", "not JSON"),
        ('{"gate": "G9-NOPE"}\n', "not a valid evidence record"),
        ("\n", "blank line"),
    ],
)
def test_a_corrupt_line_names_the_file_and_line(tmp_path, bad, message):
    path = tmp_path / "evidence.jsonl"
    good = record(GateId.G1_LOAD).model_dump_json() + "\n"
    path.write_text(good + bad + good, encoding="utf-8")
    with pytest.raises(AprError, match=rf"evidence.jsonl:2: {message}"):
        read_evidence(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AprError, match="not found"):
        read_evidence(tmp_path / "nope.jsonl")


def test_excerpt_keeps_head_and_tail():
    text = "A" * 3000 + "Z"
    cut = excerpt(text, limit=100)
    assert cut.startswith("A" * 50) and cut.endswith("Z") and "chars cut" in cut
    assert excerpt("short") == "short"


def test_timestamps_are_serialized_with_zone():
    data = json.loads(record(GateId.G1_LOAD).model_dump_json())
    assert data["provenance"]["started_at"].startswith(T0.isoformat()[:19])
    assert data["provenance"]["started_at"].endswith("Z") or "+00:00" in data["provenance"]["started_at"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    output=st.text(max_size=300),
    reason=st.text(min_size=1, max_size=80),
    outcome=st.sampled_from(Outcome),
    metric=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**9), 10**9),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
)
def test_any_record_round_trips_through_the_file(tmp_path, output, reason, outcome, metric):
    item = record(
        GateId.G4_QUALITY,
        outcome,
        reason=reason,
        output=excerpt(output),
        metrics={"m": metric},
        n_compared=1 if outcome is Outcome.CORROBORATED else 0,
        cause=InfraCause.DEADLINE if outcome is Outcome.INCONCLUSIVE else None,
        endpoint=ENDPOINT if outcome is Outcome.NOT_APPLICABLE else None,
        backend=None if outcome is Outcome.NOT_APPLICABLE else Backend.CPU,
    )
    path = tmp_path / "round-trip.jsonl"
    path.unlink(missing_ok=True)  # hypothesis reuses tmp_path across examples
    with EvidenceWriter(path) as writer:
        writer.append(item)
    assert read_evidence(path).records == (item,)


def test_an_inconclusive_record_must_name_its_machine_cause_and_only_it_may():
    with pytest.raises(ValidationError, match="machine cause"):
        record(GateId.G2_INFERENCE, Outcome.INCONCLUSIVE, n_compared=0)
    with pytest.raises(ValidationError, match="machine cause"):
        record(GateId.G2_INFERENCE, Outcome.FALSIFIED, cause=InfraCause.OOM)
    older = record(GateId.G2_INFERENCE, Outcome.TIMEOUT, n_compared=0)  # evidence from before causes existed
    assert older.infra_cause is InfraCause.DEADLINE and not older.outcome.is_failure


def test_only_an_endpoints_evidence_has_not_applicable_records_and_they_compared_nothing():
    with pytest.raises(ValidationError, match="only an endpoint"):
        record(GateId.STRUCTURE, Outcome.NOT_APPLICABLE, n_compared=0)  # a checkpoint's gate cannot opt out
    # ... except the gate of a feature the model may lack (FIM tokens, a template that renders tools).
    assert record(GateId.FIM, Outcome.NOT_APPLICABLE, n_compared=0).outcome is Outcome.NOT_APPLICABLE
    with pytest.raises(ValidationError, match="compared nothing"):
        record(GateId.STRUCTURE, Outcome.NOT_APPLICABLE, n_compared=1, endpoint=ENDPOINT)
    inapplicable = record(GateId.STRUCTURE, Outcome.NOT_APPLICABLE, n_compared=0, endpoint=ENDPOINT, backend=None)
    assert not inapplicable.outcome.is_failure and not inapplicable.outcome.is_infrastructure


def test_provenance_capture_fills_versions_and_git_sha():
    from apr.qa.provenance import capture, engine_git_sha

    captured = capture(started_at=T0, finished_at=T0, device="cpu", seed=3)
    assert captured.engine_git_sha == engine_git_sha() and captured.host and captured.apr_version
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", captured.engine_git_sha)
