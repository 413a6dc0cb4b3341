"""Linear layers built from canonical tensors: packed int4 / int8 weight-only kernels or dense matrices."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from apr.engine import hugepages, native, quant
from apr.engine.pack_cache import PackStore

WeightKind = Literal["dense", "int4", "int8", "q4", "q6", "q8", "q4k", "q4k8", "q6k8"]
KernelFamily = Literal["torch", "native"]
# Calls with at least this many rows (prompt chunks) use the dense twin when one is kept.
PREFILL_MIN_ROWS = 8


@dataclass(frozen=True)
class WeightPolicy:
    """How stored tensors become kernels.

    ``packed`` False dequantizes everything to ``dtype`` (the exact reference mode used for parity).

    With ``packed`` True and ``kernels`` "torch", Q4_0/Q4_1/Q4_K become int4 group-32 (exact) for
    PyTorch's tinygemm kernel and other quantized types int8 per channel; float tensors stay dense.
    ``dense_prefill`` keeps an extra dense copy of every packed matrix for prompt processing.

    With ``kernels`` "native" (CPU, float32 activations; ``apr.engine.native``), Q4_K and Q6_K are kept
    as stored (with 8 output rows interleaved, q4k8/q6k8, when N % 8 == 0; else q4k/q6), Q4_0/Q4_1 keep
    their 4-bit values (q4: fp16 scale and offset per 32), Q8_0 its integer values (q8: fp16 scale per
    16), and every other matrix, float ones included, becomes symmetric int8 per 16 (q8).
    """

    dtype: torch.dtype
    device: torch.device
    packed: bool
    dense_prefill: bool = False
    kernels: KernelFamily = "torch"


class DenseLinear(nn.Module):
    kind: WeightKind = "dense"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Row by row, so a row's result never depends on which other rows share the batch.

        float32 BLAS picks different kernels for 1 row and for several; bf16 and the packed kernels
        do not, so only float32 needs this."""
        if x.dtype != torch.float32 or x.shape[0] == 1:
            return self.forward(x)
        return torch.cat([self.forward(row[None]) for row in x])


class Int4Linear(nn.Module):
    """``y = x @ W.T + b`` with W in tinygemm int4 group-32 form (bf16 activations on CPU)."""

    kind: WeightKind = "int4"

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features = scales_zeros.shape[1]
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_groups(cls, groups: quant.Int4Groups, bias: torch.Tensor | None, device: torch.device) -> Int4Linear:
        n, k = groups.q.shape
        # scales_and_zeros layout is [K/group, N, 2].
        sz = torch.stack([groups.scale, groups.zero], dim=-1).transpose(0, 1).contiguous()
        if device.type == "cuda":
            # CUDA tinygemm takes nibble pairs [N, K/2] (high nibble first) and its own tile layout.
            q = groups.q.to(torch.uint8)
            pairs = ((q[:, ::2] << 4) | q[:, 1::2]).to(device)
            inner_k_tiles = 8 if k % 1024 == 0 else 4 if k % 512 == 0 else 2
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)
        else:
            packed = torch._convert_weight_to_int4pack_for_cpu(groups.q, 2)
        return cls(packed, sz.to(device=device, dtype=torch.bfloat16), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, quant.INT4_GROUP, self.scales_zeros)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2, self.packed, quant.INT4_GROUP, self.scales_zeros)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    forward_rows = forward  # the packed kernel computes each row independently of the others

    def parts(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales_zeros": self.scales_zeros}


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + b`` with per-output-channel int8 weights."""

    kind: WeightKind = "int8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features = q.shape[0]
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device) -> Int8Linear:
        q, scale = quant.int8_per_channel(weight)
        return cls(q.to(device), scale.to(device=device, dtype=torch.bfloat16), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if x2.is_cuda:
            y = F.linear(x2, self.q.to(torch.bfloat16)) * self.scale
        else:
            y = torch._weight_int8pack_mm(x2, self.q, self.scale)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    forward_rows = forward

    def parts(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "scale": self.scale}


class NativeLinear(nn.Module):
    """``y = x @ W.T + b`` through apr's AVX2 kernels: W in one of ``native.LAYOUTS``, x quantized to int8."""

    def __init__(self, parts: dict[str, torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__()
        parts = {name: tensor.contiguous() for name, tensor in parts.items()}
        self.kind: WeightKind = native.layout_of(parts)  # type: ignore[assignment]
        for name, tensor in parts.items():
            self.register_buffer(name, tensor)
        self.bias = None if bias is None else nn.Parameter(bias.float().contiguous(), requires_grad=False)
        # Plain attributes: nn.Module attribute lookups cost microseconds, and decode makes ~200 calls a token.
        self._kernel = native.PackedLinear(parts)
        self._bias = None if self.bias is None else self.bias.data
        self.out_features = self._kernel.n

    @property
    def native_kernel(self) -> native.PackedLinear:
        return self._kernel

    @property
    def native_bias(self) -> torch.Tensor | None:
        return self._bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # traced: the registered operator, inputs made contiguous float32
            weights = [getattr(self, name) for name in native.LAYOUTS[self.kind]]
            y = torch.ops.apr.native_linear(
                x.reshape(-1, x.shape[-1]).float().contiguous(), self.kind, weights, self._bias
            )
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        if x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous():
            return self._kernel(x, self._bias)
        shape = x.shape
        y = self._kernel(x.reshape(-1, shape[-1]).float().contiguous(), self._bias)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    forward_rows = forward  # each row is computed independently of the others (see qgemm.c)

    def parts(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in native.LAYOUTS[self.kind]}


class PrefillLinear(nn.Module):
    """A packed layer with a dense twin: the dense copy serves many-row calls (prompts), the packed one decode."""

    def __init__(self, packed: Int4Linear | Int8Linear, dense: DenseLinear, min_rows: int) -> None:
        super().__init__()
        self.packed_layer, self.dense_layer, self.min_rows = packed, dense, min_rows
        self.kind = packed.kind
        self.out_features = packed.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        return self.dense_layer(x) if rows >= self.min_rows else self.packed_layer(x)

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed_layer(x)


def build_linear(source, bias: torch.Tensor | None, policy: WeightPolicy, store: PackStore | None = None) -> nn.Module:
    """A linear layer for the canonical tensor ``source`` (a ``TensorSource``) under ``policy``.

    With a ``store``, converted layers are taken from (or recorded into) the on-disk pack cache."""
    info = source.info
    n, k = info.shape
    bias = None if bias is None else bias.to(device=policy.device, dtype=policy.dtype)
    cached = store.get(info.name) if store is not None else None
    if cached is not None:
        return _from_parts(cached, bias, policy)
    layer: nn.Module
    if policy.packed and policy.kernels == "native":
        layer = _native_linear(source, bias)
        if store is not None and isinstance(layer, NativeLinear):
            store.put(info.name, layer.parts())
        return layer
    fits_int4 = info.ggml_type in quant.INT4_EXACT_TYPES and k % quant.INT4_GROUP == 0 and n % 8 == 0
    if policy.packed and fits_int4:
        groups = quant.int4_groups_from_raw(source.raw(), info.ggml_type, (n, k))
        layer = Int4Linear.from_groups(groups, bias, policy.device)
        dense = groups.dequantize if policy.dense_prefill else None
    elif policy.packed and is_quantized(info.ggml_type):
        weight = dequantize_source(source, torch.float32)
        dense = (lambda: weight) if policy.dense_prefill else None
        layer = Int8Linear.from_weight(weight, bias, policy.device)
    else:
        weight = dequantize_source(source, policy.dtype).to(policy.device)
        return DenseLinear(weight, bias)
    parts = layer.parts()
    if dense is not None:
        twin = DenseLinear(dense().to(device=policy.device, dtype=policy.dtype), bias)
        parts = {**parts, "dense": twin.weight.data}
        layer = PrefillLinear(layer, twin, min_rows=PREFILL_MIN_ROWS)
    if store is not None:
        store.put(info.name, parts)
    return layer


def _native_linear(source, bias: torch.Tensor | None) -> nn.Module:
    """The most faithful native layout for ``source``; dense float32 when no packed form can hold it."""
    info = source.info
    n, k = info.shape
    attempts = []
    if info.ggml_type == quant.Q4_K and k % 256 == 0 and n % 8 == 0:
        attempts.append(lambda: _pack_rows(source.raw(), n, k, quant.q4_k_parts, native.pack_q4k8))
    if info.ggml_type == quant.Q4_K and k % 256 == 0:
        attempts.append(lambda: _pack_rows(source.raw(), n, k, quant.q4_k_parts, native.pack_q4k))
    if info.ggml_type == quant.Q6_K and k % 256 == 0 and n % 8 == 0:
        attempts.append(lambda: _pack_rows(source.raw(), n, k, quant.q6_k_parts, native.pack_q6k8))
    if info.ggml_type == quant.Q6_K and k % 256 == 0:
        attempts.append(
            lambda: _pack_rows(source.raw(), n, k, quant.q6_k_parts, lambda parts: native.pack_q6(*astuple(parts)))
        )
    if info.ggml_type in quant.INT4_EXACT_TYPES and k % quant.INT4_GROUP == 0:

        def exact_q4():
            groups = quant.int4_groups_from_raw(source.raw(), info.ggml_type, (n, k))
            return native.pack_q4(groups.q, groups.scale, groups.zero - 8 * groups.scale)

        attempts.append(exact_q4)
    if info.ggml_type in quant.INT8_EXACT_TYPES and k % 16 == 0:
        attempts.append(lambda: native.pack_q8(*quant.int8_groups_from_raw(source.raw(), info.ggml_type, (n, k))))
    if k % 16 == 0:
        attempts.append(lambda: native.pack_q8(*native.int8_groups_of_16(dequantize_source(source, torch.float32))))
    for attempt in attempts:
        try:
            return NativeLinear(attempt(), bias)
        except native.ScaleRangeError:  # fp16 cannot hold these scales: try the next, less faithful layout
            continue
    return DenseLinear(dequantize_source(source, torch.float32), bias)


PACK_ROWS = 4096  # rows unpacked at a time: the 1.5B's 151936-row head unpacked whole took ~1.4 GB transient


def _pack_rows(raw, n: int, k: int, parse, pack) -> dict[str, torch.Tensor]:
    """``pack(parse(rows))`` over chunks of rows, concatenated. Exact: every layout packs each row (the tiled
    ones each tile of 8 rows; PACK_ROWS is a multiple of 8) independently of the others."""
    rows = raw.reshape(n, -1)
    chunks = [pack(parse(rows[i : i + PACK_ROWS], (min(PACK_ROWS, n - i), k))) for i in range(0, n, PACK_ROWS)]
    return {name: _concatenated([chunk[name] for chunk in chunks]) for name in chunks[0]}


def _concatenated(pieces: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(pieces)`` into huge-page memory (hugepages.py): decode streams these bytes every token."""
    out = hugepages.empty((sum(piece.shape[0] for piece in pieces), *pieces[0].shape[1:]), pieces[0].dtype)
    return torch.cat(pieces, out=out)


def _from_parts(parts: dict[str, torch.Tensor], bias: torch.Tensor | None, policy: WeightPolicy) -> nn.Module:
    layer: nn.Module
    if any(name in parts for name in native.LAYOUTS):
        return NativeLinear(parts, bias)
    if "packed" in parts:
        layer = Int4Linear(parts["packed"].to(policy.device), parts["scales_zeros"].to(policy.device), bias)
    else:
        layer = Int8Linear(parts["q"].to(policy.device), parts["scale"].to(policy.device), bias)
    if "dense" in parts and policy.dense_prefill:
        twin = DenseLinear(parts["dense"].to(policy.device), bias)
        return PrefillLinear(layer, twin, min_rows=PREFILL_MIN_ROWS)
    return layer


def is_quantized(ggml_type: int) -> bool:
    return ggml_type not in (0, 1, 30)  # F32, F16, BF16


def dense_tensor(source, policy: WeightPolicy, store: PackStore | None = None) -> torch.Tensor:
    """A small tensor (norm weight, bias) or the embedding, dequantized onto the device (quantized ones cached)."""
    cache = store if store is not None and is_quantized(source.info.ggml_type) else None
    cached = cache.get(source.info.name) if cache is not None else None
    if cached is not None:
        return cached["weight"].to(policy.device)
    value = dequantize_source(source, policy.dtype).to(policy.device)
    if cache is not None:
        cache.put(source.info.name, {"weight": value})
    return value


class BlockRows:
    """An embedding kept as its stored GGML blocks (memory-mapped): a lookup dequantizes only its rows.

    Why: a step reads a few rows of the embedding, yet its dense float32 copy is the largest tensor of a
    small model (the 1.5B's: 933 MB, against 131 MB of Q4_K blocks), resident on a first load and
    written to the pack cache. Blocks never cross rows, so a row's values equal dequantize_source's.
    """

    def __init__(self, raw: np.ndarray, ggml_type: int, shape: tuple[int, int], dtype: torch.dtype) -> None:
        if ggml_type not in quant.FAST_DEQUANT_TYPES or raw.shape[0] != shape[0]:
            raise ValueError(f"BlockRows: GGML type {ggml_type} with raw shape {raw.shape} for {shape}")
        self.raw, self.ggml_type, self.shape, self.dtype = raw, ggml_type, tuple(shape), dtype
        self.device = torch.device("cpu")
        self.native = (
            native.available()
            and ggml_type in native.DEQUANT_TYPES
            and raw.dtype == np.uint8
            and raw.ndim == 2
            and raw.flags.c_contiguous
        )

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # traced: numpy indexing and ctypes stay out of the graph
            return _rows_outside_the_graph()(self, ids)
        return self.rows(ids)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The dequantized rows ``ids`` (any shape), as ``(*ids.shape, columns)`` of the embedding's dtype."""
        if self.native:  # the same values in microseconds instead of ~20 operators' dispatch
            values = native.dequantize_rows(self.raw, self.ggml_type, self.shape[1], ids)
        else:
            flat = ids.reshape(-1).cpu().numpy()
            values = quant.dequantize_raw(self.raw[flat], self.ggml_type, (len(flat), self.shape[1]))
        return values.to(self.dtype).view(*ids.shape, self.shape[1])


@functools.cache
def _rows_outside_the_graph() -> Callable[[BlockRows, torch.Tensor], torch.Tensor]:
    """BlockRows.rows as a compiled decode step calls it: a plain function torch.compile does not trace. Made on
    first use, because torch.compiler.disable imports torch._dynamo (~2 s a process), which eager runs never need."""
    return torch.compiler.disable(BlockRows.rows)


def embedding_rows(source, policy: WeightPolicy, store: PackStore | None, *, shared_with_head: bool):
    """The embedding as BlockRows (quantized, CPU, packed kernels, and no dense head sharing it), else dense."""
    info = source.info
    if (
        not shared_with_head
        and policy.packed
        and policy.device.type == "cpu"
        and len(info.shape) == 2
        and info.ggml_type in quant.FAST_DEQUANT_TYPES
    ):
        return BlockRows(source.raw(), info.ggml_type, info.shape, policy.dtype)
    return dense_tensor(source, policy, store)


def dequantize_source(source, dtype: torch.dtype) -> torch.Tensor:
    """Values of a canonical tensor; common GGML matrices take the vectorized torch path (numpy is single-threaded)."""
    info = source.info
    if len(info.shape) == 2 and info.ggml_type in quant.FAST_DEQUANT_TYPES:
        n, k = info.shape
        rows = source.raw().reshape(n, -1)
        out = torch.empty(n, k, dtype=dtype)
        for i in range(0, n, PACK_ROWS):  # in chunks: the transient float32/int16 copies stay small
            count = min(PACK_ROWS, n - i)
            out[i : i + count] = quant.dequantize_raw(rows[i : i + count], info.ggml_type, (count, k))
        return out
    return source.dequantize(dtype)
