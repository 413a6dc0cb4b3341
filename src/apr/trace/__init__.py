"""Traces of a forward pass: per-layer hidden-state statistics and per-head attention weights (apr-trace files)."""

from apr.trace.format import TRACE_FORMAT, TRACE_KINDS, TraceFile, read_trace
from apr.trace.record import trace_forward, write_trace

__all__ = ["TRACE_FORMAT", "TRACE_KINDS", "TraceFile", "read_trace", "trace_forward", "write_trace"]
