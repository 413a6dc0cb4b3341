"""A self-contained HTML report of one evidence set: inline CSS, no scripts, no external resources.

Sections: verdict (status, MQS, grade) with the reasons for anything short of a clean pass right under it
(which gate, which cell, the evidence line: ``apr.qa.reports.reasons``), gateways, MQS breakdown per category
and gate, the cell matrix (format × modality rows, backend columns), every record, and provenance (with the
machine calibration the deadlines and speed floors were derived from). A certification that ran its playbook's
self-test says, under the verdict, how many planted defects its gates caught (a link to ``self-test/detection.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.gates.catalog import CATALOG
from apr.qa.reports.reasons import Kind, why
from apr.qa.score import MqsResult, Status, SubjectKind, compute_mqs

if TYPE_CHECKING:
    from apr.qa.selftest.run import SelfTestResult

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2330;padding:0 1rem;
overflow-wrap:anywhere}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d5d9e0}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid #d5d9e0;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f1f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:.8rem;font-weight:600;color:#fff}
.CERTIFIED{background:#1a7f37}.PROVISIONAL{background:#b08800}.BLOCKED{background:#cf222e}.INCONCLUSIVE{background:#5b6472}
.corroborated,.passed{color:#1a7f37}.falsified,.failed,.crashed{color:#cf222e;font-weight:600}
.skipped,.unverified{color:#8a6d00}.inconclusive,.timeout{color:#5b6472;font-weight:600}
.not-applicable{color:#8c959f;font-style:italic}
.why{border-left:4px solid #cf222e;background:#fff5f5;padding:.4rem .8rem;margin:.6rem 0}
.why.machine{border-color:#5b6472;background:#f4f5f7}.why.missing,.why.costs{border-color:#b08800;background:#fffbea}
.why li{margin:.2rem 0}.bar{background:#e6e9ee;height:.6rem;border-radius:.3rem;min-width:8rem}
.bar>span{display:block;height:100%;background:#1a7f37;border-radius:.3rem}
details pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5rem;margin:.3rem 0}
.muted{color:#5b6472}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


_STATUS_NOTE = {
    Status.PROVISIONAL: "PROVISIONAL: no P0 gate failed, but the evidence is incomplete (skipped or missing "
    "checks) or non-blocking gates failed.",
    Status.INCONCLUSIVE: "INCONCLUSIVE: no evidence against the model, but this machine could not run every "
    "check (deadline, memory, a killed process or a full disk; see below). The MQS counts only the checks "
    "that concluded; grade I means incomplete. Re-run on a quieter machine, or with --resume.",
    Status.BLOCKED: "BLOCKED: evidence against the model in a P0 gate, or a gateway without evidence.",
}
_KIND_TITLE = {
    Kind.BLOCKS: "Blocks the certification",
    Kind.MACHINE: "Inconclusive: the machine, not the model",
    Kind.COSTS: "Failed non-blocking gates (cost points)",
    Kind.MISSING: "Missing evidence (skipped checks)",
}
_SHOWN_PER_KIND = 12


def _why(records: Sequence[EvidenceRecord], mqs: MqsResult) -> str:
    reasons = why(records, mqs)
    parts = []
    for kind in Kind:
        mine = [r for r in reasons if r.kind is kind]
        if not mine:
            continue
        items = "".join(
            f"<li><b>{_e(r.gate)}</b> <code>{_e(r.cell)}</code>: {_e(r.line)}"
            + (f" <span class='muted'>(+{r.count - 1} more like it)</span>" if r.count > 1 else "")
            + "</li>"
            for r in mine[:_SHOWN_PER_KIND]
        )
        rest = f"<li class='muted'>… {len(mine) - _SHOWN_PER_KIND} more</li>" if len(mine) > _SHOWN_PER_KIND else ""
        css = kind.name.lower()
        parts.append(f"<div class='why {css}'><b>{_e(_KIND_TITLE[kind])}</b><ul>{items}{rest}</ul></div>")
    return "".join(parts)


def _endpoint_note(mqs: MqsResult, records: Sequence[EvidenceRecord]) -> str:
    """What an endpoint certification is, and is not: said right under its verdict."""
    if mqs.kind is not SubjectKind.ENDPOINT:
        return ""
    endpoints = sorted({f"{e.served_model} at {e.url}" for r in records if (e := r.provenance.endpoint) is not None})
    left_out = ", ".join(c.category.value for c in mqs.categories if not c.applicable)
    return (
        f"<p class='muted'>Endpoint certification of {_e('; '.join(endpoints))}: how the endpoint behaves through "
        f"its OpenAI-compatible API, not what its weights are. Gates that need the checkpoint's files or apr's "
        f"engine are recorded not applicable and never counted; the categories {_e(left_out)} cannot apply, so "
        f"the MQS is over the {mqs.scale} weight points that do, scaled to 1000.</p>"
    )


def _verdict(mqs: MqsResult, models: list[str], records: Sequence[EvidenceRecord]) -> str:
    note = _STATUS_NOTE.get(mqs.status)
    return (
        f"<h1>{_e(', '.join(models) or 'no model')}</h1>"
        f"<p><span class='badge {mqs.status.value}'>{_e(mqs.label)}</span> "
        f"MQS <b>{mqs.score}</b>/1000 · grade <b>{_e(mqs.grade)}</b> · raw {mqs.raw} · "
        f"{mqs.total_records} records</p>"
        + _endpoint_note(mqs, records)
        + (f"<p class='muted'>{_e(note)}</p>" if note else "")
        + _why(records, mqs)
    )


def _breakdown(mqs: MqsResult) -> str:
    rows = []
    for category in mqs.categories:
        if not category.applicable:
            rows.append(
                f"<tr><td>{_e(category.category.value)}</td><td class='num not-applicable'>n/a</td>"
                f"<td class='num'>{category.weight}</td><td></td><td class='not-applicable'>not applicable to an "
                "endpoint: left out of the scale</td></tr>"
            )
            continue
        share = category.points / category.weight if category.weight else 0.0
        gates = ", ".join(
            (
                f"{g.gate} {g.corroborated}/{g.conclusive}"
                + (f" ({g.inconclusive} inconclusive)" if g.inconclusive else "")
            )
            if g.total
            else f"{g.gate} (no evidence)"
            for g in category.gates
        )
        rows.append(
            f"<tr><td>{_e(category.category.value)}</td><td class='num'>{category.points:.1f}</td>"
            f"<td class='num'>{category.weight}</td><td><div class='bar'><span style='width:{share:.0%}'>"
            f"</span></div></td><td>{_e(gates)}</td></tr>"
        )
    return (
        "<h2>MQS breakdown</h2><table><tr><th>category</th><th>points</th><th>of</th><th></th>"
        "<th>gates (corroborated/conclusive records)</th></tr>" + "".join(rows) + "</table>"
        "<p class='muted'>Per gate: corroborated ÷ its conclusive records (skipped earn nothing; inconclusive "
        "records — stopped by the machine — count neither way; a gate without evidence scores 0). Category = "
        "weight × mean over its gates. A failed or unverified gateway → MQS 0.</p>"
    )


def _gates(mqs: MqsResult) -> str:
    rows = []
    for category in mqs.categories:
        for g in category.gates:
            spec = CATALOG[g.gate]
            state = mqs.gateways.get(g.gate)
            gateway = f"<span class='{state.value}'>{state.value}</span>" if state else ""
            rows.append(
                f"<tr><td>{_e(g.gate)}</td><td>{_e(spec.title)}</td><td>{_e(spec.severity)}</td>"
                f"<td>{gateway}</td>"
                + "".join(
                    f"<td class='num'>{n}</td>"
                    for n in (g.corroborated, g.falsified, g.crashed, g.skipped, g.inconclusive, g.not_applicable)
                )
                + "</tr>"
            )
    return (
        "<h2>Gates</h2><table><tr><th>gate</th><th>title</th><th>severity</th><th>gateway</th>"
        "<th>corroborated</th><th>falsified</th><th>crashed</th><th>skipped</th><th>inconclusive</th>"
        "<th>not applicable</th></tr>" + "".join(rows) + "</table>"
    )


_WORST = (
    Outcome.CRASHED,
    Outcome.FALSIFIED,
    Outcome.INCONCLUSIVE,
    Outcome.TIMEOUT,
    Outcome.SKIPPED,
    Outcome.CORROBORATED,
    Outcome.NOT_APPLICABLE,
)


def _cells(records: Sequence[EvidenceRecord]) -> str:
    # A remote endpoint's cells have a modality and a prompt but no format or backend: one "endpoint" column.
    cell_records = [
        r
        for r in records
        if r.scenario.modality
        and r.scenario.prompt_id
        and ((r.scenario.format and r.scenario.backend) or r.provenance.endpoint is not None)
    ]
    if not cell_records:
        return "<h2>Cells</h2><p class='muted'>No cell evidence.</p>"

    def where(r: EvidenceRecord) -> tuple[str, str, str]:
        fmt, backend = r.scenario.format, r.scenario.backend
        return (fmt.value if fmt else "-", str(r.scenario.modality), backend.value if backend else "endpoint")

    backends = sorted({where(r)[2] for r in cell_records})
    rows_keys = sorted({where(r)[:2] for r in cell_records})
    rows = []
    for fmt, modality in rows_keys:
        tds = []
        for backend in backends:
            group = [r for r in cell_records if where(r) == (fmt, modality, backend)]
            if not group:
                tds.append("<td class='muted'>—</td>")
                continue
            worst = next(o for o in _WORST if any(r.outcome is o for r in group))
            counts = " ".join(f"{o.value} {n}" for o in Outcome if (n := sum(r.outcome is o for r in group)))
            tds.append(f"<td class='{worst.value}'>{_e(counts)}</td>")
        rows.append(f"<tr><td>{_e(fmt)}</td><td>{_e(modality)}</td>{''.join(tds)}</tr>")
    head = "".join(f"<th>{_e(b)}</th>" for b in backends)
    return f"<h2>Cells</h2><table><tr><th>format</th><th>modality</th>{head}</tr>{''.join(rows)}</table>"


def _records(records: Sequence[EvidenceRecord]) -> str:
    rows = []
    for r in records:
        measured = (
            ""
            if r.measured is None
            else f"{r.measured:g}"
            + (f" / {r.threshold:g}" if r.threshold is not None else "")
            + (f" {r.unit}" if r.unit else "")
        )
        detail = (
            f"<details><summary>output</summary><pre>{_e(r.output_excerpt)}</pre></details>" if r.output_excerpt else ""
        )
        rows.append(
            f"<tr><td>{_e(r.gate)}</td><td>{_e(r.check)}</td><td>{_e(r.scenario.cell_key)}</td>"
            f"<td class='{r.outcome.value}'>{_e(r.outcome.value)}"
            + (f" ({_e(r.infra_cause)})" if r.infra_cause else "")
            + f"</td><td>{_e(r.reason)}{detail}</td>"
            f"<td>{_e(measured)}</td><td class='num'>{r.duration_s:.2f}</td></tr>"
        )
    return (
        "<h2>Records</h2><table><tr><th>gate</th><th>check</th><th>cell</th><th>outcome</th><th>reason</th>"
        "<th>measured / threshold</th><th>s</th></tr>" + "".join(rows) + "</table>"
    )


def _endpoint_fields(records: Sequence[EvidenceRecord]) -> dict[str, set[str]]:
    endpoints = [e for r in records if (e := r.provenance.endpoint) is not None]
    if not endpoints:
        return {}
    return {
        "endpoint": {f"{e.url} (model {e.served_model}, {e.api} API)" for e in endpoints},
        "server headers": {", ".join(f"{k}: {v}" for k, v in sorted(e.server.items())) or "none" for e in endpoints},
        "requests": {
            f"concurrency {e.concurrency}, "
            + (f"at most {e.rate_limit_rps:g}/s" if e.rate_limit_rps else "no rate limit")
            + (f", API key from ${e.api_key_env}" if e.api_key_env else ", no API key")
            for e in endpoints
        },
    }


def _provenance(records: Sequence[EvidenceRecord]) -> str:
    if not records:
        return ""
    fields = {
        "engine git sha": {r.provenance.engine_git_sha for r in records},
        "apr version": {r.provenance.apr_version for r in records},
        "torch version": {str(r.provenance.torch_version) for r in records},
        "hosts": {r.provenance.host for r in records},
        "devices": {r.provenance.device for r in records},
        "model sha256": {str(r.provenance.model_sha256) for r in records},
        "playbooks": {f"{r.provenance.playbook} ({r.provenance.tier})" for r in records},
        **_endpoint_fields(records),
        "machine (calibrated)": {
            f"{c.measured_at.isoformat(timespec='seconds')}: {c.line()} — {c.threads_reason}"
            for r in records
            if (c := r.provenance.calibration) is not None
        }
        or {
            "not measured: an endpoint's checks ran no engine here"
            if all(r.provenance.endpoint is not None for r in records)
            else "not calibrated (apr qa, or evidence written before calibration existed)"
        },
    }
    start = min(r.provenance.started_at for r in records)
    end = max(r.provenance.finished_at for r in records)
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{'<br>'.join(_e(v) for v in sorted(vals))}</td></tr>" for k, vals in fields.items()
    )
    return (
        f"<h2>Provenance</h2><table>{rows}<tr><th>run</th><td>{_e(start.isoformat())} → "
        f"{_e(end.isoformat())}</td></tr></table>"
    )


def _self_test(result: SelfTestResult | None) -> str:
    if result is None:
        return ""
    from apr.qa.selftest.report import DETECTION_MD, SELF_TEST_DIR, verdict_sentence

    sentence = verdict_sentence(result)
    return (
        f"<p class='self-test'>{_e(sentence[0].upper() + sentence[1:])} — "
        f"<a href='{SELF_TEST_DIR}/{DETECTION_MD}'>detection table</a>.</p>"
    )


def render_html(
    records: Sequence[EvidenceRecord],
    mqs: MqsResult | None = None,
    *,
    title: str = "",
    self_test: SelfTestResult | None = None,
) -> str:
    """The whole report as one HTML document (with the sentence of the certification's own ``self_test``)."""
    mqs = mqs or compute_mqs(records)
    models = list(dict.fromkeys(r.scenario.model for r in records))
    gateways = "".join(f"<li>{_e(g)}: <span class='{s.value}'>{s.value}</span></li>" for g, s in mqs.gateways.items())
    body = (
        _verdict(mqs, models, records)
        + _self_test(self_test)
        + f"<h2>Gateways</h2><ul>{gateways}</ul>"
        + _breakdown(mqs)
        + _gates(mqs)
        + _cells(records)
        + _records(records)
        + _provenance(records)
    )
    page_title = title or f"apr certification — {', '.join(models)}"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(page_title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


__all__ = ["render_html"]
