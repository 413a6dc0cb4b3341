"""Model file formats (GGUF, SafeTensors, APR v2) behind one canonical in-memory model."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apr.formats.model import CanonicalModel

__all__ = ["load_model"]


def load_model(path: str | object) -> CanonicalModel:
    """Read any supported checkpoint (see ``apr.formats.load.load_model``)."""
    from apr.formats.load import load_model as _load

    return _load(path)  # type: ignore[arg-type]
