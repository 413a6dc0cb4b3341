"""Running the papermill audit notebook over a model's evidence (the notebook reads evidence only)."""

from __future__ import annotations

from pathlib import Path

from apr.errors import AprError
from pipelines.partitions import REPO_ROOT

AUDIT_NOTEBOOK = REPO_ROOT / "notebooks" / "audit.ipynb"
KERNEL = "python3"
EVIDENCE_NAME = "evidence.jsonl"


def run_audit_notebook(model: str, output_dir: Path, *, notebook: Path = AUDIT_NOTEBOOK) -> Path:
    """Execute the audit notebook over ``output_dir/evidence.jsonl``; returns the executed ``audit.ipynb``.

    Paths are passed relative to ``output_dir`` (the kernel's working directory), so a certification
    folder is self-contained and the executed notebook re-runs in place. The charts land in
    ``output_dir/charts`` and the self-contained page in ``output_dir/audit.html``. A failing cell
    (an assertion over the evidence) raises AprError naming the cell's error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    evidence = output_dir / EVIDENCE_NAME
    if not evidence.is_file():
        raise AprError(f"{evidence}: no evidence to audit; the certification folder must hold {EVIDENCE_NAME}")
    executed = output_dir / "audit.ipynb"
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={"model": model, "evidence_path": EVIDENCE_NAME, "output_dir": "."},
            kernel_name=KERNEL,
            cwd=str(output_dir),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as err:
        raise AprError(
            f"{notebook}: audit of {model} failed in cell {err.exec_count}: {err.ename}: {err.evalue}; see {executed}"
        ) from None
    return executed
