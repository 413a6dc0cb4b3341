"""Byte progress bars on stderr, shown only when asked for and stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class ByteProgress(Protocol):
    """What the hub needs from a progress bar."""

    def update(self, n: int) -> object: ...


class _Silent:
    def update(self, n: int) -> object:
        return None


def progress_wanted(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


@contextmanager
def byte_bar(description: str, total: int | None, *, progress: bool) -> Iterator[ByteProgress]:
    """A tqdm bar counting bytes; a no-op object when progress is off or stderr is not a TTY."""
    if not progress_wanted(progress):
        yield _Silent()
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    ) as bar:
        yield bar


def note(message: str, *, progress: bool) -> None:
    """One status line on stderr (e.g. 'pulling X'), silent when progress is off."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A line the user must see whatever the progress setting (e.g. a corrupt cache entry)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
