"""Renderings of evidence: JUnit XML, a self-contained HTML report, and the certification tables."""

from __future__ import annotations

import os
from pathlib import Path

from apr.formats.atomic import atomic_path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to a temporary sibling and rename it over ``path``: never half-written."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # keep a README's mode; mkstemp makes 0600
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
        os.chmod(temp, mode)
