"""Tell a model's format from its magic bytes or directory contents (never from its name)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Literal

from apr.errors import HubError

ModelFormat = Literal["gguf", "safetensors", "apr"]

GGUF_MAGIC = b"GGUF"
APR_MAGIC = b"APR\x00"
# A SafeTensors file starts with a little-endian u64 header length, then a JSON object.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def _is_safetensors_file(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(9)
        if len(head) < 9:
            return False
        (header_len,) = struct.unpack("<Q", head[:8])
        size = path.stat().st_size
        return head[8:9] == b"{" and 2 <= header_len <= min(size - 8, _MAX_SAFETENSORS_HEADER)


def _is_safetensors_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(_is_safetensors_file(weights) for weights in path.glob("*.safetensors"))


def detect_format(path: Path) -> ModelFormat:
    """``gguf`` / ``apr`` / ``safetensors`` (a file, or a directory with config.json and weights)."""
    from apr.formats.detect import check_readable_model_path

    check_readable_model_path(path)  # a FIFO would block the read below, a device never end
    if path.is_dir():
        if _is_safetensors_dir(path):
            return "safetensors"
        raise HubError(f"{path}: directory is not a model (needs config.json and *.safetensors weights)")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic == GGUF_MAGIC:
            return "gguf"
        if magic == APR_MAGIC:
            return "apr"
        if _is_safetensors_file(path):
            return "safetensors"
    except OSError as err:
        raise HubError(f"{path}: cannot read ({err.strerror or err})") from err
    raise HubError(
        f"{path}: not a model file (no GGUF, APR or SafeTensors header); give a .gguf/.apr/.safetensors file"
    )
