"""The command-line options the bench scripts share (--model, --threads, --warmup, repetitions), declared once.

Each script passes its own defaults; an option left ABSENT is not added, ``model=None`` makes --model required.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from enum import Enum
from typing import Any


class _Absent(Enum):
    ABSENT = "absent"


ABSENT = _Absent.ABSENT


def add_shared_options(
    parser: argparse.ArgumentParser,
    *,
    model: str | None | _Absent = ABSENT,
    model_type: Callable[[str], Any] = str,
    model_help: str | None = None,
    threads: int | None | _Absent = ABSENT,
    threads_help: str | None = None,
    warmup: int | _Absent = ABSENT,
    min_reps: int | _Absent = ABSENT,
    min_seconds: float | _Absent = ABSENT,
    reps: int | _Absent = ABSENT,
    repeats: int | _Absent = ABSENT,
) -> None:
    """Add the shared options given a default: ``--model`` (None: required; ``model_type`` e.g. Path),
    ``--threads``, ``--warmup`` (untimed runs first), ``--min-reps``/``--min-seconds`` (timed runs until both
    are reached), and a fixed count of timed runs, spelled ``--reps`` or ``--repeats`` as each script always has."""
    if model is not ABSENT:
        parser.add_argument("--model", type=model_type, default=model, required=model is None, help=model_help)
    if threads is not ABSENT:
        parser.add_argument("--threads", type=int, default=threads, help=threads_help)
    for flag, default, kind in (
        ("--min-reps", min_reps, int),
        ("--min-seconds", min_seconds, float),
        ("--warmup", warmup, int),
        ("--reps", reps, int),
        ("--repeats", repeats, int),
    ):
        if default is not ABSENT:
            parser.add_argument(flag, type=kind, default=default)
