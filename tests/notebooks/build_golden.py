"""Regenerate the golden executed audit notebook that nbval re-runs: ``audit-fixture.ipynb``.

    .venv/bin/python tests/notebooks/build_golden.py [EVIDENCE.jsonl]

With an argument, that evidence (a fixture model's, from the pipeline test or `apr certify`) is
copied next to the notebook first. The golden is papermill's output of ``notebooks/audit.ipynb``
with the fixture parameters, so nbval re-runs it and compares the cells marked NBVAL_CHECK_OUTPUT.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
GOLDEN = HERE / "audit-fixture.ipynb"
EVIDENCE = HERE / "audit-fixture-evidence.jsonl"
PARAMETERS = {"model": "fixture-llama", "evidence_path": EVIDENCE.name, "output_dir": ""}


def main(argv: list[str]) -> int:
    import papermill

    if argv:
        shutil.copyfile(argv[0], EVIDENCE)
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "audit.ipynb"), str(GOLDEN), parameters=PARAMETERS,
                               kernel_name="python3", cwd=str(HERE), progress_bar=False)
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
