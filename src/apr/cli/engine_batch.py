"""`apr run --benchmark`: generate ``--batch-size`` copies of one prompt together and measure the run:
aggregate and per-stream tokens per second, time to first token, and how busy the CPU threads were."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apr.engine import Engine, LookupConfig, LookupStats, SamplingParams


@dataclass(frozen=True)
class StreamResult:
    """One copy's reply and its own pace."""

    text: str
    completion_tokens: int
    finish_reason: str
    ttft_s: float
    tok_s: float  # its completion tokens over the wall time from the start to its last token
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class BatchBenchmark:
    """What one batched run measured (see docs/engine.md#apr-run---benchmark)."""

    batch_size: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    aggregate_tok_s: float
    per_stream_tok_s: list[float]
    cpu_seconds: float
    threads: int
    # Process CPU time over (wall time x torch threads): 100 means every thread computed the whole run.
    cpu_utilisation_pct: float
    # psutil's system-wide figure over the same interval (other processes included).
    system_cpu_pct: float
    device: str
    streams: list[StreamResult]
    # Lookup decoding over all streams (LookupStats.to_dict of the sums), None when it was off.
    lookup: dict[str, float | int] | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["streams"] = [{k: v for k, v in s.items() if k not in ("text", "token_ids")} for s in doc["streams"]]
        if self.lookup is None:
            del doc["lookup"]
        return doc

    def summary_line(self) -> str:
        streams = ", ".join(f"{v:.1f}" for v in self.per_stream_tok_s)
        return (
            f"batch {self.batch_size} on {self.device}: prompt {self.prompt_tokens} tok, ttft "
            f"{min(s.ttft_s for s in self.streams):.3f} s · {self.completion_tokens} tok in {self.wall_s:.2f} s = "
            f"{self.aggregate_tok_s:.1f} tok/s aggregate; per stream {streams} tok/s; "
            f"CPU {self.cpu_utilisation_pct:.0f}% of {self.threads} thread(s) "
            f"(system {self.system_cpu_pct:.0f}%)"
            + (
                f"; lookup {100 * self.lookup['acceptance_rate']:.0f}% of drafts accepted, "
                f"{self.lookup['tokens_per_step']:.2f} tokens per forward pass"
                if self.lookup is not None
                else ""
            )
        )


def run_batch(
    engine: Engine,
    prompt_ids: list[int],
    params: SamplingParams,
    batch_size: int,
    lookup: LookupConfig | None = None,
) -> BatchBenchmark:
    """Decode ``batch_size`` copies of ``prompt_ids`` in one continuous batch (Engine.new_batch)."""
    import psutil
    import torch

    decoder = engine.new_batch(batch_size, lookup=lookup)
    looked: list[LookupStats] = []
    names = [f"copy-{i}" for i in range(batch_size)]
    for name in names:
        decoder.add(name, list(prompt_ids), params)
    process = psutil.Process()
    psutil.cpu_percent(interval=None)  # starts psutil's system-wide interval
    cpu_before = process.cpu_times()
    start = time.perf_counter()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    texts: dict[str, list[str]] = {name: [] for name in names}
    counts = dict.fromkeys(names, 0)
    tokens: dict[str, list[int]] = {name: [] for name in names}
    finish: dict[str, str] = {}
    while decoder.active:
        events = decoder.step()
        now = time.perf_counter()
        for event in events:
            first.setdefault(event.request_id, now - start)
            last[event.request_id] = now - start
            counts[event.request_id] += 1
            tokens[event.request_id].append(event.token_id)
            texts[event.request_id].append(event.text)
            if event.finish_reason:
                finish[event.request_id] = event.finish_reason
            if event.lookup is not None:
                looked.append(event.lookup)
    wall = time.perf_counter() - start
    cpu_after = process.cpu_times()
    system_pct = psutil.cpu_percent(interval=None)
    cpu_seconds = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    threads = torch.get_num_threads() if engine.device.type == "cpu" else 1
    streams = [
        StreamResult(
            "".join(texts[n]),
            counts[n],
            finish.get(n, "length"),
            first.get(n, wall),
            counts[n] / last[n] if last.get(n) else 0.0,
            tuple(tokens[n]),
        )
        for n in names
    ]
    total = sum(counts.values())
    return BatchBenchmark(
        batch_size=batch_size,
        prompt_tokens=len(prompt_ids),
        completion_tokens=total,
        wall_s=wall,
        aggregate_tok_s=total / wall if wall > 0 else 0.0,
        per_stream_tok_s=[s.tok_s for s in streams],
        cpu_seconds=cpu_seconds,
        threads=threads,
        cpu_utilisation_pct=100.0 * cpu_seconds / (wall * threads) if wall > 0 else 0.0,
        system_cpu_pct=system_pct,
        device=str(engine.device),
        streams=streams,
        lookup=_summed(looked) if lookup is not None else None,
    )


def _summed(stats: list[LookupStats]) -> dict[str, float | int]:
    from apr.engine import LookupStats

    total = LookupStats(
        stats[0].draft_tokens if stats else 0,
        sum(s.steps for s in stats),
        sum(s.drafted for s in stats),
        sum(s.accepted for s in stats),
        # Each stream's first token comes from its prefill, not a step: tokens_per_step counts the rest.
        sum(s.generated for s in stats) - len(stats) + 1,
    )
    return total.to_dict()
