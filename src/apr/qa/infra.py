"""Infrastructure causes: why a check could not conclude because of the machine, never because of the model.

A cell killed at its deadline, by the OOM killer or by someone else, or one that could not write for a full
disk, says nothing about the model; nor does a remote endpoint that cannot be reached, keeps answering 429 or
5xx after the retries, or stops answering mid-run (``apr.qa.endpoint``). Such a check is recorded ``inconclusive`` with one of these causes (see
``apr.qa.evidence.Outcome``); it is retried (bounded) first, and it never falsifies or blocks a certification.
"""

from __future__ import annotations

import re
from enum import StrEnum


class InfraCause(StrEnum):
    """What on the machine stopped a check."""

    DEADLINE = "deadline"  # still running at its (calibrated) deadline: the machine was too slow or too busy
    OOM = "oom"  # out of memory: the kernel's OOM killer, or an allocation the program could not make
    LOST_PROCESS = "lost-process"  # killed from outside apr (a signal apr did not send), or could not start
    DISK_FULL = "disk-full"  # no space left on a device the program wrote to
    ENDPOINT_UNREACHABLE = "endpoint-unreachable"  # a remote endpoint refused or dropped the connection
    ENDPOINT_ERROR = "endpoint-error"  # a remote endpoint kept answering HTTP 5xx (overloaded, a gateway, a bug)
    RATE_LIMITED = "rate-limited"  # a remote endpoint kept answering HTTP 429 after the retries

    @property
    def advice(self) -> str:
        """What the user can do about it."""
        return {
            InfraCause.DEADLINE: "re-run on a quieter machine, or with --threads 1 on a busy one",
            InfraCause.OOM: "free memory (close other jobs) or run on a machine with more memory",
            InfraCause.LOST_PROCESS: "re-run with --resume; check what else signals processes on this machine",
            InfraCause.DISK_FULL: "free disk space ($APR_HOME, the output folder, /tmp) and re-run with --resume",
            InfraCause.ENDPOINT_UNREACHABLE: "check that the endpoint is up and reachable from here, then re-run",
            InfraCause.ENDPOINT_ERROR: "check the endpoint's logs and load (HTTP 5xx), then re-run",
            InfraCause.RATE_LIMITED: "re-run with a lower --rate-limit or --concurrency, or a higher quota",
        }[self]


# What a program's stderr says when the machine, not the program, failed it. torch's CPU allocator says
# "DefaultCPUAllocator: can't allocate memory"; Python raises MemoryError; errno 28 is ENOSPC.
_OOM = re.compile(r"\bMemoryError\b|can't allocate memory|Cannot allocate memory|\[Errno 12\]|out of memory", re.I)
_DISK_FULL = re.compile(r"No space left on device|\[Errno 28\]|ENOSPC")


def cause_in_stderr(stderr: str) -> InfraCause | None:
    """The machine cause a program's stderr names (a full disk or failed allocation), if any."""
    if _DISK_FULL.search(stderr):
        return InfraCause.DISK_FULL
    if _OOM.search(stderr):
        return InfraCause.OOM
    return None
