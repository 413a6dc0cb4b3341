"""Run one program under test in a subprocess with a hard deadline, and classify how it ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

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


@dataclass(frozen=True)
class ProcessResult:
    """What a finished (or killed) subprocess left behind."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool

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
    def ending(self) -> Ending:
        if self.timed_out:
            return Ending.TIMEOUT
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
    """Run ``argv`` to completion or to the deadline; never raises for the program's own failures."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env if env is not None else child_env(),
        cwd=cwd,
        start_new_session=True,
    )
    if children is not None:
        children.add(proc)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(input=stdin_text, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        stdout, stderr = proc.communicate()
    except KeyboardInterrupt:
        kill_group(proc)  # its own session never saw the Ctrl-C
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
    )
