"""Summarize evidence per gate (status, headline measurement, threshold, duration) and render it as a table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.gates.catalog import CATALOG, GateId

# A gate's headline is its worst measurement: the lowest where higher is better, the highest where lower is.
LOWER_IS_BETTER = frozenset({"share of heads"})


@dataclass(frozen=True)
class GateRow:
    gate: str
    title: str
    status: str  # passed · failed · inconclusive (the machine stopped a check) · skipped · not applicable (endpoint)
    measured: str
    threshold: str
    duration_s: float
    corroborated: int
    failed: int
    skipped: int
    reason: str  # the first failure's reason, else the first skip's, else the first pass's

    def to_json(self) -> dict:
        return asdict(self)


def _fmt(value: float | None, unit: str | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3g}" if abs(value) < 1e5 else f"{value:.3e}"
    return f"{text} {unit}" if unit else text


def _headline(records: Sequence[EvidenceRecord]) -> tuple[str, str]:
    measured = [r for r in records if r.measured is not None and r.outcome is not Outcome.SKIPPED]
    if not measured:
        with_threshold = next((r for r in records if r.threshold is not None), None)
        return "-", _fmt(with_threshold.threshold, with_threshold.unit) if with_threshold else "-"
    pick = max if measured[0].unit in LOWER_IS_BETTER else min
    worst = pick(measured, key=lambda r: r.measured or 0.0)  # measured is set: filtered above
    return _fmt(worst.measured, worst.unit), _fmt(worst.threshold, worst.unit)


def gate_rows(records: Sequence[EvidenceRecord]) -> list[GateRow]:
    """One row per gate that has records, in catalog order."""
    rows = []
    for gate in GateId:
        mine = [r for r in records if r.gate is gate]
        if not mine:
            continue
        failed = [r for r in mine if r.outcome.is_failure]
        passed = [r for r in mine if r.outcome is Outcome.CORROBORATED]
        skipped = [r for r in mine if r.outcome is Outcome.SKIPPED]
        stopped = [r for r in mine if r.outcome.is_infrastructure]
        inapplicable = [r for r in mine if r.outcome is Outcome.NOT_APPLICABLE]
        status = (
            "failed"
            if failed
            else "inconclusive"
            if stopped
            else "passed"
            if passed
            else "skipped"
            if skipped
            else "not applicable"
        )
        measured, threshold = _headline(mine)
        first = (failed or stopped or skipped or passed or inapplicable)[0]
        rows.append(
            GateRow(
                gate=gate.value,
                title=CATALOG[gate].title,
                status=status,
                measured=measured,
                threshold=threshold,
                duration_s=round(sum(r.duration_s for r in mine), 3),
                corroborated=len(passed),
                failed=len(failed),
                skipped=len(skipped),
                reason=f"{first.check}: {first.reason}",
            )
        )
    return rows


STYLE = {
    "passed": "green",
    "failed": "bold red",
    "inconclusive": "bold magenta",
    "skipped": "yellow",
    "not applicable": "dim",
}


def render_table(rows: Sequence[GateRow], title: str) -> None:
    """Print the gate · status · measured · threshold · duration table to stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("gate", "left"),
        ("status", "left"),
        ("measured", "right"),
        ("threshold", "right"),
        ("duration", "right"),
        ("checks", "right"),
        ("detail", "left"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        counts = f"{row.corroborated}✓ {row.failed}✗ {row.skipped}–"
        detail = row.reason if row.status != "passed" else ""
        table.add_row(
            row.title,
            f"[{STYLE[row.status]}]{row.status.upper()}[/]",
            row.measured,
            row.threshold,
            f"{row.duration_s:.1f}s",
            counts,
            detail[:160],
        )
    import sys

    # Piped output would wrap at 80 columns and shred the table; a wide fixed width keeps one row per gate.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
