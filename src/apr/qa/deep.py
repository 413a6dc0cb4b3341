"""`apr qa MODEL`: the deep single-model gates (no cell matrix) — integrity, tensor contract, plausibility,
structure, load, golden output, attention, tokenizer/format/reference parity, throughput and GPU speedup.

The model is converted into the other formats (cached in ``$APR_HOME/artifacts``, shared with `apr certify`)
so that format parity compares all three; every check is written to an evidence file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from apr.qa.axes import Backend, Format, Tier
from apr.qa.evidence import EvidenceRecord, EvidenceWriter, read_evidence
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import GateSet
from apr.qa.recording import Recorder, Timer, falsified, skipped, stamp_all, verdict

THROUGHPUT_PROMPT = "Write a hello world program in Python:"


@dataclass(frozen=True)
class DeepOptions:
    model: Path
    ref: str
    evidence: Path
    gates: GateSet
    formats: tuple[Format, ...] = (Format.GGUF, Format.SAFETENSORS, Format.APR)
    skip: frozenset[GateId] = frozenset()
    max_tokens: int = 32


def default_gates(tier: Tier = Tier.MVP) -> GateSet:
    """Every gate, with the thresholds of the tier's template (the same numbers `apr certify` uses)."""
    from apr.qa.certify import TEMPLATES
    from apr.qa.playbook import load_template

    listed = load_template(TEMPLATES / f"{tier.value}.yaml").gates
    data = listed.model_dump(mode="json", by_alias=True)
    return GateSet.model_validate({gate.value: data.get(gate.value) or {} for gate in GateId})


def _without(gates: GateSet, skip: frozenset[GateId]) -> GateSet:
    data = gates.model_dump(mode="json", by_alias=True)
    for gate in skip:
        data[gate.value] = None
    return GateSet.model_validate({k: v for k, v in data.items() if v is not None})


def throughput_checks(source: Path, fmt: Format, settings, max_tokens: int, cuda: bool) -> list:
    """Decode speed of the engine as `apr run` builds it (packed weights, compiled decode), after a warmup."""
    from apr.engine import SamplingParams, load_engine
    from apr.qa.gates.golden import prompt_ids

    checks = []
    for backend in (Backend.CPU, Backend.GPU):
        minimum = settings.min_tok_s[backend]
        if backend is Backend.GPU and not cuda:
            checks.append(skipped(GateId.THROUGHPUT, f"decode:{fmt}/{backend}", "no CUDA device on this host",
                                  format=fmt, backend=backend, threshold=minimum, unit="tok/s"))
            continue
        engine = load_engine(source, device=backend.device)
        ids = prompt_ids(engine, THROUGHPUT_PROMPT, chat=False)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=4))  # warmup: compile, caches
        result = engine.generate(ids, params)
        speed = result.timings.decode_tok_s
        if result.completion_tokens < 2 or speed <= 0:
            checks.append(falsified(GateId.THROUGHPUT, f"decode:{fmt}/{backend}",
                                    f"only {result.completion_tokens} token(s) generated: no decode speed to measure",
                                    format=fmt, backend=backend))
            continue
        checks.append(verdict(GateId.THROUGHPUT, f"decode:{fmt}/{backend}", speed >= minimum,
                              f"{speed:.1f} tok/s decoding {result.completion_tokens} tokens (min {minimum})", 1,
                              format=fmt, backend=backend, measured=round(speed, 3), threshold=minimum, unit="tok/s",
                              metrics={"prefill_tok_s": round(result.timings.prefill_tok_s, 2),
                                       "ttft_s": round(result.timings.ttft_s, 4)}))
    return checks


def speedup_check(speeds: dict, minimum: float, cuda: bool):
    if not cuda:
        return skipped(GateId.GPU_SPEEDUP, "gpu/cpu", "no CUDA device on this host: GPU speedup not measured",
                       threshold=minimum, unit="x")
    cpu, gpu = speeds.get(Backend.CPU), speeds.get(Backend.GPU)
    if not cpu or not gpu:
        return skipped(GateId.GPU_SPEEDUP, "gpu/cpu", "a decode speed is missing (see THROUGHPUT)", threshold=minimum,
                       unit="x")
    ratio = gpu / cpu
    return verdict(GateId.GPU_SPEEDUP, "gpu/cpu", ratio >= minimum, f"GPU decodes {ratio:.2f}x faster than CPU "
                   f"(min {minimum}x)", 2, measured=round(ratio, 3), threshold=minimum, unit="x")


def run_deep(options: DeepOptions, *, progress: bool = True) -> tuple[list[EvidenceRecord], float]:
    """Run every enabled gate on one model; returns the records (also appended to ``options.evidence``)."""
    import sys

    import torch

    from apr.hub.digest import sha256_of
    from apr.qa.artifacts import artifacts_dir, prepare_artifacts
    from apr.qa.certify import expected_sha256
    from apr.qa.gates.model_level import ModelGateInputs, ModelGateRun

    started = time.monotonic()
    gates = _without(options.gates, options.skip)
    cuda = bool(torch.cuda.is_available())
    source_sha = sha256_of(options.model, progress=False)
    if progress:
        print(f"apr qa: {options.model} — converting to {', '.join(f.value for f in options.formats)} for parity",
              file=sys.stderr, flush=True)
    artifacts = prepare_artifacts(options.model, source_sha, options.formats, artifacts_dir(source_sha))
    digests = {fmt: source_sha if path == options.model else sha256_of(path, progress=False)
               for fmt, path in artifacts.paths.items()}
    recorder = Recorder(model=options.ref, artifacts=artifacts.paths, sha256=digests, source=artifacts.source)
    options.evidence.unlink(missing_ok=True)
    with EvidenceWriter(options.evidence) as writer:
        def emit(records: list[EvidenceRecord]) -> None:
            for record in records:
                writer.append(record)

        inputs = ModelGateInputs(artifacts=artifacts.paths, digests=digests, source=artifacts.source, gates=gates,
                                 expected_sha256=expected_sha256(options.ref), chat=True, cuda_available=cuda,
                                 backends=(Backend.CPU, Backend.GPU), conversion_failures=artifacts.failures)
        ModelGateRun(inputs, recorder, emit).run()
        speeds = {}
        if gates.throughput is not None or gates.gpu_speedup is not None:
            timer = Timer()
            settings = gates.throughput or default_gates().throughput
            checks = throughput_checks(options.model, artifacts.source, settings, options.max_tokens, cuda)
            speeds = {c.backend: c.measured for c in checks if c.measured is not None}
            if gates.throughput is not None:
                emit(stamp_all(recorder, checks, timer))
        if gates.gpu_speedup is not None:
            timer = Timer()
            emit(stamp_all(recorder, [speedup_check(speeds, gates.gpu_speedup.min_speedup, cuda)], timer))
    return list(read_evidence(options.evidence).records), time.monotonic() - started
