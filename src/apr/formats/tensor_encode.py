"""Choose a target storage type for a tensor and produce its bytes (exact copy whenever possible)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from apr.formats.ggml import BF16, F16, F32, FLOAT_TYPES, encode_float, ggml_type, type_name
from apr.formats.tensor_source import StoredTensor

DtypeChoice = Literal["keep", "f32", "bf16", "f16"]
FLOAT_OF_CHOICE = {"f32": F32, "bf16": BF16, "f16": F16}
# gguf-py can quantize these from floats; K-quants can only be carried, never produced.
_QUANTIZABLE = {
    int(GGMLQuantizationType.Q8_0),
    int(GGMLQuantizationType.Q4_0),
    int(GGMLQuantizationType.Q4_1),
    int(GGMLQuantizationType.Q5_0),
    int(GGMLQuantizationType.Q5_1),
}


def target_type(source_type: int, choice: DtypeChoice) -> int:
    """``keep`` keeps the stored type (blocks carried as they are); otherwise the asked float type."""
    if choice == "keep":
        return source_type
    return FLOAT_OF_CHOICE[choice]


CHUNK_VALUES = 1 << 22  # rows are processed ~16 MB of float32 at a time
WORKERS = 2  # numpy releases the GIL in its kernels; two chunks decode at once, in order


def row_chunks(source: StoredTensor) -> list[tuple[int, int]]:
    rows = source.row_count()
    step = max(1, CHUNK_VALUES // max(1, source.info.shape[-1]))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def iter_encoded(source: StoredTensor, out_type: int, out_offset: float = 0.0) -> Iterator[np.ndarray]:
    """``encode`` in row chunks, so a large tensor is never dequantized whole."""
    info = source.info
    if out_type == info.ggml_type and out_offset == info.value_offset:
        yield source.raw()
        return

    def job(span: tuple[int, int]) -> np.ndarray:
        return _encode_values(source.dequantize_rows(*span), out_type, out_offset, info.name)

    spans = row_chunks(source)
    if len(spans) == 1:
        yield job(spans[0])
        return
    from concurrent.futures import ThreadPoolExecutor

    # A bounded window keeps at most WORKERS chunks in flight, so memory stays ~WORKERS chunks.
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        pending = [pool.submit(job, span) for span in spans[:WORKERS]]
        for next_span in spans[WORKERS:] + [None] * WORKERS:
            if not pending:
                break
            done = pending.pop(0).result()
            if next_span is not None:
                pending.append(pool.submit(job, next_span))
            yield done


def _encode_values(values: np.ndarray, out_type: int, out_offset: float, name: str) -> np.ndarray:
    if out_offset:
        values = values + np.float32(out_offset)
    rows, cols = values.shape
    if out_type in FLOAT_TYPES:
        flat = encode_float(values, out_type)
    elif out_type in _QUANTIZABLE:
        ggml_type(out_type).row_nbytes(cols)
        flat = np.asarray(gguf_quants.quantize(values, GGMLQuantizationType(out_type)))
    else:
        raise ValueError(f"{name}: cannot re-encode values as {type_name(out_type)} (only carry existing blocks)")
    return flat.reshape(rows, -1).view(np.uint8)


def encode(source: StoredTensor, out_type: int, out_offset: float = 0.0) -> np.ndarray:
    """Bytes ``[rows, row_bytes]`` in canonical row order storing HF values + ``out_offset`` as ``out_type``.

    Same type and same offset: the stored bytes are returned untouched (lossless carry).
    """
    info = source.info
    if out_type == info.ggml_type and out_offset == info.value_offset:
        return source.raw()
    return np.concatenate(list(iter_encoded(source, out_type, out_offset)), axis=0)
