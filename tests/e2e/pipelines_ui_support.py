"""Helpers of the pipelines UI tests: a Dagster server on loopback under our control, GraphQL, Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The `dagster` script installed next to the interpreter running the tests (the project's venv).
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 180.0  # dagster dev stops in seconds when quiet; a loaded 2-core machine was seen taking > 60 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterServer:
    """A `dagster dev` process we started (in its own session, so SIGTERM reaches it) and its URL."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            document = json.loads(response.read())
        assert "errors" not in document, document["errors"]
        return document["data"]

    def stop(self) -> int | None:
        """SIGTERM the process we started and wait for it; its exit code, or None when it ignored SIGTERM
        (its whole process group is then killed, so nothing outlives the test)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None


def start_dagster_dev(home: Path, work_root: Path, log_path: Path) -> DagsterServer:
    """`dagster dev -w workspace.yaml` on 127.0.0.1 with a throwaway DAGSTER_HOME; waits until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), APR_WORK=str(work_root), PYTHONUNBUFFERED="1")
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = DagsterServer(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=2):
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"dagster dev did not answer within {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def install_chromium() -> tuple[str | None, str]:
    """Install Chromium with apt-get when it is missing; returns (binary or None, why not)."""
    found = find_chromium()
    if found:
        return found, ""
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "chromium is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed and apt-get needs root to install it"
    for argv in (
        [apt, "install", "-y", "-q", "chromium"],
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "chromium"],
    ):
        subprocess.run(
            argv, check=False, capture_output=True, timeout=600, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        )
        found = find_chromium()
        if found:
            return found, ""
    return None, "apt-get could not install chromium (no package index or no network to the mirror)"


CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    # Let the single-page app finish its GraphQL round trips before the shot.
    "--virtual-time-budget=15000",
)


def chromium(binary: str, url: str, *action: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, url],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
