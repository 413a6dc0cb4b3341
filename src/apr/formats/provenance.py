"""The general.* keys (name, license, basename, size_label, file_type...) carried through every format.

GGUF keeps them as they are; APR keeps them under ``apr.general`` in its JSON metadata (and ``license`` in
its typed key); SafeTensors keeps them as one JSON string under ``apr.general`` in the shards' header
``__metadata__``. ``general.file_type`` says how the tensors are stored, so it is carried only while the
stored types are unchanged and recomputed otherwise (all-F32 → 0, all-F16 → 1, all-BF16 → 32).
"""

from __future__ import annotations

import json
from typing import Any

from apr.formats.ggml import FLOAT_TYPES
from apr.formats.model import CanonicalModel

METADATA_KEY = "apr.general"
# Written by each writer from the model itself, never copied: the architecture (from the config), the
# alignment (a GGUF layout fact) and the quantization version (the GGML block format the writer emits).
NOT_CARRIED = frozenset({"general.architecture", "general.alignment", "general.quantization_version"})
FILE_TYPE = "general.file_type"
# llama.cpp's LLAMA_FTYPE values for files whose matrices are all one float type (GGML ids: F32 0, F16 1, BF16 30).
_FLOAT_FILE_TYPES = {0: 0, 1: 1, 30: 32}


def _carriable(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def general_keys(model: CanonicalModel) -> dict[str, Any]:
    """The model's general.* keys, whichever format it was read from."""
    if model.source_format == "gguf":
        found = {k: v for k, v in model.metadata.items() if k.startswith("general.")}
    else:
        stored = model.metadata.get(METADATA_KEY)
        if isinstance(stored, str):  # SafeTensors header metadata holds strings only
            try:
                stored = json.loads(stored)
            except ValueError:
                stored = None
        found = dict(stored) if isinstance(stored, dict) else {}
    return {k: v for k, v in found.items() if k.startswith("general.") and k not in NOT_CARRIED and _carriable(v)}


def carried_general(model: CanonicalModel, written_types: dict[str, int]) -> dict[str, Any]:
    """general.* keys for a file whose tensors are stored as ``written_types`` (canonical name → GGML type)."""
    keys = general_keys(model)
    unchanged = all(written_types[name] == source.info.ggml_type for name, source in model.tensors.items())
    if FILE_TYPE in keys and unchanged:
        return keys
    keys.pop(FILE_TYPE, None)
    matrices = {t for name, t in written_types.items() if len(model.tensors[name].info.shape) > 1}
    if len(matrices) == 1 and next(iter(matrices)) in FLOAT_TYPES:
        file_type = _FLOAT_FILE_TYPES.get(next(iter(matrices)))
        if file_type is not None:
            keys[FILE_TYPE] = file_type
    return keys
