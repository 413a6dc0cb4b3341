"""Stopping everything ``python -m pipelines.materialize`` started when it is interrupted (SIGTERM, SIGINT).

A materialize starts processes several levels deep: orchestrators (one per model run), Dask workers or
multiprocess step processes, and the ``apr run``/``apr serve``/papermill subprocesses of each step. Python's
default SIGTERM ends only the top one and orphans the rest. Here the signals raise :class:`Interrupted` in
the main thread instead, so that ``materialize`` can close its cluster, stop every descendant it started
(they are found as its process tree; on Linux it is made a *child subreaper*, so a descendant whose parent
died is re-parented to it rather than to init and is still found), mark its Dagster runs canceled, and put
back any published folder whose replacement was cut short.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import psutil

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached ``materialize``; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (143 SIGTERM, 130 SIGINT)."""
        return 128 + self.signum


def become_subreaper(enabled: bool = True) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), or stop being one with ``enabled=False``;
    False where the kernel does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) == 0


class Signals:
    """The signal received, if any. The exception a signal raises can be caught by code it lands in — Dagster
    records any exception inside a run as the run's failure and returns normally — so callers also ``check``."""

    def __init__(self) -> None:
        self.received: int | None = None

    def check(self) -> None:
        """Raise :class:`Interrupted` again if a signal came (after code that may have swallowed it)."""
        if self.received is not None:
            raise Interrupted(self.received)


@contextmanager
def signals_raise_interrupted() -> Iterator[Signals]:
    """SIGTERM and SIGINT raise :class:`Interrupted` in the main thread, once: a second signal while the first is
    being handled (stopping the processes takes seconds) does not cut that clean-up short."""
    signals = Signals()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if signals.received is not None:
            return
        signals.received = signum
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in HANDLED_SIGNALS}
    try:
        yield signals
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@dataclass(frozen=True)
class Stopped:
    """What :func:`stop_descendants` ended: every process, and those that needed SIGKILL after the grace period."""

    pids: tuple[int, ...]
    killed: tuple[int, ...]


def stop_descendants(grace_s: float = 10.0, rounds: int = 5) -> Stopped:
    """SIGTERM every descendant of this process at once, SIGKILL those still alive after ``grace_s``, and repeat
    for descendants that appear meanwhile (orphans re-parented to a subreaper, a process started during the stop)."""
    me = psutil.Process()
    tracker = _own_resource_tracker()
    stopped: list[int] = []
    killed: list[int] = []
    for _ in range(rounds):
        tree = [process for process in _alive(me.children(recursive=True)) if process.pid != tracker]
        if not tree:
            break
        for process in tree:  # every level at once: a parent's death must not leave a child unsignalled
            _signal(process, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for process in alive:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace_s)
        stopped += [process.pid for process in tree]
        killed += [process.pid for process in alive]
        _reap_orphans(me)
    return Stopped(tuple(dict.fromkeys(stopped)), tuple(dict.fromkeys(killed)))


def _own_resource_tracker() -> int | None:
    """The pid of this process's multiprocessing resource tracker, if it started one.

    It ignores SIGTERM by design and ends by itself when this process ends (it reads a pipe this process holds),
    after unlinking what the process pools leaked; stopping it would cost the grace period and that clean-up.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)  # CPython's module-level singleton
    pid = getattr(tracker, "_pid", None)
    return pid if isinstance(pid, int) else None


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue  # it ended between listing and looking: nothing to stop
    return alive


def _signal(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.NoSuchProcess:
        return  # already gone: the outcome wanted


def _reap_orphans(me: psutil.Process) -> None:
    """Collect the exit status of ended children, re-parented orphans included (no zombies left behind)."""
    children = me.children()
    psutil.wait_procs([child for child in children if not _alive([child])], timeout=0)
