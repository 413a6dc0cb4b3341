"""torch.compile of the single-sequence decode step, with a persistent cache and an eager fallback that says so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from apr.engine.model import Transformer


def compile_cache_dir() -> Path:
    home = Path(os.environ.get("APR_HOME", Path.home() / ".cache" / "apr"))
    return home / "compile-cache"


def compile_decode(transformer: Transformer, enabled: bool):
    """(decode step or None for the plain eager one, state string for ``describe``)."""
    if not enabled:
        return None, "eager"
    return None, "eager (compile not wired yet)"
