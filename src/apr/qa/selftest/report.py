"""Renderings of a self-test: the detection table (defect x gate) as Markdown and text, and detection.json."""

from __future__ import annotations

import json
from pathlib import Path

from apr.qa.selftest.run import CopyResult, SelfTestResult

SELF_TEST_DIR = "self-test"  # where a certification keeps its self-test, beside evidence.jsonl
DETECTION_JSON = "detection.json"
DETECTION_MD = "detection.md"
CAUGHT, CRASHED, MISSED = "X", "!", "."
SENTENCE_PREFIX = "this verdict was produced by gates that caught "


def _cell(result: CopyResult, gate: str) -> str:
    if gate in result.caught_by:
        return CAUGHT
    if gate in result.crashed:
        return CRASHED
    return MISSED


def _row_verdict(result: CopyResult, clean: bool = False) -> str:
    if not result.applicable:
        return f"n/a ({result.note})"
    if clean:
        if result.blocked_by:
            return f"FALSE BLOCK by {', '.join(result.blocked_by)}"
        findings = f" (finding, does not block: {', '.join(result.findings)})" if result.findings else ""
        return "no false block" + findings
    if not result.blocked:
        return "MISSED"
    return f"caught by {len(result.caught_by)} gate(s)"


def detection_rows(result: SelfTestResult) -> list[list[str]]:
    """Header row, the clean control, then one row per defect: a mark per gate and the verdict."""
    header = ["defect", *result.gates, "verdict"]
    rows = [header]
    for item, clean in ((result.clean, True), *((d, False) for d in result.defects)):
        marks = [_cell(item, gate) if item.applicable else "-" for gate in result.gates]
        rows.append([item.defect, *marks, _row_verdict(item, clean)])
    return rows


def render_markdown(result: SelfTestResult) -> str:
    rows = detection_rows(result)
    lines = [
        f"# Self-test of `{result.model}`: detection power of the gates",
        "",
        f"**{result.summary()}** (detection rate "
        + (f"{result.caught / len(result.planted):.0%}" if result.planted else "n/a")
        + ").",
        "",
        *(
            [
                f"**Rebuilt from evidence** (e.g. of an interrupted run): no evidence for "
                f"{', '.join(f'`{d}`' for d in result.unmeasured)} (not measured, or not applicable to this model).",
                "",
            ]
            if result.unmeasured
            else []
        ),
        f"`{CAUGHT}` the gate falsified the copy · `{CRASHED}` the gate crashed or timed out on it (not a detection) · "
        f"`{MISSED}` it passed or did not apply · `-` defect not applicable to this model. Evidence of every copy: "
        "`evidence/<defect>.jsonl`.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---" for _ in rows[0]) + "|",
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
        "",
        "## What each defect is, and the checks that caught it",
        "",
    ]
    for item in (result.clean, *result.defects):
        lines.append(f"- **{item.defect}** — {item.description}" + (f" ({item.seconds:.0f}s)" if item.seconds else ""))
        lines += [f"  - {check}" for check in item.checks[:6]]
        if len(item.checks) > 6:
            lines.append(f"  - … {len(item.checks) - 6} more falsified checks")
    return "\n".join(lines) + "\n"


def render_text(result: SelfTestResult) -> str:
    """The table for a terminal: fixed-width columns, gates abbreviated to keep it narrow."""
    rows = detection_rows(result)
    short = [row[:] for row in rows]
    short[0] = [short[0][0], *(g.split("-")[0][:6] for g in result.gates), "verdict"]
    widths = [max(len(row[i]) for row in short) for i in range(len(short[0]) - 1)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1] for row in short]
    legend = "columns: " + ", ".join(f"{g.split('-')[0][:6]}={g}" for g in result.gates)
    return "\n".join([*lines, legend, result.summary()])


def write_results(result: SelfTestResult, folder: Path) -> None:
    from apr.qa.reports import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / DETECTION_JSON, json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(folder / DETECTION_MD, render_markdown(result))


def read_results(folder: Path) -> SelfTestResult | None:
    """The self-test stored in ``folder`` (``detection.json``), or None when there is none."""
    path = folder / DETECTION_JSON
    if not path.is_file():
        return None
    return SelfTestResult.from_json(json.loads(path.read_text(encoding="utf-8")))


def result_from_evidence(folder: Path, model: str) -> SelfTestResult | None:
    """Recompute a self-test from its evidence files alone (``folder/evidence/<defect>.jsonl``): the copies that
    finished, e.g. of an interrupted run. Defects without evidence are left out, not counted as caught."""
    from apr.qa.evidence import read_evidence
    from apr.qa.gates.catalog import GateId
    from apr.qa.selftest.defects import DEFECTS
    from apr.qa.selftest.run import CLEAN, judge

    evidence = folder / "evidence"
    clean_file = evidence / f"{CLEAN}.jsonl"
    if not clean_file.is_file():
        return None
    seen: set[GateId] = set()

    def judged(defect_id: str, description: str) -> CopyResult:
        log = read_evidence(evidence / f"{defect_id}.jsonl")
        seen.update(r.gate for r in log.records)
        return judge(defect_id, description, list(log.records), 0.0)

    clean = judged(CLEAN, "unmodified copy (the control)")
    defects = [judged(d.id, d.description) for d in DEFECTS if (evidence / f"{d.id}.jsonl").is_file()]
    measured = {d.defect for d in defects}
    playbooks = {r.provenance.playbook for r in read_evidence(clean_file).records}
    return SelfTestResult(
        model=model,
        gates=tuple(g.value for g in GateId if g in seen),
        clean=clean,
        defects=defects,
        playbook=playbooks.pop() if len(playbooks) == 1 else None,
        unmeasured=tuple(d.id for d in DEFECTS if d.id not in measured),
    )


def verdict_sentence(result: SelfTestResult) -> str:
    """The one sentence a certification carries about its gates' measured detection power."""
    blocks = result.false_blocks
    return (
        f"{SENTENCE_PREFIX}{result.caught}/{len(result.planted)} planted defects "
        f"({blocks} false block{'' if blocks == 1 else 's'} on the clean copy)"
    )


def sentence_figures(sentence: str) -> str:
    """The figures of a verdict sentence, for a table cell: ``14/14 planted defects (0 false blocks on …)``."""
    return sentence.removeprefix(SENTENCE_PREFIX)


def certification_self_test(folder: Path, records) -> SelfTestResult | None:
    """The self-test a certification's evidence in ``folder`` cites: ``folder/self-test/detection.json`` when it
    measured the gates of the very playbook those records were produced by; None otherwise (a verdict without a
    self-test of its own gates says nothing about one)."""
    result = read_results(folder / SELF_TEST_DIR)
    playbooks = {r.provenance.playbook for r in records}
    if result is None or result.playbook is None or playbooks != {result.playbook} or not result.planted:
        return None
    return result


def summary_json(result: SelfTestResult) -> dict:
    """What mqs.json says of the certification's self-test (the figures are ``self-test/detection.json``'s)."""
    return {
        "sentence": verdict_sentence(result),
        "planted": len(result.planted),
        "caught": result.caught,
        "false_blocks": result.false_blocks,
        "detection_rate": round(result.caught / len(result.planted), 4) if result.planted else None,
        "detection": f"{SELF_TEST_DIR}/{DETECTION_JSON}",
    }
