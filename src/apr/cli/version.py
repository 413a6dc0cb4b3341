"""`apr --version`: the version and the machine it would run on (kernel family, CPU, threads, torch, device)."""

from __future__ import annotations

import os
import platform

from apr.cpu import cpu_model


def version_lines() -> list[str]:
    """One `key: value` line per fact; imports torch (only --version pays for it, never --help)."""
    # The engine's kernel probe builds or loads its shared library: worth it to say which kernels run here.
    import torch

    from apr import __version__
    from apr.engine import native
    from apr.engine.device import set_threads
    from apr.settings import current, omp_waits

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    else:
        device = "cpu (no CUDA device)"
    return [
        f"apr {__version__}",
        f"kernels: {native.describe()}",
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)",
        f"threads: {threads_line(set_threads(None), current().omp_threads)}",
        f"openmp waits: {omp_waits()}",
        f"torch: {torch.__version__}",
        f"python: {platform.python_version()}",
        f"device: {device}",
    ]


def threads_line(threads: int, omp_threads: int | None) -> str:
    """The engine's default thread count and why (OMP_NUM_THREADS, or the free cores of this machine)."""
    from apr.engine.device import default_thread_choice

    if omp_threads is not None:
        return f"{threads} (OMP_NUM_THREADS={omp_threads})"
    return f"{threads} ({default_thread_choice().reason})"
