"""An editable GGUF copy: metadata and tensors read with gguf-py, changed in memory, written back with gguf-py.

Tensors keep their stored bytes (quantized blocks untouched) unless a defect replaces them, so a copy with no
edit is the clean model, byte for byte in its tensors: the self-test's control.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apr.formats.atomic import atomic_path


@dataclass
class MetaValue:
    """One metadata key: its Python value and the GGUF types it is written with."""

    value: Any
    vtype: Any  # gguf.GGUFValueType
    sub_type: Any = None  # element type of an array


@dataclass
class GgufTensor:
    """One tensor as stored: float arrays as floats, quantized ones as ``[rows, row_bytes]`` uint8 blocks."""

    data: np.ndarray
    ggml_type: int


@dataclass
class GgufCopy:
    """A GGUF file in memory: architecture, ordered metadata and ordered tensors (memory-mapped until edited)."""

    architecture: str
    metadata: dict[str, MetaValue]
    tensors: dict[str, GgufTensor]

    def key(self, suffix: str) -> str:
        """The architecture-scoped key, e.g. ``rope.freq_base`` -> ``llama.rope.freq_base``."""
        return f"{self.architecture}.{suffix}"

    def get(self, key: str, default: Any = None) -> Any:
        item = self.metadata.get(key)
        return default if item is None else item.value

    def set(self, key: str, value: Any) -> None:
        self.metadata[key].value = value

    def layer_count(self) -> int:
        return int(self.get(self.key("block_count")))


def read_gguf_copy(path: Path) -> GgufCopy:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    metadata: dict[str, MetaValue] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
            continue  # the writer writes these itself
        types = list(field.types)
        sub = types[1] if types[0] == GGUFValueType.ARRAY and len(types) > 1 else None
        metadata[name] = MetaValue(field.contents(), types[0], sub)
    architecture = str(reader.fields["general.architecture"].contents())
    tensors = {t.name: GgufTensor(t.data, int(t.tensor_type)) for t in reader.tensors}
    return GgufCopy(architecture, metadata, tensors)


def write_gguf_copy(copy: GgufCopy, out: Path) -> Path:
    """Write ``copy`` to ``out`` (temp file, then rename)."""
    from gguf import GGMLQuantizationType, GGUFWriter

    from apr.formats.ggml import FLOAT_TYPES

    with atomic_path(Path(out)) as temp:
        writer = GGUFWriter(temp, copy.architecture)
        for key, item in copy.metadata.items():
            writer.add_key_value(key, item.value, item.vtype, sub_type=item.sub_type)
        for name, tensor in copy.tensors.items():
            if tensor.ggml_type in FLOAT_TYPES and tensor.data.dtype != np.uint8:
                writer.add_tensor(name, np.ascontiguousarray(tensor.data))
            else:
                writer.add_tensor(
                    name, np.ascontiguousarray(tensor.data), raw_dtype=GGMLQuantizationType(tensor.ggml_type)
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)
