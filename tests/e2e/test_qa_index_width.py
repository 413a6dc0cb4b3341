"""The certification index fits a 1280 px browser window: Chromium lays out index.html (three models, long
names) and the page is no wider than the window with every row on one line (the 16-column table it replaced
fitted only by wrapping each row over three lines); models.csv keeps every column."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pipelines_ui_support import CHROMIUM_FLAGS, install_chromium

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # as test_qa_report_cli does
from qa_core_factory import all_gates_pass  # noqa: E402

from apr.qa.reports.certtable import COLUMNS, render_csv, render_index, rows_from_records

WIDTH = 1280


def test_index_html_fits_a_1280_px_window(tmp_path):
    binary, why_not = install_chromium()
    if binary is None:
        pytest.skip(why_not)
    rows = []
    for model in ("qwen2.5-coder:1.5b", "a-rather-long-organisation/some-model-name-instruct-v2:7b", "smollm2:135m"):
        rows += rows_from_records(all_gates_pass(model), f"{model.replace(':', '-')}/evidence.jsonl")
    page = render_index(rows)
    probe = (
        "<script>document.title = 'W=' + document.documentElement.scrollWidth + ';H=' + "
        "document.querySelectorAll('tr')[1].offsetHeight;</script>"
    )
    (tmp_path / "index.html").write_text(page.replace("</body>", probe + "</body>"))
    flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--window-size")]
    dom = subprocess.run(
        [
            binary,
            *flags,
            f"--window-size={WIDTH},900",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (tmp_path / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    found = re.search(r"<title>W=(\d+);H=(\d+)</title>", dom)
    assert found, dom[-500:]
    width, row_height = int(found.group(1)), int(found.group(2))
    assert width <= WIDTH, f"index.html is {width} px wide"
    # qwen's row: one line of 14 px text with padding (only a name too long for any window may wrap)
    assert row_height < 45, f"rows wrap: {row_height} px tall"
    assert render_csv(rows).splitlines()[0].split(",") == list(COLUMNS)
