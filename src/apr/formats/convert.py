"""Convert a checkpoint between GGUF, SafeTensors and APR, and account for every tensor in a JSON report."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from apr.errors import FormatError
from apr.formats.ggml import type_name
from apr.formats.model import CanonicalModel
from apr.formats.tensor_encode import DtypeChoice, row_chunks
from apr.formats.tensor_source import StoredTensor

TargetFormat = Literal["gguf", "safetensors", "apr"]
TARGETS: tuple[str, ...] = ("gguf", "safetensors", "apr")
Progress = Callable[[str, int], None]


@dataclass
class TensorReport:
    name: str
    shape: list[int]
    dtype_before: str
    dtype_after: str
    sha256_before: str
    sha256_after: str
    bytes_identical: bool
    max_abs_diff: float


@dataclass
class ConversionReport:
    source: str
    source_format: str
    output: str
    output_format: str
    dtype: str
    seconds: float
    source_bytes: int
    output_bytes: int
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((t.max_abs_diff for t in self.tensors), default=0.0)

    def to_json(self) -> dict:
        data = asdict(self)
        data["summary"] = {
            "tensor_count": len(self.tensors),
            "bytes_identical": sum(t.bytes_identical for t in self.tensors),
            "max_abs_diff": self.max_abs_diff,
            "mb_per_s": round(self.output_bytes / 1e6 / self.seconds, 1) if self.seconds else None,
        }
        return data


def default_dtype(target: str) -> DtypeChoice:
    return "f32" if target == "safetensors" else "keep"


def report_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".convert-report.json")


def _sha256(source: StoredTensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(source.raw()).data.cast("B")).hexdigest()


def _max_abs_diff(a: StoredTensor, b: StoredTensor) -> float:
    worst = 0.0
    for start, stop in row_chunks(a):
        x, y = a.dequantize_rows(start, stop), b.dequantize_rows(start, stop)
        if x.shape != y.shape:
            raise FormatError(f"{a.info.name}: shape changed in conversion ({x.shape} -> {y.shape})")
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        nan_mismatch = np.isnan(x) != np.isnan(y)
        if nan_mismatch.any():
            return float("inf")
        worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
    return worst


def compare_models(before: CanonicalModel, after: CanonicalModel) -> list[TensorReport]:
    """Per tensor: stored bytes hashed on both sides, and max |Δ| of the HF-convention values."""
    missing = sorted(set(before.tensors) ^ set(after.tensors))
    if missing:
        raise FormatError(f"{after.source_path}: tensor set differs from the source (e.g. {missing[0]!r})")
    rows = []
    for name, src in before.tensors.items():
        dst = after.tensors[name]
        sha_before, sha_after = _sha256(src), _sha256(dst)
        same = (
            sha_before == sha_after
            and src.info.ggml_type == dst.info.ggml_type
            and src.info.value_offset == dst.info.value_offset
        )
        # Identical bytes, type and offset decode to identical values; no need to dequantize.
        diff = 0.0 if same else _max_abs_diff(src, dst)
        src.release()
        dst.release()
        rows.append(
            TensorReport(
                name,
                list(src.info.shape),
                type_name(src.info.ggml_type),
                type_name(dst.info.ggml_type),
                sha_before,
                sha_after,
                sha_before == sha_after,
                diff,
            )
        )
    return rows


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def convert_model(
    model: CanonicalModel,
    to: TargetFormat,
    out: Path,
    *,
    dtype: DtypeChoice | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``model`` as ``to`` at ``out`` (atomically)."""
    if to not in TARGETS:
        raise FormatError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    chosen = dtype or default_dtype(to)
    try:
        if to == "gguf":
            from apr.formats.gguf_write import write_gguf

            return write_gguf(model, out, dtype=chosen, progress=progress)
        if to == "apr":
            from apr.formats.apr_write import write_apr

            return write_apr(model, out, dtype=chosen, progress=progress)
        from apr.formats.safetensors_write import write_safetensors_dir

        return write_safetensors_dir(model, out, dtype=chosen, progress=progress)
    except ValueError as err:
        raise FormatError(f"{out}: cannot write {to}: {err}") from err


def convert(
    src: Path | CanonicalModel,
    to: TargetFormat,
    out: Path,
    *,
    dtype: DtypeChoice | None = None,
    progress: Progress | None = None,
    report: bool = True,
) -> ConversionReport:
    """Load ``src`` (or take an already loaded model), write ``out``, re-read it strictly, and write
    the JSON report next to it."""
    from apr.formats.load import load_model

    model = src if isinstance(src, CanonicalModel) else load_model(Path(src))
    src, out = Path(model.source_path), Path(out)
    if out.resolve() == src.resolve():
        raise FormatError(f"{out}: output would overwrite the source; choose another -o path")
    started = time.perf_counter()
    convert_model(model, to, out, dtype=dtype, progress=progress)
    seconds = time.perf_counter() - started
    result = ConversionReport(
        source=str(src),
        source_format=model.source_format,
        output=str(out),
        output_format=to,
        dtype=dtype or default_dtype(to),
        seconds=round(seconds, 3),
        source_bytes=_size(src),
        output_bytes=_size(out),
    )
    if report:
        result.tensors = compare_models(model, load_model(out))
        from apr.formats.atomic import atomic_path

        with atomic_path(report_path_for(out)) as temp:
            temp.write_text(json.dumps(result.to_json(), indent=1))
    return result
