"""Model loads report per-layer progress: the engine's callback and the CLI's bar on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time

import pytest

from apr.engine import load_engine
from apr.formats import load_model


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_load_engine_reports_every_layer_then_the_head(fixture_models, arch):
    model = load_model(fixture_models[arch]["gguf"])
    calls: list[tuple[int, int]] = []
    load_engine(model, device="cpu", pack_cache=False, progress=lambda done, total: calls.append((done, total)))
    layers = model.config.num_layers
    assert calls == [(i, layers + 1) for i in range(1, layers + 2)]


def _run_on_a_terminal(argv: list[str], timeout_s: float = 240.0) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal (where the bar is shown); (exit code, output)."""
    leader, follower = pty.openpty()
    # A real terminal's size: a 0x0 pseudo-terminal would make tqdm draw nothing.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode("utf-8", "replace")


def test_apr_run_shows_a_layer_bar_on_a_terminal(fixture_models):
    model = str(fixture_models["llama"]["gguf"])
    argv = [sys.executable, "-m", "apr.cli.main", "run", model, "--prompt", "hi", "--max-tokens", "2"]
    code, terminal = _run_on_a_terminal(argv)
    assert code == 0, terminal
    assert "loading" in terminal and ("layer/s" in terminal or "s/layer" in terminal), terminal
