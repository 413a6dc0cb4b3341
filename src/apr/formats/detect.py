"""Detect a checkpoint's format from magic bytes or directory contents (never from the file name)."""

from __future__ import annotations

import struct
from pathlib import Path

from apr.errors import FormatError
from apr.formats.model import FormatName


def detect_format(path: Path) -> FormatName:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or directory")
    if path.is_dir():
        if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
            return "safetensors"
        raise FormatError(f"{path}: directory holds no *.safetensors files; point at a model file or HF directory")
    with path.open("rb") as handle:
        head = handle.read(8)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"APR\0":
        return "apr"
    if len(head) == 8 and 0 < struct.unpack("<Q", head)[0] < 100_000_000:
        return "safetensors"
    if len(head) < 8:
        raise FormatError(f"{path}: file too short ({len(head)} bytes) to be a model; re-download it")
    raise FormatError(f"{path}: unknown format (magic {head[:4]!r}); expected GGUF, APR or SafeTensors")
