"""The SafeTensors container: strict header parsing and a streaming writer (no whole-model buffering)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from apr.errors import FormatError
from apr.formats.ggml import BF16, F16, F32

DTYPE_TO_GGML = {"F32": F32, "F16": F16, "BF16": BF16}
GGML_TO_DTYPE = {v: k for k, v in DTYPE_TO_GGML.items()}
_ITEM = {"F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER = 100_000_000
MAX_DIMS = 8


@dataclass(frozen=True)
class SafeTensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    nbytes: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate tensor name {key!r}")
        seen[key] = value
    return seen


def parse_safetensors(path: Path) -> tuple[list[SafeTensorEntry], dict[str, str]]:
    """Entries with absolute offsets, and ``__metadata__``; FormatError naming the file on any defect."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated SafeTensors file ({size} bytes); re-download or re-convert it")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > MAX_HEADER or 8 + header_len > size:
            raise FormatError(
                f"{path}: SafeTensors header length {header_len} exceeds the file ({size} bytes); "
                "the file is truncated or not SafeTensors"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError as err:
        raise FormatError(f"{path}: bad SafeTensors header: {err}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: SafeTensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: SafeTensors __metadata__ is not a JSON object; the file is corrupt")
    data_start = 8 + header_len
    entries = []
    for name, spec in header.items():
        if not isinstance(spec, dict):
            raise FormatError(f"{path}: tensor {name!r} is described by a {type(spec).__name__}, not an object")
        dtype, raw_shape, offsets = spec.get("dtype"), spec.get("shape", []), spec.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _ITEM:
            raise FormatError(f"{path}: tensor {name!r} has dtype {_shown(dtype)} (supported: F32, F16, BF16)")
        if not (isinstance(raw_shape, list) and len(raw_shape) <= MAX_DIMS and all(map(_is_count, raw_shape))):
            raise FormatError(
                f"{path}: tensor {name!r} has shape {_shown(raw_shape)}; a shape is a list of at most "
                f"{MAX_DIMS} non-negative integers"
            )
        shape = tuple(raw_shape)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise FormatError(f"{path}: tensor {name!r} has bad data_offsets {_shown(offsets)}")
        if offsets[0] > offsets[1]:
            raise FormatError(f"{path}: tensor {name!r} has bad data_offsets {_shown(offsets)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _ITEM[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise FormatError(
                f"{path}: tensor {name!r} {dtype} {list(shape)} needs {nbytes} bytes, "
                f"offsets span {offsets[1] - offsets[0]}; the file is corrupt"
            )
        if data_start + offsets[1] > size:
            raise FormatError(
                f"{path}: tensor {name!r} data ends at {data_start + offsets[1]}, past the end of the "
                f"file ({size} bytes); the file is truncated, re-download or re-convert it"
            )
        entries.append(SafeTensorEntry(name, dtype, shape, data_start + offsets[0], nbytes))
    _check_no_overlap(path, entries)
    return entries, {str(k): str(v) for k, v in metadata.items()}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: object) -> str:
    """A header value in an error message, cut short (a hostile header may hold anything)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_no_overlap(path: Path, entries: list[SafeTensorEntry]) -> None:
    """Tensors sharing bytes mean a corrupt or crafted file (the format forbids it)."""
    spans = sorted((entry.start, entry.start + entry.nbytes, entry.name) for entry in entries if entry.nbytes)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise FormatError(f"{path}: tensors {first!r} and {second!r} share bytes; the file is corrupt")


class SafeTensorsStreamWriter:
    """Header first (all shapes known up front), then each tensor's bytes in order."""

    def __init__(
        self, handle: BinaryIO, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]
    ) -> None:
        self._handle = handle
        self._expected: list[tuple[str, int]] = []
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for name, dtype, shape in layout:
            nbytes = int(np.prod(shape, dtype=np.int64)) * _ITEM[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes))
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        self.data_bytes = offset

    def write_chunk(self, name: str, data: np.ndarray) -> None:
        """Append part of tensor ``name`` (tensors must come in layout order)."""
        expected_name, remaining = self._expected[0]
        if name != expected_name or data.nbytes > remaining:
            raise ValueError(
                f"safetensors writer expected {expected_name} ({remaining} B left), got {name} ({data.nbytes} B)"
            )
        self._handle.write(np.ascontiguousarray(data).data.cast("B"))
        self._expected[0] = (expected_name, remaining - data.nbytes)

    def finish_tensor(self, name: str) -> None:
        expected_name, remaining = self._expected.pop(0)
        if name != expected_name or remaining:
            raise ValueError(f"safetensors writer: {expected_name} ended with {remaining} bytes unwritten")
