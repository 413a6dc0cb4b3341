"""CLI verb `apr report`: recompute MQS, JUnit and HTML from an evidence file alone, and regenerate the
certification tables (models.csv, index.html, the README table) from every evidence file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from apr.errors import AprError


def _report_evidence(evidence: Path, output: Path | None) -> None:
    from apr.qa.evidence import read_evidence
    from apr.qa.reports import write_text_atomic
    from apr.qa.reports.html import render_html
    from apr.qa.reports.junit import render_junit
    from apr.qa.score import compute_mqs

    log = read_evidence(evidence)
    warning = log.warning()
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if not log.records:
        typer.echo(f"warning: {evidence}: no evidence records; the score is 0", err=True)
    records = list(log.records)
    mqs = compute_mqs(records)
    target = output or evidence.parent
    summary = {"evidence": str(evidence), **mqs.model_dump(mode="json")}
    from apr.qa.selftest.report import certification_self_test, summary_json

    self_test = certification_self_test(evidence.parent, records)  # the run's own, beside its evidence
    if self_test is not None:
        summary["self_test"] = summary_json(self_test)
    write_text_atomic(target / "mqs.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(target / "junit.xml", render_junit(records))
    write_text_atomic(target / "report.html", render_html(records, mqs, self_test=self_test))
    from apr.cli.qa import verdict_lines

    for line in verdict_lines(records, mqs):
        typer.echo(line)
    typer.echo(f"wrote {target / 'mqs.json'}, {target / 'junit.xml'}, {target / 'report.html'}")


def _report_tables(certifications: Path, readme: Path | None) -> None:
    from apr.qa.reports.certtable import write_tables

    rows = write_tables(certifications, readme)
    typer.echo(
        f"{len(rows)} row(s): wrote {certifications / 'models.csv'}, {certifications / 'index.html'}"
        + (f", the table in {readme}" if readme else "")
    )


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("report")
    def report(
        evidence: Path | None = typer.Argument(None, help="evidence.jsonl written by apr certify or apr qa"),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="where mqs.json, junit.xml, report.html go (default: next to EVIDENCE)"
        ),
        tables: bool = typer.Option(False, "--tables", help="regenerate models.csv, index.html (and --readme)"),
        certifications: Path = typer.Option(
            Path("certifications"), "--certifications", help="directory holding <model>/evidence.jsonl files"
        ),
        readme: Path | None = typer.Option(None, "--readme", help="README whose certification table to regenerate"),
    ) -> None:
        """Recompute MQS, JUnit and HTML from evidence alone; with --tables, the certification tables."""
        if evidence is None and not tables:
            raise AprError("apr report: give an EVIDENCE file, or --tables to regenerate the certification tables")
        if evidence is not None:
            _report_evidence(evidence, output)
        if tables:
            _report_tables(certifications, readme)
