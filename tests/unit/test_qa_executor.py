"""The executor on real subprocesses of a stand-in `apr`: evidence per cell, GPU skips, resume, stop-on-P0, workers."""

from __future__ import annotations

import sys
from pathlib import Path

from apr.qa.axes import Backend, Format, Modality
from apr.qa.evidence import EvidenceWriter, Outcome, finished_keys, read_evidence
from apr.qa.executor import ExecutionPlan, execute
from apr.qa.infra import InfraCause
from apr.qa.matrix import Cell
from apr.qa.oracles.base import ArithmeticSpec, NonEmptySpec
from apr.qa.playbook import FailurePolicy
from apr.qa.recording import Recorder
from apr.qa.scenarios import Pool, Prompt
from apr.qa.score import Status, compute_mqs

STAND_IN = (sys.executable, str(Path(__file__).with_name("qa_exec_stand_in_apr.py")))
SHA = "ab" * 32


def prompt(text: str, pid: str) -> Prompt:
    return Prompt(id=pid, pool=Pool.CUSTOM, text=text, oracles=(ArithmeticSpec(), NonEmptySpec()), max_tokens=16)


def cells(*prompts: Prompt, backends=(Backend.CPU,), modalities=(Modality.RUN,)) -> tuple[Cell, ...]:
    return tuple(
        Cell(format=Format.GGUF, backend=b, modality=m, prompt=p, seed=7)
        for b in backends
        for m in modalities
        for p in prompts
    )


def plan(matrix, tmp_path: Path, **kw) -> ExecutionPlan:
    artifact = tmp_path / "model.gguf"
    artifact.write_bytes(b"stand-in")
    return ExecutionPlan(
        cells=matrix, artifacts={Format.GGUF: artifact}, timeout_s=kw.pop("timeout_s", 30.0), apr_argv=STAND_IN, **kw
    )


def recorder() -> Recorder:
    return Recorder(model="stand-in:1b", sha256={Format.GGUF: SHA}, playbook="unit")


def run(matrix, tmp_path, evidence: Path, **kw):
    with EvidenceWriter(evidence) as writer:
        summary = execute(plan(matrix, tmp_path, **kw), recorder(), writer, done_keys=finished_keys(evidence))
    return summary, read_evidence(evidence).records


def test_a_good_cell_writes_g2_g4_and_g3_records_all_corroborated(tmp_path):
    summary, records = run(cells(prompt("What is 2+2?", "p1")), tmp_path, tmp_path / "e.jsonl")
    assert [(r.gate.value, r.check) for r in records] == [
        ("G2-INFERENCE", "reply"),
        ("G4-QUALITY", "oracle:arithmetic"),
        ("G4-QUALITY", "oracle:non_empty"),
        ("G3-STABILITY", "process"),
    ]
    assert all(r.outcome is Outcome.CORROBORATED for r in records), [r.reason for r in records]
    assert records[0].provenance.model_sha256 == SHA
    assert records[0].metrics["decode_tok_s"] == 50.0
    assert summary.cells_run == 1


def test_gpu_cells_without_cuda_are_skipped_with_a_reason_and_never_pass(tmp_path):
    matrix = cells(prompt("What is 2+2?", "p1"), backends=(Backend.CPU, Backend.GPU))
    _, records = run(matrix, tmp_path, tmp_path / "e.jsonl", cuda_available=False)
    gpu = [r for r in records if r.scenario.backend is Backend.GPU]
    assert gpu and all(r.outcome is Outcome.SKIPPED for r in gpu)
    assert all("CUDA" in r.reason for r in gpu)
    assert all(r.provenance.device == "none" for r in gpu)
    assert compute_mqs(records).status is not Status.CERTIFIED  # skipped cells leave the evidence incomplete


def test_a_crash_fails_g3_but_a_cell_killed_at_its_deadlines_is_inconclusive_after_one_retry(tmp_path):
    matrix = cells(prompt("SEGV", "crash"), prompt("HANG", "hang"))
    _, records = run(matrix, tmp_path, tmp_path / "e.jsonl", timeout_s=2.0)
    g3 = {r.scenario.prompt_id: r for r in records if r.gate.value == "G3-STABILITY"}
    assert g3["crash"].outcome is Outcome.CRASHED and "SIGSEGV" in g3["crash"].reason
    hang = [r for r in records if r.scenario.prompt_id == "hang"]
    assert {r.outcome for r in hang} == {Outcome.INCONCLUSIVE} and {r.cause for r in hang} == {InfraCause.DEADLINE}
    assert g3["hang"].metrics["attempts"] == 2 and "2 attempt(s) (deadlines 2s, 4s)" in g3["hang"].reason
    g4 = [r for r in records if r.gate.value == "G4-QUALITY" and r.scenario.prompt_id == "crash"]
    assert g4 and all(r.outcome is Outcome.SKIPPED for r in g4)
    assert compute_mqs(records).status is Status.BLOCKED  # the crash is evidence; the hang is not


def test_a_cell_the_machine_stopped_once_passes_on_its_retry(tmp_path):
    marker = tmp_path / "was-slow"
    _, records = run(
        cells(prompt(f"What is 2+2? HANG_ONCE {marker}", "slow")), tmp_path, tmp_path / "e.jsonl", timeout_s=2.0
    )
    assert marker.exists() and all(r.outcome is Outcome.CORROBORATED for r in records), [r.reason for r in records]
    assert records[-1].metrics["attempts"] == 2
    assert compute_mqs(records).status is not Status.INCONCLUSIVE


def test_memory_and_disk_failures_are_the_machine_and_a_traceback_is_the_model(tmp_path):
    matrix = cells(prompt("MEMORY", "oom"), prompt("NOSPACE", "disk"), prompt("RAISE", "bug"))
    _, records = run(matrix, tmp_path, tmp_path / "e.jsonl")
    g3 = {r.scenario.prompt_id: r for r in records if r.gate.value == "G3-STABILITY"}
    assert (g3["oom"].outcome, g3["oom"].cause) == (Outcome.INCONCLUSIVE, InfraCause.OOM)
    assert (g3["disk"].outcome, g3["disk"].cause) == (Outcome.INCONCLUSIVE, InfraCause.DISK_FULL)
    assert g3["bug"].outcome is Outcome.CRASHED and "planted failure" in g3["bug"].reason


def test_resume_appends_only_the_cells_not_yet_finished(tmp_path):
    evidence = tmp_path / "e.jsonl"
    first = cells(prompt("What is 2+2?", "p1"))
    run(first, tmp_path, evidence)
    before = evidence.read_text()
    both = cells(prompt("What is 2+2?", "p1"), prompt("What is 1+3?", "p2"))
    summary, records = run(both, tmp_path, evidence)
    assert evidence.read_text().startswith(before)  # append-only
    assert summary.cells_resumed == 1 and summary.cells_run == 1
    assert sorted({r.scenario.prompt_id for r in records}) == ["p1", "p2"]
    assert len(records) == 8  # 4 per cell, none twice


def test_resume_completes_a_cell_cut_off_mid_write_without_duplicates(tmp_path):
    evidence = tmp_path / "e.jsonl"
    matrix = cells(prompt("What is 2+2?", "p1"))
    run(matrix, tmp_path, evidence)
    lines = evidence.read_text().splitlines(keepends=True)
    evidence.write_text("".join(lines[:2]) + lines[2][:40])  # two records, then a torn third line
    _, records = run(matrix, tmp_path, evidence)
    keys = [r.key for r in records]
    assert len(keys) == 4 and len(set(keys)) == 4


def test_stop_on_first_p0_runs_no_cell_after_the_failure(tmp_path):
    matrix = cells(prompt("SEGV", "crash"), prompt("What is 2+2?", "p1"), prompt("What is 1+3?", "p2"))
    summary, records = run(matrix, tmp_path, tmp_path / "e.jsonl", failure_policy=FailurePolicy.STOP_ON_FIRST_P0)
    assert summary.stopped_by and "crash" in summary.stopped_by and "SIGSEGV" in summary.stopped_by
    assert summary.cells_not_run == 2
    assert {r.scenario.prompt_id for r in records} == {"crash"}


def test_collect_all_runs_every_cell_despite_failures(tmp_path):
    matrix = cells(prompt("SEGV", "crash"), prompt("What is 2+2?", "p1"))
    summary, records = run(matrix, tmp_path, tmp_path / "e.jsonl")
    assert summary.cells_not_run == 0 and {r.scenario.prompt_id for r in records} == {"crash", "p1"}


def test_parallel_workers_write_every_record_once(tmp_path):
    matrix = cells(
        *(prompt(f"What is {i}+{4 - i}?", f"p{i}") for i in range(4)), modalities=(Modality.RUN, Modality.CHAT)
    )
    summary, records = run(matrix, tmp_path, tmp_path / "e.jsonl", workers=3)
    assert summary.cells_run == 8
    assert len({r.key for r in records}) == len(records) == 32
    assert all(r.outcome is Outcome.CORROBORATED for r in records), [
        r.reason for r in records if r.outcome is not Outcome.CORROBORATED
    ]


def test_a_format_without_artifact_fails_inference_instead_of_passing(tmp_path):
    matrix = cells(prompt("What is 2+2?", "p1"))
    _, records = run(matrix, tmp_path, tmp_path / "e.jsonl", missing_artifacts={Format.GGUF: "apr convert failed"})
    g2 = next(r for r in records if r.gate.value == "G2-INFERENCE")
    assert g2.outcome is Outcome.FALSIFIED and "apr convert failed" in g2.reason


def test_an_empty_prompt_may_be_answered_with_nothing_but_a_normal_prompt_may_not(tmp_path):
    empty = Prompt(id="empty", pool=Pool.EMPTY, text="", max_tokens=8, allows_refusal=True)
    normal = Prompt(id="normal", pool=Pool.CUSTOM, text="", max_tokens=8)
    matrix = cells(empty, normal, modalities=(Modality.CHAT,))
    silent = (sys.executable, "-c", "import sys; sys.stdin.read()")  # reads its input, answers nothing, exit 0
    with EvidenceWriter(tmp_path / "e.jsonl") as writer:
        summary = execute(
            ExecutionPlan(cells=matrix, artifacts={Format.GGUF: tmp_path / "m.gguf"}, timeout_s=30, apr_argv=silent),
            recorder(),
            writer,
        )
    g2 = {
        r.scenario.prompt_id: r.outcome
        for r in read_evidence(tmp_path / "e.jsonl").records
        if r.gate.value == "G2-INFERENCE"
    }
    assert summary.cells_run == 2
    assert g2 == {"empty": Outcome.CORROBORATED, "normal": Outcome.FALSIFIED}


def test_an_interrupt_kills_running_cells_and_records_nothing_about_them(tmp_path):
    import threading
    import time

    from apr.qa.executor import CellExecutor

    matrix = cells(prompt("HANG", "hang1"), prompt("HANG", "hang2"))
    evidence = tmp_path / "e.jsonl"
    with EvidenceWriter(evidence) as writer:
        executor = CellExecutor(plan(matrix, tmp_path, timeout_s=120.0, workers=2), recorder(), writer)
        worker = threading.Thread(target=executor.run)
        started = time.monotonic()
        worker.start()
        time.sleep(2.0)
        executor.children.kill_all()  # what the executor does on Ctrl-C
        worker.join(timeout=30)
    assert not worker.is_alive() and time.monotonic() - started < 30
    assert read_evidence(evidence).records == ()


# ---- the exact second opinion of a failed oracle (apr.qa.gates.second_opinion) --------------------------


def blocking_failures(records):
    from apr.qa.gates.catalog import CATALOG

    return [r for r in records if r.outcome.is_failure and CATALOG[r.gate].blocking]


def test_an_oracle_only_the_fast_engine_fails_passes_on_the_exact_rerun_and_is_recorded_under_numerics(tmp_path):
    matrix = cells(prompt("What is 2+2? FAST_WRONG", "flip"), modalities=(Modality.RUN, Modality.CHAT, Modality.SERVE))
    _, records = run(matrix, tmp_path, tmp_path / "e.jsonl")
    for modality in (Modality.RUN, Modality.CHAT, Modality.SERVE):
        mine = [r for r in records if r.scenario.modality is modality or modality.value in r.check]
        arithmetic = next(r for r in mine if r.check == "oracle:arithmetic")
        assert arithmetic.outcome is Outcome.CORROBORATED, arithmetic.reason
        assert arithmetic.provenance.numerics == "exact" and "the fast engine's reply failed" in arithmetic.reason
        flip = next(r for r in records if r.gate.value == "NUMERICS-PARITY" and f"/{modality}/" in r.check)
        assert flip.outcome is Outcome.FALSIFIED and "5" in flip.output_excerpt
        assert [r.gate.value for r in mine if r.scenario.modality is modality][-1] == "G3-STABILITY"
    assert not blocking_failures(records)  # a numerics finding costs points, never blocks


def test_an_oracle_both_engines_fail_stays_falsified_and_a_stopped_second_opinion_is_inconclusive(tmp_path):
    matrix = cells(prompt("What is 2+2? ALWAYS_WRONG", "wrong"), prompt("What is 2+2? FAST_WRONG EXACT_HANG", "slow"))
    _, records = run(matrix, tmp_path, tmp_path / "e.jsonl", timeout_s=2.0, retries=0, exact_deadline_factor=1.0)
    by = {(r.scenario.prompt_id, r.check): r for r in records}
    wrong = by[("wrong", "oracle:arithmetic")]
    assert wrong.outcome is Outcome.FALSIFIED and "the exact float32 engine too" in wrong.reason
    slow = by[("slow", "oracle:arithmetic")]
    assert (slow.outcome, slow.cause) == (Outcome.INCONCLUSIVE, InfraCause.DEADLINE)
    assert "exact second opinion was stopped by the machine" in slow.reason
    assert not [r for r in records if r.gate.value == "NUMERICS-PARITY"]
    assert blocking_failures(records) == [wrong]


def test_without_the_second_opinion_the_fast_reply_is_the_verdict(tmp_path):
    _, records = run(
        cells(prompt("What is 2+2? FAST_WRONG", "flip")), tmp_path, tmp_path / "e.jsonl", second_opinion=False
    )
    arithmetic = next(r for r in records if r.check == "oracle:arithmetic")
    assert arithmetic.outcome is Outcome.FALSIFIED and "exact" not in arithmetic.reason
