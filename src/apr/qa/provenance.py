"""Capture provenance for evidence records: engine git sha, versions, host, device — without importing torch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from apr.cpu import VARIANTS, cpu_model
from apr.qa.axes import Backend, Format, Tier
from apr.qa.evidence import Calibration, EndpointProvenance, Provenance
from apr.qa.gates.catalog import GateId
from apr.settings import current

_SOURCE_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def engine_git_sha() -> str:
    """The commit of the apr checkout this code runs from, or 'unknown' when it is not a git checkout."""
    result = subprocess.run(
        ["git", "-C", str(_SOURCE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
    )
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def accelerator_name() -> str | None:
    """The first NVIDIA GPU's name from nvidia-smi (torch stays unimported here), or None where there is none."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = result.stdout.strip().splitlines()
    return names[0].strip() if result.returncode == 0 and names and names[0].strip() else None


def named_device(device: str) -> str:
    """``cuda`` as ``cuda (NVIDIA H200)``: evidence from a GPU names the GPU it ran on."""
    if device.startswith("cuda") and "(" not in device:
        name = accelerator_name()
        if name:
            return f"{device} ({name})"
    return device


# Building the kernels the first time takes seconds to a minute; a probe that has not answered in this long
# says the machine is in trouble, and the record then names no kernels rather than a guess.
KERNEL_PROBE_TIMEOUT_S = 600.0


def kernel_family() -> str | None:
    """The CPU kernels an engine started now from this environment runs: the native build that loads (a variant
    the first choice fell back to, when the first would not build), 'torch' when none can, None when the probe
    itself failed. Asked of a child process (the cells' environment; this module stays free of torch), once
    per process and kernel settings: the kernel cache keeps the build, so the cells load the same one."""
    settings = current()
    if not settings.native_kernels:
        return "torch"
    return _probe_kernels(settings.home, settings.native_variant, settings.compiler, settings.stream_ahead)


@lru_cache(maxsize=8)
def _probe_kernels(home: Path, variant: str | None, compiler: str | None, stream_ahead: int | None) -> str | None:
    """kernel_family's child, for one set of the settings that choose and build the kernels (the arguments only
    key the cache: the child reads the same environment)."""
    from apr.qa.procs import child_env, run_process

    argv = [sys.executable, "-m", "apr.engine.native", "--name"]
    probe = run_process(argv, timeout_s=KERNEL_PROBE_TIMEOUT_S, env=child_env())
    name = probe.stdout.strip()
    return name if probe.returncode == 0 and name in {*(known.name for known in VARIANTS), "torch"} else None


def capture(
    *,
    started_at: datetime,
    finished_at: datetime,
    device: str,
    model_sha256: str | None = None,
    format: Format | None = None,
    backend: Backend | None = None,
    seed: int | None = None,
    playbook: str | None = None,
    tier: Tier | None = None,
    gates: tuple[GateId, ...] | None = None,
    numerics: str | None = None,
    kv_cache: str | None = None,
    calibration: Calibration | None = None,
    endpoint: EndpointProvenance | None = None,
) -> Provenance:
    """A Provenance for a check that ran on this host (versions and git sha filled in here). A check against a
    remote ``endpoint`` ran no engine here: it names no kernels and no thread count; a check on the GPU names no
    CPU kernels, and one in exact numerics (every tensor dequantized to float32) ran PyTorch's."""
    remote = endpoint is not None
    return Provenance(
        model_sha256=model_sha256,
        format=format,
        backend=backend,
        engine_git_sha=engine_git_sha(),
        apr_version=_version("apr") or "unknown",
        torch_version=_version("torch"),
        device=named_device(device),
        host=platform.node() or "unknown",
        cpu=cpu_model(),
        kernels=None if remote or backend is Backend.GPU else "torch" if numerics == "exact" else kernel_family(),
        threads=None if remote else calibration.threads if calibration is not None else len(os.sched_getaffinity(0)),
        calibration=calibration,
        numerics=numerics,
        kv_cache=kv_cache,
        seed=seed,
        playbook=playbook,
        tier=tier,
        gates=gates,
        endpoint=endpoint,
        started_at=started_at,
        finished_at=finished_at,
    )
