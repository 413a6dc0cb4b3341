"""A C compiler that refuses a kernel build's flag, as a gcc older than 11 refuses -mamx-tile: for fallback tests."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from apr.cpu import Variant


def refused_flag(best: Variant, following: Variant | None) -> str | None:
    """A flag of ``best`` that ``following`` does not pass (refusing it fails ``best``'s build alone), or None when
    there is none to refuse (avx2 has no flags of its own): then every build must fail."""
    return next((flag for flag in best.flags if following is None or flag not in following.flags), None)


def compiler_refusing(directory: Path, flag: str | None) -> Path:
    """A script in ``directory`` that fails, with a compiler's one-line error, every command line holding ``flag``
    (every command line when ``flag`` is None) and hands the others to the system's cc."""
    real = shutil.which("cc") or shutil.which("gcc")
    assert real, "no C compiler to wrap"
    refuse = (
        f'for a in "$@"; do [ "$a" = {shlex.quote(flag)} ] && echo "cc: error: unrecognized {flag}" >&2 && exit 1; done\n'
        if flag
        else 'echo "cc: error: this compiler builds nothing" >&2; exit 1\n'
    )
    compiler = directory / "cc"
    compiler.write_text(f'#!/bin/sh\n{refuse}exec {shlex.quote(real)} "$@"\n')
    compiler.chmod(0o755)
    return compiler
