"""Start `apr serve` as a real subprocess for the serve e2e tests, read its ready line, and stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"apr serve: ready at (http://\S+)")
START_TIMEOUT_S = 180.0


@dataclass
class RunningServer:
    proc: subprocess.Popen
    url: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, api_key: str = "unused", timeout: float = 60.0):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the server and wait for it; returns the exit code (it is killed if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _pump(stream, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)


def start_server(model: Path | str, *args: str, env: dict[str, str] | None = None) -> RunningServer:
    """Run `python -m apr.cli.main serve MODEL --port 0 ARGS` and wait for its ready line."""
    argv = [sys.executable, "-m", "apr.cli.main", "serve", str(model), "--port", "0", *args]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    stdout: list[str] = []
    stderr: list[str] = []
    threading.Thread(target=_pump, args=(proc.stderr, stderr), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    url = None
    while url is None:
        assert proc.stdout is not None  # started with stdout=PIPE
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise RuntimeError(f"apr serve exited ({proc.returncode}) before ready: {''.join(stderr)[-2000:]}")
        stdout.append(line)
        match = READY.search(line)
        if match:
            url = match.group(1)
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("apr serve did not become ready in time")
    threading.Thread(target=_pump, args=(proc.stdout, stdout), daemon=True).start()
    return RunningServer(proc=proc, url=url, stdout=stdout, stderr=stderr)
