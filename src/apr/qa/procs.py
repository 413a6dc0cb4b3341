"""Run one program under test in a subprocess with a hard deadline, and classify how it ended.

Every program runs in its own session (process group), so a deadline kills it with everything it started,
and with ``PR_SET_PDEATHSIG`` set to SIGKILL, so it dies with its parent even when the parent is killed with
SIGKILL and no cleanup of ours runs: no `apr serve`, `apr run` or `apr bench` outlives the certification.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path

from apr.machine import oom_kills
from apr.qa.infra import InfraCause, cause_in_stderr
from apr.settings import child_environ

TRACEBACK_MARKER = "Traceback (most recent call last)"
# How many trailing stderr lines a crash reason quotes: enough to name the exception.
STDERR_TAIL_LINES = 6


class Ending(str, Enum):
    """How a subprocess ended, before any oracle looks at its output."""

    OK = "ok"  # exit 0, no traceback
    REFUSED = "refused"  # non-zero exit with a clean error (bad input): the program said no
    CRASHED = "crashed"  # killed by a signal, or a Python traceback reached stderr
    TIMEOUT = "timeout"  # still running at the deadline; killed
    INFRASTRUCTURE = "infrastructure"  # the machine stopped it: OOM, killed from outside, full disk, no start


# Signals a program under test does not send itself when it breaks: someone outside killed it (the OOM killer
# sends SIGKILL). A program's own defects end in SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE or a traceback.
EXTERNAL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT})


@dataclass(frozen=True)
class ProcessResult:
    """What a finished (or killed) subprocess left behind."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    oom_killed: bool = False  # the cgroup's OOM-kill counter rose while it ran
    start_error: str | None = None  # it could not be started at all (fork or exec failed)

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    @property
    def has_traceback(self) -> bool:
        return TRACEBACK_MARKER in self.stderr

    @property
    def infra_cause(self) -> InfraCause | None:
        """The machine cause that ended the program, if the machine (not the program) ended it."""
        if self.timed_out:
            return InfraCause.DEADLINE
        if self.start_error is not None:
            return cause_in_stderr(self.start_error) or InfraCause.LOST_PROCESS
        if self.oom_killed:
            return InfraCause.OOM
        if self.returncode is not None and self.returncode != 0:
            in_stderr = cause_in_stderr(self.stderr_tail(STDERR_TAIL_LINES * 4))
            if in_stderr is not None:
                return in_stderr
        if self.returncode is not None and self.returncode < 0 and -self.returncode in EXTERNAL_SIGNALS:
            return InfraCause.LOST_PROCESS
        return None

    @property
    def ending(self) -> Ending:
        if self.timed_out:
            return Ending.TIMEOUT
        if self.infra_cause is not None:
            return Ending.INFRASTRUCTURE
        if self.signal_name is not None or self.has_traceback:
            return Ending.CRASHED
        if self.returncode != 0:
            return Ending.REFUSED
        return Ending.OK

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        kept = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def reason(self) -> str:
        """One human line (plus the stderr tail for failures) saying why the process ended so."""
        ending = self.ending
        tail = self.stderr_tail()
        if ending is Ending.TIMEOUT:
            return f"no result after {self.duration_s:.1f}s: killed at the deadline" + (
                f"; stderr: {tail}" if tail else ""
            )
        if ending is Ending.INFRASTRUCTURE:
            cause = self.infra_cause
            if self.start_error is not None:
                return f"could not start ({cause}): {self.start_error}"
            if cause is InfraCause.OOM and self.oom_killed:
                how = "killed by the kernel's OOM killer (the cgroup's oom_kill count rose)"
            elif cause is InfraCause.LOST_PROCESS:
                how = f"killed from outside apr by {self.signal_name}"
            else:
                how = f"the machine failed it ({cause}), exit {self.returncode}"
            return f"{how}; stderr: {tail or '(empty)'}"
        if ending is Ending.CRASHED:
            how = f"killed by {self.signal_name}" if self.signal_name else f"Python traceback (exit {self.returncode})"
            return f"{how}; stderr: {tail or '(empty)'}"
        if ending is Ending.REFUSED:
            return f"exit {self.returncode}; stderr: {tail or '(empty)'}"
        return f"exit 0 in {self.duration_s:.1f}s"


def apr_command() -> list[str]:
    """The argv prefix that runs this very `apr` (same interpreter, same source tree)."""
    return [sys.executable, "-m", "apr.cli.main"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a program under test: ours, unbuffered, no colour codes in its output."""
    return child_environ({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TERM": "dumb", **(extra or {})})


@lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent (a forked child should do as little as possible)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl


PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when the thread that started it dies.

    Linux delivers the parent-death signal when the *thread* that forked the child exits: the executor starts
    and waits for each child on one thread, so a child never outlives the wait that owns it.
    """
    prctl = _prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def popen_isolated(argv: list[str], **kwargs) -> subprocess.Popen:
    """``Popen`` in its own session, killed with its parent (see ``die_with_parent``)."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent(), **kwargs)  # noqa: PLW1509


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and every child it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return


class Children:
    """The programs under test running right now, so that an interrupt stops every one of them.

    They run in their own sessions (so a deadline can kill a whole group), which also means a Ctrl-C at
    the terminal does not reach them: ``kill_all`` does, and anything started after it dies at once.
    """

    def __init__(self) -> None:
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.cancelled = False

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.add(proc)
            if self.cancelled:
                kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            self.cancelled = True
            for proc in self._running:
                kill_group(proc)


def run_process(
    argv: list[str],
    *,
    timeout_s: float,
    stdin_text: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    children: Children | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion or to the deadline; never raises for the program's own failures, nor for
    the machine's (a program that cannot start is a result with ``start_error``)."""
    started = time.monotonic()
    oom_before = oom_kills()
    try:
        proc = popen_isolated(
            argv,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env if env is not None else child_env(),
            cwd=cwd,
        )
    except OSError as err:  # fork or exec failed: out of memory or processes, a missing interpreter
        return ProcessResult(tuple(argv), None, "", "", time.monotonic() - started, False, start_error=str(err))
    if children is not None:
        children.add(proc)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(input=stdin_text, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        stdout, stderr = proc.communicate()
    except BaseException:
        kill_group(proc)  # Ctrl-C, SIGTERM, an error of ours: its own session never saw it
        raise
    finally:
        if children is not None:
            children.discard(proc)
    return ProcessResult(
        argv=tuple(argv),
        returncode=proc.returncode,
        stdout=stdout or "",
        stderr=stderr or "",
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
        oom_killed=oom_rose(oom_before, proc.returncode),
    )


def oom_rose(before: int | None, returncode: int | None) -> bool:
    """Whether a SIGKILLed program was the OOM killer's: the cgroup's kill counter rose while it ran."""
    if returncode != -signal.SIGKILL or before is None:
        return False
    after = oom_kills()
    return after is not None and after > before
