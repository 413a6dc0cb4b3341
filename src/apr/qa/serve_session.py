"""Start `apr serve` as a real subprocess, wait for its ready line, and always tear it down."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from apr.machine import oom_kills
from apr.qa.procs import Children, ProcessResult, child_env, kill_group, oom_rose, popen_isolated

READY_LINE = re.compile(r"apr serve: ready at (http://\S+)")
# SIGTERM first so uvicorn can shut down cleanly; SIGKILL the group after this grace period.
SHUTDOWN_GRACE_S = 5.0


@dataclass
class ServerOutput:
    """Lines the server printed, collected by reader threads while it runs."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    ready_url: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)


@dataclass
class ServeSession:
    """A running server: its base URL and a way to read how it ended."""

    proc: subprocess.Popen
    argv: tuple[str, ...]
    output: ServerOutput
    started: float
    base_url: str | None = None
    readers: list[threading.Thread] = field(default_factory=list)
    oom_before: int | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def result(self, *, timed_out: bool = False) -> ProcessResult:
        if self.proc.poll() is not None:
            for reader in self.readers:  # the streams are closed: let the readers drain them
                reader.join(timeout=2.0)
        return ProcessResult(
            argv=self.argv,
            returncode=self.proc.returncode,
            stdout="".join(self.output.stdout),
            stderr="".join(self.output.stderr),
            duration_s=time.monotonic() - self.started,
            timed_out=timed_out,
            oom_killed=oom_rose(self.oom_before, self.proc.returncode),
        )


def _pump(stream, sink: list[str], output: ServerOutput, watch_ready: bool) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if watch_ready and output.ready_url is None:
            match = READY_LINE.search(line)
            if match:
                output.ready_url = match.group(1).rstrip("/")
                output.ready.set()
    output.ready.set()  # stream closed: the server is gone; wake the waiter


def wait_ready(session: ServeSession, deadline: float) -> bool:
    """Block until the server printed its ready line, died, or the deadline passed."""
    while time.monotonic() < deadline:
        if session.output.ready.wait(timeout=0.2):
            session.base_url = session.output.ready_url
            return session.base_url is not None
    return False


def stop(session: ServeSession) -> None:
    if session.proc.poll() is None:
        session.proc.terminate()
        try:
            session.proc.wait(timeout=SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            kill_group(session.proc)
            session.proc.wait()
    # A clean shutdown may leave workers behind in the group; they must not outlive the cell.
    kill_group(session.proc)


@contextmanager
def serve(
    argv: list[str], env: dict[str, str] | None = None, children: Children | None = None
) -> Iterator[ServeSession]:
    """Run the server for the duration of the block; it is stopped (and reaped) on exit."""
    oom_before = oom_kills()
    proc = popen_isolated(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env if env is not None else child_env(),
    )
    if children is not None:
        children.add(proc)
    output = ServerOutput()
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, output.stdout, output, True), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, output.stderr, output, False), daemon=True),
    ]
    for reader in readers:
        reader.start()
    session = ServeSession(
        proc=proc, argv=tuple(argv), output=output, started=time.monotonic(), readers=readers, oom_before=oom_before
    )
    try:
        yield session
    finally:
        stop(session)
        if children is not None:
            children.discard(proc)
        for reader in readers:
            reader.join(timeout=2.0)
