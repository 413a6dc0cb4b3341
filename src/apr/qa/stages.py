"""The certification as stages — acquire → convert → trace → gate → score → report — that every caller composes.

Each stage is a plain function with typed inputs and outputs and no knowledge of who calls it: `apr certify`
(``apr.qa.certify``) runs them all in one process, `apr qa` (``apr.qa.deep``) runs them without a cell
matrix, and each Dagster asset (``pipelines/assets``) runs one of them per model partition. Evidence is
written in one order whoever composes them: model-level gates, then the cells, then the runtime gates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from apr.errors import AprError
from apr.qa.artifacts import Artifacts
from apr.qa.axes import Backend, Format, Tier
from apr.qa.evidence import EvidenceRecord, EvidenceWriter, read_evidence
from apr.qa.executor import ExecutionPlan, ExecutionSummary
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import GateSet
from apr.qa.matrix import Cell
from apr.qa.measure import DECODE_TOKENS
from apr.qa.playbook import FailurePolicy, Playbook
from apr.qa.procs import apr_command
from apr.qa.recording import Check, Recorder, Timer, stamp_all
from apr.qa.score import MqsResult

Emit = Callable[[list[EvidenceRecord]], None]  # receives the stamped records of one gate family as it finishes
# Gates written per cell by the trace stage (resumed cell by cell); every other gate is resumed as a whole.
CELL_GATES = frozenset({GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY})


# ---- acquire --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The model as given: the ref it is known by, its file (or folder), format and sha256."""

    ref: str
    path: Path
    format: Format
    sha256: str


def acquire(ref: str, path: Path | None = None, *, progress: bool = False) -> Checkpoint:
    """The checkpoint at ``path``, or the one ``ref`` names (the cache first, then a pull), hashed."""
    from apr.hub import resolve_model_arg
    from apr.hub.digest import sha256_of
    from apr.qa.artifacts import source_format

    if path is not None and not path.exists():
        raise AprError(f"{path}: model file not found; fix the path")
    source = path if path is not None else resolve_model_arg(ref, progress=progress)
    return Checkpoint(ref=ref, path=source, format=source_format(source), sha256=sha256_of(source, progress=False))


# ---- convert --------------------------------------------------------------------------------------------


def convert(checkpoint: Checkpoint, formats: Sequence[Format], directory: Path | None = None) -> Artifacts:
    """The checkpoint in every format (conversions cached by source digest), each artifact with its digest."""
    from apr.hub.digest import sha256_of
    from apr.qa.artifacts import artifacts_dir, prepare_artifacts

    artifacts = prepare_artifacts(
        checkpoint.path, checkpoint.sha256, tuple(formats), directory or artifacts_dir(checkpoint.sha256)
    )
    artifacts.digests = {
        fmt: checkpoint.sha256 if path == checkpoint.path else sha256_of(path, progress=False)
        for fmt, path in artifacts.paths.items()
    }
    return artifacts


# ---- what is certified, under which rules ---------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One certification's input to the trace and gate stages: the model's artifacts and the rules that apply."""

    ref: str
    artifacts: Artifacts
    gates: GateSet
    backends: tuple[Backend, ...]
    formats: tuple[Format, ...]  # the formats under test (the source artifact is gated even when not among them)
    cells: tuple[Cell, ...] = ()
    chat: bool = True
    expected_sha256: str | None = None
    cuda: bool = False
    playbook: str | None = None
    tier: Tier | None = None
    timeout_s: float = 600.0  # per cell, and per `apr bench` run
    workers: int = 1
    failure_policy: FailurePolicy = FailurePolicy.COLLECT_ALL
    apr_argv: tuple[str, ...] = ()  # the CLI under test; empty: this very apr
    decode_tokens: int = DECODE_TOKENS

    def recorder(self) -> Recorder:
        """The stamp every evidence record of this certification carries."""
        return Recorder(
            model=self.ref,
            artifacts=dict(self.artifacts.paths),
            sha256=dict(self.artifacts.digests),
            playbook=self.playbook,
            tier=self.tier,
            source=self.artifacts.source,
        )

    def plan(self) -> ExecutionPlan:
        """How the cells run (also how the determinism gate reruns one)."""
        return ExecutionPlan(
            cells=self.cells,
            artifacts=dict(self.artifacts.paths),
            timeout_s=self.timeout_s,
            workers=self.workers,
            failure_policy=self.failure_policy,
            use_chat_template=self.chat,
            cuda_available=self.cuda,
            apr_argv=self.apr_argv or tuple(apr_command()),
            missing_artifacts=dict(self.artifacts.failures),
        )


def expected_sha256(ref: str) -> str | None:
    """The digest the hub's catalogue publishes for ``ref``, if it is a catalogued model."""
    from apr.hub.catalog import load_catalog

    entry = load_catalog().get(ref)
    return entry.sha256 if entry else None


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def subject_of(
    playbook: Playbook,
    artifacts: Artifacts,
    *,
    cuda: bool,
    workers: int | None = None,
    timeout_s: float | None = None,
    apr_argv: Sequence[str] | None = None,
) -> Subject:
    """A playbook's certification of ``artifacts``: its matrix, gates and execution settings."""
    gates = playbook.gates
    return Subject(
        ref=playbook.model.ref,
        artifacts=artifacts,
        gates=gates,
        backends=tuple(playbook.matrix.backends),
        formats=tuple(playbook.matrix.formats),
        cells=tuple(playbook.cells()),
        chat=playbook.model.chat_template,
        expected_sha256=expected_sha256(playbook.model.ref) if gates.g0_integrity.verify_sha256 else None,
        cuda=cuda,
        playbook=playbook.name,
        tier=playbook.tier,
        timeout_s=timeout_s or playbook.execution.timeout_s,
        workers=workers or playbook.execution.workers,
        failure_policy=playbook.execution.failure_policy,
        apr_argv=tuple(apr_argv or ()),
    )


# ---- trace: the cells through the real CLI --------------------------------------------------------------


def trace(
    subject: Subject, writer: EvidenceWriter, *, done_keys: frozenset[str] = frozenset(), progress: bool = False
) -> ExecutionSummary:
    """Run every cell of the matrix; G2/G3/G4 records go to ``writer`` as each cell ends."""
    from apr.qa.executor import execute

    return execute(subject.plan(), subject.recorder(), writer, done_keys=done_keys, progress=progress)


# ---- gates ----------------------------------------------------------------------------------------------


def model_gates(subject: Subject, emit: Emit, *, done: frozenset[GateId] = frozenset()) -> None:
    """Integrity, contract, plausibility, structure, tokenizer parity, load, golden output, attention trace,
    format and reference parity — each family's records emitted as it finishes."""
    from apr.qa.gates.model_level import ModelGateInputs, ModelGateRun

    inputs = ModelGateInputs(
        artifacts=dict(subject.artifacts.paths),
        digests=dict(subject.artifacts.digests),
        source=subject.artifacts.source,
        gates=subject.gates,
        expected_sha256=subject.expected_sha256,
        chat=subject.chat,
        cuda_available=subject.cuda,
        backends=subject.backends,
        done_gates=done,
        conversion_failures=dict(subject.artifacts.failures),
    )
    ModelGateRun(inputs, subject.recorder(), emit).run()


def runtime_gates(
    subject: Subject, records: Sequence[EvidenceRecord], emit: Emit, *, done: frozenset[GateId] = frozenset()
) -> None:
    """Determinism (reruns of recorded cells), throughput (one `apr bench` per format × backend), GPU
    speedup (from the throughput records) and functional correctness (`apr eval` per format against the
    SafeTensors reference); ``records`` is the evidence so far."""
    from apr.qa.gates import runtime

    recorder, gates = subject.recorder(), subject.gates
    if gates.determinism is not None and GateId.DETERMINISM not in done:
        emit(_determinism(subject, records, recorder))
    measured: list[EvidenceRecord] = []
    if gates.throughput is not None and GateId.THROUGHPUT not in done:
        for backend in subject.backends:
            for fmt in subject.formats:
                stamped = stamp_all(recorder, [_throughput(subject, fmt, backend)], Timer())
                measured += stamped
                emit(stamped)
    if gates.gpu_speedup is not None and GateId.GPU_SPEEDUP not in done:
        timer = Timer()
        emit(
            stamp_all(
                recorder, runtime.gpu_speedup_checks([*records, *measured], gates.gpu_speedup, subject.cuda), timer
            )
        )
    if gates.functional_correctness is not None and GateId.FUNCTIONAL_CORRECTNESS not in done:
        from apr.qa.gates.functional import functional_checks

        timer = Timer()
        emit(stamp_all(recorder, functional_checks(subject), timer))


def _determinism(subject: Subject, records: Sequence[EvidenceRecord], recorder: Recorder) -> list[EvidenceRecord]:
    from apr.qa.gates import runtime
    from apr.qa.runners import run_cell

    timer = Timer()
    settings = subject.gates.determinism
    assert settings is not None  # the caller checked: mypy cannot see it through the attribute
    modalities = tuple(m for m in settings.modalities if m in {cell.modality for cell in subject.cells})
    settings = settings.model_copy(update={"modalities": modalities})
    plan = subject.plan()
    targets = runtime.determinism_targets(records, plan.cells, settings, subject.artifacts.source)
    checks: list[Check] = []
    for cell, first in targets:
        reruns = [run_cell(plan.runnable(cell), list(plan.apr_argv)) for _ in range(settings.repeats - 1)]
        checks.append(runtime.determinism_check(cell, first, [run.text for run in reruns]))
    checks += runtime.modality_skips(settings, [cell.modality for cell, _ in targets])
    return stamp_all(recorder, checks, timer)


def _throughput(subject: Subject, fmt: Format, backend: Backend) -> Check:
    from apr.qa.gates.runtime import throughput_check
    from apr.qa.measure import measure_speed

    settings = subject.gates.throughput
    assert settings is not None  # the caller checked
    minimum = settings.min_tok_s[backend]
    if backend is Backend.GPU and not subject.cuda:
        return throughput_check(
            fmt, backend, minimum, None, None, "no CUDA device on this host: GPU decode speed not measured"
        )
    if fmt not in subject.artifacts.paths:
        return throughput_check(fmt, backend, minimum, None, None, f"no {fmt} artifact")
    run = measure_speed(
        subject.artifacts.paths[fmt],
        backend.device,
        timeout_s=subject.timeout_s,
        apr_argv=list(subject.plan().apr_argv),
        decode_tokens=subject.decode_tokens,
    )
    return throughput_check(fmt, backend, minimum, run.process, run.result)


@dataclass(frozen=True)
class Evidence:
    """What the gate stage wrote: the evidence file and its records, in order."""

    path: Path
    records: tuple[EvidenceRecord, ...]


CellStage = Callable[[EvidenceWriter], object]  # writes the cells' records (runs them, or copies a trace's)


def gate(
    subject: Subject, evidence: Path, cells: CellStage | None = None, *, prior: Sequence[EvidenceRecord] = ()
) -> Evidence:
    """Every gate of the certification into one evidence file: model-level gates, the cells (``cells`` writes
    them), then the runtime gates. ``prior`` records (resume) are kept and their gates not redone."""
    done = frozenset(r.gate for r in prior if r.gate not in CELL_GATES)
    if not prior:
        evidence.unlink(missing_ok=True)
    with EvidenceWriter(evidence) as writer:

        def emit(records: list[EvidenceRecord]) -> None:
            for record in records:
                writer.append(record)

        model_gates(subject, emit, done=done)
        if cells is not None:
            cells(writer)
        runtime_gates(subject, read_evidence(evidence).records, emit, done=done)
    return Evidence(evidence, read_evidence(evidence).records)


# ---- score and report -----------------------------------------------------------------------------------


def score(records: Sequence[EvidenceRecord]) -> MqsResult:
    """The MQS, grade and status of the evidence (a rendering of it: recomputable from the records alone)."""
    from apr.qa.score import compute_mqs

    return compute_mqs(records)


@dataclass(frozen=True)
class Reports:
    """The files the report stage wrote."""

    junit: Path
    html: Path
    summary: Path | None = None


def report(
    records: Sequence[EvidenceRecord], mqs: MqsResult, folder: Path, *, title: str, evidence: Path | None = None
) -> Reports:
    """JUnit and HTML renderings of the evidence into ``folder``; with ``evidence``, also ``mqs.json`` citing it."""
    from apr.qa.reports import write_text_atomic
    from apr.qa.reports.html import render_html
    from apr.qa.reports.junit import render_junit

    summary = None
    if evidence is not None:
        summary = folder / "mqs.json"
        document = {"evidence": str(evidence), **mqs.model_dump(mode="json")}
        write_text_atomic(summary, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(folder / "junit.xml", render_junit(records))
    write_text_atomic(folder / "report.html", render_html(records, mqs, title=title))
    return Reports(junit=folder / "junit.xml", html=folder / "report.html", summary=summary)


def tables(certifications: Path) -> list:
    """``models.csv`` and ``index.html`` over every evidence file under the certifications folder."""
    from apr.qa.reports.certtable import write_tables

    return write_tables(certifications, None)
