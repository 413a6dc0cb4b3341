"""The checkpoint's weights and tokenizer against the committed fingerprint of the published model.

G0's sha256 proves a file is the published one byte for byte; it says nothing about a converted or
re-quantized artifact, and a planted defect that leaves every reply intact (Gemma 3 normalizes each FFN output,
so ffn_down x 4 is all but invisible) passes every output gate. ``reference-weights`` holds every tensor to the
fingerprint of the published checkpoint (``apr.qa.gates.fingerprint``) with tolerances a legitimate
re-encoding passes: Q4_K_M -> Q8_0 moves a value by under 1 % of the tensor's RMS, F16/F32 by less.
``reference-tokenizer`` (CONTRACT-INVARIANTS) holds the token list and the ids of fixed texts to the published
tokenizer's.
"""

from __future__ import annotations

import numpy as np

from apr.formats.model import CanonicalModel
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.gates.fingerprint import (
    ModelFingerprint,
    TensorFingerprint,
    load_fingerprint,
    tensor_fingerprint,
    tokenizer_fingerprint,
)
from apr.qa.gates.reference_config import find_reference
from apr.qa.recording import Check, verdict

SCALE_RTOL = 0.05  # RMS and mean |w| within 5 % (re-quantization moves them by well under 1 %)
PROBE_RTOL = 0.10  # ||probes - reference|| / ||reference|| (Q8_0: ~0.01; a scale noise of exp(U(-.5,.5)): ~0.3)
ZERO = 1e-12  # a reference statistic this small is compared absolutely
LISTED = 3


def _relative(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), ZERO)


def tensor_problem(ours: TensorFingerprint, reference: TensorFingerprint) -> str | None:
    """Why one tensor is not the reference's, or None."""
    if ours.shape != reference.shape:
        return f"shape {list(ours.shape)} != {list(reference.shape)}"
    if not ours.finite:
        return "NaN/Inf values"
    for label, a, b in (("rms", ours.rms, reference.rms), ("mean|w|", ours.mean_abs, reference.mean_abs)):
        if _relative(a, b) > SCALE_RTOL and abs(a - b) > ZERO:
            return f"{label} {a:.4g} != {b:.4g} (x{a / b:.3g})" if b else f"{label} {a:.4g} != 0"
    probes, expected = np.asarray(ours.probes), np.asarray(reference.probes)
    norm = float(np.linalg.norm(expected))
    residual = float(np.linalg.norm(probes - expected))
    if residual > PROBE_RTOL * max(norm, ZERO) and residual > ZERO:
        return f"values at the probe positions differ by {residual / max(norm, ZERO):.2f} of their norm"
    return None


def weight_problems(model: CanonicalModel, reference: ModelFingerprint) -> tuple[list[str], int]:
    """'tensor: why' for every tensor that is not the reference's (missing and unexpected ones too); tensors compared."""
    problems: list[str] = []
    compared = 0
    for name, expected in reference.tensors.items():
        source = model.tensors.get(name)
        if source is None:
            problems.append(f"{name}: missing")
            continue
        compared += 1
        why = tensor_problem(tensor_fingerprint(source), expected)
        if why:
            problems.append(f"{name}: {why}")
    problems += [f"{name}: not in the published model" for name in model.tensors if name not in reference.tensors]
    return problems, compared


def _fingerprint_of(model: CanonicalModel, ref: str | None) -> ModelFingerprint | None:
    reference = find_reference(ref, model)
    if reference is None or reference.fingerprint is None:
        return None
    return load_fingerprint(reference.fingerprint)


def _listed(items: list[str]) -> str:
    return "; ".join(items[:LISTED]) + (f" (+{len(items) - LISTED} more)" if len(items) > LISTED else "")


def reference_weights_check(model: CanonicalModel, fmt: Format, ref: str | None) -> Check | None:
    """G0: every tensor against the published checkpoint's fingerprint; None (not planned) for unknown models."""
    fingerprint = _fingerprint_of(model, ref)
    return None if fingerprint is None else weights_check(model, fmt, fingerprint)


def weights_check(model: CanonicalModel, fmt: Format, fingerprint: ModelFingerprint) -> Check:
    problems, compared = weight_problems(model, fingerprint)
    return verdict(
        GateId.G0_INTEGRITY,
        f"reference-weights:{fmt}",
        not problems,
        f"all {compared} tensors match the fingerprint of {fingerprint.source} (shape, RMS, mean |w|, probe values)"
        if not problems
        else f"{len(problems)} of {len(fingerprint.tensors)} tensors differ from {fingerprint.source}: "
        + _listed(problems),
        max(compared, 1),
        format=fmt,
        metrics={"reference": fingerprint.repo, "tensors": compared, "differing": len(problems)},
    )


def tokenizer_problems(model: CanonicalModel, reference: ModelFingerprint) -> list[str]:
    expected = reference.tokenizer
    ours = tokenizer_fingerprint(model)
    if expected is None:
        return []
    if ours is None:
        return ["no tokenizer"]
    problems = []
    if ours.tokens != expected.tokens:
        problems.append(f"{ours.tokens} tokens != published {expected.tokens}")
    elif ours.tokens_sha256 != expected.tokens_sha256:
        problems.append("token list differs from the published one (same count, other texts or order)")
    for text, ids in expected.texts.items():
        got = ours.texts.get(text, [])
        if got != ids:
            problems.append(f"{text[:24]!r} encodes to {got[:8]}… not {ids[:8]}…")
    return problems


def reference_tokenizer_check(model: CanonicalModel, fmt: Format, ref: str | None) -> Check | None:
    """CONTRACT-INVARIANTS: token list digest and the ids of fixed texts against the published tokenizer."""
    fingerprint = _fingerprint_of(model, ref)
    if fingerprint is None or fingerprint.tokenizer is None:
        return None
    return tokenizer_check(model, fmt, fingerprint)


def tokenizer_check(model: CanonicalModel, fmt: Format, fingerprint: ModelFingerprint) -> Check:
    problems = tokenizer_problems(model, fingerprint)
    texts = len(fingerprint.tokenizer.texts) if fingerprint.tokenizer else 0
    tokens = fingerprint.tokenizer.tokens if fingerprint.tokenizer else 0
    return verdict(
        GateId.CONTRACT_INVARIANTS,
        "reference-tokenizer",
        not problems,
        f"{tokens} tokens and the ids of {texts} fixed texts match {fingerprint.repo}"
        if not problems
        else f"tokenizer differs from {fingerprint.repo}: " + _listed(problems),
        1 + texts,
        format=fmt,
        metrics={"reference": fingerprint.repo, "differences": len(problems)},
    )
