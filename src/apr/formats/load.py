"""load_model(path): one entry point that reads any supported checkpoint into a CanonicalModel."""

from __future__ import annotations

from pathlib import Path

from apr.formats.detect import detect_format
from apr.formats.model import CanonicalModel


def load_model(path: str | Path) -> CanonicalModel:
    """Read a GGUF file, an APR file, or a SafeTensors file/HF directory; validate strictly."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "gguf":
        from apr.formats.gguf_read import read_gguf

        return read_gguf(path)
    if kind == "apr":
        from apr.formats.apr_read import read_apr

        return read_apr(path)
    from apr.formats.safetensors_read import read_safetensors

    return read_safetensors(path)
