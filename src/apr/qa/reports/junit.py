"""JUnit XML from evidence: one testcase per record; skipped, not applicable (a feature the model lacks, or a gate an endpoint cannot meet) and inconclusive (the
machine stopped the check; older ``timeout`` records too) → <skipped>, falsified → <failure>, crashed → <error>. One testsuite per model,
MQS in the suite properties."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.score import compute_mqs

# XML 1.0 cannot carry most control characters; model output can (that is what garbage looks like).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with characters XML cannot hold shown as \\xNN escapes."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def _testcase(suite: ET.Element, record: EvidenceRecord) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        {
            "classname": xml_text(f"{record.scenario.model}.{record.gate}"),
            "name": xml_text(f"{record.check} [{record.scenario.cell_key}]"),
            "time": f"{record.duration_s:.3f}",
        },
    )
    message = xml_text(record.reason)
    body = xml_text(record.output_excerpt)
    if record.outcome is Outcome.SKIPPED:
        ET.SubElement(case, "skipped", {"message": message})
    elif record.outcome is Outcome.NOT_APPLICABLE:
        ET.SubElement(case, "skipped", {"message": xml_text(f"not applicable: {record.reason}")})
    elif record.outcome.is_infrastructure:
        ET.SubElement(case, "skipped", {"message": xml_text(f"inconclusive ({record.infra_cause}): {record.reason}")})
    elif record.outcome is Outcome.FALSIFIED:
        ET.SubElement(case, "failure", {"message": message, "type": "falsified"}).text = body
    elif record.outcome is Outcome.CRASHED:
        ET.SubElement(case, "error", {"message": message, "type": record.outcome.value}).text = body
    if record.outcome is Outcome.CORROBORATED and record.output_excerpt:
        ET.SubElement(case, "system-out").text = body


def _suite(parent: ET.Element, model: str, records: Sequence[EvidenceRecord]) -> None:
    count = {outcome: sum(r.outcome is outcome for r in records) for outcome in Outcome}
    suite = ET.SubElement(
        parent,
        "testsuite",
        {
            "name": xml_text(model),
            "tests": str(len(records)),
            "failures": str(count[Outcome.FALSIFIED]),
            "errors": str(count[Outcome.CRASHED]),
            "skipped": str(
                count[Outcome.SKIPPED]
                + count[Outcome.INCONCLUSIVE]
                + count[Outcome.TIMEOUT]
                + count[Outcome.NOT_APPLICABLE]
            ),
            "time": f"{sum(r.duration_s for r in records):.3f}",
        },
    )
    mqs = compute_mqs(records)
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("mqs.score", mqs.score),
        ("mqs.grade", mqs.grade),
        ("mqs.status", mqs.status.value),
        ("mqs.kind", mqs.kind.value),
        ("mqs.gateways_passed", str(mqs.gateways_passed).lower()),
    ):
        ET.SubElement(properties, "property", {"name": name, "value": str(value)})
    for record in records:
        _testcase(suite, record)


def render_junit(records: Sequence[EvidenceRecord]) -> str:
    """The JUnit XML document (``<testsuites>``, one ``<testsuite>`` per model) for these records."""
    root = ET.Element("testsuites", {"name": "apr certification"})
    models = list(dict.fromkeys(r.scenario.model for r in records))
    for model in models:
        _suite(root, model, [r for r in records if r.scenario.model == model])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
