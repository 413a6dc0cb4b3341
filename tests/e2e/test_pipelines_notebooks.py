"""The papermill audit notebook: nbval over the committed golden, its live assertions, and its source of truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "notebooks" / "audit.ipynb"
GOLDEN = REPO_ROOT / "tests" / "notebooks" / "audit-fixture.ipynb"


def code_sources(path: Path) -> list[str]:
    """The code cells of a notebook, without the cell papermill injects."""
    notebook = nbformat.read(path, as_version=4)
    return [
        cell.source
        for cell in notebook.cells
        if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", [])
    ]


def nbval(notebook: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``pytest --nbval-lax`` on one notebook, in a child pytest with this interpreter's kernel."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(cwd),
            str(notebook),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def test_the_committed_notebook_is_what_the_builder_writes() -> None:
    sys.path.insert(0, str(NOTEBOOK.parent))
    try:
        from build_audit_notebook import build
    finally:
        sys.path.remove(str(NOTEBOOK.parent))
    assert NOTEBOOK.read_text(encoding="utf-8") == nbformat.writes(build())
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_golden_runs_the_current_notebook_with_stored_outputs() -> None:
    # nbval passes vacuously on a notebook without outputs, so the golden must be executed and current.
    assert code_sources(GOLDEN) == code_sources(NOTEBOOK), "rerun tests/notebooks/build_golden.py"
    golden = nbformat.read(GOLDEN, as_version=4)
    code_cells = [cell for cell in golden.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells)
    checked = [cell for cell in code_cells if "# NBVAL_CHECK_OUTPUT" in cell.source]
    assert checked and all(cell.outputs for cell in checked)
    assert golden.metadata.papermill.exception is None


def test_nbval_lax_passes_on_the_golden_fixture_notebook() -> None:
    result = nbval(GOLDEN, GOLDEN.parent)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_nbval_catches_a_changed_summary(tmp_path: Path) -> None:
    # The golden's checked output is compared: evidence that changes the verdict must fail nbval.
    evidence = (GOLDEN.parent / "audit-fixture-evidence.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "audit-fixture-evidence.jsonl").write_text("".join(evidence[:-1]), encoding="utf-8")
    (tmp_path / GOLDEN.name).write_text(GOLDEN.read_text(encoding="utf-8"), encoding="utf-8")
    result = nbval(tmp_path / GOLDEN.name, tmp_path)
    assert result.returncode != 0
    assert "NBVAL_CHECK_OUTPUT" in result.stdout or "mismatch" in result.stdout.lower(), result.stdout[-3000:]


def test_audit_fails_loudly_on_empty_evidence(tmp_path: Path) -> None:
    from apr.errors import AprError
    from pipelines.audit import run_audit_notebook

    (tmp_path / "evidence.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(AprError, match="no records"):
        run_audit_notebook("empty", tmp_path)


def test_audit_writes_charts_and_a_self_contained_page(tmp_path: Path) -> None:
    from pipelines.audit import run_audit_notebook

    (tmp_path / "evidence.jsonl").write_bytes((GOLDEN.parent / "audit-fixture-evidence.jsonl").read_bytes())
    executed = run_audit_notebook("fixture-llama", tmp_path)
    charts = sorted(path.name for path in (tmp_path / "charts").iterdir())
    assert charts == sorted(
        f"{name}.{suffix}"
        for name in ("functional_correctness", "gate_outcomes", "latency", "mqs_by_category", "self_test", "throughput")
        for suffix in ("png", "svg")
    )
    assert (tmp_path / "charts" / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "charts" / "throughput.svg").read_text(encoding="utf-8").lstrip().startswith("<svg")
    page = (tmp_path / "audit.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in page and "fixture-llama" in page
    injected = [
        cell
        for cell in nbformat.read(executed, as_version=4).cells
        if "injected-parameters" in cell.metadata.get("tags", [])
    ]
    assert injected and json.dumps("evidence.jsonl") in injected[0].source
