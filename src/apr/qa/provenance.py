"""Capture provenance for evidence records: engine git sha, versions, host, device — without importing torch."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from apr.cpu import choose_variant, cpu_model
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


def kernel_family() -> str:
    """The CPU kernels an engine started now would run (from the CPU flags and settings; nothing is built)."""
    settings = current()
    variant, _ = choose_variant(settings.native_variant)
    return variant.name if variant is not None and settings.native_kernels else "torch"


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
    remote ``endpoint`` ran no engine here: it names no kernels and no thread count."""
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
        kernels=None if remote else kernel_family(),
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
