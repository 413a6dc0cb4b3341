"""The functional_* assets materialized in process for a fixture model: real `apr eval` subprocesses, the paired
tolerance check, and a second run that reuses every result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.resources import WorkRoot

MODEL = "fixture-qwen"


def _playbook(gguf: Path) -> str:
    return f"""\
apr_playbook: 1
name: {MODEL}-full
version: 1.0.0
tier: full
model:
  ref: {MODEL}
  path: {gguf}
  architecture: qwen2
  chat_template: false
matrix:
  formats: [gguf, safetensors]
  backends: [cpu]
  modalities: [run]
gates:
  FUNCTIONAL-CORRECTNESS: {{task: humaneval, limit: 1, max_tokens: 4, batch_size: 2, tolerance: 0.5}}
"""


def test_functional_assets_run_apr_eval_per_format_and_pair_them_with_the_reference(tmp_path: Path, fixture_models):
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / f"{MODEL}-full.playbook.yaml").write_text(_playbook(fixture_models["qwen2"]["gguf"]), "utf-8")
    defs: Any = build_definitions(playbooks, WorkRoot(root=str(tmp_path / "work")))
    selection = dg.AssetSelection.assets("functional_gguf").upstream()
    with dg.instance_for_test() as instance:
        runs = [
            dg.materialize(
                list(defs.assets),
                selection=selection,
                partition_key=MODEL,
                instance=instance,
                resources=dict(defs.resources),
            )
            for _ in range(2)
        ]
    first, second = runs
    assert first.success and second.success
    events = {
        e.materialization.asset_key.to_user_string(): e.materialization
        for e in first.get_asset_materialization_events()
    }
    for name in ("functional_reference", "functional_gguf"):
        metadata: dict[str, Any] = {k: v.value for k, v in events[name].metadata.items()}
        assert metadata["task"] == "humaneval" and metadata["problems"] == 1, name
        assert 0.0 <= metadata["pass@1"] <= 1.0 and metadata["reused"] is False
    assert events["functional_reference"].metadata["numerics"].value == "exact"
    assert events["functional_gguf"].metadata["numerics"].value == "fast"
    (check,) = [e for e in first.get_asset_check_evaluations() if e.check_name == "within_tolerance"]
    assert check.asset_key.to_user_string() == "functional_gguf" and check.passed
    reason: Any = check.metadata["reason"].value
    assert "humaneval pass@1" in reason and "flipped" in check.metadata
    reused = {
        e.materialization.asset_key.to_user_string(): e.materialization
        for e in second.get_asset_materialization_events()
    }
    assert all(m.metadata["reused"].value is True for m in reused.values())
    records = [
        json.loads(line)
        for line in (tmp_path / "work").rglob("functional_gguf/**/problems.jsonl").__next__().read_text().splitlines()
    ]
    assert [r["task_id"] for r in sorted(records, key=lambda r: r["task_id"])] == ["HumanEval/0"]


def test_the_audit_notebook_charts_pass_at_1_per_format_and_lists_the_flips(tmp_path: Path):
    import nbformat

    from apr.eval.results import ProblemResult
    from apr.qa.axes import Format
    from apr.qa.evidence import EvidenceWriter
    from apr.qa.gates.functional import functional_check, paired_comparison
    from apr.qa.gates.thresholds import FunctionalCorrectnessGate
    from apr.qa.recording import Recorder, Timer, stamp_all
    from pipelines.audit import run_audit_notebook

    def results(passed: list[bool]) -> dict[str, ProblemResult]:
        return {
            f"HumanEval/{i}": ProblemResult(
                f"HumanEval/{i}",
                "0" * 64,
                "",
                ok,
                "passed" if ok else "failed",
                "",
                "stop",
                1,
                1,
                0.0,
                0.0,
                "namespaces+cgroup",
            )  # fmt: skip
            for i, ok in enumerate(passed)
        }

    reference = results([True, True, True, False])
    settings = FunctionalCorrectnessGate(tolerance=0.1)
    checks = [
        functional_check(Format.GGUF, paired_comparison(reference, results([True, False, True, False])), settings),
        functional_check(Format.APR, paired_comparison(reference, results([True, True, True, False])), settings),
    ]
    golden = Path(__file__).resolve().parents[1] / "notebooks" / "audit-fixture-evidence.jsonl"
    (tmp_path / "evidence.jsonl").write_text(golden.read_text(encoding="utf-8"), encoding="utf-8")
    with EvidenceWriter(tmp_path / "evidence.jsonl") as writer:
        for record in stamp_all(Recorder(model="fixture-llama"), checks, Timer()):
            writer.append(record)
    executed = run_audit_notebook("fixture-llama", tmp_path)
    assert (tmp_path / "charts" / "functional_correctness.png").stat().st_size > 0
    printed = "".join(
        output.get("text", "")
        for cell in nbformat.read(executed, as_version=4).cells
        if cell.cell_type == "code" and "FUNCTIONAL-CORRECTNESS" in cell.source
        for output in cell.outputs
    )
    assert "compared: 2" in printed and "gguf: falsified" in printed and "apr: corroborated" in printed
    assert "lost: HumanEval/1" in printed
