"""APR v2 byte layout: header, flags, dtype codes and index entries (see docs/formats.md)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from apr.formats.ggml import BF16, F16, F32, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0

MAGIC = b"APR\x00"
VERSION = (2, 0)
HEADER_SIZE = 64
ALIGN = 64
FOOTER_SIZE = 4

FLAG_LZ4 = 0x0001
FLAG_ZSTD = 0x0002
FLAG_ENCRYPTED = 0x0004
FLAG_QUANTIZED = 0x0020
FLAG_HAS_VOCAB = 0x0200
FLAG_ROW_MAJOR = 0x0400
FLAG_COLUMN_MAJOR = 0x0800

# dtype byte <-> GGML type. 0/1/12/14/30 are the codes every APR reader agrees on; for the other
# GGML block types we follow the post-GH-438 rule "ids 0-31 equal GGML type ids".
# (Legacy readers took 8/9 for APR-native q4/q8 and 2 for BF16; we never write those meanings.)
APR_DTYPE_OF_GGML = {
    F32: 0,
    F16: 1,
    BF16: 30,
    Q4_K: 12,
    Q6_K: 14,
    Q8_0: 8,
    Q4_0: 2,
    Q4_1: 3,
    Q5_0: 6,
    Q5_1: 7,
    Q5_K: 13,
}
GGML_OF_APR_DTYPE = {code: ggml for ggml, code in APR_DTYPE_OF_GGML.items()}

_HEADER = struct.Struct("<4sBBHIQIQQI20s")


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class AprHeader:
    version: tuple[int, int]
    flags: int
    tensor_count: int
    metadata_offset: int
    metadata_size: int
    tensor_index_offset: int
    data_offset: int
    checksum: int


def header_crc(header_bytes: bytes) -> int:
    """CRC32 of bytes 0..40 and 44..64: the header without its own checksum field."""
    return zlib.crc32(header_bytes[44:64], zlib.crc32(header_bytes[:40])) & 0xFFFFFFFF


def pack_header(flags: int, tensor_count: int, metadata_size: int, index_offset: int, data_offset: int) -> bytes:
    without_crc = _HEADER.pack(
        MAGIC, *VERSION, flags, tensor_count, HEADER_SIZE, metadata_size, index_offset, data_offset, 0, bytes(20)
    )
    return _HEADER.pack(
        MAGIC,
        *VERSION,
        flags,
        tensor_count,
        HEADER_SIZE,
        metadata_size,
        index_offset,
        data_offset,
        header_crc(without_crc),
        bytes(20),
    )


def unpack_header(data: bytes) -> AprHeader:
    magic, major, minor, flags, count, meta_off, meta_size, index_off, data_off, crc, _ = _HEADER.unpack(
        data[:HEADER_SIZE]
    )
    return AprHeader((major, minor), flags, count, meta_off, meta_size, index_off, data_off, crc)


@dataclass(frozen=True)
class AprIndexEntry:
    name: str
    dtype: int  # APR dtype byte
    shape: tuple[int, ...]
    offset: int  # relative to data_offset
    size: int

    def pack(self) -> bytes:
        encoded = self.name.encode("utf-8")
        return (
            struct.pack("<H", len(encoded))
            + encoded
            + struct.pack("<BB", self.dtype, len(self.shape))
            + struct.pack(f"<{len(self.shape)}Q", *self.shape)
            + struct.pack("<QQ", self.offset, self.size)
        )


def unpack_index(buf: bytes, count: int) -> list[AprIndexEntry]:
    """Parse ``count`` entries; ValueError on any entry running past the buffer."""
    entries, pos = [], 0
    for _ in range(count):
        if pos + 2 > len(buf):
            raise ValueError("tensor index is truncated")
        (name_len,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        if pos + name_len + 2 > len(buf):
            raise ValueError("tensor index is truncated")
        name = buf[pos : pos + name_len].decode("utf-8")
        pos += name_len
        dtype, ndim = struct.unpack_from("<BB", buf, pos)
        pos += 2
        if not 1 <= ndim <= 8:
            raise ValueError(f"tensor {name!r} has {ndim} dimensions")
        if pos + 8 * ndim + 16 > len(buf):
            raise ValueError("tensor index is truncated")
        shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
        pos += 8 * ndim
        offset, size = struct.unpack_from("<QQ", buf, pos)
        pos += 16
        entries.append(AprIndexEntry(name, dtype, tuple(shape), offset, size))
    return entries
