"""The self-test: plant each defect into a copy of the model, run the certification's model-level gates on every
copy, and measure which gates caught what — the detection power behind a verdict.

A defect counts as *caught* by a gate when that gate wrote at least one falsified record on the copy, and as
*blocked* when a caught gate is P0 (the certification would be BLOCKED by it). The unmodified copy is the
control: a falsified record of a P0 gate there is a false block; one of a P1/P2 gate is a *finding* on the clean
copy, shown in the table and the summary (e.g. NUMERICS-PARITY: apr's fast numerics flip one of the model's
greedy replies, apr.qa.gates.second_opinion), which costs the certification points but blocks nothing.
Crashed or timed-out records are shown apart: an infrastructure failure is never counted as a detection.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apr.qa.axes import Backend, Format
from apr.qa.evidence import EvidenceRecord, Outcome
from apr.qa.gates.catalog import CATALOG, GateId
from apr.qa.gates.thresholds import GateSet
from apr.qa.selftest.defects import DEFECT_IDS, DEFECTS

CLEAN = "clean"
# Gates the self-test does not run: they need the cell matrix, measure speed, or compare formats
# (a defect planted in the source is converted into every format alike; FUNCTIONAL-CORRECTNESS holds each format
# to the SafeTensors reference made from the same planted copy, at the cost of a whole benchmark per copy).
NOT_RUN = frozenset({GateId.DETERMINISM, GateId.THROUGHPUT, GateId.GPU_SPEEDUP})
NEEDS_FORMATS = frozenset(
    {GateId.FORMAT_PARITY, GateId.REFERENCE_PARITY, GateId.TOKENIZER_PARITY, GateId.FUNCTIONAL_CORRECTNESS}
)


@dataclass(frozen=True)
class SelfTestOptions:
    model: Path  # the clean GGUF checkpoint
    ref: str  # the model it is (its reference config is looked up by it)
    output: Path  # detection.json, detection.md and the evidence of every copy go here
    gates: GateSet
    defects: tuple[str, ...] = DEFECT_IDS
    formats: tuple[Format, ...] = (Format.GGUF,)
    chat: bool = True
    keep_copies: bool = False
    progress: bool = True
    playbook: str | None = None  # the playbook whose gates are measured (a certification cites only its own)
    say: Callable[[str], None] | None = None  # where progress lines go (default: stderr)


@dataclass(frozen=True)
class CopyResult:
    """What the gates said about one copy (a planted defect, or the clean control)."""

    defect: str
    description: str
    applicable: bool = True
    note: str = ""  # why the defect does not apply
    caught_by: tuple[str, ...] = ()  # gates with a falsified record
    crashed: tuple[str, ...] = ()  # gates with a crashed or timed-out record
    checks: tuple[str, ...] = ()  # every falsified check, "GATE check: reason"
    seconds: float = 0.0

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_by)

    @property
    def blocked_by(self) -> tuple[str, ...]:
        """The caught gates that block a certification (P0)."""
        return tuple(g for g in self.caught_by if CATALOG[GateId(g)].blocking)

    @property
    def findings(self) -> tuple[str, ...]:
        """The caught gates that only cost points (P1/P2)."""
        return tuple(g for g in self.caught_by if not CATALOG[GateId(g)].blocking)

    def to_json(self) -> dict:
        return {
            "defect": self.defect,
            "description": self.description,
            "applicable": self.applicable,
            "note": self.note,
            "caught_by": list(self.caught_by),
            "crashed": list(self.crashed),
            "blocked": self.blocked,
            "checks": list(self.checks),
            "seconds": round(self.seconds, 1),
        }

    @classmethod
    def from_json(cls, data: dict) -> CopyResult:
        return cls(
            defect=data["defect"],
            description=data["description"],
            applicable=data["applicable"],
            note=data.get("note", ""),
            caught_by=tuple(data["caught_by"]),
            crashed=tuple(data.get("crashed", ())),
            checks=tuple(data.get("checks", ())),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass
class SelfTestResult:
    model: str
    gates: tuple[str, ...]  # the gates that ran on every copy, in catalog order
    clean: CopyResult
    defects: list[CopyResult] = field(default_factory=list)
    playbook: str | None = None  # whose gates these are (None: `apr qa --self-test` without --playbook)
    # Defects of the catalogue with no evidence when the table was rebuilt from evidence (an interrupted run).
    unmeasured: tuple[str, ...] = ()

    @property
    def planted(self) -> list[CopyResult]:
        return [d for d in self.defects if d.applicable]

    @property
    def caught(self) -> int:
        return sum(d.blocked for d in self.planted)

    @property
    def false_blocks(self) -> int:
        """Blocking gates that falsified the clean copy."""
        return len(self.clean.blocked_by)

    @property
    def passed(self) -> bool:
        """Every planted defect blocked, nothing blocked on the clean copy."""
        return self.caught == len(self.planted) and not self.false_blocks and not self.clean.crashed

    def summary(self) -> str:
        findings = self.clean.findings
        return (
            f"gates caught {self.caught}/{len(self.planted)} planted defects; "
            f"{self.false_blocks} false block(s) on the clean copy"
            + (f"; non-blocking finding(s) there: {', '.join(findings)}" if findings else "")
        )

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "playbook": self.playbook,
            "gates": list(self.gates),
            "planted": len(self.planted),
            "caught": self.caught,
            "false_blocks": self.false_blocks,
            "detection_rate": round(self.caught / len(self.planted), 4) if self.planted else None,
            "summary": self.summary(),
            "clean": self.clean.to_json(),
            "defects": [d.to_json() for d in self.defects],
            "unmeasured": list(self.unmeasured),
        }

    @classmethod
    def from_json(cls, data: dict) -> SelfTestResult:
        return cls(
            model=data["model"],
            gates=tuple(data["gates"]),
            clean=CopyResult.from_json(data["clean"]),
            defects=[CopyResult.from_json(d) for d in data["defects"]],
            playbook=data.get("playbook"),
            unmeasured=tuple(data.get("unmeasured", ())),
        )


def self_test_gates(gates: GateSet, formats: tuple[Format, ...]) -> GateSet:
    """The playbook's gates as the self-test runs them: no cells, no speed, parity only across several formats,
    and no sha256 comparison (every copy differs from the published file by design)."""
    data = gates.model_dump(mode="json", by_alias=True)
    drop = set(NOT_RUN) | (NEEDS_FORMATS if len(formats) < 2 else set())
    kept = {k: v for k, v in data.items() if v is not None and GateId(k) not in drop}
    kept[GateId.G0_INTEGRITY.value] = {**(kept.get(GateId.G0_INTEGRITY.value) or {}), "verify_sha256": False}
    return GateSet.model_validate(kept)


def judge(defect_id: str, description: str, records: list[EvidenceRecord], seconds: float) -> CopyResult:
    caught = [r for r in records if r.outcome is Outcome.FALSIFIED]
    broken = [r for r in records if r.outcome is Outcome.CRASHED or r.outcome.is_infrastructure]

    def gates_of(rs: list[EvidenceRecord]) -> tuple[str, ...]:
        found = {r.gate for r in rs}
        return tuple(g.value for g in GateId if g in found)

    return CopyResult(
        defect=defect_id,
        description=description,
        caught_by=gates_of(caught),
        crashed=gates_of(broken),
        checks=tuple(f"{r.gate.value} {r.check}: {r.reason}"[:300] for r in caught),
        seconds=seconds,
    )


def gate_copy(path: Path, options: SelfTestOptions, gates: GateSet, evidence: Path) -> list[EvidenceRecord]:
    """The model-level gates of one copy (conversions into the other formats, if any, next to it)."""
    from apr.hub.digest import sha256_of
    from apr.qa import stages

    checkpoint = stages.Checkpoint(
        ref=options.ref, path=path, format=Format.GGUF, sha256=sha256_of(path, progress=False)
    )
    artifacts = stages.convert(checkpoint, options.formats, path.parent / f"{path.stem}-artifacts")
    subject = stages.Subject(
        ref=options.ref,
        artifacts=artifacts,
        gates=gates,
        backends=(Backend.CPU,),
        formats=options.formats,
        chat=options.chat,
        pack_cache=False,
        playbook=options.playbook,
    )
    return list(stages.gate(subject, evidence).records)


def publish_evidence(partial: Path, final: Path) -> None:
    """Give a finished copy's evidence its final name; an earlier run's file of that name moves under runs/."""
    from apr.qa.rundir import keep_aside

    if final.exists():
        keep_aside(final)
    partial.replace(final)


def run_self_test(options: SelfTestOptions) -> SelfTestResult:
    """Plant, gate and judge every defect (and the clean control); writes detection.json/.md into the output."""
    from apr.qa.selftest.gguf_edit import read_gguf_copy, write_gguf_copy
    from apr.qa.selftest.report import write_results

    gates = self_test_gates(options.gates, options.formats)
    copies = options.output / "copies"
    evidence_dir = options.output / "evidence"
    copies.mkdir(parents=True, exist_ok=True)
    evidence_dir.mkdir(parents=True, exist_ok=True)
    wanted = [d for d in DEFECTS if d.id in options.defects]
    results: dict[str, CopyResult] = {}
    seen: set[GateId] = set()  # gates that wrote records: the columns of the table
    for index, (defect_id, planted) in enumerate([(CLEAN, None), *((d.id, d) for d in wanted)]):
        started = time.monotonic()
        copy = read_gguf_copy(options.model)
        description = planted.description if planted else "unmodified copy (the control)"
        why_not = planted.why_not(copy) if planted else None
        if why_not:
            results[defect_id] = CopyResult(defect_id, description, applicable=False, note=why_not)
            _say(options, f"[{index}/{len(wanted)}] {defect_id}: not applicable ({why_not})")
            continue
        if planted:
            planted.plant(copy)
        target = copies / f"{defect_id}.gguf"
        write_gguf_copy(copy, target)
        del copy
        # The copy's evidence is written as .part and takes its final name when the copy is done, so an interrupted
        # run never leaves a half-gated copy that result_from_evidence would judge as if finished.
        partial = evidence_dir / f"{defect_id}.jsonl.part"
        records = gate_copy(target, options, gates, partial)
        publish_evidence(partial, evidence_dir / f"{defect_id}.jsonl")
        seen.update(r.gate for r in records)
        results[defect_id] = judge(defect_id, description, records, time.monotonic() - started)
        outcome = results[defect_id]
        _say(
            options,
            f"[{index}/{len(wanted)}] {defect_id}: caught by {', '.join(outcome.caught_by) or 'nothing'}"
            + (f"; crashed {', '.join(outcome.crashed)}" if outcome.crashed else "")
            + f" ({outcome.seconds:.0f}s)",
        )
        if not options.keep_copies:
            target.unlink(missing_ok=True)
            shutil.rmtree(copies / f"{defect_id}-artifacts", ignore_errors=True)
    if not options.keep_copies:
        shutil.rmtree(copies, ignore_errors=True)
    result = SelfTestResult(
        model=options.ref,
        gates=tuple(g.value for g in GateId if g in seen),
        clean=results.pop(CLEAN),
        defects=[results[d.id] for d in wanted],
        playbook=options.playbook,
    )
    write_results(result, options.output)
    return result


def _say(options: SelfTestOptions, line: str) -> None:
    if not options.progress:
        return
    if options.say is not None:
        options.say(f"self-test: {line}")
    else:
        print(f"apr qa --self-test: {line}", file=sys.stderr, flush=True)
