"""Certification tables rendered from every evidence file under ``certifications/``: ``models.csv``,
``index.html`` and the README table between ``<!-- certification-table:start -->`` and
``<!-- certification-table:end -->``.

``models.csv`` has one row per model, tier and GPU (the newest evidence file wins; runs kept under a folder's
``runs/`` are history and never read), so a run with the GPU cells executed stands beside a run on a machine
without one. Columns:

=================  ==========================================================================================
model              model ref as the playbook names it (e.g. ``qwen2.5-coder:1.5b``)
tier               playbook tier (quick, smoke, mvp, standard, full); ``-`` for ``apr qa`` evidence
gpu                device the GPU cells ran on, as provenance names it (e.g. ``cuda (NVIDIA H200)``); ``-`` when
                   none ran (no GPU on that machine: the GPU cells are skipped, never passes)
status             CERTIFIED, PROVISIONAL, INCONCLUSIVE or BLOCKED (apr.qa.score); the README and index.html add
                   "(endpoint)" to an endpoint's (see ``kind``)
mqs                0–1000 after the gateway rule (an endpoint's: over the categories that apply, scaled to 1000)
grade              A+, A, B+, B, C or F; I (incomplete) for INCONCLUSIVE
gateways_passed    gateways passed out of five (G0–G4; an endpoint's out of the four that apply to it)
records            evidence records counted
corroborated       records that passed
falsified          records the model failed
crashed            records where the program died of its own defect
skipped            records that could not run here (never passes)
inconclusive       records the machine stopped (deadline, OOM, killed from outside, full disk; older timeouts)
tok_s_cpu          median measured decode tok/s of the THROUGHPUT records on cpu (empty if none)
tok_s_gpu          the same on gpu
model_sha256       sha256 of the artifact most records were run on
engine_git_sha     git commit of apr that produced the evidence
last_run           newest ``finished_at`` of the records (UTC, ISO 8601)
self_test          the certification's own self-test (``self-test/detection.json`` beside the evidence, of the
                   same playbook): "this verdict was produced by gates that caught N/M planted defects (F false
                   blocks on the clean copy)"; empty when that run had none
evidence           path of the evidence file, relative to the certifications directory
kind               ``checkpoint`` (the files, through apr's engine) or ``endpoint`` (a remote OpenAI-compatible
                   server's behaviour, ``apr certify --endpoint``: its own kind of verdict, see docs/endpoint.md)
endpoint           the endpoint's OpenAI base URL (empty for a checkpoint)
=================  ==========================================================================================
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from html import escape
from pathlib import Path

from apr.errors import AprError
from apr.qa.axes import Backend, Tier
from apr.qa.evidence import EvidenceRecord, Outcome, read_evidence
from apr.qa.gates.catalog import GateId
from apr.qa.reports import write_text_atomic
from apr.qa.reports.html import CSS
from apr.qa.rundir import ARCHIVE_DIR
from apr.qa.score import GatewayState, SubjectKind, compute_mqs

START_MARKER = "<!-- certification-table:start -->"
END_MARKER = "<!-- certification-table:end -->"
_TIER_ORDER = {tier.value: index for index, tier in enumerate(Tier)}


@dataclass(frozen=True)
class CertRow:
    """One row of models.csv (see the module docstring for each column)."""

    model: str
    tier: str
    gpu: str
    status: str
    mqs: int
    grade: str
    gateways_passed: str
    records: int
    corroborated: int
    falsified: int
    crashed: int
    skipped: int
    inconclusive: int
    tok_s_cpu: str
    tok_s_gpu: str
    model_sha256: str
    engine_git_sha: str
    last_run: str
    self_test: str
    evidence: str
    kind: str = SubjectKind.CHECKPOINT.value
    endpoint: str = ""

    @property
    def label(self) -> str:
        """The status as the README and index.html show it: an endpoint's verdict says it is one."""
        return self.status if self.kind == SubjectKind.CHECKPOINT.value else f"{self.status} (endpoint)"


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CertRow))


def _median_tok_s(records: Sequence[EvidenceRecord], backend: Backend) -> str:
    values = [
        r.measured
        for r in records
        if r.gate is GateId.THROUGHPUT
        and r.scenario.backend is backend
        and r.measured is not None
        and r.outcome in (Outcome.CORROBORATED, Outcome.FALSIFIED)
    ]
    return f"{statistics.median(values):.1f}" if values else ""


def _gpu_used(records: Sequence[EvidenceRecord]) -> str:
    devices = Counter(
        r.provenance.device
        for r in records
        if r.scenario.backend is Backend.GPU and r.outcome is not Outcome.SKIPPED and r.provenance.device != "none"
    )
    return devices.most_common(1)[0][0] if devices else "-"


def row_for(records: Sequence[EvidenceRecord], evidence: str, self_test: str = "") -> CertRow:
    """The table row of one model and tier's records (``self_test``: the sentence of its own self-test)."""
    mqs = compute_mqs(records)
    count = Counter(r.outcome for r in records)
    shas = Counter(r.provenance.model_sha256 for r in records if r.provenance.model_sha256)
    engines = Counter(r.provenance.engine_git_sha for r in records)
    tier = records[0].provenance.tier
    endpoint = records[0].provenance.endpoint
    applicable = [state for state in mqs.gateways.values() if state is not GatewayState.NOT_APPLICABLE]
    return CertRow(
        model=records[0].scenario.model,
        tier=tier.value if tier else "-",
        gpu=_gpu_used(records),
        status=mqs.status.value,
        mqs=mqs.score,
        grade=mqs.grade,
        gateways_passed=f"{sum(s is GatewayState.PASSED for s in applicable)}/{len(applicable)}",
        records=len(records),
        corroborated=count[Outcome.CORROBORATED],
        falsified=count[Outcome.FALSIFIED],
        crashed=count[Outcome.CRASHED],
        skipped=count[Outcome.SKIPPED],
        inconclusive=count[Outcome.INCONCLUSIVE] + count[Outcome.TIMEOUT],
        tok_s_cpu=_median_tok_s(records, Backend.CPU),
        tok_s_gpu=_median_tok_s(records, Backend.GPU),
        model_sha256=shas.most_common(1)[0][0] if shas else "",
        engine_git_sha=engines.most_common(1)[0][0],
        last_run=max(r.provenance.finished_at for r in records).isoformat(),
        self_test=self_test,
        evidence=evidence,
        kind=mqs.kind.value,
        endpoint=endpoint.url if endpoint is not None and mqs.kind is SubjectKind.ENDPOINT else "",
    )


def rows_from_records(records: Sequence[EvidenceRecord], evidence: str, folder: Path | None = None) -> list[CertRow]:
    """One row per (model, tier, endpoint) found in one evidence file; ``folder`` (the evidence file's) may hold
    the certification's self-test."""
    from apr.qa.selftest.report import certification_self_test, verdict_sentence

    groups: dict[tuple[str, str, str], list[EvidenceRecord]] = {}
    for record in records:
        tier = record.provenance.tier.value if record.provenance.tier else "-"
        endpoint = record.provenance.endpoint.url if record.provenance.endpoint is not None else ""
        groups.setdefault((record.scenario.model, tier, endpoint), []).append(record)
    rows = []
    for group in groups.values():
        self_test = certification_self_test(folder, group) if folder is not None else None
        rows.append(row_for(group, evidence, verdict_sentence(self_test) if self_test is not None else ""))
    return rows


def collect_rows(certifications: Path) -> list[CertRow]:
    """Rows for every ``evidence.jsonl`` under ``certifications``; per (model, tier, gpu, endpoint) the newest run
    wins."""
    if not certifications.is_dir():
        raise AprError(
            f"{certifications}: no certifications directory; run apr certify first or pass --certifications DIR"
        )
    newest: dict[tuple[str, str, str, str], CertRow] = {}
    for path in sorted(certifications.rglob("evidence.jsonl")):
        if ARCHIVE_DIR in path.relative_to(certifications).parts[:-1]:
            continue  # an earlier run kept aside by a re-run (apr.qa.rundir): history, not the current state
        log = read_evidence(path)
        if not log.records:
            continue
        for row in rows_from_records(log.records, path.relative_to(certifications).as_posix(), path.parent):
            key = (row.model, row.tier, row.gpu, row.endpoint)
            if key not in newest or row.last_run > newest[key].last_run:
                newest[key] = row
    return sorted(
        newest.values(), key=lambda r: (r.model, _TIER_ORDER.get(r.tier, len(_TIER_ORDER)), r.gpu, r.endpoint)
    )


def render_csv(rows: Sequence[CertRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(astuple(row) for row in rows)
    return buffer.getvalue()


def render_markdown(rows: Sequence[CertRow]) -> str:
    """The README table."""
    lines = [
        "| Model | Tier | GPU cells ran on | Status | MQS | Grade | Gateways"
        " | Records (pass / fail / skip / inconclusive) | CPU tok/s | GPU tok/s | Last run |",
        "|---|---|---|---|---:|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_model_cell(r)} | {r.tier} | {r.gpu} | **{r.label}**{_self_test_note(r)} | {r.mqs} | {r.grade} | "
            f"{r.gateways_passed} | "
            f"{_records_cell(r)} | {r.tok_s_cpu or '-'} | {r.tok_s_gpu or '-'} | {r.last_run[:10]} |"
        )
    if not rows:
        lines.append("| _no evidence yet_ | | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def _self_test_note(r: CertRow) -> str:
    from apr.qa.selftest.report import sentence_figures

    return f" (self-test: gates caught {sentence_figures(r.self_test)})" if r.self_test else ""


def _model_cell(r: CertRow) -> str:
    return f"`{r.model}`" + (f" at `{r.endpoint}`" if r.endpoint else "")


def _records_cell(r: CertRow) -> str:
    return f"{r.corroborated} / {r.falsified + r.crashed} / {r.skipped} / {r.inconclusive}"


# index.html shows what fits a 1280 px window (models.csv has every column): the records' outcomes in one
# cell, the date of the last run, the links; the digests and the engine commit stay in the CSV.
INDEX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("tier", "tier"),
    ("status", "status"),
    ("mqs", "MQS"),
    ("grade", "grade"),
    ("gateways_passed", "gateways"),
    ("records", "pass / fail / skip / inconcl."),
    ("tok_s_cpu", "CPU tok/s"),
    ("tok_s_gpu", "GPU tok/s"),
    ("last_run", "last run"),
    ("evidence", "files"),
)
INDEX_CSS = "table{table-layout:auto}td,th{white-space:nowrap}td.wrap{white-space:normal}"


def _index_cell(r: CertRow, column: str) -> str:
    if column == "status":
        badge = f"<span class='badge {escape(r.status)}'>{escape(r.label)}</span>"
        if r.self_test:
            # The sentence would not fit 1280 px: its figures under the badge, the whole sentence on hover.
            from apr.qa.selftest.report import sentence_figures

            figures = sentence_figures(r.self_test)
            return f"<td title='{escape(r.self_test)}'>{badge}<br><small>self-test: {escape(figures)}</small></td>"
        return f"<td>{badge}</td>"
    if column == "records":
        return f"<td class='num'>{escape(_records_cell(r))}</td>"
    if column == "tier" and r.gpu != "-":
        # The GPU goes under the tier (a column of its own would not fit 1280 px); models.csv has it apart.
        return f"<td>{escape(r.tier)}<br><small>GPU: {escape(r.gpu)}</small></td>"
    if column == "last_run":
        return f"<td>{escape(r.last_run[:10])}</td>"
    if column == "model":
        where = f"<br><small>endpoint {escape(r.endpoint)}</small>" if r.endpoint else ""
        return f"<td class='wrap'><code>{escape(r.model)}</code>{where}</td>"
    if column == "evidence":
        report = Path(r.evidence).with_name("report.html").as_posix()
        return f"<td><a href='{escape(report)}'>report</a> · <a href='{escape(r.evidence)}'>evidence</a></td>"
    numeric = column in ("mqs", "tok_s_cpu", "tok_s_gpu")
    return f"<td{' class=num' if numeric else ''}>{escape(str(getattr(r, column)) or '-')}</td>"


def render_index(rows: Sequence[CertRow]) -> str:
    """``certifications/index.html``: every row, linking each model's report next to its evidence; it fits a
    1280 px window (``INDEX_COLUMNS``)."""
    head = "".join(f"<th>{escape(title)}</th>" for _, title in INDEX_COLUMNS)
    body = ["<tr>" + "".join(_index_cell(r, column) for column, _ in INDEX_COLUMNS) + "</tr>" for r in rows]
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>apr certifications</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<style>{CSS}{INDEX_CSS}</style></head><body><h1>apr certifications</h1>"
        f"<p class='muted'>One row per model, tier and GPU, rendered from evidence by <code>apr report --tables</code> "
        f"(every column, digests included, in <a href='models.csv'>models.csv</a>).</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table></body></html>\n"
    )


def replace_readme_table(readme_text: str, table: str, readme: Path) -> str:
    """``readme_text`` with everything between the two markers replaced by ``table``."""
    start, end = readme_text.find(START_MARKER), readme_text.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise AprError(
            f"{readme}: no '{START_MARKER}' … '{END_MARKER}' pair; add both markers where the "
            "certification table belongs"
        )
    return readme_text[: start + len(START_MARKER)] + "\n" + table + readme_text[end:]


def write_tables(certifications: Path, readme: Path | None) -> list[CertRow]:
    """Regenerate models.csv and index.html in ``certifications`` (and the README table); returns the rows."""
    rows = collect_rows(certifications)
    updated_readme = None
    if readme is not None:
        if not readme.is_file():
            raise AprError(f"{readme}: README not found; pass --readme PATH")
        updated_readme = replace_readme_table(readme.read_text(encoding="utf-8"), render_markdown(rows), readme)
    write_text_atomic(certifications / "models.csv", render_csv(rows))
    write_text_atomic(certifications / "index.html", render_index(rows))
    if readme is not None and updated_readme is not None:
        write_text_atomic(readme, updated_readme)
    return rows
