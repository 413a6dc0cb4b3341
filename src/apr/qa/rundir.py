"""The output folder of one certification: earlier runs are kept, never truncated, and renderings never go stale.

A run into a folder that holds evidence, without ``--resume``, first moves the earlier run's files into
``runs/<when it ended, UTC>/`` beside them. A resumed run removes the renderings (``mqs.json``, JUnit, HTML)
before it appends, so no report ever describes other evidence than the file next to it; they are written
again (atomically) when the run ends, and ``apr report`` recomputes them from the evidence at any time.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

ARCHIVE_DIR = "runs"
EVIDENCE = "evidence.jsonl"
RENDERINGS = ("mqs.json", "junit.xml", "report.html")
# Everything a run writes into its folder (the Dagster pipeline adds the audit notebook and its charts; a
# full-tier run its self-test, which belongs to that run alone).
RUN_FILES = (EVIDENCE, *RENDERINGS, "models.csv", "index.html", "audit.ipynb", "charts", "self-test")


def archive_previous_run(folder: Path) -> Path | None:
    """Move the files of the run in ``folder`` to ``folder/runs/<UTC time it last wrote>/``; None if none."""
    present = [folder / name for name in RUN_FILES if (folder / name).exists()]
    if not (folder / EVIDENCE).exists():
        return None
    target = _archive_dir(folder, (folder / EVIDENCE).stat().st_mtime)
    for path in present:
        os.replace(path, target / path.name)  # same file system: a rename, nothing copied or truncated
    return target


def keep_aside(evidence: Path) -> Path:
    """Move one evidence file (of any name) to ``runs/<UTC time it last wrote>/`` beside it; returns the new path."""
    target = _archive_dir(evidence.parent, evidence.stat().st_mtime)
    os.replace(evidence, target / evidence.name)
    return target / evidence.name


def _archive_dir(folder: Path, mtime: float) -> Path:
    ended = datetime.fromtimestamp(mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
    target = folder / ARCHIVE_DIR / ended
    suffix = 1
    while target.exists():
        suffix += 1
        target = folder / ARCHIVE_DIR / f"{ended}-{suffix}"
    target.mkdir(parents=True)
    return target


def drop_renderings(folder: Path) -> None:
    """Remove the renderings of the evidence in ``folder`` before more evidence is appended to it."""
    for name in RENDERINGS:
        (folder / name).unlink(missing_ok=True)
