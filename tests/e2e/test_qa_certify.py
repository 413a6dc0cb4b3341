"""`apr certify` end to end: the real CLI in a subprocess on a fixture playbook, real `apr run` cells,
a GPU cell that must come out skipped (never passed), the playbook's self-test once after the gates, resume, and
exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apr.qa.evidence import Outcome, read_evidence

PLAYBOOK = """\
apr_playbook: 1
name: fixture-qwen2-smoke
tier: smoke
model: {{ref: fixture-qwen2, path: "{model}", architecture: qwen2}}
matrix: {{formats: [gguf, apr], backends: [cpu, gpu], modalities: [run]}}
scenarios:
  seed: 7
  max_tokens: 8
  pools: {{arithmetic: 0}}
  prompts: [{{text: "Hello there", oracles: [{{name: non_empty}}]}}]
execution: {{timeout_s: 300}}
gates:
  CONTRACT-INVARIANTS:
  STRUCTURE:
  TOKENIZER-PARITY:
  FORMAT-PARITY: {{min_top1_agreement: 0.5, max_kl: 0.5}}
  THROUGHPUT: {{min_tok_s: {{cpu: 0.01}}}}
  GPU-SPEEDUP:
self_test: {{defects: [nan-norm, rope-theta]}}
"""


def apr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the GPU cells must be skipped even on a GPU machine
    return subprocess.run(
        [sys.executable, "-m", "apr.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def certified(fixture_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("certify")
    playbook = folder / "fixture.playbook.yaml"
    playbook.write_text(PLAYBOOK.format(model=fixture_models["qwen2"]["gguf"]))
    output = folder / "certifications" / "fixture-qwen2-smoke"
    result = apr("certify", str(playbook), "--output", str(output), "--quiet", cwd=folder)
    return folder, playbook, output, result


def test_certify_writes_evidence_reports_and_tables(certified):
    folder, _, output, result = certified
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for name in ("evidence.jsonl", "junit.xml", "report.html", "mqs.json"):
        assert (output / name).is_file(), name
    assert (output / "models.csv").is_file() and (output / "index.html").is_file()  # -o DIR: tables of DIR alone
    assert not (output.parent / "models.csv").exists()
    status = json.loads((output / "mqs.json").read_text())["status"]
    assert status == "PROVISIONAL"  # no defect, but the GPU half of the matrix could not run here
    assert status in result.stdout


def test_cpu_cells_ran_the_real_cli_and_passed(certified):
    _, _, output, _ = certified
    records = read_evidence(output / "evidence.jsonl").records
    cpu = [r for r in records if r.scenario.modality is not None and r.scenario.backend.value == "cpu"]
    assert {r.scenario.format.value for r in cpu} == {"gguf", "apr"}
    assert cpu and all(r.outcome is Outcome.CORROBORATED for r in cpu), [r.reason for r in cpu]
    replies = [r for r in cpu if r.gate.value == "G2-INFERENCE"]
    assert all(r.output_excerpt.strip() and r.metrics["exit_code"] == 0 for r in replies)


def test_gpu_cells_are_skipped_with_reason_and_never_counted_as_pass(certified):
    _, _, output, _ = certified
    records = read_evidence(output / "evidence.jsonl").records
    gpu = [r for r in records if r.scenario.backend is not None and r.scenario.backend.value == "gpu"]
    assert {r.gate.value for r in gpu} >= {"G1-LOAD", "G2-INFERENCE", "G3-STABILITY", "G4-QUALITY", "THROUGHPUT"}
    assert all(r.outcome is Outcome.SKIPPED and "CUDA" in r.reason for r in gpu)
    mqs = json.loads((output / "mqs.json").read_text())
    assert mqs["outcomes"]["skipped"] >= len(gpu)
    assert mqs["score"] < 800  # skipped cells earn nothing, so an incomplete matrix cannot reach CERTIFIED


def test_the_self_test_ran_once_after_the_gates_and_the_verdict_cites_it(certified):
    """NaN in a norm: CONTRACT-INVARIANTS; rope base 1e4 on qwen2 (whose models use 1e6): STRUCTURE."""
    import csv

    _, _, output, result = certified
    detection = json.loads((output / "self-test" / "detection.json").read_text())
    assert detection["playbook"] == "fixture-qwen2-smoke"
    caught = {d["defect"]: d["caught_by"] for d in detection["defects"]}
    assert caught == {"nan-norm": ["CONTRACT-INVARIANTS"], "rope-theta": ["STRUCTURE"]}
    assert detection["clean"]["caught_by"] == [] and detection["clean"]["crashed"] == []
    sentence = "this verdict was produced by gates that caught 2/2 planted defects (0 false blocks on the clean copy)"
    assert (detection["planted"], detection["caught"], detection["false_blocks"]) == (2, 2, 0)
    mqs = json.loads((output / "mqs.json").read_text())
    assert mqs["self_test"]["sentence"] == sentence and mqs["self_test"]["detection_rate"] == 1.0
    assert mqs["status"] == "PROVISIONAL"  # a statement about the gates: the model's verdict is unchanged
    assert "caught 2/2 planted defects" in (output / "report.html").read_text()
    with (output / "models.csv").open(encoding="utf-8") as handle:
        assert [row["self_test"] for row in csv.DictReader(handle)] == [sentence]
    assert (output / "self-test" / "evidence" / "nan-norm.jsonl").is_file()  # each copy's evidence, apart


def test_resume_redoes_nothing_that_finished(certified):
    folder, playbook, output, _ = certified
    before = (output / "evidence.jsonl").read_text()
    detection = (output / "self-test" / "detection.json").read_text()
    again = apr("certify", str(playbook), "--output", str(output), "--resume", "--quiet", cwd=folder)
    assert again.returncode == 0, again.stderr
    assert (output / "evidence.jsonl").read_text() == before
    assert (output / "self-test" / "detection.json").read_text() == detection  # kept, not measured again
    assert "caught 2/2" in json.loads((output / "mqs.json").read_text())["self_test"]["sentence"]


def test_bad_playbook_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.playbook.yaml"
    bad.write_text(
        textwrap.dedent("""\
        apr_playbook: 1
        name: bad
        tier: smoke
        model: {ref: x}
        matrix: {formats: [gguff]}
        """)
    )
    result = apr("certify", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "matrix.formats" in result.stderr


def test_apr_qa_prints_the_gate_table_and_json(fixture_models, tmp_path):
    model = str(fixture_models["llama"]["gguf"])
    # Random weights: the gates that judge what the model says (golden answers, stopping, perplexity, the
    # served JSON replies and embeddings) fail.
    skips = [
        *("--skip", "REFERENCE-PARITY", "--skip", "THROUGHPUT", "--skip", "GOLDEN-OUTPUT"),
        *("--skip", "STOP-BEHAVIOR", "--skip", "PERPLEXITY"),
        *("--skip", "FIM", "--skip", "TOOL-CALLS", "--skip", "JSON-MODE", "--skip", "EMBEDDINGS"),
    ]
    result = apr("qa", model, "--json", "--quiet", "--work-dir", str(tmp_path / "qa"), *skips, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rows = {row["gate"]: row for row in report["gates"]}
    assert rows["CONTRACT-INVARIANTS"]["status"] == "passed"
    assert rows["FORMAT-PARITY"]["status"] == "passed" and rows["FORMAT-PARITY"]["measured"].endswith("top-1")
    assert rows["GPU-SPEEDUP"]["status"] == "skipped"
    assert "GOLDEN-OUTPUT" not in rows and "REFERENCE-PARITY" not in rows
    records = read_evidence(Path(report["evidence"])).records
    assert {r.gate.value for r in records} == set(rows)
    table = apr("qa", model, "--quiet", "--work-dir", str(tmp_path / "qa"), *skips, cwd=tmp_path)
    assert table.returncode == 0
    for column in ("gate", "status", "measured", "threshold", "duration"):
        assert column in table.stdout
    assert "Tensor Contract" in table.stdout and "Format Parity" in table.stdout


def test_apr_qa_fails_on_a_bad_gate_id(tmp_path):
    result = apr("qa", "whatever.gguf", "--skip", "NOPE", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
