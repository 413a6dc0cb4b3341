"""Byte progress: bars on stderr (only when asked for and stderr is a terminal), and an observer that a caller
(the server's download jobs) sets around a pull to receive every stage's bytes done and total."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

# (stage, bytes done, bytes total or None): stage is the bar's first word (download, assemble, verify, hash).
ByteObserver = Callable[[str, int, "int | None"], None]
# Scoped to one pull by `observing`: a context variable, so concurrent pulls on other threads do not mix.
_observer: ContextVar[ByteObserver | None] = ContextVar("apr_byte_observer", default=None)


class ByteProgress(Protocol):
    """What the hub needs from a progress bar."""

    def update(self, n: int) -> object: ...


class _Silent:
    def update(self, n: int) -> object:
        return None


def progress_wanted(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


@contextmanager
def observing(observer: ByteObserver) -> Iterator[None]:
    """Report the bytes of every bar opened in this context (on this thread) to `observer`."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


class _Observed:
    """Counts a bar's bytes for the observer (workers update it from several threads) and passes them on."""

    def __init__(self, stage: str, total: int | None, observer: ByteObserver, inner: ByteProgress) -> None:
        self._stage, self._total, self._observer, self._inner = stage, total, observer, inner
        self._done = 0
        self._lock = threading.Lock()
        observer(stage, 0, total)

    def update(self, n: int) -> object:
        with self._lock:
            self._done += n
            self._observer(self._stage, self._done, self._total)
        return self._inner.update(n)


@contextmanager
def byte_bar(description: str, total: int | None, *, progress: bool) -> Iterator[ByteProgress]:
    """A tqdm bar counting bytes (a no-op object when progress is off or stderr is not a TTY), also reported
    to the observer `observing` set, if any."""
    observer = _observer.get()
    with _bar(description, total, progress=progress) as bar:
        if observer is None:
            yield bar
        else:
            yield _Observed(description.split(" ", 1)[0], total, observer, bar)


@contextmanager
def _bar(description: str, total: int | None, *, progress: bool) -> Iterator[ByteProgress]:
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
