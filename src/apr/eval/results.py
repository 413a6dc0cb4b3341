"""The files of one evaluation: ``run.json`` (what ran), ``problems.jsonl`` (one record per problem, appended as
each is scored, so an interrupted run resumes) and ``summary.json`` (pass@1 with its confidence interval)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from apr.errors import AprError

RUN_FILE, PROBLEMS_FILE, SUMMARY_FILE = "run.json", "problems.jsonl", "summary.json"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the completions: a resumed run must match it exactly."""

    task: str
    model: str  # the MODEL argument as given
    model_path: str
    model_format: str
    model_sha256: str
    chat: bool
    max_tokens: int
    temperature: float
    seed: int
    prompt_style: str  # "evalplus-instruct" or "evalplus-direct"
    data: str  # where the problems came from
    device: str
    numerics: str
    # The KV cache's element type (f16 rounds attention, so completions may differ); runs written before it was
    # kept used f32.
    kv_cache: str = "f32"

    def key(self) -> dict[str, Any]:
        """The fields a resumed run must share (the device may differ: greedy decoding is the same)."""
        doc = asdict(self)
        for volatile in ("model", "model_path", "device"):
            doc.pop(volatile)
        return doc


@dataclass(frozen=True)
class ProblemResult:
    """One problem's line in ``problems.jsonl``."""

    task_id: str
    prompt_sha256: str
    completion: str
    passed: bool
    status: str  # passed · failed · timeout · error (apr.eval.sandbox.Status; error: the sandbox failed, no verdict)
    error: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    generate_s: float  # from its prefill to its last token (shared with the batch it ran in)
    exec_s: float
    isolation: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ProblemResult:
        names = {f.name for f in fields(cls)}
        missing = names - doc.keys()
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        return cls(**{k: doc[k] for k in names})


class ResultsFolder:
    """The output folder of one evaluation."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def problems_path(self) -> Path:
        return self.folder / PROBLEMS_FILE

    def start(self, config: RunConfig, *, resume: bool) -> dict[str, ProblemResult]:
        """Prepare the folder; with ``resume``, the problems already scored under the same config (else the
        folder must hold no earlier run)."""
        run_path = self.folder / RUN_FILE
        if run_path.exists() or self.problems_path.exists():
            if not resume:
                raise AprError(f"{self.folder}: holds an earlier run; pass --resume to continue it or another --output")
            earlier = json.loads(run_path.read_text(encoding="utf-8")) if run_path.exists() else None
            if earlier is not None and RunConfig(**earlier).key() != config.key():
                changed = sorted(k for k, v in config.key().items() if RunConfig(**earlier).key().get(k) != v)
                raise AprError(
                    f"{self.folder}: the earlier run used other settings ({', '.join(changed)}); "
                    "resume only with the same ones, or pass another --output"
                )
            done = read_results(self.problems_path) if self.problems_path.exists() else {}
        else:
            done = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_json(run_path, asdict(config))
        return done

    def append(self, result: ProblemResult) -> None:
        with open(self.problems_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
            handle.flush()

    def rewrite(self, results: Iterable[ProblemResult]) -> None:
        """Replace every record at once (a temporary file renamed over the old one)."""
        from apr.qa.reports import write_text_atomic

        lines = [json.dumps(asdict(result), ensure_ascii=False) + "\n" for result in results]
        write_text_atomic(self.problems_path, "".join(lines))

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.folder / SUMMARY_FILE
        _write_json(path, summary)
        return path


def read_results(path: Path) -> dict[str, ProblemResult]:
    """Records by task id; a torn last line (the run was killed mid-write) is dropped, anything else is an error."""
    results: dict[str, ProblemResult] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = ProblemResult.from_json(json.loads(line))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            if number == len(lines):
                break  # the line a killed run was writing
            raise AprError(f"{path}:{number}: not a problem record ({err})") from None
        results[record.task_id] = record
    return results


@dataclass(frozen=True)
class PassRate:
    """pass@1 of n problems with its 95% Wilson score interval."""

    passed: int
    total: int

    @property
    def value(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.passed, self.total)

    def to_json(self) -> dict[str, Any]:
        low, high = self.interval
        return {"pass@1": round(self.value, 6), "passed": self.passed, "total": self.total,
                "ci95": [round(low, 6), round(high, 6)]}  # fmt: skip


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion (sane at 0 and at n)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_rate(results: Iterable[ProblemResult]) -> PassRate:
    listed = list(results)
    return PassRate(sum(r.passed for r in listed), len(listed))


def _write_json(path: Path, document: dict[str, Any]) -> None:
    from apr.qa.reports import write_text_atomic

    write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
