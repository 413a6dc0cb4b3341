"""Digests of the apr library code a stage calls: changed code is a changed input, so the stage reruns."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import apr

APR_SOURCE = Path(apr.__file__).resolve().parent


# Every kind of source a stage's behaviour depends on: the engine's C kernels (engine/native/*.c, *.h)
# change its numbers as surely as its Python does (a C-only change once reused a stale inference trace).
SOURCE_SUFFIXES = (".py", ".c", ".h")


def package_sources(subpackage: str) -> list[Path]:
    root = APR_SOURCE / subpackage
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts
    )


@cache
def _package_digest(subpackage: str) -> str:
    digest = hashlib.sha256()
    for path in package_sources(subpackage):
        digest.update(path.relative_to(APR_SOURCE).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def apr_code_digest(*subpackages: str) -> dict[str, str]:
    """``{subpackage: sha256 of its source files}`` for the parts of apr (``formats``, ``qa``...) a stage uses.

    Cached per process: the code of a running pipeline does not change under it.
    """
    return {name: _package_digest(name) for name in sorted(subpackages)}
