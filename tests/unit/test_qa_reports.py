"""Reports rendered from evidence: JUnit counts, self-contained HTML, models.csv columns, README table, `apr report`."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from qa_core_factory import all_gates_pass, record

from apr.cli.main import main
from apr.errors import AprError
from apr.qa.axes import Backend, Tier
from apr.qa.evidence import EvidenceWriter, Outcome, read_evidence
from apr.qa.gates.catalog import GateId
from apr.qa.reports.certtable import (
    COLUMNS,
    END_MARKER,
    START_MARKER,
    collect_rows,
    render_csv,
    replace_readme_table,
    write_tables,
)
from apr.qa.reports.html import render_html
from apr.qa.reports.junit import render_junit


def apr(argv: list[str]) -> int:
    """Run the CLI in-process and return its exit status (typer exits through SystemExit on success)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def mixed_records(model: str = "demo:1b", tier: Tier = Tier.MVP):
    return all_gates_pass(model, tier) + [
        record(
            GateId.G2_INFERENCE,
            Outcome.SKIPPED,
            check="gpu cell",
            backend=Backend.GPU,
            n_compared=0,
            reason="no CUDA device",
            model=model,
            tier=tier,
        ),
        record(
            GateId.FORMAT_PARITY,
            Outcome.FALSIFIED,
            check="top1 gguf~apr",
            reason="top-1 agreement 0.5 < 0.9",
            output="bad \x00 output <script>",
            model=model,
            tier=tier,
            measured=0.5,
            threshold=0.9,
        ),
        record(GateId.THROUGHPUT, Outcome.TIMEOUT, check="tok/s", model=model, tier=tier, n_compared=0),
        record(
            GateId.G3_STABILITY, Outcome.CRASHED, check="serve", reason="SIGSEGV", model=model, tier=tier, n_compared=0
        ),
        record(
            GateId.THROUGHPUT,
            Outcome.CORROBORATED,
            check="cpu tok/s",
            model=model,
            tier=tier,
            measured=12.5,
            threshold=5.0,
            unit="tok/s",
        ),
    ]


def write_evidence(path, records):
    with EvidenceWriter(path) as writer:
        for item in records:
            writer.append(item)
    return path


def test_junit_has_one_testcase_per_record_and_matching_counts():
    records = mixed_records()
    root = ET.fromstring(render_junit(records))
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(records) == int(suite.get("tests"))
    assert int(suite.get("failures")) == 1 == sum(1 for c in cases if c.find("failure") is not None)
    assert int(suite.get("errors")) == 1 == sum(1 for c in cases if c.find("error") is not None)
    # the skipped GPU cell and the older "timeout" record (the machine's deadline, never a model error)
    assert int(suite.get("skipped")) == 2 == sum(1 for c in cases if c.find("skipped") is not None)
    assert {e.get("type") for c in cases for e in c.findall("error")} == {"crashed"}
    assert any("inconclusive (deadline)" in (s.get("message") or "") for c in cases for s in c.findall("skipped"))
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["mqs.status"] == "BLOCKED" and properties["mqs.score"] == "0"
    failure = next(c.find("failure") for c in cases if c.find("failure") is not None)
    assert "\\x00" in failure.text and "<script>" in failure.text


def test_junit_groups_models_into_suites():
    root = ET.fromstring(render_junit(all_gates_pass("a:1b") + all_gates_pass("b:1b")))
    assert [s.get("name") for s in root.findall("testsuite")] == ["a:1b", "b:1b"]


def test_html_is_self_contained_and_escapes_model_output():
    page = render_html(mixed_records())
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"(?:src|href)\s*=|https?://|<link|<script|@import|url\(", page, re.IGNORECASE)
    assert "&lt;script&gt;" in page
    for needle in ("MQS breakdown", "Gateways", "Cells", "Records", "Provenance", "BLOCKED", "FORMAT-PARITY"):
        assert needle in page


def test_html_of_a_clean_run_says_certified():
    page = render_html(all_gates_pass())
    assert "CERTIFIED" in page and "1000" in page


def test_csv_has_the_documented_columns_and_one_row_per_model_and_tier(tmp_path):
    certs = tmp_path / "certifications"
    write_evidence(certs / "demo" / "evidence.jsonl", mixed_records("demo:1b") + all_gates_pass("demo:1b", Tier.SMOKE))
    write_evidence(certs / "other" / "evidence.jsonl", all_gates_pass("other:2b"))
    rows = list(csv.DictReader(io.StringIO(render_csv(collect_rows(certs)))))
    assert tuple(rows[0].keys()) == COLUMNS
    assert [(r["model"], r["tier"]) for r in rows] == [("demo:1b", "smoke"), ("demo:1b", "mvp"), ("other:2b", "mvp")]
    demo_mvp = rows[1]
    assert demo_mvp["status"] == "BLOCKED" and demo_mvp["mqs"] == "0" and demo_mvp["skipped"] == "1"
    assert demo_mvp["tok_s_cpu"] == "12.5" and demo_mvp["tok_s_gpu"] == ""
    assert demo_mvp["evidence"] == "demo/evidence.jsonl"
    assert rows[2]["status"] == "CERTIFIED" and rows[2]["gateways_passed"] == "5/5"


def test_the_newest_evidence_of_a_model_and_tier_wins(tmp_path):
    certs = tmp_path / "certifications"
    day = timedelta(days=1)
    old = [
        r.model_copy(
            update={
                "provenance": r.provenance.model_copy(
                    update={"started_at": r.provenance.started_at - day, "finished_at": r.provenance.finished_at - day}
                )
            }
        )
        for r in mixed_records()
    ]
    write_evidence(certs / "a" / "evidence.jsonl", old)
    write_evidence(certs / "b" / "evidence.jsonl", all_gates_pass())
    (row,) = collect_rows(certs)
    assert row.status == "CERTIFIED" and row.evidence == "b/evidence.jsonl"


def test_a_run_with_gpu_cells_stands_beside_a_run_without_them(tmp_path):
    certs = tmp_path / "certifications"
    on_gpu = record(GateId.G2_INFERENCE, check="gpu cell", backend=Backend.GPU)
    on_gpu = on_gpu.model_copy(
        update={"provenance": on_gpu.provenance.model_copy(update={"device": "cuda (NVIDIA H200)"})}
    )
    write_evidence(certs / "demo" / "evidence.jsonl", mixed_records())
    write_evidence(certs / "demo" / "gpu" / "evidence.jsonl", all_gates_pass() + [on_gpu])
    rows = collect_rows(certs)
    assert [(r.gpu, r.status, r.evidence) for r in rows] == [
        ("-", "BLOCKED", "demo/evidence.jsonl"),
        ("cuda (NVIDIA H200)", "CERTIFIED", "demo/gpu/evidence.jsonl"),
    ]


def test_readme_table_is_replaced_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n{START_MARKER}\nold table\n{END_MARKER}\n\noutro\n", encoding="utf-8")
    certs = tmp_path / "certifications"
    write_evidence(certs / "demo" / "evidence.jsonl", all_gates_pass())
    write_tables(certs, readme)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nintro\n") and text.endswith(f"{END_MARKER}\n\noutro\n")
    assert "old table" not in text and "| `demo:1b` | mvp | - | **CERTIFIED** | 1000 | A+ |" in text
    assert (certs / "models.csv").is_file() and (certs / "index.html").is_file()
    assert not re.search(r"https?://", (certs / "index.html").read_text(encoding="utf-8"))
    write_tables(certs, readme)
    assert readme.read_text(encoding="utf-8") == text  # regenerating is idempotent


def test_readme_without_markers_is_a_clear_error(tmp_path):
    with pytest.raises(AprError, match="certification-table:start"):
        replace_readme_table("# no markers\n", "table", tmp_path / "README.md")


def test_apr_report_recomputes_everything_from_evidence(tmp_path, capsys):
    evidence = write_evidence(tmp_path / "run" / "evidence.jsonl", all_gates_pass())
    assert apr(["report", str(evidence), "--output", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "mqs.json").read_text(encoding="utf-8"))
    assert summary["score"] == 1000 and summary["status"] == "CERTIFIED"
    junit = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert len(junit.findall("testsuite/testcase")) == len(read_evidence(evidence).records)
    assert (tmp_path / "out" / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "CERTIFIED  MQS 1000/1000  grade A+" in capsys.readouterr().out


def test_apr_report_tables_and_errors(tmp_path, capsys):
    certs = tmp_path / "certifications"
    write_evidence(certs / "demo" / "evidence.jsonl", mixed_records())
    assert apr(["report", "--tables", "--certifications", str(certs)]) == 0
    assert "1 row(s)" in capsys.readouterr().out
    assert apr(["report"]) == 2
    assert apr(["report", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    assert apr(["report", str(bad)]) == 2
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "mqs.json").exists()


def test_the_reasons_for_a_non_pass_come_first_most_serious_first():
    from apr.qa.infra import InfraCause
    from apr.qa.reports.reasons import Kind, summary_lines, why
    from apr.qa.score import compute_mqs

    records = mixed_records() + [
        record(GateId.G2_INFERENCE, Outcome.INCONCLUSIVE, check="reply", n_compared=0, cause=InfraCause.OOM)
    ]
    mqs = compute_mqs(records)
    kinds = [reason.kind for reason in why(records, mqs)]
    assert kinds == sorted(kinds, key=list(Kind).index)  # blocks, machine, costs points, missing
    assert kinds[0] is Kind.BLOCKS and Kind.MACHINE in kinds and Kind.MISSING in kinds
    lines = summary_lines(records, mqs)
    assert lines[0] == "[blocks] FORMAT-PARITY gguf/cpu/run/p0/seed42: top1 gguf~apr: top-1 agreement 0.5 < 0.9"
    page = render_html(records, mqs)
    top = page.index("Blocks the certification")
    assert top < page.index("Inconclusive: the machine") < page.index("<h2>Gateways</h2>")
    assert "top-1 agreement 0.5 &lt; 0.9" in page[top : page.index("<h2>Gateways</h2>")]
