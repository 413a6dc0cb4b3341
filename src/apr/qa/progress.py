"""Progress of a certification on stderr: one line per phase saying what runs now, what finished in how long,
and the ETA of the phase — a live rich display on a terminal, plain lines in a log (``make demo | tee``,
Dagster's captured output), nothing with ``--quiet``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    hours, rest = divmod(max(0, int(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Phase:
    """One phase of the run: ``total`` steps; ``start`` names the step running now, ``finish`` ends it."""

    def __init__(self, run: RunProgress, name: str, total: int) -> None:
        self.run, self.name, self.total = run, name, max(0, total)
        self.done = 0
        self.started = time.monotonic()
        self._step_started = self.started
        self._task = run._add_task(name, total) if run.live is not None else None

    def eta(self) -> float | None:
        """Seconds left at the pace of the steps so far (None before the first step finished)."""
        if not self.done or self.done >= self.total:
            return None
        return (time.monotonic() - self.started) / self.done * (self.total - self.done)

    def start(self, what: str) -> None:
        self._step_started = time.monotonic()
        self.run._show(self, f"running {what}", plain=False)

    def finish(self, what: str, *, seconds: float | None = None, steps: int = 1) -> None:
        took = seconds if seconds is not None else time.monotonic() - self._step_started
        self.done += steps
        self._step_started = time.monotonic()
        self.run._show(self, f"{what} in {took:.1f}s", plain=True)

    def close(self) -> None:
        self.run._show(self, f"done in {_clock(time.monotonic() - self.started)}", plain=True, final=True)


class RunProgress:
    """The progress display of one run. ``enabled=False`` is silence; ``live`` picks rich on a terminal."""

    def __init__(self, enabled: bool = True, *, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        use_live = enabled and (live if live is not None else self.stream.isatty())
        self.live = self._rich() if use_live else None

    def _rich(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("[bold]{task.fields[phase]:<18}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=Console(file=self.stream),
            transient=False,
        )
        progress.start()
        return progress

    def _add_task(self, name: str, total: int):
        assert self.live is not None  # only called with a live display
        return self.live.add_task("", total=max(1, total), phase=name)

    def say(self, line: str) -> None:
        """A line between the phases (what is certified, where the files went)."""
        if not self.enabled:
            return
        if self.live is not None:
            self.live.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.stream, flush=True)

    def phase(self, name: str, total: int) -> Phase:
        return Phase(self, name, total)

    def _show(self, phase: Phase, text: str, *, plain: bool, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.live is not None and phase._task is not None:
            completed = phase.total if final else min(phase.done, phase.total)
            self.live.update(phase._task, completed=completed, description=text, total=max(1, phase.total))
            return
        if not plain:
            return  # a log gets one line per finished step, not one per start
        eta = phase.eta()
        where = f"{phase.done}/{phase.total}" if not final else f"{phase.total}/{phase.total}"
        tail = f"; ETA {_clock(eta)}" if eta is not None else ""
        elapsed = _clock(time.monotonic() - phase.started)
        print(f"  [{phase.name} {where} {elapsed}{tail}] {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


SILENT = RunProgress(enabled=False)
