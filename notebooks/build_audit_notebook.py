"""Build ``notebooks/audit.ipynb`` (the papermill audit notebook) from reviewable Python source.

Run ``.venv/bin/python notebooks/build_audit_notebook.py`` after editing a cell below; the notebook
is committed without outputs. Cell ids are fixed so rebuilding an unchanged notebook is a no-op.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat import v4

NOTEBOOK = Path(__file__).resolve().parent / "audit.ipynb"

TITLE = """\
# Audit of a certification run

Everything below is computed from the evidence file alone (`apr.qa.evidence`): the outcome of every
check, throughput by format and backend, latency, and the MQS by category (`apr.qa.score`) — and, for a
certification that ran its self-test (full tier), which gates caught which planted defect (`self-test/detection.json`).
A skipped check is shown as skipped — never as a pass. Charts are written as PNG and SVG, and
together into one self-contained HTML page (`audit.html`, no CDN)."""

PARAMETERS = """\
# The model partition this audit is about.
model = "fixture"
# The evidence JSONL written by the certification run.
evidence_path = "evidence.jsonl"
# Where charts and audit.html go; empty means a fresh temporary directory.
output_dir = ''"""

IMPORTS = """\
import tempfile
from pathlib import Path

import altair as alt
import pandas as pd

from apr.qa.evidence import Outcome, read_evidence
from apr.qa.score import compute_mqs

# Throughput metrics the cells record, best first: decode speed, else end-to-end request speed.
THROUGHPUT_METRICS = ("decode_tok_s", "tok_s", "request_tok_s")
OUTCOME_ORDER = [outcome.value for outcome in Outcome]

out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="apr-audit-"))
charts_dir = out / "charts"
charts_dir.mkdir(parents=True, exist_ok=True)"""

LOAD = """\
log = read_evidence(evidence_path)
assert log.torn_tail is None, log.warning()
records = log.records
assert records, f"{evidence_path}: the evidence file holds no records; nothing was checked"


def throughput(record):
    for name in THROUGHPUT_METRICS:
        value = record.metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def seconds(record):
    # The cell's subprocess wall time when recorded, else the check's own duration.
    value = record.metrics.get("wall_s")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else record.duration_s


evidence = pd.DataFrame([{
    "gate": str(r.gate),
    "check": r.check,
    "outcome": str(r.outcome),
    "format": str(r.scenario.format) if r.scenario.format else "model",
    "backend": str(r.scenario.backend) if r.scenario.backend else "n/a",
    "modality": str(r.scenario.modality) if r.scenario.modality else "n/a",
    "prompt_id": r.scenario.prompt_id,
    "cell": r.scenario.cell_key if r.scenario.modality else None,
    "duration_s": r.duration_s,
    "wall_s": seconds(r),
    "tok_s": throughput(r),
    "reason": r.reason,
} for r in records])
assert set(evidence["outcome"]) <= set(OUTCOME_ORDER), set(evidence["outcome"])
# One row per matrix cell (a cell leaves several records: inference, stability, quality...).
cells = evidence.dropna(subset=["cell"]).groupby("cell", as_index=False).agg(
    format=("format", "first"), backend=("backend", "first"), modality=("modality", "first"),
    tok_s=("tok_s", "max"), wall_s=("wall_s", "max"),
    ran=("outcome", lambda outcomes: bool((outcomes != "skipped").any())),
)
evidence.head(10)"""

SUMMARY = """\
# NBVAL_CHECK_OUTPUT
mqs = compute_mqs(records)
counts = evidence["outcome"].value_counts().reindex(OUTCOME_ORDER, fill_value=0)
assert int(counts.sum()) == len(records) == mqs.total_records
# A pass needs corroborating evidence: a gateway with nothing corroborated is never "passed".
for gate, state in mqs.gateways.items():
    corroborated = ((evidence["gate"] == str(gate)) & (evidence["outcome"] == "corroborated")).sum()
    assert state.value != "passed" or corroborated > 0, gate
print(f"records: {len(records)}")
print("outcomes: " + ", ".join(f"{name} {int(n)}" for name, n in counts.items()))
print(f"MQS {mqs.score}/1000 (raw {mqs.raw}), grade {mqs.grade}, status {mqs.status.value}")
for line in mqs.blockers:
    print(f"blocker: {line}")"""

THROUGHPUT = """\
measured = cells.dropna(subset=["tok_s"])
if measured.empty:
    throughput_chart = alt.Chart(pd.DataFrame({"note": ["no throughput was measured in this evidence"]})).mark_text(
        size=14).encode(text="note:N").properties(title="Throughput by format and backend", width=420, height=60)
else:
    throughput_chart = alt.Chart(measured).mark_bar().encode(
        x=alt.X("format:N", title="format", axis=alt.Axis(labelAngle=0)),
        xOffset="backend:N",
        y=alt.Y("median(tok_s):Q", title="median tok/s"),
        color=alt.Color("backend:N", title="backend"),
        tooltip=["format", "backend", "modality", alt.Tooltip("median(tok_s):Q", format=".1f"), "count()"],
    ).properties(title="Throughput by format and backend", width=420, height=260)
print(f"cells with a throughput measurement: {len(measured)}")
throughput_chart"""

HEATMAP = """\
outcome_counts = evidence.groupby(["gate", "outcome"]).size().reset_index(name="records")
assert int(outcome_counts["records"].sum()) == len(records)
base = alt.Chart(outcome_counts).encode(
    x=alt.X("outcome:N", sort=OUTCOME_ORDER, scale=alt.Scale(domain=OUTCOME_ORDER), title="outcome",
            axis=alt.Axis(labelAngle=0)),
    y=alt.Y("gate:N", title="gate"),
)
heatmap_chart = (
    base.mark_rect().encode(color=alt.Color("records:Q", scale=alt.Scale(scheme="blues"), title="records"))
    + base.mark_text(fontSize=12).encode(
        text="records:Q",
        color=alt.condition(alt.datum.records > outcome_counts["records"].max() / 2, alt.value("white"), alt.value("black")),
    )
).properties(title="Gate outcomes", width=420, height=max(120, 24 * outcome_counts["gate"].nunique()))
heatmap_chart"""

MQS_CHART = """\
categories = pd.DataFrame([{"category": str(c.category), "points": c.points, "weight": c.weight}
                           for c in mqs.categories])
assert int(categories["weight"].sum()) == 1000
assert int(categories["points"].sum() + 1e-9) == mqs.raw
mqs_base = alt.Chart(categories).encode(y=alt.Y("category:N", sort=list(categories["category"]), title=None))
mqs_chart = (
    mqs_base.mark_bar(color="#eeeeee").encode(x=alt.X("weight:Q", title="points (of the category weight)"))
    + mqs_base.mark_bar(color="#1565c0").encode(x="points:Q", tooltip=["category", alt.Tooltip("points:Q", format=".1f"), "weight"])
).properties(title=f"MQS by category: {mqs.score}/1000, grade {mqs.grade}, {mqs.status.value}", width=420, height=180)
mqs_chart"""

LATENCY = """\
ran = cells[cells["ran"]]
if ran.empty:
    latency_chart = alt.Chart(pd.DataFrame({"note": ["no matrix cell ran in this evidence"]})).mark_text(
        size=14).encode(text="note:N").properties(title="Latency per cell", width=420, height=60)
else:
    latency_chart = alt.Chart(ran).mark_bar(opacity=0.8).encode(
        x=alt.X("wall_s:Q", bin=alt.Bin(maxbins=20), title="wall time per cell (s)"),
        y=alt.Y("count():Q", title="cells"),
        color=alt.Color("modality:N", title="modality"),
    ).properties(title="Latency per cell", width=420, height=220)
print(f"matrix cells: {len(cells)}, ran: {len(ran)}, skipped: {len(cells) - len(ran)}")
latency_chart"""

FUNCTIONAL = """\
# FUNCTIONAL-CORRECTNESS (full tier): pass@1 of each format and of the reference, with 95% Wilson intervals,
# and the problems that flipped (passed by one side only). Skipped or failed runs are listed, never charted.
functional = [r for r in records if str(r.gate) == "FUNCTIONAL-CORRECTNESS"]
compared = [r for r in functional if r.outcome.value in ("corroborated", "falsified")]
rows = [{"side": str(r.scenario.format), "pass_at_1": r.metrics["pass_at_1"], "low": r.metrics["ci95_low"],
         "high": r.metrics["ci95_high"], "verdict": r.outcome.value} for r in compared]
if compared:
    first = compared[0].metrics
    rows.append({"side": f"reference ({first['reference_numerics']})", "pass_at_1": first["reference_pass_at_1"],
                 "low": first["reference_ci95_low"], "high": first["reference_ci95_high"], "verdict": "reference"})
if not rows:
    functional_chart = alt.Chart(pd.DataFrame({"note": ["FUNCTIONAL-CORRECTNESS compared nothing in this evidence"]})
                                 ).mark_text(size=14).encode(text="note:N").properties(
        title="Functional correctness (pass@1)", width=420, height=60)
else:
    frame = pd.DataFrame(rows)
    task = compared[0].metrics["task"]
    base = alt.Chart(frame).encode(y=alt.Y("side:N", title=None, sort=list(frame["side"])))
    functional_chart = (
        base.mark_rule(strokeWidth=2).encode(x=alt.X("low:Q", scale=alt.Scale(domain=[0, 1]),
                                                      title=f"{task} pass@1 (95% CI)"), x2="high:Q")
        + base.mark_point(filled=True, size=90).encode(
            x="pass_at_1:Q", color=alt.Color("verdict:N", title="verdict"),
            tooltip=["side", alt.Tooltip("pass_at_1:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                     alt.Tooltip("high:Q", format=".3f"), "verdict"])
    ).properties(title=f"Functional correctness: {task} pass@1 per format", width=420,
                 height=40 * len(frame) + 40)
print(f"FUNCTIONAL-CORRECTNESS records: {len(functional)}, compared: {len(compared)}")
for r in functional:
    print(f"{r.scenario.format}: {r.outcome.value}: {r.reason}")
    for side in ("lost", "gained", "undecided"):
        listed = r.metrics.get(f"{side}_ids")
        if listed:
            print(f"  {side}: {listed}")
functional_chart"""

SELF_TEST = """\
# SELF-TEST (full tier): which gates caught which planted defect, from self-test/detection.json beside the
# evidence, when it measured the gates of this very playbook (apr.qa.selftest.report.certification_self_test).
# caught: the gate falsified the copy; crashed: it crashed or timed out on it (never a detection); a falsified
# record of a blocking gate on the unmodified copy is a false block, of a P1/P2 gate a finding (it blocks nothing).
# Without a self-test of its own the verdict says nothing of one.
from apr.qa.selftest.report import certification_self_test, verdict_sentence

SELF_TEST_STATES = ["caught", "not caught", "crashed", "false block", "finding", "not applicable"]
self_test = certification_self_test(Path(evidence_path).parent, records)
if self_test is None:
    self_test_chart = alt.Chart(pd.DataFrame({"note": ["no self-test ran for this certification"]})).mark_text(
        size=14).encode(text="note:N").properties(title="Self-test: planted defects x gates", width=420, height=60)
    print("self-test: none ran for this certification")
else:
    def state(item, gate, clean):
        if not item.applicable:
            return "not applicable"
        if gate in item.caught_by:
            return ("false block" if gate in item.blocked_by else "finding") if clean else "caught"
        return "crashed" if gate in item.crashed else "not caught"

    copies = [(self_test.clean, True), *((d, False) for d in self_test.defects)]
    cells_frame = pd.DataFrame([
        {"defect": "clean (control)" if clean else item.defect, "gate": gate, "state": state(item, gate, clean),
         "verdict": "blocked" if item.blocked else "not blocked", "note": item.note}
        for item, clean in copies for gate in self_test.gates
    ])
    assert len(cells_frame) == len(copies) * len(self_test.gates)
    self_test_chart = alt.Chart(cells_frame).mark_rect(stroke="white").encode(
        x=alt.X("gate:N", sort=list(self_test.gates), title="gate", axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("defect:N", sort=list(dict.fromkeys(cells_frame["defect"])), title="planted defect"),
        color=alt.Color("state:N", title=None, scale=alt.Scale(
            domain=SELF_TEST_STATES, range=["#1a7f37", "#e6e9ee", "#b08800", "#cf222e", "#f0b37e", "#ffffff"])),
        tooltip=["defect", "gate", "state", "verdict", "note"],
    ).properties(title=f"Self-test: {self_test.summary()}", width=max(240, 46 * len(self_test.gates)),
                 height=22 * len(copies))
    print(verdict_sentence(self_test))
    for item in self_test.defects:
        print(f"{item.defect}: " + (f"n/a ({item.note})" if not item.applicable else
                                    ", ".join(item.caught_by) or "MISSED"))
self_test_chart"""

EXPORT = """\
charts = {"throughput": throughput_chart, "gate_outcomes": heatmap_chart, "mqs_by_category": mqs_chart,
          "latency": latency_chart, "functional_correctness": functional_chart, "self_test": self_test_chart}
written = []
for name, chart in charts.items():
    for suffix in ("png", "svg"):
        path = charts_dir / f"{name}.{suffix}"
        chart.save(str(path))
        assert path.stat().st_size > 0, path
        written.append(path)
page = out / "audit.html"
alt.vconcat(*charts.values()).properties(title=f"apr audit: {model}").save(str(page), inline=True)
html = page.read_text(encoding="utf-8")
# Self-contained: the vega libraries are inlined, nothing is fetched from a CDN.
assert "cdn.jsdelivr.net" not in html and "vega-embed" in html
print(f"wrote {len(written)} chart files and audit.html")"""


def build() -> nbformat.NotebookNode:
    """The audit notebook, cells in order, with stable ids."""
    sources = [
        ("markdown", TITLE, []),
        ("code", PARAMETERS, ["parameters"]),
        ("code", IMPORTS, []),
        ("code", LOAD, []),
        ("code", SUMMARY, []),
        ("code", THROUGHPUT, []),
        ("code", HEATMAP, []),
        ("code", MQS_CHART, []),
        ("code", LATENCY, []),
        ("code", FUNCTIONAL, []),
        ("code", SELF_TEST, []),
        ("code", EXPORT, []),
    ]
    cells = []
    for index, (kind, source, tags) in enumerate(sources):
        cell = v4.new_markdown_cell(source) if kind == "markdown" else v4.new_code_cell(source)
        cell["id"] = f"audit-{index:02d}"
        if tags:
            cell["metadata"]["tags"] = tags
        cells.append(cell)
    notebook = v4.new_notebook(cells=cells)
    notebook["metadata"] = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(notebook)
    return notebook


def main() -> int:
    text = nbformat.writes(build())
    if NOTEBOOK.exists() and NOTEBOOK.read_text(encoding="utf-8") == text:
        print(f"{NOTEBOOK} is up to date")
        return 0
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
