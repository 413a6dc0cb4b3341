"""`apr qa MODEL`: the stages of a certification without a cell matrix — integrity, tensor contract,
plausibility, structure, load, golden output, attention, tokenizer/format/reference parity, throughput and GPU
speedup — composed from ``apr.qa.stages``.

The model is converted into the other formats (cached in ``$APR_HOME/artifacts``, shared with `apr certify`)
so that format parity compares all three; every check is written to an evidence file. With a playbook, its
formats, backends and gate thresholds apply, and the records are those `apr certify` writes for the same gates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from apr.qa import stages
from apr.qa.axes import Backend, Format, Tier
from apr.qa.calibration import model_bytes
from apr.qa.evidence import EvidenceRecord
from apr.qa.gates.catalog import GateId
from apr.qa.gates.thresholds import GateSet
from apr.qa.measure import DECODE_TOKENS
from apr.qa.playbook import Playbook
from apr.qa.progress import RunProgress

# Without cells there is nothing to rerun: determinism is a gate over the matrix, which `apr qa` does not run.
NEEDS_CELLS = frozenset({GateId.DETERMINISM})


@dataclass(frozen=True)
class DeepOptions:
    model: Path
    ref: str
    evidence: Path
    gates: GateSet
    formats: tuple[Format, ...] = (Format.GGUF, Format.SAFETENSORS, Format.APR)
    backends: tuple[Backend, ...] = (Backend.CPU, Backend.GPU)
    skip: frozenset[GateId] = frozenset()
    max_tokens: int = DECODE_TOKENS  # tokens decoded per `apr bench` repetition of the throughput gate
    chat: bool = True
    playbook: Playbook | None = None


def default_gates(tier: Tier = Tier.MVP) -> GateSet:
    """Every gate, with the thresholds of the tier's template (the same numbers `apr certify` uses)."""
    from apr.qa.certify import TEMPLATES
    from apr.qa.playbook import load_template

    listed = load_template(TEMPLATES / f"{tier.value}.yaml").gates
    data = listed.model_dump(mode="json", by_alias=True)
    return GateSet.model_validate({gate.value: data.get(gate.value) or {} for gate in GateId})


def without(gates: GateSet, skip: frozenset[GateId]) -> GateSet:
    """``gates`` with the ``skip`` gates (and those that need cells) left out."""
    data = gates.model_dump(mode="json", by_alias=True)
    for gate in skip | NEEDS_CELLS:
        data[gate.value] = None
    return GateSet.model_validate({k: v for k, v in data.items() if v is not None})


def options_from_playbook(
    playbook: Playbook, model: Path, evidence: Path, skip: frozenset[GateId], max_tokens: int = DECODE_TOKENS
) -> DeepOptions:
    """The playbook's model, formats, backends and gate thresholds, without its matrix."""
    return DeepOptions(
        model=model,
        ref=playbook.model.ref,
        evidence=evidence,
        gates=playbook.gates,
        formats=tuple(playbook.matrix.formats),
        backends=tuple(playbook.matrix.backends),
        skip=skip,
        max_tokens=max_tokens,
        chat=playbook.model.chat_template,
        playbook=playbook,
    )


def run_deep(options: DeepOptions, *, progress: bool = True) -> tuple[list[EvidenceRecord], float]:
    """Run every enabled gate on one model; returns the records (also written to ``options.evidence``)."""
    import sys

    started = time.monotonic()
    checkpoint = stages.acquire(options.ref, options.model)
    if progress:
        print(
            f"apr qa: {options.model} — converting to {', '.join(f.value for f in options.formats)} for parity",
            file=sys.stderr,
            flush=True,
        )
    artifacts = stages.convert(checkpoint, options.formats)
    gates = without(options.gates, options.skip)
    cuda = stages.cuda_available()
    with RunProgress(progress) as shown:
        # The throughput floor is judged against what this machine delivers (apr.qa.calibration).
        calibration = stages.calibrate(progress=shown) if gates.throughput is not None else None
        if options.playbook is not None:
            subject = stages.subject_of(options.playbook, artifacts, cuda=cuda, calibration=calibration)
            subject = replace(subject, gates=gates, cells=(), decode_tokens=options.max_tokens)
        else:
            subject = stages.Subject(
                ref=options.ref,
                artifacts=artifacts,
                gates=gates,
                backends=options.backends,
                formats=options.formats,
                chat=options.chat,
                expected_sha256=stages.expected_sha256(options.ref),
                cuda=cuda,
                decode_tokens=options.max_tokens,
                calibration=calibration,
                model_bytes={fmt: model_bytes(path) for fmt, path in artifacts.paths.items()},
            )
        evidence = stages.gate(subject, options.evidence, progress=shown)
    return list(evidence.records), time.monotonic() - started
