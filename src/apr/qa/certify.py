"""`apr certify`: a playbook in, evidence + MQS + JUnit + HTML + certification tables out.

A thin composition of ``apr.qa.stages``: acquire → convert → calibrate → gate (model-level gates, the cells
traced through the real CLI, runtime gates) → self-test (when the playbook has a ``self_test:`` block, as the full
tier's do: once, after the gates, into ``self-test/``) → score → report. Evidence is appended as each step finishes, so an
interrupted run resumes (``resume=True``) where it stopped; a run without ``resume`` keeps the folder's earlier
run under ``runs/`` (``apr.qa.rundir``). With an explicit output folder nothing outside it is read or written:
its tables (models.csv, index.html) cover that folder alone.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apr.errors import AprError
from apr.qa import stages
from apr.qa.axes import Format, Tier
from apr.qa.evidence import EvidenceRecord, EvidenceWriter, read_evidence
from apr.qa.executor import ExecutionSummary
from apr.qa.infra import InfraCause
from apr.qa.playbook import Playbook, load_playbook
from apr.qa.progress import RunProgress
from apr.qa.rundir import archive_previous_run, drop_renderings
from apr.qa.score import MqsResult, Status

if TYPE_CHECKING:
    from apr.qa.artifacts import Artifacts
    from apr.qa.selftest.run import SelfTestResult

# playbooks/templates in a checkout, reached through the package's `templates` link; real files in a wheel.
TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_ROOT = Path("certifications")


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
    threads: int | None = None  # CPU threads of every cell; None: the calibration chooses from the free cores
    calibrate: bool = True  # measure the machine (deadlines and speed floors follow it); False: as written


@dataclass(frozen=True)
class CertifyResult:
    playbook: Playbook
    output: Path
    evidence: Path
    mqs: MqsResult
    summary: ExecutionSummary
    seconds: float
    tables: Path  # the folder whose models.csv and index.html were rewritten
    archived: Path | None = None  # where the folder's earlier run was kept

    @property
    def exit_code(self) -> int:
        """0 CERTIFIED or PROVISIONAL, 1 BLOCKED (evidence against the model), 3 INCONCLUSIVE (the machine)."""
        return {Status.BLOCKED: 1, Status.INCONCLUSIVE: 3}.get(self.mqs.status, 0)


def default_output(playbook: Playbook) -> Path:
    """``certifications/<model>`` for the MVP tier, the folder the Dagster pipeline writes too;
    ``certifications/<model>-<tier>`` for other tiers, so tiers of one model never share evidence."""
    model = playbook.name.removesuffix(f"-{playbook.tier.value}")
    return DEFAULT_ROOT / (model if playbook.tier is Tier.MVP else f"{model}-{playbook.tier.value}")


def _overlay(base: dict, own: dict) -> dict:
    """``own`` laid over ``base`` key by key (mappings merge, everything else replaces), as ``extends`` does."""
    merged = dict(base)
    for key, value in own.items():
        merged[key] = (
            _overlay(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
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
        raise AprError(
            f"{playbook.source}: does not combine with the {tier.value} template: "
            f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        ) from None
    retiered._source, retiered._unused_keys, retiered._source_format = (
        playbook.source,
        playbook.unused_keys,
        playbook.source_format,
    )
    return retiered


def resolve_source(playbook: Playbook) -> Path | None:
    """The playbook's ``model.path`` (which must exist), or None: the ref is acquired through the hub."""
    path = playbook.model_path()
    if path is not None and not path.exists():
        raise AprError(
            f"{path}: model file not found (model.path of {playbook.source}); fix the path or pass --model-path"
        )
    return path


class Certification:
    """One certify run: the stages in order (``apr.qa.stages``), with progress lines and resume."""

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
        # An explicit folder is the user's: its tables cover it alone. The default one lives in certifications/,
        # whose tables cover every model certified there.
        self.tables = self.output if options.output is not None else self.output.parent

    def _prior(self, progress: RunProgress) -> tuple[EvidenceRecord, ...]:
        if not self.options.resume or not self.evidence.exists():
            return ()
        log = read_evidence(self.evidence)
        if log.torn_tail is not None:
            progress.say(log.warning() or "")
        return log.records

    def run(self) -> CertifyResult:
        with RunProgress(self.options.progress) as progress:
            try:
                return self._run(progress)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                # The machine, not the model: what was written stays (append-only, fsynced); resume continues.
                raise AprError(
                    f"{self.output}: no space left on device ({err.filename or 'while writing'}); "
                    f"{InfraCause.DISK_FULL.advice}",
                    exit_code=3,
                ) from None

    def _run(self, progress: RunProgress) -> CertifyResult:
        import time

        started = time.monotonic()
        pb = self.playbook
        prior = self._prior(progress)
        archived = None
        if self.options.resume:
            drop_renderings(self.output)  # they describe the evidence before this run appends to it
        else:
            archived = archive_previous_run(self.output)
            if archived is not None:
                progress.say(f"apr certify: kept the previous run of {self.output} in {archived}")
        checkpoint = stages.acquire(pb.model.ref, resolve_source(pb), progress=self.options.progress)
        progress.say(f"apr certify: {pb.name} ({pb.tier}) on {checkpoint.path}")
        phase = progress.phase("convert", len(pb.matrix.formats))
        phase.start(f"{', '.join(pb.matrix.formats)} (cached by the source's digest)")
        artifacts = stages.convert(checkpoint, pb.matrix.formats)
        phase.finish(
            "; ".join(f"{fmt} converted in {seconds:.1f}s" for fmt, seconds in artifacts.converted.items())
            or "every format already converted",
            steps=len(pb.matrix.formats),
        )
        phase.close()
        if pb.self_test is not None and Format.GGUF not in artifacts.paths:
            raise AprError(
                f"{pb.source}: self_test plants defects into a GGUF file, and this certification has none; "
                "add gguf to matrix.formats"
            )
        calibration = stages.calibrate(self.options.threads, progress) if self.options.calibrate else None
        subject = stages.subject_of(
            pb,
            artifacts,
            cuda=stages.cuda_available(),
            workers=self.options.workers,
            timeout_s=self.options.timeout_s,
            apr_argv=self.options.apr_argv,
            calibration=calibration,
            threads=self.options.threads,
        )
        summaries: list[ExecutionSummary] = []

        def cells(writer: EvidenceWriter) -> None:
            # Measured again: the model-level gates may have taken long enough for the load to change.
            summary = stages.trace(
                subject.calibrated(progress), writer, done_keys=frozenset(r.key for r in prior), progress=progress
            )
            progress.say(f"  {summary.line()}" + (f"; stopped by {summary.stopped_by}" if summary.stopped_by else ""))
            summaries.append(summary)

        evidence = stages.gate(subject, self.evidence, cells, prior=prior, progress=progress)
        self_test = self._self_test(artifacts, evidence.records, progress) if pb.self_test is not None else None
        mqs = stages.score(evidence.records)
        stages.report(
            evidence.records,
            mqs,
            self.output,
            title=f"{pb.model.ref} — {pb.tier}",
            evidence=self.evidence,
            self_test=self_test,
        )
        stages.tables(self.tables)
        return CertifyResult(
            pb, self.output, self.evidence, mqs, summaries[0], time.monotonic() - started, self.tables, archived
        )

    def _self_test(
        self, artifacts: Artifacts, records: tuple[EvidenceRecord, ...], progress: RunProgress
    ) -> SelfTestResult:
        """The playbook's self-test into ``self-test/``; a resumed run keeps one that finished for this playbook."""
        import shutil

        from apr.qa.selftest.report import SELF_TEST_DIR, certification_self_test, verdict_sentence

        folder = self.output / SELF_TEST_DIR
        if self.options.resume:
            done = certification_self_test(self.output, records)
            if done is not None:
                progress.say(f"apr certify: self-test already done ({verdict_sentence(done)})")
                return done
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted self-test's copies: measured again in full
        progress.say("apr certify: self-test: the gates on planted defects (once per certification, after the gates)")
        result = stages.self_test(artifacts, self.playbook, folder, progress=progress)
        progress.say(f"apr certify: {verdict_sentence(result)}")
        return result


def certify(options: CertifyOptions) -> CertifyResult:
    return Certification(options).run()


__all__ = ["CertifyOptions", "CertifyResult", "certify", "with_tier"]
