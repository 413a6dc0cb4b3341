"""Traces of a forward pass: per-layer hidden-state statistics and per-head attention weights (apr-trace files)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apr.trace.format import TRACE_FORMAT, TRACE_KINDS, TraceFile, read_trace

if TYPE_CHECKING:
    from apr.trace.record import trace_forward, write_trace

__all__ = ["TRACE_FORMAT", "TRACE_KINDS", "TraceFile", "read_trace", "trace_forward", "write_trace"]


def __getattr__(name: str) -> Any:
    # The recorder needs torch (seconds to import); reading a trace, or `apr inspect` of a file, does not.
    if name in ("trace_forward", "write_trace"):
        from apr.trace import record

        return getattr(record, name)
    raise AttributeError(f"module 'apr.trace' has no attribute {name!r}")
