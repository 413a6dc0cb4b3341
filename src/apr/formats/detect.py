"""Detect a checkpoint's format from magic bytes or directory contents (never from the file name)."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from apr.errors import FormatError
from apr.formats.model import FormatName


def check_readable_model_path(path: Path) -> None:
    """Refuse, with one line, what is no model file or folder: a FIFO or a device would block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file or directory") from None
    except OSError as err:
        raise FormatError(f"{path}: cannot read it: {err.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"
        )
        raise FormatError(f"{path}: {kind} file, not a model; pass a GGUF/APR file or a SafeTensors folder")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        raise FormatError(f"{path}: permission denied; make it readable (chmod) or copy it where you can read it")


def detect_format(path: Path) -> FormatName:
    path = Path(path)
    check_readable_model_path(path)
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
