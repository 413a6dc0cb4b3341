"""StoredTensor: the one lazy TensorSource implementation every reader hands out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from apr.formats.ggml import dequantize_raw, rows_and_row_bytes
from apr.formats.model import TensorInfo

if TYPE_CHECKING:
    import torch


class StoredTensor:
    """Bytes somewhere (an mmap slice, an array) plus how to read them in canonical order.

    ``load`` returns the stored bytes as a flat uint8 array (a view into an mmap, no copy);
    ``stored_rows`` maps each stored row position to its canonical row (None = identity), so
    ``raw()`` returns ``stored[argsort(stored_rows)]``.
    """

    def __init__(
        self,
        info: TensorInfo,
        load: Callable[[], np.ndarray],
        stored_rows: np.ndarray | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.info = info
        self._load = load
        self._release = release
        self._canonical_order = None if stored_rows is None else np.argsort(stored_rows)

    def release(self) -> None:
        """Drop this tensor's mapped file pages from the process (the OS page cache keeps them), so a
        converter streaming a whole model never holds more than the tensor at hand in its RSS."""
        if self._release is not None:
            self._release()

    def stored_bytes(self) -> np.ndarray:
        """Bytes in file order, flat uint8 (rows of GGUF llama q/k still permuted)."""
        return self._load()

    def raw(self) -> np.ndarray:
        rows, row_bytes = rows_and_row_bytes(self.info.ggml_type, self.info.shape)
        data = self._load().reshape(rows, row_bytes)
        if self._canonical_order is not None:
            data = data[self._canonical_order]
        return data

    def dequantize_numpy(self) -> np.ndarray:
        """float32 values in HF convention (offset removed), shape ``info.shape``."""
        values = dequantize_raw(self.raw(), self.info.ggml_type, self.info.shape)
        if self.info.value_offset:
            values = values - np.float32(self.info.value_offset)
        return values

    def row_count(self) -> int:
        return rows_and_row_bytes(self.info.ggml_type, self.info.shape)[0]

    def dequantize_rows(self, start: int, stop: int) -> np.ndarray:
        """float32 HF values of canonical rows ``[start, stop)``, shape ``[stop - start, cols]``
        (1-D tensors have a single row). Lets converters stream inside a large tensor."""
        raw = self.raw()[start:stop]
        cols = self.info.shape[-1]
        values = dequantize_raw(raw, self.info.ggml_type, (stop - start, cols))
        if self.info.value_offset:
            values = values - np.float32(self.info.value_offset)
        return values

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(self.dequantize_numpy()))
        return tensor if dtype is None or dtype == torch.float32 else tensor.to(dtype)


def rope_permutation(rows: int, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute`` on row indices: stored row i holds canonical (HF) row ``perm[i]``."""
    index = np.arange(rows)
    return index.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def page_dropper(data: np.ndarray, start: int, stop: int) -> Callable[[], None]:
    """A ``release`` callback for bytes ``[start, stop)`` of a read-only np.memmap (MADV_DONTNEED)."""
    import mmap

    def drop() -> None:
        handle = getattr(data, "_mmap", None)  # numpy keeps the mmap object here
        if handle is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = start - start % mmap.PAGESIZE
        handle.madvise(mmap.MADV_DONTNEED, first, stop - first)

    return drop
