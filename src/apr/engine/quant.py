"""GGML blocks to PyTorch weight-only kernel formats: Q4_K/Q4_1/Q4_0 -> int4 group 32 exactly, others -> int8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# GGML type ids (gguf.GGMLQuantizationType); apr.formats.ggml holds the full table.
Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 2, 3, 8, 12, 14
INT4_EXACT_TYPES = (Q4_0, Q4_1, Q4_K)
INT4_GROUP = 32


@dataclass(frozen=True)
class Int4Groups:
    """Weights as ``w = (q - 8) * scale + zero`` per group of 32 along K (tinygemm convention).

    q      int32 [N, K] with values 0..15
    scale  float32 [N, K // 32]
    zero   float32 [N, K // 32]
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        n, k = self.q.shape
        groups = (self.q.view(n, k // INT4_GROUP, INT4_GROUP).float() - 8) * self.scale[..., None] + self.zero[
            ..., None
        ]
        return groups.view(n, k)


def _f16(block_bytes: torch.Tensor) -> torch.Tensor:
    """Little-endian float16 from the last dim of 2 uint8s, as float32."""
    return block_bytes.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles_32(qs: torch.Tensor) -> torch.Tensor:
    """16 packed bytes -> 32 values: element l is the low nibble of byte l, l+16 the high nibble."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def int4_groups_from_raw(raw: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> Int4Groups:
    """Exact int4/group-32 form of a Q4_0, Q4_1 or Q4_K matrix from its stored bytes ``[N, row_bytes]``."""
    n, k = shape
    data = _as_tensor(raw, n)
    if ggml_type == Q4_0:
        blocks = data.view(n, k // 32, 18)
        d = _f16(blocks[..., 0:2])
        q = _nibbles_32(blocks[..., 2:18])
        return Int4Groups(q.reshape(n, k).to(torch.int32), d, torch.zeros_like(d))
    if ggml_type == Q4_1:
        blocks = data.view(n, k // 32, 20)
        d, m = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
        q = _nibbles_32(blocks[..., 4:20])
        return Int4Groups(q.reshape(n, k).to(torch.int32), d, m + 8 * d)
    if ggml_type == Q4_K:
        return _q4_k_groups(data, n, k)
    raise ValueError(f"GGML type {ggml_type} has no exact int4 form")


def _q4_k_groups(data: torch.Tensor, n: int, k: int) -> Int4Groups:
    # Super-block of 256: d, dmin (f16), 12 bytes of packed 6-bit (scale, min) for 8 sub-blocks of 32,
    # then 128 bytes of nibbles; 64-value chunk c holds sub-block 2c in low nibbles, 2c+1 in high ones.
    blocks = data.view(n, k // 256, 144)
    d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
    sc, mn = _q4_k_scale_bytes(blocks)
    qs = blocks[..., 16:144].reshape(n, k // 256, 4, 32)
    q = torch.stack([qs & 0xF, qs >> 4], dim=3)  # [n, blocks, chunk, lo/hi, 32] = sub-block order
    scale = (d[..., None] * sc.float()).reshape(n, k // 32)
    minimum = (dmin[..., None] * mn.float()).reshape(n, k // 32)
    return Int4Groups(q.reshape(n, k).to(torch.int32), scale, 8 * scale - minimum)


@dataclass(frozen=True)
class Q4KParts:
    """A Q4_K matrix as stored: ``w = d * sc * q - dmin * m`` per block of 32 in super-blocks of 256.

    q     int [N, K] in 0..15          sc, m  uint8 [N, K/32] (6-bit)
    d, dmin  float16 [N, K/256]
    """

    q: torch.Tensor
    sc: torch.Tensor
    m: torch.Tensor
    d: torch.Tensor
    dmin: torch.Tensor


def q4_k_parts(raw: np.ndarray, shape: tuple[int, int]) -> Q4KParts:
    n, k = shape
    blocks = _as_tensor(raw, n).view(n, k // 256, 144)
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1)
    dmin = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1)
    sc, mn = _q4_k_scale_bytes(blocks)
    qs = blocks[..., 16:144].reshape(n, k // 256, 4, 32)
    q = torch.stack([qs & 0xF, qs >> 4], dim=3)
    return Q4KParts(
        q.reshape(n, k), sc.reshape(n, k // 32).to(torch.uint8), mn.reshape(n, k // 32).to(torch.uint8), d, dmin
    )


def _q4_k_scale_bytes(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 (scale, min) 6-bit pairs of each super-block, unpacked from their 12 bytes."""
    packed = blocks[..., 4:16].to(torch.int32)
    low_sc, low_m, high = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([low_sc & 63, (high & 0xF) | ((low_sc >> 6) << 4)], dim=-1)
    mn = torch.cat([low_m & 63, (high >> 4) | ((low_m >> 6) << 4)], dim=-1)
    return sc, mn


@dataclass(frozen=True)
class Q6KParts:
    """A Q6_K matrix as stored, unpacked: ``w = d * sc * (q - 32)``."""

    q: torch.Tensor  # uint8 [N, K], values 0..63
    sc: torch.Tensor  # int8 [N, K/16]
    d: torch.Tensor  # float32 [N, K/256] (fp16 values)


def q6_k_parts(raw: np.ndarray, shape: tuple[int, int]) -> Q6KParts:
    n, k = shape
    return _q6_k_fields(_as_tensor(raw, n), n, k)


def _q6_k_fields(data: torch.Tensor, n: int, k: int) -> Q6KParts:
    # Super-block of 256: 128 B low nibbles, 64 B high 2-bit pairs, 16 int8 scales (one per 16 values), f16 d.
    blocks = data.view(n, k // 256, 210)
    ql = blocks[..., 0:128].reshape(n, -1, 2, 1, 64)
    ql = torch.cat([ql & 0xF, ql >> 4], dim=3).reshape(n, -1, 2, 4, 32)
    qh = blocks[..., 128:192].reshape(n, -1, 2, 1, 32)
    qh = torch.cat([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], dim=3)
    sc = blocks[..., 192:208].contiguous().view(torch.int8).reshape(n, k // 16)
    return Q6KParts((ql | (qh << 4)).reshape(n, k), sc, _f16(blocks[..., 208:210]).reshape(n, k // 256))


def _q6_k_ints(data: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = _q6_k_fields(data, n, k)
    scale = parts.d.repeat_interleave(16, dim=1) * parts.sc.float()
    return parts.q.to(torch.int16) - 32, scale


def _q6_k_values(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    q, scale = _q6_k_ints(data, n, k)
    return (q.view(n, k // 16, 16).float() * scale[..., None]).reshape(n, k)


def _q8_0_ints(data: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = data.view(n, k // 32, 34)
    d = _f16(blocks[..., 0:2])
    q = blocks[..., 2:34].contiguous().view(torch.int8).reshape(n, k)
    return q, d.repeat_interleave(2, dim=1)


def _q8_0_values(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    q, scale = _q8_0_ints(data, n, k)
    return (q.view(n, k // 16, 16).float() * scale[..., None]).reshape(n, k)


INT8_EXACT_TYPES = (Q6_K, Q8_0)


def int8_groups_from_raw(raw: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``w = q * scale`` form of a Q6_K or Q8_0 matrix: q int [N, K] (|q| <= 128), scale float32 [N, K/16]."""
    n, k = shape
    data = _as_tensor(raw, n)
    if ggml_type == Q6_K:
        return _q6_k_ints(data, n, k)
    if ggml_type == Q8_0:
        return _q8_0_ints(data, n, k)
    raise ValueError(f"GGML type {ggml_type} has no exact int8 form")


FAST_DEQUANT_TYPES = (Q4_0, Q4_1, Q4_K, Q6_K, Q8_0)


def dequantize_raw(raw: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> torch.Tensor:
    """float32 values of a Q4_0/Q4_1/Q4_K/Q6_K/Q8_0 matrix, vectorized in torch (multi-threaded, unlike numpy)."""
    n, k = shape
    if ggml_type in INT4_EXACT_TYPES:
        return int4_groups_from_raw(raw, ggml_type, shape).dequantize()
    data = _as_tensor(raw, n)
    if ggml_type == Q6_K:
        return _q6_k_values(data, n, k)
    if ggml_type == Q8_0:
        return _q8_0_values(data, n, k)
    raise ValueError(f"GGML type {ggml_type} has no torch dequantization here")


def _as_tensor(raw: np.ndarray, n: int) -> torch.Tensor:
    raw = np.ascontiguousarray(raw)
    if not raw.flags.writeable:  # memory-mapped file bytes; torch wants a writable buffer
        raw = raw.copy()
    return torch.from_numpy(raw).view(n, -1)


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``w ≈ q * scale[:, None]``; returns (q int8 [N, K], scale fp32 [N])."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    scaled = w.mul(scale.reciprocal()[:, None]) if w is weight else w.mul_(scale.reciprocal()[:, None])
    return scaled.round_().clamp_(-127, 127).to(torch.int8), scale
