"""An artificially slow machine in front of the real `apr` CLI: ``python qa_slow_apr.py SECONDS ARGS...`` waits
SECONDS (as a starved process would), then runs `apr ARGS...` exactly as asked."""

from __future__ import annotations

import runpy
import sys
import time

if __name__ == "__main__":
    delay = float(sys.argv[1])
    sys.argv = ["apr", *sys.argv[2:]]
    time.sleep(delay)
    runpy.run_module("apr.cli.main", run_name="__main__")
