"""A strict, fast GGUF v2/v3 header parser: key/values, tensor infos, data offset (no tensor reads)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apr.errors import FormatError

_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
_U64 = struct.Struct("<Q")
# Structure limits checked before anything is allocated: llama.cpp writes no nested arrays at all.
MAX_ARRAY_DEPTH = 2
# The fewest bytes one entry can take in the file, so a count can be checked against the bytes left:
# a key/value (key length, name, type, smallest value), a tensor info (name length, dims, one ne, type,
# offset), a string (its length), a nested array (item type and count).
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8
_MIN_STRING_BYTES = 8
_MIN_ARRAY_BYTES = 4 + 8


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    ne: tuple[int, ...]  # GGML order: ne[0] is the innermost (row) dimension
    type_id: int
    offset: int  # relative to the data section


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    value_types: dict[str, tuple[int, int | None]]  # key -> (type, array item type)
    tensors: list[GGUFTensorInfo]
    data_offset: int
    alignment: int


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.buf):
            raise _Truncated
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("<Q", 8)
        if self.pos + length > len(self.buf):
            raise _Truncated
        text = bytes(self.buf[self.pos : self.pos + length]).decode("utf-8", errors="replace")
        self.pos += length
        return text

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == 6:
            # Shortest decimal that round-trips in float32 (1e-06, not 9.999999974752427e-07).
            return float(np.format_float_positional(np.float32(self.take("<f", 4)), unique=True, trim="-"))
        if kind in _SCALARS:
            return self.take(*_SCALARS[kind])
        raise ValueError(f"unknown value type {kind}")

    def string_array(self, count: int) -> list[str]:
        # The hot loop of a 262k-token vocabulary: no per-item bounds checks, one check at the end
        # (a slice past the end is silently short, but then pos ends past the buffer too).
        buf, pos = self.buf, self.pos
        out: list[str] = []
        append, unpack = out.append, _U64.unpack_from
        try:
            for _ in range(count):
                (length,) = unpack(buf, pos)
                pos += 8
                append(str(buf[pos : pos + length], "utf-8", "replace"))
                pos += length
        except struct.error:
            raise _Truncated from None
        if pos > len(buf):
            raise _Truncated
        self.pos = pos
        return out

    def array(self, kind: int, count: int, depth: int = 1) -> list[Any]:
        if depth > MAX_ARRAY_DEPTH:
            raise ValueError(f"arrays nested {depth} deep (at most {MAX_ARRAY_DEPTH})")
        smallest = {_STRING: _MIN_STRING_BYTES, _ARRAY: _MIN_ARRAY_BYTES}.get(kind, 1)
        if count * smallest > self.left:  # before any list is built for it
            raise _Truncated
        if kind == _STRING:
            return self.string_array(count)
        if kind in _NUMPY:
            size = np.dtype(_NUMPY[kind]).itemsize * count
            if self.pos + size > len(self.buf):
                raise _Truncated
            values = np.frombuffer(self.buf, dtype=_NUMPY[kind], count=count, offset=self.pos)
            self.pos += size
            return values.astype(bool).tolist() if kind == 7 else values.tolist()
        if kind == _ARRAY:
            out = []
            for _ in range(count):
                sub, sub_count = self.take("<I", 4), self.take("<Q", 8)
                out.append(self.array(sub, sub_count, depth + 1))
            return out
        raise ValueError(f"unknown array item type {kind}")


def parse_gguf_header(path: Path, buf: memoryview) -> GGUFHeader:
    """Parse everything before the tensor data; FormatError with one clear line on any defect."""
    try:
        return _parse(path, buf)
    except _Truncated:
        raise FormatError(
            f"{path}: truncated GGUF file (header ends past the end of the file); re-download it"
        ) from None
    except ValueError as err:
        raise FormatError(f"{path}: corrupt GGUF header: {err}") from None


def _parse(path: Path, buf: memoryview) -> GGUFHeader:
    cur = _Cursor(buf)
    if len(buf) < 4 or bytes(buf[:4]) != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    version = cur.take("<I", 4) if cur.take("<4s", 4) else 0
    if version not in (2, 3):
        raise FormatError(f"{path}: GGUF version {version} is not supported (2 or 3 expected)")
    n_tensors, n_kv = cur.take("<Q", 8), cur.take("<Q", 8)
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > cur.left:
        raise ValueError(f"{n_tensors} tensors and {n_kv} keys cannot fit in a file of {len(buf)} bytes")
    metadata: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}
    for _ in range(n_kv):
        key = cur.string()
        kind = cur.take("<I", 4)
        if key in metadata:
            raise ValueError(f"duplicate key {key!r}")
        if kind == _ARRAY:
            item, count = cur.take("<I", 4), cur.take("<Q", 8)
            metadata[key] = cur.array(item, count)
            types[key] = (kind, item)
        else:
            metadata[key] = cur.value(kind)
            types[key] = (kind, None)
    tensors: list[GGUFTensorInfo] = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I", 4)
        if not 1 <= n_dims <= 4:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        ne = tuple(cur.take("<Q", 8) for _ in range(n_dims))
        type_id, offset = cur.take("<I", 4), cur.take("<Q", 8)
        if name in seen:
            raise FormatError(f"{path}: duplicate tensor name {name!r}; the file is corrupt, re-convert it")
        seen.add(name)
        tensors.append(GGUFTensorInfo(name, ne, type_id, offset))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment {alignment} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(version, metadata, types, tensors, data_offset, alignment)
