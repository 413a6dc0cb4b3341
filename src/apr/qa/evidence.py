"""THE evidence record (one typed, documented record per check) and its append-only JSONL writer and strict reader.

Evidence is the product: MQS, JUnit, HTML and the certification tables are renderings of these
records and are recomputed from them alone (``apr report``). The schema is documented field by
field below, in the manner of lm-eval's ``result_schema.py``.

File format: UTF-8 JSON Lines, one ``EvidenceRecord`` per line, each line written with a single
``write`` followed by ``fsync``. A line without its trailing newline is a *torn tail* (the writer
died mid-write): it is never a record; the reader reports it and the writer cuts it off before
appending again (``EvidenceWriter.repaired_tail``).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from apr.errors import AprError
from apr.qa.axes import Backend, Format, Modality, Tier
from apr.qa.gates.catalog import FEATURE_GATES, GateId
from apr.qa.infra import InfraCause

SCHEMA_VERSION = 1
EXCERPT_LIMIT = 2000

MetricValue = float | int | str | bool | None


class Outcome(StrEnum):
    """What a check concluded. Only ``corroborated`` is a pass; ``skipped``, ``not_applicable`` and
    ``inconclusive`` never are.

    Only ``falsified`` and ``crashed`` are evidence against the model. ``inconclusive`` says the machine
    stopped the check (deadline, OOM, a process killed from outside, a full disk: ``cause`` names it) after a
    bounded retry; ``timeout`` is how older evidence (before infrastructure causes existed) recorded a
    deadline kill, and is read as inconclusive with cause ``deadline``. ``not_applicable`` says the check
    cannot judge this subject and compared nothing: the model lacks the feature it exercises (FIM without FIM
    tokens), or the subject is a remote endpoint (``provenance.endpoint``) and the gate needs the checkpoint's
    files or apr's engine (``apr.qa.gates.catalog.Needs``). A gate with nothing but these is neither planned nor
    scored.
    """

    CORROBORATED = "corroborated"  # the check ran, compared something, and the model survived it
    FALSIFIED = "falsified"  # the check ran and the model failed it
    TIMEOUT = "timeout"  # (older evidence) the check was killed at its deadline: read as inconclusive
    CRASHED = "crashed"  # the program under test died of its own defect (SIGSEGV/SIGABRT, traceback, HTTP 5xx)
    SKIPPED = "skipped"  # the check could not run here (e.g. a GPU cell without CUDA); reason says why
    INCONCLUSIVE = "inconclusive"  # the machine stopped the check; ``cause`` says how; never about the model
    # The check cannot judge this subject: the model lacks the feature it exercises (FIM without FIM tokens, tools
    # with a template that does not render them), or an endpoint has no files or engine to judge. No pass, no
    # failure; a gate with nothing but these leaves the MQS plan (apr.qa.score).
    NOT_APPLICABLE = "not_applicable"

    @property
    def is_failure(self) -> bool:
        """Evidence against the model: only these falsify a gate or block a certification."""
        return self in (Outcome.FALSIFIED, Outcome.CRASHED)

    @property
    def is_infrastructure(self) -> bool:
        """The machine, not the model, decided this outcome."""
        return self in (Outcome.INCONCLUSIVE, Outcome.TIMEOUT)


class Scenario(BaseModel):
    """What was exercised. Model-level gates (integrity, structure...) leave the cell fields None."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="model ref or name as the playbook names it, e.g. qwen2.5-coder:1.5b")
    format: Format | None = Field(None, description="file format of the artifact under test; None = all or n/a")
    backend: Backend | None = Field(None, description="cpu or gpu; None = not backend-specific")
    modality: Modality | None = Field(None, description="run, chat or serve; None = not a modality cell")
    prompt_id: str | None = Field(None, description="stable id of the scenario prompt (see apr.qa.scenarios)")
    prompt: str | None = Field(None, description="the prompt text exactly as sent (may be empty or whitespace)")
    seed: int | None = Field(None, description="sampling / scenario seed used by this check")

    @property
    def cell_key(self) -> str:
        """Same shape as ``Cell.key`` for cell checks; ``model`` for model-level checks."""
        if self.format is None or self.backend is None or self.modality is None:
            parts = [str(p) for p in (self.format, self.backend, self.modality, self.prompt_id) if p is not None]
            return "/".join(["model", *parts])
        return f"{self.format}/{self.backend}/{self.modality}/{self.prompt_id}/seed{self.seed}"


class Calibration(BaseModel):
    """What the machine delivered when a check ran, measured by apr certify at the start of the run and again
    before each phase (``apr.qa.calibration``): cell deadlines and throughput floors are derived from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int = Field(ge=1, description="CPU threads the programs under test were given (OMP_NUM_THREADS)")
    threads_reason: str = Field(description="why that many: free cores from the load average and the quota")
    stream_gb_s: float = Field(gt=0, description="GB/s a decode-like float32 matrix-vector stream reached")
    startup_s: float = Field(ge=0, description="seconds a fresh Python process took to import torch")
    load1: float | None = Field(None, description="one-minute load average when measured")
    measured_at: AwareDatetime = Field(description="when the calibration ran")

    def decode_ceiling_tok_s(self, model_bytes: int) -> float:
        """The decode speed this machine's stream allows a model whose weights are read once per token."""
        return self.stream_gb_s * 1e9 / max(1, model_bytes)

    def line(self) -> str:
        load = f", load {self.load1:.1f}" if self.load1 is not None else ""
        return (
            f"{self.stream_gb_s:.1f} GB/s with {self.threads} thread(s), python+torch start {self.startup_s:.1f}s{load}"
        )


class EndpointProvenance(BaseModel):
    """The remote OpenAI-compatible endpoint a check ran against (``apr certify --endpoint``). Never a secret: the
    URL carries no credentials (they are refused) and the API key is neither written nor named beyond its variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1, description="the OpenAI base URL requested, e.g. http://127.0.0.1:8080/v1")
    served_model: str = Field(min_length=1, description="the model name sent in every request")
    api: Literal["chat", "completion"] = Field(description="the API the scenarios used")
    server: dict[str, str] = Field(
        default_factory=dict,
        description="identifying response headers of the endpoint (server, via, x-powered-by, openai-version, ...)",
    )
    api_key_env: str | None = Field(None, description="the environment variable the API key was read from")
    concurrency: int = Field(1, ge=1, description="requests in flight at once")
    rate_limit_rps: float | None = Field(None, gt=0, description="most request starts per second; None: no limit")


class Provenance(BaseModel):
    """Where, when and with what the check ran: enough to reproduce it or to distrust it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the artifact under test; None when the file could not be read, or for an endpoint",
    )
    format: Format | None = Field(None, description="format of that artifact")
    backend: Backend | None = Field(None, description="backend the check used")
    engine_git_sha: str = Field(min_length=1, description="git commit of the apr checkout, or 'unknown' outside git")
    apr_version: str = Field(min_length=1, description="apr package version")
    torch_version: str | None = Field(None, description="torch version in the environment; None if not installed")
    device: str = Field(min_length=1, description="device actually used, e.g. 'cpu', 'cuda:0 (NVIDIA H100)'")
    host: str = Field(min_length=1, description="host name")
    cpu: str | None = Field(None, description="CPU model of the host (None in records written before it was kept)")
    kernels: str | None = Field(
        None,
        description="CPU kernel family the check's engine loads: a native variant (amx, avx512vnni, avxvnni, avx2; "
        "the one a failed build fell back to) or 'torch' (native kernels off or impossible here, or exact numerics); "
        "None for a remote endpoint, a check on the GPU, or when the probe that asks the kernels failed",
    )
    threads: int | None = Field(None, description="CPU threads available to the check's processes")
    numerics: str | None = Field(
        None,
        description="numerics mode of the engine behind a check that ran one ('fast': int8 activations on the "
        "native kernels, the default; 'exact': the float32 reference); None for checks that ran no engine",
    )
    kv_cache: str | None = Field(
        None,
        description="element type of the KV cache of the engine behind a check that ran one ('float32', the "
        "default; 'float16' with --kv-cache f16); None for checks that ran no engine and in records written "
        "before it was kept",
    )
    calibration: Calibration | None = Field(
        None, description="what the machine delivered when the check ran (apr certify's calibration)"
    )
    seed: int | None = Field(None, description="seed the check was run with")
    playbook: str | None = Field(None, description="name of the playbook that planned the check (None for apr qa)")
    tier: Tier | None = Field(None, description="certification tier of that playbook")
    gates: tuple[GateId, ...] | None = Field(
        None,
        description="every gate the plan enabled (the MQS averages each category over these, so a gate a tier "
        "does not run costs it nothing and a planned gate that left no record costs it everything); None in "
        "records written before it was kept",
    )
    endpoint: EndpointProvenance | None = Field(
        None, description="the remote endpoint the check ran against (apr certify --endpoint); None: apr's own engine"
    )
    started_at: AwareDatetime = Field(description="when the check started (timezone-aware, UTC preferred)")
    finished_at: AwareDatetime = Field(description="when the check finished")

    @model_validator(mode="after")
    def _finished_after_start(self) -> Provenance:
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        return self


class EvidenceRecord(BaseModel):
    """One check, one record. Immutable; unknown fields are rejected when reading.

    Invariant enforced at construction: a ``corroborated`` record must have compared at least one
    thing (``n_compared >= 1``) — a check that compared nothing cannot be recorded as a pass.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(1, description="evidence schema version (SCHEMA_VERSION)")
    gate: GateId = Field(description="the gate this check belongs to (apr.qa.gates.catalog)")
    check: str = Field(
        min_length=1, description="which check inside the gate, e.g. 'oracle:arithmetic', 'top1 gguf~apr'"
    )
    scenario: Scenario = Field(description="what was exercised")
    outcome: Outcome = Field(
        description="corroborated | falsified | crashed | skipped | not_applicable | inconclusive (| timeout)"
    )
    cause: InfraCause | None = Field(
        None, description="for inconclusive: what on the machine stopped the check (deadline, oom, ...)"
    )
    reason: str = Field(min_length=1, description="one line saying why: what was seen versus what was expected")
    metrics: dict[str, MetricValue] = Field(default_factory=dict, description="measured numbers, e.g. tok_s, kl, top1")
    measured: float | None = Field(None, description="the headline measurement compared with threshold, if any")
    threshold: float | None = Field(None, description="the threshold the headline measurement was held to")
    unit: str | None = Field(None, description="unit of measured/threshold, e.g. 'tok/s', 'nats'")
    n_compared: int = Field(0, ge=0, description="how many things were actually compared (prompts, tokens, tensors)")
    output_excerpt: str = Field(
        "", max_length=EXCERPT_LIMIT + 64, description="the start/end of the model output or log"
    )
    duration_s: float = Field(0.0, ge=0, description="wall time of the check in seconds")
    provenance: Provenance

    @model_validator(mode="after")
    def _no_vacuous_pass(self) -> EvidenceRecord:
        if self.outcome is Outcome.CORROBORATED and self.n_compared < 1:
            raise ValueError(
                "a corroborated record must have n_compared >= 1: a check that compared nothing is no pass"
            )
        if (self.outcome is Outcome.INCONCLUSIVE) != (self.cause is not None):
            raise ValueError("an inconclusive record names its machine cause, and only an inconclusive one does")
        if self.outcome is Outcome.NOT_APPLICABLE:
            if self.n_compared:
                raise ValueError("a not_applicable record compared nothing")
            if self.provenance.endpoint is None and self.gate not in FEATURE_GATES:
                raise ValueError(
                    f"{self.gate} cannot be not_applicable to a checkpoint: only an endpoint's evidence, or a gate "
                    "of a feature the model may lack (FIM, tools, JSON mode, embeddings)"
                )
        return self

    @property
    def infra_cause(self) -> InfraCause | None:
        """The machine cause of an inconclusive record (older ``timeout`` records: the deadline)."""
        return InfraCause.DEADLINE if self.outcome is Outcome.TIMEOUT else self.cause

    @property
    def key(self) -> str:
        """Identity of the check across runs (``--resume`` skips keys already recorded)."""
        return f"{self.gate}|{self.check}|{self.scenario.model}|{self.scenario.cell_key}"


def excerpt(text: str, limit: int = EXCERPT_LIMIT) -> str:
    """Head and tail of ``text`` within ``limit`` characters, with the number of characters cut in between."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}…[{len(text) - 2 * half} chars cut]…{text[-half:]}"


@dataclass(frozen=True)
class EvidenceLog:
    """What ``read_evidence`` found: the valid records, and the torn last line if the writer died mid-write."""

    path: Path
    records: tuple[EvidenceRecord, ...]
    torn_tail: str | None

    def warning(self) -> str | None:
        """One line for the user when the file ends in a torn (incomplete) record."""
        if self.torn_tail is None:
            return None
        return (
            f"{self.path}: last line is incomplete ({len(self.torn_tail)} chars, the writer stopped mid-write); "
            "it is not counted — rerun with --resume to redo that check"
        )


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "record"
    return f"{where}: {first['msg']}"


def parse_record_line(line: str, *, where: str) -> EvidenceRecord:
    """One JSONL line → a record; ``AprError`` naming ``where`` (file:line) and the field otherwise."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise AprError(f"{where}: not JSON ({err.msg} at column {err.colno}); the evidence file is corrupt") from None
    try:
        return EvidenceRecord.model_validate(data)
    except ValidationError as err:
        raise AprError(
            f"{where}: not a valid evidence record ({_first_error(err)}); regenerate it with apr certify"
        ) from None


def read_evidence(path: Path | str) -> EvidenceLog:
    """Strictly read an evidence file: every complete line must be a valid record (else ``AprError``)."""
    path = Path(path)
    if not path.is_file():
        raise AprError(f"{path}: evidence file not found; pass the evidence.jsonl written by apr certify or apr qa")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise AprError(f"{path}: not UTF-8 (byte {err.start}); the evidence file is corrupt") from None
    lines = text.split("\n")
    torn = lines.pop()  # after the final newline: "" unless the last write was torn
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise AprError(f"{path}:{number}: blank line; evidence files have one record per line")
        records.append(parse_record_line(line, where=f"{path}:{number}"))
    return EvidenceLog(path=path, records=tuple(records), torn_tail=torn or None)


def _cut_torn_tail(path: Path) -> int:
    """Truncate an unterminated last line (an incomplete write); returns the number of bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        handle.seek(0)
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep


class EvidenceWriter:
    """Append-only JSONL writer: one ``os.write`` per record on an ``O_APPEND`` descriptor, then ``fsync``.

    Thread-safe (parallel workers share one writer). Opening an existing file keeps its records;
    an incomplete last line left by a crash is cut off first and its size kept in ``repaired_tail``.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_tail = _cut_torn_tail(self.path) if self.path.exists() else 0
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def append(self, record: EvidenceRecord) -> None:
        data = (record.model_dump_json() + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise AprError(f"{self.path}: evidence writer already closed")
            written = os.write(self._fd, data)
            while written < len(data):  # regular files write fully; this only guards a short write
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> EvidenceWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def finished_keys(path: Path | str) -> frozenset[str]:
    """Keys of the checks already recorded in ``path`` (empty if the file does not exist): for ``--resume``."""
    path = Path(path)
    if not path.exists():
        return frozenset()
    return frozenset(record.key for record in read_evidence(path).records)


def utc_now() -> datetime:
    """Timezone-aware now, as evidence timestamps require."""
    return datetime.now(UTC)


__all__ = [
    "EXCERPT_LIMIT",
    "SCHEMA_VERSION",
    "EvidenceLog",
    "EvidenceRecord",
    "Calibration",
    "EndpointProvenance",
    "EvidenceWriter",
    "MetricValue",
    "Outcome",
    "Provenance",
    "Scenario",
    "excerpt",
    "finished_keys",
    "parse_record_line",
    "read_evidence",
    "utc_now",
]
