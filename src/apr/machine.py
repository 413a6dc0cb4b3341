"""How much of this machine apr may use: usable cores (affinity, cgroup CPU quota), free cores (load average),
the CPU thread count apr defaults to, and the cgroup's OOM-kill counter (to tell an OOM kill from a crash).

An oversubscribed box is the case that matters: OpenMP threads spin at every barrier of a decode step, so two
threads beside a neighbour holding the other core decode several times slower than one (measured in issue 21:
smollm2 9.1 tok/s with 2 threads vs 33.9 with 1 beside three 2-thread PyTorch jobs). The default is therefore the
number of cores that are free now, not ``os.cpu_count()``. The load changes after that choice (a server runs for
hours), so the CLI also makes OpenMP's waiting threads sleep after a short spin instead of spinning long
(``apr.settings.export_omp_waits``): a thread whose partner lost its core then gives its own core back.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count apr uses by default, and why."""

    threads: int
    usable_cores: int  # CPUs this process may run on: affinity, capped by the cgroup quota
    online_cpus: int  # CPUs of the whole machine (the load average counts runnable threads over all of them)
    load1: float | None  # one-minute load average when chosen (None where the system has none)
    quota_cores: float | None  # the cgroup CPU quota in cores (None: no quota)
    reason: str

    def line(self) -> str:
        return f"{self.threads} thread(s): {self.reason}"


def cgroup_quota_cores(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 ``cpu.max``, v1 ``cfs_quota_us``), or None."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    v1 = root / "cpu" / "cpu.cfs_quota_us"
    if v1.is_file():
        quota_us = int(v1.read_text().strip())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text().strip())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def oom_kills(root: Path = CGROUP) -> int | None:
    """How many processes the kernel's OOM killer has killed in this cgroup so far (None where not reported)."""
    for events in (root / "memory.events", root / "memory" / "memory.oom_control"):
        if events.is_file():
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
    return None


def choose_threads(
    *,
    affinity: int | None = None,
    online: int | None = None,
    load1: float | None = None,
    quota: float | None = None,
    read_system: bool = True,
) -> ThreadChoice:
    """The default CPU thread count: the cores free now, within the cores this process may use.

    Free cores = online CPUs minus the one-minute load average (the runnable threads of everyone else), rounded,
    at least 1 and at most the usable cores (affinity mask, cgroup quota). The figures are read from the
    system unless given (``read_system=False`` takes only what is given: for tests).
    """
    if read_system:
        affinity = affinity if affinity is not None else len(os.sched_getaffinity(0))
        online = online if online is not None else os.cpu_count() or affinity
        load1 = load1 if load1 is not None else _load1()
        quota = quota if quota is not None else cgroup_quota_cores()
    affinity = max(1, affinity or 1)
    online = max(affinity, online or affinity)
    usable = affinity if quota is None else max(1, min(affinity, math.floor(quota + 1e-9)))
    why = [f"{affinity} CPU(s) in the affinity mask"]
    if quota is not None:
        why.append(f"cgroup quota {quota:g} core(s)")
    if load1 is None:
        return ThreadChoice(usable, usable, online, None, quota, "; ".join([*why, "no load average: all usable"]))
    free = max(1, min(usable, round(online - load1)))
    why.append(f"load average {load1:.2f} on {online} CPU(s) leaves {max(0.0, online - load1):.1f} free")
    if free < usable:
        why.append("fewer threads than cores: OpenMP threads spin at barriers while a neighbour holds a core")
    return ThreadChoice(free, usable, online, load1, quota, "; ".join(why))


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
