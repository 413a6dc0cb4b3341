"""Start and stop an `apr serve` subprocess for the serve benchmarks (one copy instead of one per script)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

READY = re.compile(r"apr serve: ready at (http://\S+)")


@dataclass
class ServeProcess:
    """A running `apr serve` on a free loopback port, and the base URL its ready line announced."""

    proc: subprocess.Popen
    url: str

    @classmethod
    def start(cls, model: str, *options: str) -> ServeProcess:
        """`apr serve MODEL --port 0 OPTIONS...` from this interpreter's environment; returns once it is ready.

        Exits the benchmark with a one-line message when the server ends before its ready line."""
        argv = [sys.executable, "-m", "apr.cli.main", "serve", model, "--port", "0", *options]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None  # stdout=PIPE
        for line in iter(proc.stdout.readline, ""):
            match = READY.search(line)
            if match:
                return cls(proc, match.group(1))
        raise SystemExit(f"apr serve {model} {' '.join(options)} exited ({proc.wait()}) before it was ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
