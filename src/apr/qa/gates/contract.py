"""Tensor contract: tensors match the config (names, shapes, bytes, dtypes), hold finite non-zero values, and a tokenizer is present."""

from __future__ import annotations

import numpy as np

from apr.formats.model import CanonicalModel
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.recording import Check, verdict

CONTRACT = GateId.CONTRACT_INVARIANTS
# Where each quantized block keeps its f16 scale fields (byte offsets inside the block, GGML layouts).
# A quantized value is scale × small integer, so a block is finite iff these are, and all zero iff d is.
F16_SCALE_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}
LISTED = 3  # how many offending tensors a reason names


def _names(items: list[str]) -> str:
    more = f" (+{len(items) - LISTED} more)" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def shapes_check(model: CanonicalModel, fmt: Format) -> Check:
    from apr.formats.names import expected_hf_names
    from apr.formats.shapes import expected_shape

    cfg = model.config
    expected = expected_hf_names(cfg.architecture, cfg.num_layers, tied=cfg.tie_word_embeddings)
    missing = [name for name in expected if name not in model.tensors]
    unexpected = [name for name in model.tensors if name not in set(expected)]
    wrong = []
    for name, source in model.tensors.items():
        if name in unexpected:
            continue
        want = expected_shape(cfg, name)
        if tuple(source.info.shape) != want:
            wrong.append(f"{name} {list(source.info.shape)} != {list(want)}")
    problems = (
        ([f"missing {_names(missing)}"] if missing else [])
        + ([f"unexpected {_names(unexpected)}"] if unexpected else [])
        + ([f"shape {_names(wrong)}"] if wrong else [])
    )
    ok = not problems
    reason = (
        f"all {len(expected)} tensors the config implies are present with their shapes"
        if ok
        else "tensors disagree with the config: " + "; ".join(problems)
    )
    return verdict(
        CONTRACT,
        "shapes",
        ok,
        reason,
        len(model.tensors),
        format=fmt,
        metrics={
            "tensors": len(model.tensors),
            "missing": len(missing),
            "unexpected": len(unexpected),
            "wrong_shape": len(wrong),
        },
    )


def dtypes_and_bytes_checks(model: CanonicalModel, fmt: Format) -> list[Check]:
    from apr.formats.ggml import FLOAT_TYPES, GGML_TYPES, tensor_nbytes, type_name

    unknown, quantized_1d, bad_bytes = [], [], []
    for name, source in model.tensors.items():
        info = source.info
        if info.ggml_type not in GGML_TYPES:
            unknown.append(f"{name} ({type_name(info.ggml_type)})")
            continue
        if len(info.shape) == 1 and info.ggml_type not in FLOAT_TYPES:
            quantized_1d.append(f"{name} ({type_name(info.ggml_type)})")
        want = tensor_nbytes(info.ggml_type, info.shape)
        if info.nbytes != want:
            bad_bytes.append(f"{name} {info.nbytes} B != {want} B")
    n = len(model.tensors)
    dtype_ok = not unknown and not quantized_1d
    dtype_reason = (
        "every tensor has a known GGML type; norms and biases are float"
        if dtype_ok
        else "inconsistent dtypes: "
        + "; ".join(
            ([f"unknown type {_names(unknown)}"] if unknown else [])
            + ([f"quantized 1-D {_names(quantized_1d)}"] if quantized_1d else [])
        )
    )
    bytes_reason = (
        f"stored byte counts of all {n} tensors match their shape and type"
        if not bad_bytes
        else f"byte sizes disagree with shapes: {_names(bad_bytes)}"
    )
    return [
        verdict(
            CONTRACT,
            "dtypes",
            dtype_ok,
            dtype_reason,
            n,
            format=fmt,
            metrics={"unknown_types": len(unknown), "quantized_1d": len(quantized_1d)},
        ),
        verdict(
            CONTRACT, "byte-sizes", not bad_bytes, bytes_reason, n, format=fmt, metrics={"mismatched": len(bad_bytes)}
        ),
    ]


def _scan(source) -> tuple[bool, bool]:
    """(all finite, all zero) of one tensor, from block scales when quantized (no dequantization needed)."""
    from apr.formats.ggml import FLOAT_TYPES, ggml_type

    info = source.info
    if info.ggml_type in FLOAT_TYPES:
        values = source.dequantize().numpy()
        return bool(np.isfinite(values).all()), not bool(np.any(values))
    kind = ggml_type(info.ggml_type)
    blocks = np.ascontiguousarray(source.raw()).reshape(-1, kind.block_bytes)
    scales = np.concatenate(
        [blocks[:, off : off + 2].copy().view(np.float16) for off in F16_SCALE_FIELDS[kind.name]], axis=1
    )
    return bool(np.isfinite(scales).all()), not bool(np.any(scales[:, 0]))  # column 0 is the block scale d


def values_check(model: CanonicalModel, fmt: Format) -> Check:
    """No NaN/Inf anywhere; no weight matrix entirely zero (norm weights are judged by the structure gate)."""
    non_finite, zero, unreadable = [], [], []
    for name, source in model.tensors.items():
        try:
            finite, all_zero = _scan(source)
        except ValueError as err:  # stored bytes do not fit the declared shape and type
            unreadable.append(f"{name} ({err})")
            continue
        if not finite:
            non_finite.append(name)
        if all_zero and len(source.info.shape) > 1:
            zero.append(name)
    ok = not non_finite and not zero and not unreadable
    reason = (
        f"all {len(model.tensors)} tensors finite; no weight matrix all zero"
        if ok
        else "; ".join(
            ([f"NaN/Inf in {_names(non_finite)}"] if non_finite else [])
            + ([f"all-zero weights in {_names(zero)}"] if zero else [])
            + ([f"unreadable values in {_names(unreadable)}"] if unreadable else [])
        )
    )
    return verdict(
        CONTRACT,
        "finite-values",
        ok,
        reason,
        len(model.tensors),
        format=fmt,
        metrics={"non_finite": len(non_finite), "all_zero": len(zero), "unreadable": len(unreadable)},
    )


def tokenizer_check(model: CanonicalModel, fmt: Format) -> Check:
    tok = model.tokenizer
    sample = "Hello, world! def f(x): return x"
    if tok is None or tok.vocab_size <= 0:
        return verdict(CONTRACT, "tokenizer", False, "no tokenizer in the artifact", 1, format=fmt)
    ids = tok.encode(sample)
    problems = []
    if not ids:
        problems.append("encodes a sample sentence to no tokens")
    if tok.vocab_size > model.config.vocab_size:
        problems.append(
            f"tokenizer has {tok.vocab_size} tokens, more than the {model.config.vocab_size} embedding rows"
        )
    if ids and max(ids) >= model.config.vocab_size:
        problems.append(f"token id {max(ids)} outside the embedding")
    if not (tok.eos_token_ids or model.config.eos_token_ids):
        problems.append("no EOS token id")
    ok = not problems
    reason = (
        f"tokenizer present: {tok.vocab_size} tokens, EOS {list(tok.eos_token_ids or model.config.eos_token_ids)}"
        if ok
        else "tokenizer unusable: " + "; ".join(problems)
    )
    return verdict(
        CONTRACT,
        "tokenizer",
        ok,
        reason,
        1 + len(ids),
        format=fmt,
        metrics={"vocab_size": tok.vocab_size, "sample_tokens": len(ids)},
    )


def contract_checks(model: CanonicalModel, fmt: Format) -> list[Check]:
    """Every tensor-contract invariant of one loaded artifact."""
    return [
        shapes_check(model, fmt),
        *dtypes_and_bytes_checks(model, fmt),
        values_check(model, fmt),
        tokenizer_check(model, fmt),
    ]
