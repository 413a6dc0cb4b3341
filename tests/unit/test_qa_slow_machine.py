"""A healthy fixture model on an artificially slow machine: every cell and benchmark the machine cannot finish
is retried once, then recorded inconclusive with the machine as the cause; the certification is INCONCLUSIVE
(grade I), never BLOCKED or F, and the report says why at the top. Built on the stage API (apr.qa.stages)."""

from __future__ import annotations

import io
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from apr.qa import stages
from apr.qa.evidence import Calibration, Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.infra import InfraCause
from apr.qa.playbook import load_playbook
from apr.qa.progress import RunProgress
from apr.qa.reports.html import render_html
from apr.qa.score import Status

SLOW_APR = (sys.executable, str(Path(__file__).with_name("qa_slow_apr.py")), "60")  # 60 s late for everything
MACHINE_GATES = {GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY, GateId.THROUGHPUT}


def playbook(folder: Path, model: Path) -> Path:
    path = folder / "slow.playbook.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apr_playbook: 1
        name: fixture-slow-smoke
        tier: smoke
        model: {{ref: fixture-qwen2, path: "{model}", architecture: qwen2}}
        matrix: {{formats: [gguf], backends: [cpu], modalities: [run]}}
        scenarios:
          seed: 7
          max_tokens: 8
          pools: {{arithmetic: 0}}
          prompts: [{{text: "Hello there", oracles: [{{name: non_empty}}]}}]
        execution: {{timeout_s: 1}}
        gates:
          CONTRACT-INVARIANTS:
          THROUGHPUT: {{min_tok_s: {{cpu: 1.0}}}}
        """)
    )
    return path


def test_a_slow_machine_makes_a_healthy_model_inconclusive_never_blocked(fixture_models, tmp_path):
    model = fixture_models["qwen2"]["gguf"]
    pb = load_playbook(playbook(tmp_path, model))
    artifacts = stages.convert(stages.acquire(pb.model.ref, model), pb.matrix.formats, tmp_path / "artifacts")
    # A calibration as a fast machine would measure it: the deadlines stay at the playbook's 1 s, and the
    # runner's 60 s of lateness is what the machine does to them.
    fast = Calibration(
        threads=1, threads_reason="test", stream_gb_s=50.0, startup_s=0.01, measured_at=datetime.now(UTC)
    )
    subject = stages.subject_of(pb, artifacts, cuda=False, apr_argv=SLOW_APR, calibration=fast)

    log = io.StringIO()
    shown = RunProgress(stream=log, live=False)  # what a log (make demo | tee, Dagster) shows
    evidence = stages.gate(
        subject,
        tmp_path / "evidence.jsonl",
        lambda writer: stages.trace(subject, writer, progress=shown),
        progress=shown,
    )
    records = evidence.records
    stopped = [r for r in records if r.gate in MACHINE_GATES]
    assert {r.gate for r in stopped} == MACHINE_GATES
    assert all(r.outcome is Outcome.INCONCLUSIVE and r.cause is InfraCause.DEADLINE for r in stopped), [
        (r.gate, r.outcome, r.reason) for r in stopped
    ]
    g3 = next(r for r in stopped if r.gate is GateId.G3_STABILITY)
    assert g3.metrics["attempts"] == 2 and "this machine delivered" in g3.reason and "--threads 1" in g3.reason
    assert g3.provenance.calibration == fast and g3.provenance.threads == 1
    model_level = [r for r in records if r.gate in (GateId.G0_INTEGRITY, GateId.CONTRACT_INVARIANTS)]
    assert model_level and not any(r.outcome.is_failure or r.outcome.is_infrastructure for r in model_level)

    mqs = stages.score(records)
    assert mqs.status is Status.INCONCLUSIVE and mqs.grade == "I" and not mqs.blockers
    assert any("deadline" in line for line in mqs.inconclusive)
    lines = log.getvalue().splitlines()
    for phase in ("model-level gates", "cells", "runtime gates"):  # every phase: what ran, how long, when done
        assert any(line.startswith(f"  [{phase} ") and " in " in line for line in lines), (phase, lines)
    assert any("CONTRACT-INVARIANTS" in line and "ETA" in line for line in lines), lines
    assert any("[cells 1/1" in line and "inconclusive (deadline)" in line for line in lines), lines
    page = render_html(records, mqs)
    assert page.index("Inconclusive: the machine, not the model") < page.index("<h2>Gateways</h2>")
