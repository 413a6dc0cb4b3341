"""Builders of hostile inputs for the hostile-input corpus: crafted GGUF, SafeTensors and playbook files."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

GGUF_STRING, GGUF_ARRAY, GGUF_U32 = 8, 9, 4


def _value_offset(data: bytes, key: str) -> tuple[int, int]:
    """(offset of the value, its type id) of metadata `key` in a GGUF file's bytes."""
    encoded = key.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded)
    type_at = at + 8 + len(encoded)
    return type_at + 4, struct.unpack_from("<I", data, type_at)[0]


def gguf_with_u32(source: Path, out: Path, key: str, value: int) -> Path:
    data = bytearray(source.read_bytes())
    offset, kind = _value_offset(bytes(data), key)
    assert kind == GGUF_U32, f"{key} is of type {kind}"
    struct.pack_into("<I", data, offset, value)
    out.write_bytes(bytes(data))
    return out


def gguf_with_string(source: Path, out: Path, key: str, text: str) -> Path:
    """`source` with string `key` replaced by `text` (padded with spaces to the old length: no offset moves)."""
    data = bytearray(source.read_bytes())
    offset, kind = _value_offset(bytes(data), key)
    assert kind == GGUF_STRING
    (length,) = struct.unpack_from("<Q", data, offset)
    encoded = text.encode()
    assert len(encoded) <= length, f"the new {key} must fit in {length} bytes"
    data[offset + 8 : offset + 8 + length] = encoded.ljust(length, b" ")
    out.write_bytes(bytes(data))
    return out


def gguf_with_tensor_count(source: Path, out: Path, count: int) -> Path:
    data = bytearray(source.read_bytes())
    struct.pack_into("<Q", data, 8, count)  # magic, version, then the tensor count
    out.write_bytes(bytes(data))
    return out


def gguf_nested_arrays(out: Path, depth: int) -> Path:
    """A GGUF header whose one key is an array of an array of ... `depth` deep."""
    key = b"evil.nest"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    head += struct.pack("<I", GGUF_ARRAY)
    nest = struct.pack("<IQ", GGUF_ARRAY, 1) * depth + struct.pack("<IQ", GGUF_U32, 0)
    out.write_bytes(head + nest)
    return out


def truncated(source: Path, out: Path) -> Path:
    out.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return out


def safetensors_dir_with_header(source_dir: Path, out_dir: Path, header: dict, payload: bytes) -> Path:
    """A copy of a fixture SafeTensors folder (config, tokenizer) whose weights file has `header`."""
    shutil.copytree(source_dir, out_dir)
    for weights in out_dir.glob("*.safetensors"):
        weights.unlink()
    text = json.dumps(header).encode()
    (out_dir / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + payload)
    return out_dir


def safetensors_dir_with_nan(source_dir: Path, out_dir: Path, tensor: str) -> Path:
    """A copy of a fixture SafeTensors folder with every value of `tensor` set to NaN."""
    shutil.copytree(source_dir, out_dir)
    weights = next(out_dir.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    (header_len,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + header_len])
    spec = header[tensor]
    start, stop = (8 + header_len + offset for offset in spec["data_offsets"])
    nan = {"F32": struct.pack("<f", float("nan")), "BF16": b"\xc0\x7f", "F16": b"\x00\x7e"}[spec["dtype"]]
    data[start:stop] = nan * ((stop - start) // len(nan))
    weights.write_bytes(bytes(data))
    return out_dir


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"{chr(98 + level)}: &{chr(98 + level)} [{', '.join([f'*{chr(97 + level)}'] * 9)}]" for level in range(8)),
    ]
)
