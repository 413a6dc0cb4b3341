"""The one measurement of each number a gate judges: decode throughput and time to first token, logit parity.

Speed is measured one way whichever path asks (`apr certify`, `apr qa`, the Dagster graph): `apr bench` in a
subprocess on the artifact, warmup first, then repetitions, its last stdout line one JSON document. A one-shot
cell's own timings are recorded as that cell's metrics, but no gate judges them: a short reply measures its
first decode steps, compile and cold caches included. Parity is one comparison of two sets of logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apr.qa.procs import Children, Ending, ProcessResult, child_env, run_process

if TYPE_CHECKING:
    import torch

DECODE_TOKENS = 32  # tokens decoded per repetition (and prompt tokens prefilled before them)
MIN_REPS = 3


@dataclass(frozen=True)
class SpeedRun:
    """One `apr bench` run: how the process ended and, when it ended well, its JSON result."""

    process: ProcessResult
    result: dict[str, Any] | None

    def median(self, key: str) -> float | None:
        """The median of one of the result's statistics (``decode_tok_s``, ``ttft_s``, ``prefill_tok_s``)."""
        value = ((self.result or {}).get(key) or {}).get("median")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def decode_tok_s(self) -> float | None:
        return self.median("decode_tok_s")

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: the prefill of ``DECODE_TOKENS`` prompt tokens plus the first sampled token."""
        return self.median("ttft_s")


def measure_speed(
    model_path: Path,
    device: str,
    *,
    timeout_s: float,
    apr_argv: list[str],
    decode_tokens: int = DECODE_TOKENS,
    children: Children | None = None,
    threads: int | None = None,
) -> SpeedRun:
    """Decode throughput and time to first token of ``model_path`` on ``device`` with `apr bench`."""
    from apr.qa.runners import json_document

    argv = [
        *apr_argv,
        "bench",
        str(model_path),
        "--device",
        device,
        "--prompt-tokens",
        str(DECODE_TOKENS),
        "--decode-tokens",
        str(decode_tokens),
        "--min-reps",
        str(MIN_REPS),
        "--min-seconds",
        "0",
        "--warmup",
        "1",
    ]
    env = child_env({"OMP_NUM_THREADS": str(threads)} if threads else None)
    process = run_process(argv, timeout_s=timeout_s, env=env, children=children)
    lines = process.stdout.strip().splitlines()
    return SpeedRun(process, json_document(lines[-1]) if lines and process.ending is Ending.OK else None)


@dataclass(frozen=True)
class LogitComparison:
    """Agreement of candidate logits with reference logits over every position of every prompt."""

    positions: int
    top1_agreement: float
    mean_kl: float  # mean over positions of KL(reference ‖ candidate), in nats
    max_abs_diff: float

    @classmethod
    def of(cls, reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> LogitComparison:
        """The parity measurement: format parity and reference parity both call this."""
        import torch

        ref, cand = torch.cat(reference).float(), torch.cat(candidate).float()
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
        log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(cand, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        return cls(
            positions=ref.shape[0],
            top1_agreement=float((ref.argmax(-1) == cand.argmax(-1)).float().mean()),
            mean_kl=float(kl.mean()),
            max_abs_diff=float((ref - cand).abs().max()),
        )
