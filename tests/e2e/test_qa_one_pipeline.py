"""One certification pipeline: `apr certify`, `apr qa --playbook` and `python -m pipelines.materialize` compose
the same apr.qa stages, so for one fixture model and playbook they write the same evidence records — the same
check ids with the same scenario, outcome and fields (timings and reasons with numbers in them aside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apr.qa.evidence import EvidenceRecord, read_evidence
from apr.qa.gates.catalog import GateId
from apr.qa.stages import CELL_GATES

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "fixture-qwen2"


def playbook_text(gguf: Path) -> str:
    """Cells in two formats on CPU (GPU cells skipped), with a gate of every kind: static, parity, engine,
    determinism reruns, throughput and GPU speedup."""
    return f"""\
apr_playbook: 1
name: {MODEL}-smoke
tier: smoke
model: {{ref: {MODEL}, path: "{gguf}", architecture: qwen2, chat_template: true}}
matrix: {{formats: [gguf, apr], backends: [cpu, gpu], modalities: [run]}}
scenarios:
  seed: 7
  max_tokens: 8
  pools: {{arithmetic: 0}}
  prompts: [{{text: "Hello there", oracles: [{{name: non_empty}}]}}]
execution: {{timeout_s: 300}}
gates:
  CONTRACT-INVARIANTS:
  TOKENIZER-PARITY:
  FORMAT-PARITY: {{min_top1_agreement: 0.5, max_kl: 0.5}}
  DETERMINISM: {{modalities: [run]}}
  THROUGHPUT: {{min_tok_s: {{cpu: 0.01}}}}
  GPU-SPEEDUP:
"""


def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # The GPU cells must be skipped on any machine, or the three runs would not be comparable.
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    result = subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=1200
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def evidence(fixture_models, tmp_path_factory) -> dict[str, tuple[EvidenceRecord, ...]]:
    folder = tmp_path_factory.mktemp("one-pipeline")
    playbooks = folder / "playbooks"
    playbooks.mkdir()
    gguf = Path(fixture_models["qwen2"]["gguf"])
    playbook = playbooks / f"{MODEL}-smoke.playbook.yaml"
    playbook.write_text(playbook_text(gguf), encoding="utf-8")

    certify = run(
        "-m",
        "apr.cli.main",
        "certify",
        str(playbook),
        "--output",
        str(folder / "certify" / MODEL),
        "--quiet",
        cwd=folder,
    )
    assert certify.returncode == 0, certify.stdout + certify.stderr
    qa = run(
        "-m",
        "apr.cli.main",
        "qa",
        str(gguf),
        "--playbook",
        str(playbook),
        "--json",
        "--quiet",
        "--evidence",
        str(folder / "qa" / "evidence.jsonl"),
        cwd=folder,
    )
    assert qa.returncode == 0, qa.stdout + qa.stderr
    assert json.loads(qa.stdout)["passed"] is True
    pipeline = run(
        "-m",
        "pipelines.materialize",
        MODEL,
        "--playbooks",
        str(playbooks),
        "--work-root",
        str(folder / "work"),
        "--certifications",
        str(folder / "published"),
        "--no-table",
        cwd=REPO_ROOT,
        env={"DAGSTER_HOME": str(folder / "dagster")},
    )
    assert pipeline.returncode == 0, pipeline.stdout + pipeline.stderr
    return {
        "certify": read_evidence(folder / "certify" / MODEL / "evidence.jsonl").records,
        "qa": read_evidence(folder / "qa" / "evidence.jsonl").records,
        "materialize": read_evidence(folder / "published" / MODEL / "evidence.jsonl").records,
    }


def shape(record: EvidenceRecord) -> dict:
    """What must agree between two runs of the same checks: everything but timings, hosts and free text."""
    return {
        "scenario": record.scenario.model_dump(mode="json"),
        "outcome": str(record.outcome),
        "n_compared": record.n_compared,
        "threshold": record.threshold,
        "unit": record.unit,
        "measured": record.measured is not None,
        "metrics": sorted(record.metrics),
        "fields": sorted(record.model_dump()),
        "provenance": sorted(record.provenance.model_dump()),
        "playbook": (record.provenance.playbook, str(record.provenance.tier)),
    }


def by_id(records: tuple[EvidenceRecord, ...]) -> dict[str, dict]:
    shaped = {record.key: shape(record) for record in records}
    assert len(shaped) == len(records), "two records share one check id"
    return shaped


def test_certify_and_the_dagster_graph_write_the_same_records(evidence) -> None:
    certify, pipeline = by_id(evidence["certify"]), by_id(evidence["materialize"])
    assert sorted(certify) == sorted(pipeline)
    assert certify == pipeline
    assert [r.gate for r in evidence["certify"]] == [r.gate for r in evidence["materialize"]]  # same order too
    gates = {r.gate for r in evidence["certify"]}
    assert {GateId.G2_INFERENCE, GateId.DETERMINISM, GateId.THROUGHPUT, GateId.GPU_SPEEDUP} <= gates


def test_apr_qa_writes_certifys_records_for_every_gate_it_runs(evidence) -> None:
    """`apr qa` runs no cells, so neither the cell gates nor determinism (a rerun of a cell); the rest agree."""
    without_cells = {
        key: value
        for key, value in by_id(evidence["certify"]).items()
        if GateId(key.split("|")[0]) not in CELL_GATES | {GateId.DETERMINISM}
    }
    assert by_id(evidence["qa"]) == without_cells
