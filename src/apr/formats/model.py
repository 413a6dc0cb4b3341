"""The canonical in-memory model every format reads into and writes from: config, tokenizer, lazy tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from apr.formats.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

    from apr.formats.tensor_source import StoredTensor
    from apr.formats.tokenizer import Tokenizer

FormatName = Literal["gguf", "safetensors", "apr"]


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor sits in the canonical model.

    name       canonical (Hugging Face) name, e.g. ``model.layers.0.self_attn.q_proj.weight``
    shape      logical row-major shape, outermost first: ``[out_features, in_features]`` for a
               linear weight, ``[vocab, hidden]`` for the embedding (GGUF's reversed dims undone)
    ggml_type  storage type as a GGML type id (``gguf.GGMLQuantizationType``): F32 0, F16 1,
               Q4_1 3, Q8_0 8, Q4_K 12, Q6_K 14, BF16 30. Quantized blocks run along the last dim.
    nbytes     exact stored byte count
    value_offset  the stored values are the HF values plus this (GGUF gemma norms store ``1 + w``:
               1.0); ``dequantize`` subtracts it, ``raw`` returns the bytes as stored
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int
    value_offset: float = 0.0


class TensorSource(Protocol):
    """A lazily loaded tensor. Nothing is read until ``raw`` or ``dequantize`` is called."""

    info: TensorInfo

    def raw(self) -> np.ndarray:
        """Stored bytes as uint8, shape ``[rows, row_bytes]`` (1-D tensors: ``[1, nbytes]``).

        Rows are in canonical order: a reader that stores rows permuted (GGUF llama q/k) undoes
        the permutation here, which is exact because quantized blocks never cross rows.
        """
        ...

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Values in Hugging Face convention with ``info.shape`` (float32 unless ``dtype`` given).

        Convention fixes are applied here, never in the engine: e.g. GGUF gemma norms store
        ``1 + w`` and are returned as ``w``.
        """
        ...


@dataclass
class CanonicalModel:
    """A checkpoint in memory: typed config, tokenizer, and its tensors by canonical name."""

    config: ModelConfig
    tokenizer: Tokenizer
    tensors: dict[str, StoredTensor]  # every reader hands out StoredTensors; the engine reads them as TensorSources
    source_path: Path
    source_format: FormatName
    # Format-specific metadata kept for round trips and `apr inspect` (GGUF KV pairs, APR JSON...).
    metadata: dict[str, Any] = field(default_factory=dict)

    def tensor(self, name: str) -> TensorSource:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.source_path}: no tensor named {name!r}") from None
