"""Read an APR v2 file strictly (magic, version, both CRCs, bounds, sorted index) into a CanonicalModel."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from apr.errors import FormatError
from apr.formats import names
from apr.formats.apr_layout import (
    ALIGN,
    FLAG_COLUMN_MAJOR,
    FLAG_ENCRYPTED,
    FLAG_LZ4,
    FLAG_ZSTD,
    FOOTER_SIZE,
    GGML_OF_APR_DTYPE,
    HEADER_SIZE,
    MAGIC,
    AprHeader,
    header_crc,
    unpack_header,
    unpack_index,
)
from apr.formats.apr_meta import config_from_metadata, spec_from_metadata
from apr.formats.ggml import tensor_nbytes, type_name
from apr.formats.model import CanonicalModel, TensorInfo
from apr.formats.shapes import check_shapes
from apr.formats.tensor_source import StoredTensor, page_dropper
from apr.formats.tokenizer import Tokenizer

_CRC_CHUNK = 64 * 1024 * 1024


def _fail(path: Path, problem: str) -> FormatError:
    return FormatError(f"{path}: {problem}")


def read_apr_header(path: Path, data: np.ndarray) -> AprHeader:
    size = len(data)
    if size < HEADER_SIZE + FOOTER_SIZE:
        raise _fail(
            path, f"truncated APR file ({size} bytes; header and footer alone need {HEADER_SIZE + FOOTER_SIZE})"
        )
    head = bytes(data[:HEADER_SIZE])
    if head[:4] != MAGIC:
        raise _fail(path, f"not an APR v2 file (magic {head[:4]!r}, expected b'APR\\x00')")
    header = unpack_header(head)
    if header.version[0] != 2:
        raise _fail(path, f"APR version {header.version[0]}.{header.version[1]} is not supported (2.x expected)")
    if header_crc(head) != header.checksum:
        raise _fail(path, "header checksum mismatch (CRC32); the file is corrupt, re-convert it")
    if header.flags & FLAG_COLUMN_MAJOR:
        raise _fail(path, "column-major layout flag set (LAYOUT-002); APR tensors must be row-major")
    if header.flags & (FLAG_LZ4 | FLAG_ZSTD | FLAG_ENCRYPTED):
        raise _fail(path, "compressed or encrypted APR files are not supported; re-convert without compression")
    body_end = size - FOOTER_SIZE
    if not (HEADER_SIZE <= header.metadata_offset and header.metadata_offset + header.metadata_size <= body_end):
        raise _fail(
            path,
            f"metadata [{header.metadata_offset}, +{header.metadata_size}) lies outside the file; the file is truncated or corrupt",
        )
    if not (
        header.metadata_offset + header.metadata_size <= header.tensor_index_offset <= header.data_offset <= body_end
    ):
        raise _fail(
            path, "section offsets out of order or beyond the end of the file; the file is truncated or corrupt"
        )
    return header


def verify_footer(path: Path, data: np.ndarray) -> None:
    """CRC32 of every byte before the last four must equal the footer."""
    body_end = len(data) - FOOTER_SIZE
    crc = 0
    for start in range(0, body_end, _CRC_CHUNK):
        crc = zlib.crc32(data[start : min(start + _CRC_CHUNK, body_end)].data, crc)
    stored = int.from_bytes(bytes(data[body_end:]), "little")
    if crc != stored:
        raise _fail(
            path,
            f"footer checksum mismatch (CRC32 {crc:08x} != {stored:08x}); the file is corrupt or "
            "truncated, re-convert it",
        )


def read_apr(path: Path, *, verify: bool = True) -> CanonicalModel:
    path = Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    header = read_apr_header(path, data)
    if verify:
        verify_footer(path, data)
    try:
        meta = json.loads(bytes(data[header.metadata_offset : header.metadata_offset + header.metadata_size]))
    except ValueError as err:
        raise _fail(path, f"metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _fail(path, "metadata is not a JSON object")
    try:
        entries = unpack_index(bytes(data[header.tensor_index_offset : header.data_offset]), header.tensor_count)
        config = config_from_metadata(meta)
        tokenizer = Tokenizer(spec_from_metadata(meta))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
        raise _fail(path, f"bad APR metadata or index: {err}") from None
    body_end = len(data) - FOOTER_SIZE
    offsets = meta.get("apr.value_offsets") or {}
    tensors: dict[str, StoredTensor] = {}
    previous = b""
    for entry in entries:
        key = entry.name.encode("utf-8")
        if key == previous:
            raise _fail(path, f"duplicate tensor name {entry.name!r} in the index")
        if key < previous:
            raise _fail(path, f"tensor index is not sorted by name at {entry.name!r}")
        previous = key
    end_of_previous = 0
    for entry in sorted(entries, key=lambda e: e.offset):  # data order = the order the model was written in
        if entry.offset < end_of_previous:
            raise _fail(path, f"tensor {entry.name!r} data overlaps the tensor before it; the file is corrupt")
        end_of_previous = entry.offset + entry.size
        tensors[entry.name] = _entry_source(path, data, header, entry, body_end, float(offsets.get(entry.name, 0.0)))
    expected = set(names.expected_hf_names(config.architecture, config.num_layers, tied=config.tie_word_embeddings))
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise _fail(path, f"unexpected tensor {unknown[0]!r} for {config.architecture}")
    missing = sorted(expected - set(tensors))
    if missing:
        raise _fail(path, f"missing tensor {missing[0]!r} ({len(missing)} missing); the file is incomplete")
    check_shapes(path, config, tensors)
    light = {k: v for k, v in meta.items() if not k.startswith("tokenizer.") and k != "tensor_shapes"}
    return CanonicalModel(
        config=config, tokenizer=tokenizer, tensors=tensors, source_path=path, source_format="apr", metadata=light
    )


def _entry_source(path: Path, data: np.ndarray, header: AprHeader, entry, body_end: int, offset: float) -> StoredTensor:
    type_id = GGML_OF_APR_DTYPE.get(entry.dtype)
    if type_id is None:
        # Never fall back to F32 for an unknown code (GH-186: a PAD-token flood).
        raise _fail(path, f"tensor {entry.name!r} has unknown APR dtype code {entry.dtype}")
    try:
        expected = tensor_nbytes(type_id, entry.shape)
    except ValueError as err:
        raise _fail(path, f"tensor {entry.name!r}: {err}") from None
    if entry.size != expected:
        raise _fail(
            path,
            f"tensor {entry.name!r} stores {entry.size} bytes, {type_name(type_id)} {list(entry.shape)} "
            f"needs {expected}",
        )
    if entry.offset % ALIGN:
        raise _fail(path, f"tensor {entry.name!r} offset {entry.offset} is not {ALIGN}-byte aligned")
    start = header.data_offset + entry.offset
    if start + entry.size > body_end:
        raise _fail(
            path,
            f"tensor {entry.name!r} data [{start}, {start + entry.size}) runs past the end of the data "
            f"({body_end} bytes); the file is truncated",
        )
    info = TensorInfo(name=entry.name, shape=entry.shape, ggml_type=type_id, nbytes=entry.size, value_offset=offset)

    def load() -> np.ndarray:
        return data[start : start + entry.size]

    return StoredTensor(info, load, release=page_dropper(data, start, start + entry.size))
