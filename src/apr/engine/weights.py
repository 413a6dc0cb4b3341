"""Linear layers built from canonical tensors: packed int4 / int8 weight-only kernels or dense matrices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from apr.engine import quant

WeightKind = Literal["dense", "int4", "int8"]


@dataclass(frozen=True)
class WeightPolicy:
    """How stored tensors become kernels.

    ``packed`` False dequantizes everything to ``dtype`` (the exact reference mode used for parity).
    With ``packed`` True, Q4_0/Q4_1/Q4_K become int4 group-32 (exact) and other quantized types become
    int8 per channel; float tensors stay dense. ``dense_prefill`` keeps an extra dense copy of every
    packed matrix for prompt processing, where weight-only kernels are compute-bound.
    """

    dtype: torch.dtype
    device: torch.device
    packed: bool
    dense_prefill: bool = False


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

    def __init__(self, groups: quant.Int4Groups, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        n, k = groups.q.shape
        self.out_features, self.in_features = n, k
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
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", sz.to(device=device, dtype=torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
        self.dtype = dtype

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


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + b`` with per-output-channel int8 weights."""

    kind: WeightKind = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        q, scale = quant.int8_per_channel(weight)
        self.out_features, self.in_features = q.shape
        self.register_buffer("q", q.to(device))
        self.register_buffer("scale", scale.to(device=device, dtype=torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)

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


class PrefillLinear(nn.Module):
    """A packed layer with a dense twin: the dense copy serves many-row calls (prompts), the packed one decode."""

    def __init__(self, packed: nn.Module, dense: DenseLinear, min_rows: int) -> None:
        super().__init__()
        self.packed_layer, self.dense_layer, self.min_rows = packed, dense, min_rows
        self.kind = packed.kind
        self.out_features = packed.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        return self.dense_layer(x) if rows >= self.min_rows else self.packed_layer(x)

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed_layer(x)


def build_linear(source, bias: torch.Tensor | None, policy: WeightPolicy) -> nn.Module:
    """A linear layer for the canonical tensor ``source`` (a ``TensorSource``) under ``policy``."""
    info = source.info
    n, k = info.shape
    bias = None if bias is None else bias.to(device=policy.device, dtype=policy.dtype)
    fits_int4 = info.ggml_type in quant.INT4_EXACT_TYPES and k % quant.INT4_GROUP == 0 and n % 8 == 0
    layer: nn.Module
    if policy.packed and fits_int4:
        groups = quant.int4_groups_from_raw(source.raw(), info.ggml_type, (n, k))
        layer = Int4Linear(groups, bias, policy.dtype, policy.device)
        dense = groups.dequantize if policy.dense_prefill else None
    elif policy.packed and is_quantized(info.ggml_type):
        weight = source.dequantize(torch.float32)
        layer = Int8Linear(weight, bias, policy.dtype, policy.device)
        dense = (lambda: weight) if policy.dense_prefill else None
    else:
        weight = source.dequantize(policy.dtype).to(policy.device)
        return DenseLinear(weight, bias)
    if dense is None:
        return layer
    twin = DenseLinear(dense().to(device=policy.device, dtype=policy.dtype), bias)
    return PrefillLinear(layer, twin, min_rows=8)


def is_quantized(ggml_type: int) -> bool:
    return ggml_type not in (0, 1, 30)  # F32, F16, BF16


def dense_tensor(source, policy: WeightPolicy, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small tensor (norm weight, bias) or the embedding, dequantized onto the device."""
    return source.dequantize(dtype or policy.dtype).to(policy.device)
