"""Speed measurement of a loaded engine: prefill and decode tok/s, TTFT, memory and achieved bandwidth."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from apr.cpu import cpu_model
from apr.engine.api import Engine
from apr.engine.kv_cache import capacity_for
from apr.engine.loader import LINEARS

FILLER = "The quick brown fox jumps over the lazy dog while the compiler checks every branch of the code. "


@dataclass(frozen=True)
class BenchPlan:
    """Warmup repetitions, then timed ones until both ``min_reps`` and ``min_seconds`` are reached."""

    prompt_tokens: int = 128
    decode_tokens: int = 64
    min_reps: int = 5
    min_seconds: float = 10.0
    warmup: int = 1
    batch: int = 1  # above 1: also the aggregate decode rate of this many sequences decoded together


@dataclass
class BenchReport:
    engine: dict[str, Any]
    plan: BenchPlan
    load_s: float
    ttft_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    bytes_per_token: int = 0
    batch_decode_s: list[float] = field(default_factory=list)

    def _stats(self) -> dict[str, Any]:
        p, n = self.plan.prompt_tokens, self.plan.decode_tokens - 1
        ttft = summary(self.ttft_s)
        decode = summary(self.decode_s)
        # Throughput "p90" is the rate at the 90th-percentile (slow) repetition time.
        stats = {
            "ttft_s": ttft,
            "prefill_tok_s": {"median": p / ttft["median"], "p90": p / ttft["p90"]},
            "decode_tok_s": {"median": n / decode["median"], "p90": n / decode["p90"]},
        }
        if self.batch_decode_s:
            batch = summary(self.batch_decode_s)
            b = self.plan.batch
            stats["batch_decode_tok_s"] = {"median": b * n / batch["median"], "p90": b * n / batch["p90"]}
        return stats

    def to_json(self) -> dict[str, Any]:
        stats = self._stats()
        decode_rate = stats["decode_tok_s"]["median"]
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        doc = {
            "bench": "apr-engine",
            "engine": self.engine,
            "prompt_tokens": self.plan.prompt_tokens,
            "decode_tokens": self.plan.decode_tokens,
            "batch": self.plan.batch,
            "warmup": self.plan.warmup,
            "reps": len(self.ttft_s),
            "load_s": round(self.load_s, 3),
            **{k: {s: round(v, 4) for s, v in d.items()} for k, d in stats.items()},
            "peak_rss_mb": round(peak_rss_mb, 1),
            "bytes_per_token": self.bytes_per_token,
            "achieved_gb_s": round(self.bytes_per_token * decode_rate / 1e9, 2),
            "torch": torch.__version__,
            "host": {
                "machine": platform.machine(),
                "processor": platform.processor(),
                "cpu": cpu_model(),
                "threads": torch.get_num_threads(),
            },
        }
        if torch.cuda.is_available():
            doc["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            doc["host"]["gpu"] = torch.cuda.get_device_name()
        return doc

    def summary_lines(self) -> list[str]:
        s = self._stats()
        doc = self.to_json()
        return [
            f"model     {self.engine['path']} ({self.engine['architecture']}, {self.engine['format']}) on "
            f"{self.engine['device']}, {doc['host']['threads']} threads, compile {self.engine['compile']}",
            f"reps      {doc['reps']} after {self.plan.warmup} warmup; prompt {self.plan.prompt_tokens} tok, "
            f"decode {self.plan.decode_tokens} tok",
            f"prefill   {s['prefill_tok_s']['median']:.1f} tok/s median, {s['prefill_tok_s']['p90']:.1f} p90",
            f"ttft      {s['ttft_s']['median'] * 1000:.1f} ms median, {s['ttft_s']['p90'] * 1000:.1f} ms p90",
            f"decode    {s['decode_tok_s']['median']:.2f} tok/s median, {s['decode_tok_s']['p90']:.2f} p90",
            *(
                [
                    f"batch {self.plan.batch:<3} {s['batch_decode_tok_s']['median']:.2f} tok/s aggregate median, "
                    f"{s['batch_decode_tok_s']['p90']:.2f} p90"
                ]
                if "batch_decode_tok_s" in s
                else []
            ),
            f"memory    peak RSS {doc['peak_rss_mb']:.0f} MB; {self.bytes_per_token / 1e9:.3f} GB read per token "
            f"-> {doc['achieved_gb_s']:.1f} GB/s",
        ]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": statistics.median(ordered), "p90": p90}


def bench_prompt(engine: Engine, length: int) -> list[int]:
    """A deterministic natural-text prompt of exactly ``length`` ids."""
    ids: list[int] = []
    while len(ids) < length:
        ids += engine.tokenizer.encode(FILLER, add_special_tokens=False)
    return ids[:length]


def weight_bytes_per_token(engine: Engine) -> int:
    """Bytes of weights a decode step reads: every linear layer's decode kernel (the embedding is only gathered)."""
    model = engine.transformer
    layers = [getattr(block, key) for block in model.blocks for key in LINEARS] + [model.lm_head]
    total = 0
    for layer in layers:
        decode_layer = getattr(layer, "packed_layer", layer)
        total += sum(t.numel() * t.element_size() for t in (*decode_layer.parameters(), *decode_layer.buffers()))
    return total


def run_once(engine: Engine, prompt: list[int], decode_tokens: int) -> tuple[float, float]:
    """(time to first token, time of the remaining decode steps) of one forced-length greedy generation."""
    model = engine.transformer
    step = engine.decode_step
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        cache = engine.new_cache(capacity_for(len(prompt) + decode_tokens, model.max_positions))
        start = time.perf_counter()
        token = model.head(model.prefill(torch.tensor(prompt, device=engine.device), cache)[-1:]).argmax(-1)
        sync()
        first = time.perf_counter()
        for _ in range(decode_tokens - 1):
            token = step(token, [cache]).argmax(-1)
        sync()
        end = time.perf_counter()
    return first - start, end - first


def run_batch_once(engine: Engine, prompt: list[int], decode_tokens: int, batch: int) -> float:
    """Seconds for ``decode_tokens - 1`` forced greedy steps of ``batch`` copies of ``prompt`` decoded together
    (after their prefills, which are not timed): aggregate decode tok/s is ``batch * (decode_tokens - 1) / s``."""
    model = engine.transformer
    step = engine.decode_step
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    capacity = capacity_for(len(prompt) + decode_tokens, model.max_positions)
    with torch.inference_mode():
        caches = [engine.new_cache(capacity) for _ in range(batch)]
        ids = torch.tensor(prompt, device=engine.device)
        tokens = torch.cat([model.head(model.prefill(ids, cache)[-1:]).argmax(-1) for cache in caches])
        sync()
        start = time.perf_counter()
        for _ in range(decode_tokens - 1):
            tokens = step(tokens, caches).argmax(-1)
        sync()
        return time.perf_counter() - start


def run_bench(
    engine: Engine, plan: BenchPlan, *, load_s: float, progress: Callable[[str], None] = lambda line: None
) -> BenchReport:
    if plan.decode_tokens < 2 or plan.prompt_tokens < 1:
        raise ValueError("bench needs at least 1 prompt token and 2 decode tokens")
    if plan.batch < 1:
        raise ValueError(f"bench batch must be >= 1, got {plan.batch}")
    report = BenchReport(engine.describe(), plan, load_s, bytes_per_token=weight_bytes_per_token(engine))
    prompt = bench_prompt(engine, plan.prompt_tokens)
    for i in range(plan.warmup):
        ttft, decode = run_once(engine, prompt, plan.decode_tokens)
        progress(f"warmup {i + 1}: ttft {ttft:.3f} s, decode {(plan.decode_tokens - 1) / decode:.2f} tok/s")
    started = time.perf_counter()
    while len(report.ttft_s) < plan.min_reps or time.perf_counter() - started < plan.min_seconds:
        ttft, decode = run_once(engine, prompt, plan.decode_tokens)
        report.ttft_s.append(ttft)
        report.decode_s.append(decode)
        progress(f"rep {len(report.ttft_s)}: ttft {ttft:.3f} s, decode {(plan.decode_tokens - 1) / decode:.2f} tok/s")
    if plan.batch > 1:
        steps = plan.batch * (plan.decode_tokens - 1)
        for i in range(plan.warmup):
            seconds = run_batch_once(engine, prompt, plan.decode_tokens, plan.batch)
            progress(f"batch {plan.batch} warmup {i + 1}: {steps / seconds:.2f} tok/s aggregate")
        started = time.perf_counter()
        while len(report.batch_decode_s) < plan.min_reps or time.perf_counter() - started < plan.min_seconds:
            report.batch_decode_s.append(run_batch_once(engine, prompt, plan.decode_tokens, plan.batch))
            progress(
                f"batch {plan.batch} rep {len(report.batch_decode_s)}: "
                f"{steps / report.batch_decode_s[-1]:.2f} tok/s aggregate"
            )
    return report
