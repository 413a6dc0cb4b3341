"""Digests of the apr library code a stage calls: changed code is a changed input, so the stage reruns."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import apr

APR_SOURCE = Path(apr.__file__).resolve().parent


@cache
def _package_digest(subpackage: str) -> str:
    root = APR_SOURCE / subpackage
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(APR_SOURCE).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def apr_code_digest(*subpackages: str) -> dict[str, str]:
    """``{subpackage: sha256 of its .py files}`` for the parts of apr (``formats``, ``qa``...) a stage uses.

    Cached per process: the code of a running pipeline does not change under it.
    """
    return {name: _package_digest(name) for name in sorted(subpackages)}
