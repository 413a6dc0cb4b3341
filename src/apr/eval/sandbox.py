"""Runs one generated program against its tests in a subprocess that cannot hurt the host.

Each program runs in a fresh temporary directory, in its own process group, under resource limits
(address space, CPU seconds, file size; set by the harness before any generated code runs) and a
wall-clock timeout after which the whole group is killed.
Where the kernel allows unprivileged namespaces (``unshare --user --net --pid``), the program also has no
network (an empty network namespace) and lives in its own PID namespace, so every process it started dies
with it. Its number of processes is capped by a ``pids`` cgroup where apr may make one (as root), else by
RLIMIT_NPROC (which the kernel does not apply to root, namespaced or not). Where namespaces are refused, a
Python-level socket guard stands in for the network namespace. Each result names the isolation that ran.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

HARNESS = Path(__file__).with_name("sandbox_main.py")
NAMESPACES = ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")


class Isolation(StrEnum):
    NAMESPACES = "namespaces"  # no network, own PID namespace, namespaced user: the full sandbox
    RLIMITS = "rlimits"  # no namespaces here: limits, a process group and a Python socket guard


class ProcessCap(StrEnum):
    CGROUP = "cgroup"  # a pids cgroup per run: the kernel refuses forks past the limit, for root too
    RLIMIT = "rlimit"  # RLIMIT_NPROC: binds a non-root user only
    NONE = "uncapped"  # root without a pids cgroup: nothing caps the processes (the timeout still kills them)


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # the program ran and was wrong (an exception, a failed assert, a crash of its own)
    TIMEOUT = "timeout"  # it ran past the wall-clock limit and was killed
    ERROR = "error"  # the sandbox failed before the program ran: infrastructure, never the model's verdict


@dataclass(frozen=True)
class Limits:
    """What one program may use."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30  # address space
    cpu_s: int = 20
    processes: int = 32
    file_bytes: int = 16 << 20
    output_bytes: int = 4096  # of stdout/stderr kept for the error message


@dataclass(frozen=True)
class Execution:
    """How one program fared."""

    status: Status
    error: str  # empty when passed
    seconds: float
    isolation: str  # e.g. "namespaces+cgroup": Isolation and ProcessCap

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


class Sandbox:
    """Runs programs one at a time (callers may use several from threads: each run has its own directory)."""

    def __init__(self, limits: Limits | None = None, *, python: str | None = None) -> None:
        self.limits = limits or Limits()
        self.python = python or sys.executable
        # Read once: a long evaluation must not pick up a harness edited (or half-written) under it.
        self.harness = HARNESS.read_bytes()
        self.isolation = probe_isolation()
        self.cgroups = pids_cgroup_root()

    @property
    def process_cap(self) -> ProcessCap:
        if self.cgroups is not None:
            return ProcessCap.CGROUP
        return ProcessCap.NONE if os.geteuid() == 0 else ProcessCap.RLIMIT

    @property
    def description(self) -> str:
        return f"{self.isolation}+{self.process_cap}"

    def run(self, program: str, test: str) -> Execution:
        """Execute ``program`` then ``test`` in one namespace; passed when neither raises."""
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="apr-eval-") as folder:
            work = Path(folder)
            (work / "program.py").write_text(program, encoding="utf-8")
            (work / "test.py").write_text(test, encoding="utf-8")
            (work / "_harness.py").write_bytes(self.harness)
            nonce = secrets.token_hex(16)
            status, detail = self._execute(work, nonce)
        return Execution(status, detail, time.perf_counter() - start, self.description)

    def _execute(self, work: Path, nonce: str) -> tuple[Status, str]:
        limits = self.limits
        spec = f"{limits.memory_bytes},{limits.cpu_s},{limits.processes},{limits.file_bytes}"
        argv = [self.python, "-s", "_harness.py", "--limits", spec]
        if self.isolation is Isolation.NAMESPACES:
            argv = [*NAMESPACES, *argv]
        else:
            argv.append("--no-sockets")
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": str(work),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        with (
            PidsCgroup(self.cgroups, self.limits.processes) as cgroup,
            open(out_path, "wb") as out,
            open(err_path, "wb") as err,
        ):
            if cgroup.procs_file is not None:  # the shell joins the cgroup, then becomes the sandbox (same pid)
                argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup.procs_file), *argv]
            process = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: the timeout kills the whole group
            )
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died before reading: its exit status says how
                process.stdin.write(f"{nonce}\n".encode())
                process.stdin.close()
            try:
                process.wait(timeout=self.limits.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return Status.TIMEOUT, f"timed out after {self.limits.timeout_s:g} s (killed)"
            finally:
                _kill_group(process)  # whatever it left behind in its group
        return _verdict(process.returncode, nonce, _nonce_lines(out_path, nonce), _tail(err_path, self.limits))


def _verdict(returncode: int, nonce: str, reported: list[str], stderr: str) -> tuple[Status, str]:
    started = False
    for line in reversed(reported):
        if line.startswith(f"{nonce} "):
            word, _, detail = line[len(nonce) + 1 :].partition(" ")
            if word == "passed" and returncode == 0:
                return Status.PASSED, ""
            if word == "failed":
                return Status.FAILED, detail
            started = started or word == "started"
    if not started:
        last = stderr.strip().splitlines()[-1:] or [f"exit {returncode}"]
        return Status.ERROR, f"the sandbox failed before the program ran: {last[0][:300]}"
    if returncode < 0 or returncode > 128:
        number = -returncode if returncode < 0 else returncode - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        return Status.FAILED, f"killed by {name} (a resource limit, or the program's own doing)"
    last = stderr.strip().splitlines()[-1:] or ["no verdict"]
    return Status.FAILED, f"exited {returncode} before its tests finished: {last[0][:300]}"


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _nonce_lines(path: Path, nonce: str) -> list[str]:
    """The harness's own lines of the program's stdout (whatever the program printed around them)."""
    marker = f"{nonce} ".encode()
    with open(path, "rb") as handle:
        return [line.decode("utf-8", "replace").rstrip("\n") for line in handle if line.startswith(marker)]


def _tail(path: Path, limits: Limits) -> str:
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - limits.output_bytes))
        return handle.read().decode("utf-8", "replace")


@functools.cache
def probe_isolation() -> Isolation:
    """Namespaces when ``unshare`` can make a user, network and PID namespace here, else limits only."""
    if shutil.which("unshare") is None:
        return Isolation.RLIMITS
    try:
        done = subprocess.run([*NAMESPACES, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return Isolation.RLIMITS
    return Isolation.NAMESPACES if done.returncode == 0 else Isolation.RLIMITS


class PidsCgroup:
    """A pids cgroup for one run (``procs_file`` None where none can be made): created on entry, removed on exit
    once the run's processes are gone."""

    def __init__(self, root: Path | None, limit: int) -> None:
        self.root, self.limit = root, limit
        self.folder: Path | None = None

    @property
    def procs_file(self) -> Path | None:
        return None if self.folder is None else self.folder / "cgroup.procs"

    def __enter__(self) -> PidsCgroup:
        if self.root is not None:
            folder = self.root / f"apr-eval-{os.getpid()}-{secrets.token_hex(6)}"
            folder.mkdir()
            (folder / "pids.max").write_text(str(self.limit))
            self.folder = folder
        return self

    def __exit__(self, *exc: object) -> None:
        if self.folder is None:
            return
        for _ in range(100):  # the killed processes leave the cgroup as the kernel reaps them
            for pid in _read(self.folder / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError):  # gone between the read and the kill
                    os.kill(int(pid), signal.SIGKILL)  # only ever a process this run started
            try:
                self.folder.rmdir()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.folder}: processes of a sandboxed program survived SIGKILL for 2 s")


@functools.cache
def pids_cgroup_root() -> Path | None:
    """A pids cgroup folder apr may make children in (cgroup v1 ``pids``, or v2 with the pids controller)."""
    candidates = [Path("/sys/fs/cgroup/pids")]
    unified = Path("/sys/fs/cgroup")
    if "pids" in _read(unified / "cgroup.subtree_control").split():
        candidates.append(unified)
    for root in candidates:
        probe = root / f"apr-eval-probe-{os.getpid()}"
        try:
            probe.mkdir()
            (probe / "pids.max").write_text("1")
            probe.rmdir()
        except OSError:
            continue
        return root
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
