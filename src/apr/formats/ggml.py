"""The one table of GGML storage types: block sizes, byte counts and dequantization (over gguf-py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

F32 = int(GGMLQuantizationType.F32)
F16 = int(GGMLQuantizationType.F16)
BF16 = int(GGMLQuantizationType.BF16)
Q4_0 = int(GGMLQuantizationType.Q4_0)
Q4_1 = int(GGMLQuantizationType.Q4_1)
Q5_0 = int(GGMLQuantizationType.Q5_0)
Q5_1 = int(GGMLQuantizationType.Q5_1)
Q8_0 = int(GGMLQuantizationType.Q8_0)
Q4_K = int(GGMLQuantizationType.Q4_K)
Q5_K = int(GGMLQuantizationType.Q5_K)
Q6_K = int(GGMLQuantizationType.Q6_K)

FLOAT_TYPES = (F32, F16, BF16)
# Types whose blocks we carry and dequantize (gguf-py implements every one of these).
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)


@dataclass(frozen=True)
class GGMLType:
    """Storage facts of one GGML type: ``block_size`` values take ``block_bytes`` bytes."""

    type_id: int
    name: str
    block_size: int
    block_bytes: int

    @property
    def is_quantized(self) -> bool:
        return self.type_id not in FLOAT_TYPES

    def row_nbytes(self, cols: int) -> int:
        """Bytes of one row of ``cols`` values; blocks never cross rows."""
        if cols % self.block_size:
            raise ValueError(f"{self.name} needs rows that are a multiple of {self.block_size} values, got {cols}")
        return cols // self.block_size * self.block_bytes


GGML_TYPES: dict[int, GGMLType] = {
    t: GGMLType(t, GGMLQuantizationType(t).name, *GGML_QUANT_SIZES[GGMLQuantizationType(t)]) for t in SUPPORTED_TYPES
}
TYPE_BY_NAME: dict[str, int] = {info.name: t for t, info in GGML_TYPES.items()}


def ggml_type(type_id: int) -> GGMLType:
    """The table entry of ``type_id``; ValueError for types we do not carry."""
    try:
        return GGML_TYPES[int(type_id)]
    except KeyError:
        raise ValueError(f"unsupported GGML type id {type_id}") from None


def type_name(type_id: int) -> str:
    info = GGML_TYPES.get(int(type_id))
    return info.name if info else f"type{type_id}"


def tensor_nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Exact stored byte count of a tensor of logical ``shape`` (blocks run along the last dim)."""
    info = ggml_type(type_id)
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * info.row_nbytes(int(shape[-1]))


def rows_and_row_bytes(type_id: int, shape: tuple[int, ...]) -> tuple[int, int]:
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, ggml_type(type_id).row_nbytes(int(shape[-1]))


def dequantize_raw(raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of ``shape`` from stored bytes, through gguf-py's own dequantization."""
    data = np.ascontiguousarray(raw).reshape(-1)
    if type_id == F32:
        values = data.view(np.float32).copy()
    elif type_id == F16:
        values = data.view(np.float16).astype(np.float32)
    else:
        values = gguf_quants.dequantize(data, GGMLQuantizationType(type_id))
    return np.asarray(values, dtype=np.float32).reshape(shape)


def encode_float(values: np.ndarray, type_id: int) -> np.ndarray:
    """Stored bytes (uint8, flat) of float values as F32, F16 or BF16 (both halves round to nearest even,
    like gguf-py and transformers' ``.to(dtype)``; torch does it on every core)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if type_id == F32:
        return values.reshape(-1).view(np.uint8)
    if type_id in (F16, BF16):
        import torch

        half = torch.float16 if type_id == F16 else torch.bfloat16
        return torch.from_numpy(values.reshape(-1)).to(half).view(torch.uint8).numpy()
    raise ValueError(f"{type_name(type_id)} is not a float type")
