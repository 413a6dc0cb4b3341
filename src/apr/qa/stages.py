"""The certification as stages — acquire → convert → trace → gate → (self-test) → score → report — that every
caller composes.

Each stage is a plain function with typed inputs and outputs and no knowledge of who calls it: `apr certify`
(``apr.qa.certify``) runs them all in one process, `apr qa` (``apr.qa.deep``) runs them without a cell
matrix, and each Dagster asset (``pipelines/assets``) runs one of them per model partition. Evidence is
written in one order whoever composes them: model-level gates, then the cells, then the runtime gates.

A subject may carry a machine ``calibration`` (``calibrate``): its cells then get deadlines grown from what
the machine delivers and the calibrated thread count, and its throughput floors are judged against a
calibration measured again right before the benchmarks (``apr.qa.calibration``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from apr.errors import AprError
from apr.qa.artifacts import Artifacts
from apr.qa.axes import Backend, Format, Tier
from apr.qa.evidence import Calibration, EvidenceRecord, EvidenceWriter, read_evidence
from apr.qa.executor import ExecutionPlan, ExecutionSummary
from apr.qa.gates.catalog import FEATURE_GATES, GateId
from apr.qa.gates.thresholds import GateSet
from apr.qa.matrix import Cell
from apr.qa.measure import DECODE_TOKENS
from apr.qa.playbook import FailurePolicy, Playbook
from apr.qa.procs import apr_command
from apr.qa.progress import SILENT, RunProgress
from apr.qa.recording import Check, Recorder, Timer, inconclusive, stamp_all
from apr.qa.rundir import keep_aside
from apr.qa.score import MqsResult

if TYPE_CHECKING:
    from apr.qa.selftest.run import SelfTestResult

Emit = Callable[[list[EvidenceRecord]], None]  # receives the stamped records of one gate family as it finishes
# Gates written per cell by the trace stage (resumed cell by cell); every other gate is resumed as a whole.
CELL_GATES = frozenset({GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY})
RUNTIME_GATES = frozenset({GateId.DETERMINISM, GateId.THROUGHPUT, GateId.GPU_SPEEDUP})
# `apr serve`'s code-tool features (apr.qa.gates.serve_features): one server per format, run in the runtime stage.
SERVE_FEATURE_GATES = FEATURE_GATES


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
    pack_cache: bool = True  # keep packed weights in $APR_HOME/engine-cache (off for throwaway copies: self-test)
    calibration: Calibration | None = None  # what the machine delivers (None: deadlines and floors as written)
    threads: int | None = None  # forced CPU threads (--threads); None: the calibration chooses
    model_bytes: dict[Format, int] = field(default_factory=dict)

    def recorder(self) -> Recorder:
        """The stamp every evidence record of this certification carries."""
        return Recorder(
            model=self.ref,
            artifacts=dict(self.artifacts.paths),
            sha256=dict(self.artifacts.digests),
            playbook=self.playbook,
            tier=self.tier,
            gates=self.gates.enabled(),
            source=self.artifacts.source,
            calibration=self.calibration,
        )

    def calibrated(self, progress: RunProgress = SILENT) -> Subject:
        """This subject with the machine measured again now (unchanged when it was never calibrated)."""
        if self.calibration is None:
            return self
        fresh = calibrate(self.threads, progress, startup_s=self.calibration.startup_s)
        return replace(self, calibration=fresh) if fresh is not None else self

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
            calibration=self.calibration,
            model_bytes=dict(self.model_bytes),
        )


def expected_sha256(ref: str) -> str | None:
    """The digest the hub's catalogue publishes for ``ref``, if it is a catalogued model."""
    from apr.hub.catalog import load_catalog

    entry = load_catalog().get(ref)
    return entry.sha256 if entry else None


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def calibrate(
    threads: int | None = None, progress: RunProgress = SILENT, *, startup_s: float | None = None
) -> Calibration | None:
    """Measure what this machine delivers now (``apr.qa.calibration``); None, said on ``progress``, if it cannot.
    With ``startup_s`` (known from the run's first calibration) only the stream is measured again, here."""
    from apr.qa.calibration import calibrate as measure

    phase = progress.phase("machine", 1)
    phase.start("calibration: free cores, thread count, stream GB/s" + ("" if startup_s else ", python start"))
    calibration, line = measure(threads, startup_s=startup_s)
    phase.finish(line)
    phase.close()
    return calibration


def subject_of(
    playbook: Playbook,
    artifacts: Artifacts,
    *,
    cuda: bool,
    workers: int | None = None,
    timeout_s: float | None = None,
    apr_argv: Sequence[str] | None = None,
    calibration: Calibration | None = None,
    threads: int | None = None,
) -> Subject:
    """A playbook's certification of ``artifacts``: its matrix, gates and execution settings."""
    from apr.qa.calibration import model_bytes

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
        calibration=calibration,
        threads=threads,
        model_bytes={fmt: model_bytes(path) for fmt, path in artifacts.paths.items()},
    )


# ---- trace: the cells through the real CLI --------------------------------------------------------------


def trace(
    subject: Subject,
    writer: EvidenceWriter,
    *,
    done_keys: frozenset[str] = frozenset(),
    progress: RunProgress | None = None,
) -> ExecutionSummary:
    """Run every cell of the matrix; G2/G3/G4 records go to ``writer`` as each cell ends."""
    from apr.qa.executor import execute

    return execute(subject.plan(), subject.recorder(), writer, done_keys=done_keys, progress=progress)


# ---- gates ----------------------------------------------------------------------------------------------


def model_gates(
    subject: Subject, emit: Emit, *, done: frozenset[GateId] = frozenset(), progress: RunProgress = SILENT
) -> None:
    """Integrity, contract, plausibility, structure, tokenizer parity, load, golden output, attention trace,
    format and reference parity — each family's records emitted as it finishes."""
    from apr.qa.gates.model_level import ModelGateInputs, ModelGateRun

    wanted = set(subject.gates.enabled()) - CELL_GATES - RUNTIME_GATES - SERVE_FEATURE_GATES - done
    phase = progress.phase("model-level gates", len(wanted))
    finished: set[GateId] = set()

    def emit_and_show(records: list[EvidenceRecord]) -> None:
        emit(records)
        for gate in dict.fromkeys(r.gate for r in records):
            if gate not in finished:
                finished.add(gate)
                phase.finish(f"{gate}: {_outcomes(r for r in records if r.gate is gate)}")

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
        ref=subject.ref,
        pack_cache=subject.pack_cache,
    )
    ModelGateRun(inputs, subject.recorder(), emit_and_show, on_step=phase.start).run()
    phase.close()


def _outcomes(records) -> str:
    from collections import Counter

    counts = Counter(str(r.outcome) for r in records)
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))


def runtime_gates(
    subject: Subject,
    records: Sequence[EvidenceRecord],
    emit: Emit,
    *,
    done: frozenset[GateId] = frozenset(),
    progress: RunProgress = SILENT,
) -> None:
    """Determinism (reruns of recorded cells), throughput (one `apr bench` per format × backend, judged against
    the machine measured again just before), GPU speedup (from the throughput records), functional
    correctness (`apr eval` per format against the SafeTensors reference) and the serve features (FIM, tool
    calls, JSON mode, embeddings: one `apr serve` per format); ``records`` is the evidence so far."""
    from apr.qa.gates import runtime

    gates = subject.gates
    benches = [(b, f) for b in subject.backends for f in subject.formats] if gates.throughput is not None else []
    rerun = gates.determinism is not None and GateId.DETERMINISM not in done
    benches = benches if GateId.THROUGHPUT not in done else []
    speedup = gates.gpu_speedup is not None and GateId.GPU_SPEEDUP not in done
    functional = gates.functional_correctness is not None and GateId.FUNCTIONAL_CORRECTNESS not in done
    served = tuple(gate for gate in gates.enabled() if gate in SERVE_FEATURE_GATES and gate not in done)
    steps = int(rerun) + len(benches) + int(speedup) + int(functional) + int(bool(served))
    phase = progress.phase("runtime gates", steps)
    if rerun:
        phase.start("determinism: rerun one cell per modality")
        determinism = _determinism(subject, records, subject.recorder())
        emit(determinism)
        phase.finish(f"{GateId.DETERMINISM}: {_outcomes(determinism)}")
    measured: list[EvidenceRecord] = []
    if benches:
        subject = subject.calibrated(progress)  # the floors are judged against the machine as it is now
        recorder = subject.recorder()
        for backend, fmt in benches:
            phase.start(f"apr bench {fmt}/{backend}")
            stamped = stamp_all(recorder, [_throughput(subject, fmt, backend)], Timer())
            measured += stamped
            emit(stamped)
            phase.finish(f"{GateId.THROUGHPUT} {fmt}/{backend}: {stamped[0].reason}")
    if speedup and gates.gpu_speedup is not None:
        timer = Timer()
        checks = runtime.gpu_speedup_checks([*records, *measured], gates.gpu_speedup, subject.cuda)
        emit(stamp_all(subject.recorder(), checks, timer))
        phase.finish(f"{GateId.GPU_SPEEDUP}: {checks[0].reason}")
    if functional:
        from apr.qa.gates.functional import functional_checks

        phase.start("functional correctness: apr eval per format against the SafeTensors reference")
        timer = Timer()
        stamped = stamp_all(subject.recorder(), functional_checks(subject), timer)
        emit(stamped)
        phase.finish(f"{GateId.FUNCTIONAL_CORRECTNESS}: {_outcomes(stamped)}")
    if served:
        from apr.qa.gates.serve_features import serve_feature_checks

        phase.start(f"serve features ({', '.join(served)}): apr serve per format, over HTTP")
        timer = Timer()
        stamped = stamp_all(subject.recorder(), serve_feature_checks(subject, served), timer)
        emit(stamped)
        phase.finish(f"serve features: {_outcomes(stamped)}")
    phase.close()


def _determinism(subject: Subject, records: Sequence[EvidenceRecord], recorder: Recorder) -> list[EvidenceRecord]:
    from apr.qa.executor import run_attempts
    from apr.qa.gates import runtime

    timer = Timer()
    settings = subject.gates.determinism
    assert settings is not None  # the caller checked: mypy cannot see it through the attribute
    modalities = tuple(m for m in settings.modalities if m in {cell.modality for cell in subject.cells})
    settings = settings.model_copy(update={"modalities": modalities})
    plan = subject.plan()
    targets = runtime.determinism_targets(records, plan.cells, settings, subject.artifacts.source)
    checks: list[Check] = []
    for cell, first in targets:
        reruns = [run_attempts(plan, cell) for _ in range(settings.repeats - 1)]
        stopped = next((attempts for attempts in reruns if attempts[-1].infra_cause is not None), None)
        if stopped is not None:
            last = stopped[-1]
            assert last.infra_cause is not None  # selected for it just above
            checks.append(
                inconclusive(
                    GateId.DETERMINISM,
                    f"rerun:{cell.modality}",
                    last.infra_cause,
                    f"a rerun could not finish: {last.reason} — {plan.machine_note(cell, stopped)}",
                    format=cell.format,
                    backend=cell.backend,
                    modality=cell.modality,
                    prompt_id=cell.prompt.id,
                    prompt=cell.prompt.text,
                    seed=cell.seed,
                )
            )
            continue
        checks.append(runtime.determinism_check(cell, first, [attempts[-1].text for attempts in reruns]))
    checks += runtime.modality_skips(settings, [cell.modality for cell, _ in targets])
    return stamp_all(recorder, checks, timer)


def _throughput(subject: Subject, fmt: Format, backend: Backend) -> Check:
    from apr.qa.calibration import attempt_deadline, cell_budget, throughput_floor
    from apr.qa.gates.runtime import throughput_check
    from apr.qa.measure import MIN_REPS, measure_speed

    settings = subject.gates.throughput
    assert settings is not None  # the caller checked
    minimum = settings.min_tok_s[backend]
    if backend is Backend.GPU and not subject.cuda:
        return throughput_check(
            fmt, backend, minimum, None, None, "no CUDA device on this host: GPU decode speed not measured"
        )
    if fmt not in subject.artifacts.paths:
        return throughput_check(fmt, backend, minimum, None, None, f"no {fmt} artifact")
    size = subject.model_bytes.get(fmt, 0)
    calibration = subject.calibration if backend is Backend.CPU else None
    # warmup + repetitions, each a prompt of decode_tokens and as many generated tokens
    tokens = (1 + MIN_REPS) * subject.decode_tokens
    budget = cell_budget(calibration, size, tokens, tokens, subject.timeout_s)
    run = None
    for attempt in range(2):  # one retry, with more time, when the machine stopped the bench
        run = measure_speed(
            subject.artifacts.paths[fmt],
            backend.device,
            timeout_s=attempt_deadline(budget, attempt),
            apr_argv=list(subject.plan().apr_argv),
            decode_tokens=subject.decode_tokens,
            threads=calibration.threads if calibration is not None else None,
        )
        if run.process.infra_cause is None:
            break
    assert run is not None  # the loop ran at least once
    # What a decode step reads, as the bench counted it (the file's size where it did not say).
    read = (run.result or {}).get("bytes_per_token")
    floor = throughput_floor(minimum, calibration, int(read) if isinstance(read, int) and read > 0 else size)
    return throughput_check(fmt, backend, minimum, run.process, run.result, floor=floor)


@dataclass(frozen=True)
class Evidence:
    """What the gate stage wrote: the evidence file and its records, in order."""

    path: Path
    records: tuple[EvidenceRecord, ...]


CellStage = Callable[[EvidenceWriter], object]  # writes the cells' records (runs them, or copies a trace's)


def gate(
    subject: Subject,
    evidence: Path,
    cells: CellStage | None = None,
    *,
    prior: Sequence[EvidenceRecord] = (),
    progress: RunProgress = SILENT,
) -> Evidence:
    """Every gate of the certification into one evidence file: model-level gates, the cells (``cells`` writes
    them), then the runtime gates. ``prior`` records (resume) are kept and their gates not redone."""
    done = frozenset(r.gate for r in prior if r.gate not in CELL_GATES)
    if not prior and evidence.exists():
        keep_aside(evidence)  # a fresh run never truncates evidence: the earlier file moves under runs/
    with EvidenceWriter(evidence) as writer:

        def emit(records: list[EvidenceRecord]) -> None:
            for record in records:
                writer.append(record)

        model_gates(subject, emit, done=done, progress=progress)
        if cells is not None:
            cells(writer)
        runtime_gates(subject, read_evidence(evidence).records, emit, done=done, progress=progress)
    return Evidence(evidence, read_evidence(evidence).records)


# ---- self-test: the gates' detection power on planted defects ------------------------------------------


def self_test(
    artifacts: Artifacts, playbook: Playbook, folder: Path, *, progress: RunProgress = SILENT
) -> SelfTestResult:
    """The playbook's ``self_test:`` run on its GGUF artifact (``apr.qa.selftest``): every planted defect and the
    clean control gated with the playbook's own gates; ``detection.json``/``.md`` and evidence go to ``folder``.
    Expensive (the model-level gates once per copy): a certification runs it once, after its own gates."""
    from apr.qa.selftest.run import SelfTestOptions, run_self_test

    spec = playbook.self_test
    if spec is None:
        raise AprError(f"{playbook.source}: the playbook has no self_test: block")
    source = artifacts.paths.get(Format.GGUF)
    if source is None:
        raise AprError(
            f"{playbook.source}: self_test plants defects into a GGUF file; add gguf to matrix.formats "
            "or certify a GGUF checkpoint"
        )
    options = SelfTestOptions(
        model=source,
        ref=playbook.model.ref,
        output=folder,
        gates=playbook.gates,
        defects=spec.defects,
        formats=spec.formats,
        chat=playbook.model.chat_template,
        playbook=playbook.name,
        say=progress.say,
    )
    return run_self_test(options)


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
    records: Sequence[EvidenceRecord],
    mqs: MqsResult,
    folder: Path,
    *,
    title: str,
    evidence: Path | None = None,
    self_test: SelfTestResult | None = None,
) -> Reports:
    """JUnit and HTML renderings of the evidence into ``folder``; with ``evidence``, also ``mqs.json`` citing it.
    With ``self_test`` (the certification's own, ``apr.qa.selftest.report.certification_self_test``) both say
    how many planted defects its gates caught; without one they say nothing about it."""
    from apr.qa.reports import write_text_atomic
    from apr.qa.reports.html import render_html
    from apr.qa.reports.junit import render_junit

    summary = None
    if evidence is not None:
        summary = folder / "mqs.json"
        document = {"evidence": str(evidence), **mqs.model_dump(mode="json")}
        if self_test is not None:
            from apr.qa.selftest.report import summary_json

            document["self_test"] = summary_json(self_test)
        write_text_atomic(summary, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(folder / "junit.xml", render_junit(records))
    write_text_atomic(folder / "report.html", render_html(records, mqs, title=title, self_test=self_test))
    return Reports(junit=folder / "junit.xml", html=folder / "report.html", summary=summary)


def tables(certifications: Path) -> list:
    """``models.csv`` and ``index.html`` over every evidence file under the certifications folder."""
    from apr.qa.reports.certtable import write_tables

    return write_tables(certifications, None)
