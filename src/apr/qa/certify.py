"""`apr certify`: a playbook in, evidence + MQS + JUnit + HTML + certification tables out.

Order: resolve the model → convert it into every format of the matrix → model-level gates → the cell
matrix through the real CLI → determinism reruns, throughput, GPU speedup → score → reports. Evidence is
appended as each step finishes, so an interrupted run resumes (``resume=True``) where it stopped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from apr.errors import AprError
from apr.qa.axes import Backend, Format, Tier
from apr.qa.evidence import EvidenceRecord, EvidenceWriter, read_evidence
from apr.qa.executor import ExecutionPlan, ExecutionSummary, execute
from apr.qa.gates.catalog import GateId
from apr.qa.playbook import Playbook, load_playbook
from apr.qa.procs import apr_command
from apr.qa.recording import Check, Recorder, Timer, stamp_all
from apr.qa.score import MqsResult, Status, compute_mqs

TEMPLATES = Path(__file__).resolve().parents[3] / "playbooks" / "templates"
DEFAULT_ROOT = Path("certifications")
# Gates written per cell by the executor (resumed cell by cell); every other gate is resumed as a whole.
CELL_GATES = frozenset({GateId.G2_INFERENCE, GateId.G3_STABILITY, GateId.G4_QUALITY})


@dataclass(frozen=True)
class CertifyOptions:
    playbook: Path
    model_path: Path | None = None
    tier: Tier | None = None
    output: Path | None = None
    workers: int | None = None
    timeout_s: float | None = None  # per-cell deadline; None = the playbook's execution.timeout_s
    resume: bool = False
    progress: bool = True
    apr_argv: tuple[str, ...] | None = None  # the CLI under test (default: this apr)


@dataclass(frozen=True)
class CertifyResult:
    playbook: Playbook
    output: Path
    evidence: Path
    mqs: MqsResult
    summary: ExecutionSummary
    seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if self.mqs.status is Status.BLOCKED else 0


def default_output(playbook: Playbook) -> Path:
    """``certifications/<model>`` for the MVP tier, the folder the Dagster pipeline writes too;
    ``certifications/<model>-<tier>`` for other tiers, so tiers of one model never share evidence."""
    model = playbook.name.removesuffix(f"-{playbook.tier.value}")
    return DEFAULT_ROOT / (model if playbook.tier is Tier.MVP else f"{model}-{playbook.tier.value}")


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _overlay(base: dict, own: dict) -> dict:
    """``own`` laid over ``base`` key by key (mappings merge, everything else replaces), as ``extends`` does."""
    merged = dict(base)
    for key, value in own.items():
        merged[key] = _overlay(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def with_tier(playbook: Playbook, tier: Tier) -> Playbook:
    """The model playbook's own settings laid over another tier's template, as if it extended that one."""
    from pydantic import ValidationError

    from apr.qa.playbook_yaml import read_with_extends, read_yaml

    if tier is playbook.tier:
        return playbook
    if playbook.source is None or playbook.source_format != "apr":
        raise AprError(f"{playbook.source}: --tier needs a playbook in apr's format (apr_playbook: 1)")
    template_path = TEMPLATES / f"{tier.value}.yaml"
    if not template_path.is_file():
        raise AprError(f"{template_path}: no template for tier {tier.value}")
    template, _ = read_with_extends(template_path)
    own, _ = read_yaml(playbook.source)
    own = {key: value for key, value in own.items() if key not in ("extends", "tier", "name")}
    data = _overlay(template, own)
    data.pop("extends", None)
    data.update(tier=tier.value, name=f"{playbook.name.removesuffix(f'-{playbook.tier.value}')}-{tier.value}")
    try:
        retiered = Playbook.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise AprError(f"{playbook.source}: does not combine with the {tier.value} template: "
                       f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    retiered._source, retiered._unused_keys, retiered._source_format = (playbook.source, playbook.unused_keys,
                                                                        playbook.source_format)
    return retiered


def resolve_source(playbook: Playbook) -> Path:
    path = playbook.model_path()
    if path is not None:
        if not path.exists():
            raise AprError(f"{path}: model file not found (model.path of {playbook.source}); fix the path or pass "
                           "--model-path")
        return path
    from apr.hub import resolve_model_arg

    return resolve_model_arg(playbook.model.ref)


def expected_sha256(ref: str) -> str | None:
    """The digest the hub's catalogue publishes for ``ref``, if it is a catalogued model."""
    from apr.hub.catalog import load_catalog

    entry = load_catalog().get(ref)
    return entry.sha256 if entry else None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class Certification:
    """One certify run; ``run()`` does every step and returns the result."""

    def __init__(self, options: CertifyOptions) -> None:
        self.options = options
        playbook = load_playbook(options.playbook)
        if options.tier is not None:
            playbook = with_tier(playbook, options.tier)
        if options.model_path is not None:
            playbook = playbook.with_model_path(options.model_path)
        self.playbook = playbook
        self.output = options.output or default_output(playbook)
        self.evidence = self.output / "evidence.jsonl"

    def _emit_to(self, writer: EvidenceWriter):
        def emit(records: list[EvidenceRecord]) -> None:
            for record in records:
                writer.append(record)
        return emit

    def _prior(self) -> tuple[EvidenceRecord, ...]:
        if not self.options.resume or not self.evidence.exists():
            return ()
        log = read_evidence(self.evidence)
        if log.torn_tail is not None:
            _say(log.warning() or "", self.options.progress)
        return log.records

    def run(self) -> CertifyResult:
        import time

        from apr.hub.digest import sha256_of
        from apr.qa.artifacts import artifacts_dir, prepare_artifacts
        from apr.qa.gates.model_level import ModelGateInputs, ModelGateRun

        started = time.monotonic()
        pb, progress = self.playbook, self.options.progress
        prior = self._prior()
        if not self.options.resume:
            self.evidence.unlink(missing_ok=True)
        source = resolve_source(pb)
        _say(f"apr certify: {pb.name} ({pb.tier}) on {source}", progress)
        source_sha = sha256_of(source, progress=False)
        artifacts = prepare_artifacts(source, source_sha, pb.matrix.formats, artifacts_dir(source_sha))
        for fmt, seconds in artifacts.converted.items():
            _say(f"  converted to {fmt} in {seconds:.1f}s", progress)
        digests = {fmt: (source_sha if path == source else sha256_of(path, progress=False))
                   for fmt, path in artifacts.paths.items()}
        cuda = _cuda_available()
        recorder = Recorder(model=pb.model.ref, artifacts=artifacts.paths, sha256=digests, playbook=pb.name, tier=pb.tier,
                            source=artifacts.source)
        done_gates = frozenset(r.gate for r in prior if r.gate not in CELL_GATES)
        with EvidenceWriter(self.evidence) as writer:
            emit = self._emit_to(writer)
            _say("  model-level gates ...", progress)
            gate_inputs = ModelGateInputs(
                artifacts=artifacts.paths, digests=digests, source=artifacts.source, gates=pb.gates,
                expected_sha256=expected_sha256(pb.model.ref) if pb.gates.g0_integrity.verify_sha256 else None,
                chat=pb.model.chat_template, cuda_available=cuda, backends=pb.matrix.backends,
                done_gates=done_gates, conversion_failures=artifacts.failures)
            ModelGateRun(gate_inputs, recorder, emit).run()
            plan = ExecutionPlan(
                cells=tuple(pb.cells()), artifacts=artifacts.paths,
                timeout_s=self.options.timeout_s or pb.execution.timeout_s,
                workers=self.options.workers or pb.execution.workers, failure_policy=pb.execution.failure_policy,
                use_chat_template=pb.model.chat_template, cuda_available=cuda,
                apr_argv=self.options.apr_argv or tuple(apr_command()), missing_artifacts=artifacts.failures)
            summary = execute(plan, recorder, writer, done_keys=frozenset(r.key for r in prior), progress=progress)
            _say(f"  {summary.line()}" + (f"; stopped by {summary.stopped_by}" if summary.stopped_by else ""), progress)
            records = read_evidence(self.evidence).records
            self.runtime_gates(plan, records, recorder, emit, done_gates, artifacts.source)
        records = read_evidence(self.evidence).records
        mqs = compute_mqs(records)
        self._write_reports(records, mqs)
        return CertifyResult(pb, self.output, self.evidence, mqs, summary, time.monotonic() - started)

    def runtime_gates(self, plan: ExecutionPlan, records, recorder: Recorder, emit, done: frozenset[GateId],
                       source: Format) -> None:
        """Determinism reruns, throughput (`apr bench`) and GPU speedup, after the cells; ``done`` gates are skipped."""
        from apr.qa.gates import runtime
        from apr.qa.runners import run_cell

        gates = self.playbook.gates
        formats = self.playbook.matrix.formats
        if gates.determinism is not None and GateId.DETERMINISM not in done:
            timer = Timer()
            modalities = [m for m in gates.determinism.modalities if m in self.playbook.matrix.modalities]
            settings = gates.determinism.model_copy(update={"modalities": tuple(modalities)})
            checks: list[Check] = []
            targets = runtime.determinism_targets(records, plan.cells, settings, source)
            for cell, first in targets:
                reruns = [run_cell(plan.runnable(cell), list(plan.apr_argv)) for _ in range(settings.repeats - 1)]
                checks.append(runtime.determinism_check(cell, first, [r.text if r.text is not None else None
                                                                      for r in reruns]))
            checks += runtime.modality_skips(settings, [cell.modality for cell, _ in targets])
            emit(stamp_all(recorder, checks, timer))
        if gates.throughput is not None and GateId.THROUGHPUT not in done:
            self._throughput(plan, recorder, formats, emit)
            records = read_evidence(self.evidence).records
        if gates.gpu_speedup is not None and GateId.GPU_SPEEDUP not in done:
            timer = Timer()
            emit(stamp_all(recorder, runtime.gpu_speedup_checks(records, gates.gpu_speedup, plan.cuda_available), timer))

    _runtime_gates = runtime_gates  # the name pipelines/assets/gates.py calls; new callers use runtime_gates

    def _throughput(self, plan: ExecutionPlan, recorder: Recorder, formats, emit) -> None:
        """`apr bench` per format × backend of the matrix (GPU without CUDA, or no artifact: skipped); each
        result is written as soon as it is measured."""
        from apr.qa.gates.runtime import throughput_check
        from apr.qa.runners import run_bench

        for backend in self.playbook.matrix.backends:
            minimum = self.playbook.gates.throughput.min_tok_s[backend]
            for fmt in formats:
                timer = Timer()
                if backend is Backend.GPU and not plan.cuda_available:
                    check = throughput_check(fmt, backend, minimum, None, None, "no CUDA device on this host: "
                                             "GPU decode speed not measured")
                elif fmt not in plan.artifacts:
                    check = throughput_check(fmt, backend, minimum, None, None, f"no {fmt} artifact")
                else:
                    process, bench = run_bench(plan.artifacts[fmt], backend.device, plan.timeout_s,
                                               list(plan.apr_argv))
                    check = throughput_check(fmt, backend, minimum, process, bench)
                emit(stamp_all(recorder, [check], timer))

    def _write_reports(self, records, mqs: MqsResult) -> None:
        from apr.qa.reports import write_text_atomic
        from apr.qa.reports.certtable import write_tables
        from apr.qa.reports.html import render_html
        from apr.qa.reports.junit import render_junit

        summary = {"evidence": str(self.evidence), **mqs.model_dump(mode="json")}
        write_text_atomic(self.output / "mqs.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(self.output / "junit.xml", render_junit(records))
        write_text_atomic(self.output / "report.html",
                          render_html(records, mqs, title=f"{self.playbook.model.ref} — {self.playbook.tier}"))
        write_tables(self.output.parent, None)


def certify(options: CertifyOptions) -> CertifyResult:
    return Certification(options).run()


__all__ = ["CertifyOptions", "CertifyResult", "certify", "with_tier"]
