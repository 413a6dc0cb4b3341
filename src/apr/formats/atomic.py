"""Write-then-rename helpers so no half-written file ever sits under its final name."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apr.errors import AprError


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``final``, on error delete it."""
    final = Path(final)
    with _writable(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        # mkstemp makes 0600 files; a model file gets the usual permissions (0666 minus the umask).
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, final)
    finally:
        if temp.exists():
            temp.unlink()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` (a directory) whole."""
    final = Path(final)
    with _writable(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield temp
        os.chmod(temp, 0o777 & ~_umask())
        if final.exists():
            if not final.is_dir():
                raise FileExistsError(f"{final} exists and is not a directory")
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(temp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def _writable(final: Path) -> Iterator[None]:
    """Name the output the user asked for (not our temporary sibling) when its folder cannot take it."""
    try:
        yield
    except OSError as err:
        raise AprError(
            f"cannot write {final}: {(err.strerror or str(err)).lower()}; choose another output path"
        ) from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
