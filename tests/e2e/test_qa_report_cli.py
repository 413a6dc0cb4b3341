"""`apr report` as a user runs it: a real subprocess, files written, bad input → one error line and exit 2."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from qa_core_factory import all_gates_pass, record  # noqa: E402

from apr.qa.evidence import EvidenceWriter, Outcome  # noqa: E402
from apr.qa.gates.catalog import GateId  # noqa: E402

APR = [sys.executable, "-m", "apr.cli.main"]


def apr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*APR, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_report_and_tables_from_evidence_alone(tmp_path):
    certs = tmp_path / "certifications"
    evidence = certs / "demo-1b" / "evidence.jsonl"
    with EvidenceWriter(evidence) as writer:
        for item in all_gates_pass() + [record(GateId.STRUCTURE, Outcome.FALSIFIED, check="q bias all zero")]:
            writer.append(item)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- certification-table:start -->\n<!-- certification-table:end -->\n", encoding="utf-8")

    done = apr("report", str(evidence), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "BLOCKED" in done.stdout and "STRUCTURE" in done.stdout
    assert (
        len(ET.parse(evidence.parent / "junit.xml").getroot().findall("testsuite/testcase")) == len(GateId) + 1
    )  # one per gate + the failure
    assert (evidence.parent / "report.html").is_file() and (evidence.parent / "mqs.json").is_file()

    done = apr("report", "--tables", "--readme", str(readme), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (certs / "models.csv").read_text(encoding="utf-8").splitlines()[1].startswith("demo:1b,mvp,-,BLOCKED,")
    assert "| `demo:1b` | mvp | - | **BLOCKED** |" in readme.read_text(encoding="utf-8")


def test_bad_evidence_is_one_error_line_and_exit_2(tmp_path):
    bad = tmp_path / "evidence.jsonl"
    bad.write_text('{"gate": "G1-LOAD"}\n', encoding="utf-8")
    done = apr("report", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "junit.xml").exists()
    done = apr("report", "--tables", "--readme", str(tmp_path / "nope.md"), cwd=tmp_path)
    assert done.returncode == 2 and "certifications" in done.stderr
