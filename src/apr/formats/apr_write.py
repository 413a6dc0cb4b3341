"""Write a CanonicalModel as an APR v2 file, streaming tensors; GGML blocks are stored as they are."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from apr.formats.apr_layout import (
    ALIGN,
    APR_DTYPE_OF_GGML,
    FLAG_HAS_VOCAB,
    FLAG_QUANTIZED,
    FLAG_ROW_MAJOR,
    HEADER_SIZE,
    AprIndexEntry,
    align,
    pack_header,
)
from apr.formats.apr_meta import build_metadata
from apr.formats.atomic import atomic_path
from apr.formats.ggml import FLOAT_TYPES, tensor_nbytes, type_name
from apr.formats.model import CanonicalModel
from apr.formats.tensor_encode import DtypeChoice, iter_encoded, target_type

Progress = Callable[[str, int], None]


class _CrcWriter:
    """File writer that keeps the running CRC32 of everything written (the footer checksum)."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.crc = 0
        self.pos = 0

    def write(self, data: bytes | memoryview) -> None:
        self.handle.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.pos += len(data)

    def pad_to(self, boundary: int) -> None:
        if self.pos % boundary:
            self.write(bytes(boundary - self.pos % boundary))


def write_apr(
    model: CanonicalModel, out: Path, *, dtype: DtypeChoice = "keep", progress: Progress | None = None
) -> Path:
    """APR v2 at ``out`` (temp file, then rename). ``keep`` stores every tensor's bytes unchanged, with any
    stored value offset (GGUF gemma norms) recorded in ``apr.value_offsets``."""
    # Data goes in the model's own order (readers recover it from the offsets, so GGUF -> APR -> GGUF
    # keeps the tensor order); the index is sorted by name as the format requires.
    plan = []
    for name in model.tensors:
        info = model.tensors[name].info
        out_type = target_type(info.ggml_type, dtype)
        if out_type not in APR_DTYPE_OF_GGML:
            raise ValueError(f"{name}: {type_name(out_type)} has no APR dtype code")
        offset = info.value_offset if out_type == info.ggml_type else 0.0
        plan.append((name, out_type, offset, tensor_nbytes(out_type, info.shape)))
    entries, cursor = [], 0
    for name, out_type, _, nbytes in plan:
        entries.append(
            AprIndexEntry(name, APR_DTYPE_OF_GGML[out_type], tuple(model.tensors[name].info.shape), cursor, nbytes)
        )
        cursor = align(cursor + nbytes)
    sorted_entries = sorted(entries, key=lambda e: e.name.encode("utf-8"))
    shapes = {name: list(model.tensors[name].info.shape) for name, *_ in plan}
    offsets = {name: off for name, _, off, _ in plan if off}
    params = sum(int(np.prod(model.tensors[name].info.shape)) for name, *_ in plan)
    total = sum(nbytes for *_, nbytes in plan)
    meta = json.dumps(
        build_metadata(model, shapes, offsets, total, params), separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    index = b"".join(entry.pack() for entry in sorted_entries)
    index_offset = HEADER_SIZE + align(len(meta))
    data_offset = index_offset + align(len(index))
    flags = FLAG_ROW_MAJOR | FLAG_HAS_VOCAB
    if any(out_type not in FLOAT_TYPES for _, out_type, _, _ in plan):
        flags |= FLAG_QUANTIZED
    with atomic_path(Path(out)) as temp, temp.open("wb") as handle:
        sink = _CrcWriter(handle)
        sink.write(pack_header(flags, len(entries), len(meta), index_offset, data_offset))
        sink.write(meta)
        sink.pad_to(ALIGN)
        sink.write(index)
        sink.pad_to(ALIGN)
        for (name, out_type, offset, nbytes), entry in zip(plan, entries):
            if sink.pos != data_offset + entry.offset:
                raise AssertionError(f"APR writer layout drifted at {name}")
            for chunk in iter_encoded(model.tensors[name], out_type, offset):
                sink.write(np.ascontiguousarray(chunk).data.cast("B"))
            if sink.pos != data_offset + entry.offset + nbytes:
                raise AssertionError(f"APR writer wrote the wrong byte count for {name}")
            sink.pad_to(ALIGN)
            model.tensors[name].release()
            if progress is not None:
                progress(name, nbytes)
        handle.write(sink.crc.to_bytes(4, "little"))
    return Path(out)
