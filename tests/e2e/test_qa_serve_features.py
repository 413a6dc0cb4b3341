"""The serve-feature gates end to end: a real `apr serve` of a tiny fixture, asked over HTTP, judged, scored.

The fixture's random weights say nothing useful, so what is checked is the plumbing and the rules: one record
per case, judged by its oracle and never crashed; a grammar-constrained tool call always valid; a feature the
checkpoint lacks recorded not_applicable, with no server started for it, and left out of the MQS plan.
"""

from __future__ import annotations

from serve_coder_fixture import write_coder_fixture

from apr.qa.artifacts import Artifacts
from apr.qa.axes import Backend, Format
from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.gates.serve_features import serve_feature_checks, support_of
from apr.qa.gates.thresholds import GateSet
from apr.qa.recording import Timer
from apr.qa.score import planned_gates
from apr.qa.stages import Subject, runtime_gates

SERVE = (GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS)


def subject_for(path, gates: GateSet) -> Subject:
    return Subject(
        ref="fixture",
        artifacts=Artifacts(source=Format.GGUF, paths={Format.GGUF: path}, digests={Format.GGUF: "ab" * 32}),
        gates=gates,
        backends=(Backend.CPU,),
        formats=(Format.GGUF,),
        timeout_s=120,
    )


def test_the_four_gates_ask_a_real_server_and_judge_every_case(tmp_path):
    path = write_coder_fixture(tmp_path / "coder.gguf")
    assert support_of(path).fim and support_of(path).tools
    gates = GateSet.model_validate(
        {
            "FIM": {"cases": 1, "max_tokens": 8},
            # required: the server's grammar forces a call, so whatever it holds is valid against the schema
            "TOOL-CALLS": {"cases": 1, "max_tokens": 32, "tool_choice": "required"},
            "JSON-MODE": {"cases": 1, "max_tokens": 16},
            "EMBEDDINGS": {},
        }
    )
    checks = serve_feature_checks(subject_for(path, gates), SERVE)
    by_gate = {gate: [c for c in checks if c.gate is gate] for gate in SERVE}
    assert [len(by_gate[g]) for g in SERVE] == [1, 1, 1, 1]
    for check in checks:
        assert check.outcome in (Outcome.CORROBORATED, Outcome.FALSIFIED), (check.check, check.outcome, check.reason)
        assert check.format is Format.GGUF and check.prompt_id and check.n_compared == 1
    for check in by_gate[GateId.TOOL_CALLS]:
        # The grammar lets through only valid calls: random weights may pick the wrong function or ramble in an
        # argument until max_tokens (then the text comes back as content), never break the schema.
        assert "not JSON" not in check.reason and "break the schema" not in check.reason, check.reason
        assert '"tool_calls"' in check.output  # what the model replied goes into the evidence
    assert "triples" in by_gate[GateId.EMBEDDINGS][0].reason


def test_features_the_checkpoint_lacks_are_not_applicable_and_leave_the_plan(fixture_models):
    plain = fixture_models["llama"]["gguf"]
    support = support_of(plain)
    assert not support.fim and not support.tools
    subject = subject_for(plain, GateSet.model_validate({"FIM": {}, "TOOL-CALLS": {}}))
    emitted: list[EvidenceRecord] = []
    timer = Timer()
    runtime_gates(subject, [], emitted.extend)  # the runtime stage, as apr certify runs it
    assert timer.elapsed < 10  # nothing applies: no server was started
    assert [(r.gate, r.outcome, r.check) for r in emitted] == [
        (GateId.FIM, Outcome.NOT_APPLICABLE, "applicable"),
        (GateId.TOOL_CALLS, Outcome.NOT_APPLICABLE, "applicable"),
    ]
    assert "FIM tokens" in emitted[0].reason
    assert {GateId.FIM, GateId.TOOL_CALLS} <= set(emitted[0].provenance.gates or ())  # planned ...
    assert not {GateId.FIM, GateId.TOOL_CALLS} & planned_gates(emitted)  # ... and left out of the MQS plan
