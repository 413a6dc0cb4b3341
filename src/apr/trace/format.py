"""The apr-trace file format (JSON lines: header, hidden/attention records, end) and its strict reader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apr.errors import FormatError

TRACE_FORMAT = "apr-trace"
TRACE_VERSION = 1
# What `apr run --trace` accepts: attention weights, hidden-state statistics, or both.
TRACE_KINDS = ("attention", "hidden", "all")
RECORD_TYPES = ("header", "hidden", "attention", "end")


@dataclass
class TraceFile:
    """A trace read back: its header, hidden-state records and attention records (documented in docs/trace.md)."""

    path: Path
    header: dict[str, Any]
    hidden: list[dict[str, Any]] = field(default_factory=list)
    attention: list[dict[str, Any]] = field(default_factory=list)


def looks_like_trace(path: Path) -> bool:
    """Whether ``path`` is a file whose first line is an apr-trace header (read from the bytes, not the name)."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        first = handle.readline(1 << 20)
    try:
        header = json.loads(first)
    except ValueError:
        return False
    return isinstance(header, dict) and header.get("format") == TRACE_FORMAT


def read_trace(path: Path) -> TraceFile:
    """Read and validate a trace; FormatError (one line naming the file) when it is truncated or malformed."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise FormatError(f"{path}: cannot read the trace ({err})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise FormatError(f"{path}: line {number} is not JSON; the trace is corrupt") from None
        if not isinstance(record, dict) or record.get("type") not in RECORD_TYPES:
            raise FormatError(f"{path}: line {number} is not an apr-trace record (type {RECORD_TYPES})")
        records.append(record)
    if not records or records[0]["type"] != "header" or records[0].get("format") != TRACE_FORMAT:
        raise FormatError(f"{path}: not an apr-trace file (the first line must be its header)")
    header = records[0]
    if header.get("version") != TRACE_VERSION:
        raise FormatError(f"{path}: apr-trace version {header.get('version')!r}; this apr reads {TRACE_VERSION}")
    if records[-1]["type"] != "end" or records[-1].get("records") != len(records) - 2:
        raise FormatError(f"{path}: the trace is truncated (no end record counting its records); write it again")
    trace = TraceFile(path, header)
    for record in records[1:-1]:
        (trace.hidden if record["type"] == "hidden" else trace.attention).append(record)
    return trace
