"""An `apr convert` stopped mid-write (Ctrl-C or SIGTERM) leaves nothing behind: no output, no `.part` file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_interrupted_convert_leaves_nothing_behind(real_model, tmp_path, sig):
    source = real_model("smollm2:135m")
    out = tmp_path / "converted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "apr.cli.main", "convert", str(source), "--to", "safetensors", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".converted.*.part")):  # the temporary sibling atomic_dir writes into
        assert proc.poll() is None, (
            f"convert ended before it was interrupted: {proc.stderr.read() if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, "convert never started writing"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the write of the first tensors
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 1
    assert sorted(path.name for path in tmp_path.iterdir()) == []
